"""STL-10, read directly from torchvision's on-disk layout (torchvision is only used to download,
and only when ``download=True``).

``ROOT/stl10_binary/{train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin,
class_names.txt}``. ``*_X.bin`` are raw uint8, 3 * 96 * 96 bytes per image, each channel plane
stored column-major (so a plane read row-major must be transposed); ``*_y.bin`` are uint8 labels
1..10, one byte per image; ``class_names.txt`` has one name per line.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from contrastlab.errors import UserError
from contrastlab.data.base import TensorImageSet, data_root
from contrastlab.data.files import ensure_files

_STL_SIDE = 96
_STL_BYTES = 3 * _STL_SIDE * _STL_SIDE
_STL_SPLITS = ("train", "unlabeled", "train+unlabeled")


def _stl_count(path: str) -> int:
    size = os.path.getsize(path)
    if size % _STL_BYTES:
        raise UserError(f"STL-10 file {path} has {size} bytes, not a multiple of {_STL_BYTES} (one 3x96x96 "
                        "image); it is truncated or corrupt: delete it and pass data.download=true")
    return size // _STL_BYTES


def _stl_read_into(path: str, out: torch.Tensor, chunk: int = 2048) -> None:
    """Read an STL-10 ``*_X.bin`` into ``out`` (N, 3, 96, 96) uint8 chunk by chunk (no full copy)."""
    with open(path, "rb") as f:
        for start in range(0, len(out), chunk):
            n = min(chunk, len(out) - start)
            a = np.fromfile(f, dtype=np.uint8, count=n * _STL_BYTES)
            if a.size != n * _STL_BYTES:
                raise UserError(f"STL-10 file {path} ended early; delete it and pass data.download=true")
            # Planes are stored column-major: swap the last two axes to get (C, H, W).
            out[start:start + n] = torch.from_numpy(np.transpose(a.reshape(n, 3, _STL_SIDE, _STL_SIDE), (0, 1, 3, 2)))


def _stl_labels(path: str, n: int) -> torch.Tensor:
    y = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if len(y) != n or (n and (y.min() < 1 or y.max() > 10)):
        raise UserError(f"STL-10 file {path} has {len(y)} labels (values {y.min() if len(y) else '-'}.."
                        f"{y.max() if len(y) else '-'}) for {n} images, expected {n} values in 1..10; "
                        "delete it and pass data.download=true")
    return torch.from_numpy(y - 1)


def resize_images(x: torch.Tensor, size: int, chunk: int = 512) -> torch.Tensor:
    """Resize uint8 (N, 3, H, W) to (N, 3, size, size), bilinear + antialias, chunk by chunk."""
    if x.shape[-2:] == (size, size):
        return x
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, x.shape[0], chunk):
        y = F.interpolate(x[start:start + chunk].float(), size=(size, size), mode="bilinear",
                          align_corners=False, antialias=True)
        out[start:start + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def load_stl10(root, split: str = "train+unlabeled", download: bool = False,
               image_size: int = 96) -> tuple[TensorImageSet, TensorImageSet]:
    """STL-10 from ``root/stl10_binary``: ``(train, test)`` of uint8 (N, 3, image_size, image_size).

    ``split`` picks what ``train`` holds: the 5,000 labelled ``train`` images, the 100,000
    ``unlabeled`` ones (label -1), or both (labelled first). ``test`` is the 8,000 labelled test
    images. Images are resized (bilinear, antialiased) when ``image_size != 96``.
    """
    if split not in _STL_SPLITS:
        raise UserError(f"unknown STL-10 split {split!r}; expected one of {', '.join(_STL_SPLITS)}")
    if root is None:
        raise UserError("data.root is not set; set data.root=<folder for STL-10> (add data.download=true "
                        "to download it there)")
    root = os.fspath(root)
    folder = os.path.join(root, "stl10_binary")
    parts = split.split("+")
    needed = ["test_X.bin", "test_y.bin", "class_names.txt"]
    if "train" in parts:
        needed += ["train_X.bin", "train_y.bin"]
    if "unlabeled" in parts:
        needed += ["unlabeled_X.bin"]
    from torchvision import datasets

    ensure_files("STL-10", root, folder, needed, download, lambda: datasets.STL10(root, split="test", download=True))

    names_path = os.path.join(folder, "class_names.txt")
    with open(names_path, encoding="utf-8", errors="replace") as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) != 10:
        raise UserError(f"STL-10 file {names_path} lists {len(names)} class names, expected 10; "
                        "delete it and pass data.download=true")
    classes = {"label": names}

    def read(x_files: list[str], y_files: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        paths = [os.path.join(folder, f) for f in x_files]
        counts = [_stl_count(p) for p in paths]
        x = torch.empty((sum(counts), 3, _STL_SIDE, _STL_SIDE), dtype=torch.uint8)
        ys, start = [], 0
        for p, n, yf in zip(paths, counts, y_files):
            _stl_read_into(p, x[start:start + n])
            ys.append(_stl_labels(os.path.join(folder, yf), n) if yf else torch.full((n,), -1, dtype=torch.long))
            start += n
        return resize_images(x, image_size), torch.cat(ys)

    x_files = [f"{p}_X.bin" for p in parts]
    y_files = ["train_y.bin" if p == "train" else None for p in parts]
    x_train, y_train = read(x_files, y_files)
    x_test, y_test = read(["test_X.bin"], ["test_y.bin"])
    return (TensorImageSet(x_train, {"label": y_train}, classes, f"stl10-{split}"),
            TensorImageSet(x_test, {"label": y_test}, classes, "stl10-test"))



def stl10_datasets(dcfg):
    """``data.name=stl10``: the binary version under ``data.root`` (``data.stl_split``)."""
    return load_stl10(str(data_root(dcfg)), dcfg.stl_split, download=dcfg.download, image_size=dcfg.image_size)
