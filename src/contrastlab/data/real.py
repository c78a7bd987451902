"""Real image data sets: ImageFolder trees, CIFAR-10/100 and STL-10, read from their on-disk formats.

CIFAR and STL-10 are read by this module directly from torchvision's on-disk layout (torchvision's
own classes verify md5 sums of whole files and would need the full archives); torchvision is only
used to download, and only when ``download=True``. Nothing downloads unless asked.

On-disk formats:

- ImageFolder: ``ROOT/<train_dir>/<class>/<image>`` (and optionally ``ROOT/<test_dir>/<class>/...``,
  by default ``ROOT/val`` or else ``ROOT/test``); images may sit in nested folders below a class
  folder; names starting with ``.`` are ignored. 16-bit and float images are scaled to 8 bits (see
  :func:`open_rgb`).
- CIFAR-10: ``ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``. Each batch
  is a pickle dict with ``b'data'`` (N, 3072) uint8 -- a row is 1024 red, 1024 green then 1024 blue
  values, each plane row-major, i.e. it reshapes to (N, 3, 32, 32) -- and ``b'labels'`` (list of
  int); ``batches.meta`` holds ``b'label_names'``.
- CIFAR-100: ``ROOT/cifar-100-python/{train, test, meta}``; batches hold ``b'data'``,
  ``b'fine_labels'`` and ``b'coarse_labels'``; ``meta`` holds ``b'fine_label_names'`` and
  ``b'coarse_label_names'``.
- STL-10: ``ROOT/stl10_binary/{train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin,
  class_names.txt}``. ``*_X.bin`` are raw uint8, 3 * 96 * 96 bytes per image, each channel plane
  stored column-major (so a plane read row-major must be transposed); ``*_y.bin`` are uint8
  labels 1..10, one byte per image; ``class_names.txt`` has one name per line.
"""
from __future__ import annotations

import os
import pickle
import re

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from contrastlab.errors import ConfigError, UserError
from contrastlab.data.base import ImageSet, TensorImageSet, data_root

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
_EXT_TEXT = " ".join(IMAGE_EXTENSIONS)
# What PIL raises for undecodable, truncated or absurdly large files.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ----------------------------------------------------------------------------- image files
class FileImageSet(ImageSet):
    """Image files decoded on demand.

    ``__getitem__(i)`` returns ``(uint8 (3, image_size, image_size), i)``: the file is opened with
    PIL, converted to RGB, its shorter side resized to ``image_size`` (bilinear, antialiased) and
    centre-cropped to a square. With :meth:`set_transform`, it returns ``(fn(rgb_pil_image), i)``
    instead. An undecodable file raises :class:`UserError` naming it.

    The paths are stored packed in two numpy arrays rather than as a list of Python strings, so
    DataLoader workers do not slowly copy the whole list (reference counts touch every page).

    Attributes set by :func:`load_imagefolder` (None otherwise): ``split_dir``, the folder the files
    were scanned from (``ROOT/train``, ``ROOT/val``, ...), and ``note``, a one-line message for the
    user about how the split was chosen (on the training set; e.g. that there is no test split).
    """

    split_dir: str | None = None
    note: str | None = None

    def __init__(self, paths: list[str], labels: dict[str, torch.Tensor], classes: dict[str, list[str]],
                 image_size: int, name: str = ""):
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        encoded = [os.fsencode(p) for p in paths]
        lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self._offsets[1:])
        self._blob = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)
        self.labels = {k: torch.as_tensor(v, dtype=torch.long) for k, v in (labels or {}).items()}
        for k, v in self.labels.items():
            if len(v) != len(encoded):
                raise ValueError(f"label {k!r} has {len(v)} entries for {len(encoded)} files")
        self.classes = dict(classes or {})
        self.image_size = int(image_size)
        self.name = name
        self.transform = None

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def path(self, i: int) -> str:
        i = int(i)
        if i < 0:
            i += len(self)
        return os.fsdecode(self._blob[self._offsets[i]:self._offsets[i + 1]].tobytes())

    @property
    def paths(self) -> list[str]:
        return [self.path(i) for i in range(len(self))]

    def set_transform(self, fn) -> None:
        """Per-image transform ``fn(rgb PIL image) -> anything``, used instead of resize + crop
        (``None`` restores the default). It must be picklable for DataLoader workers."""
        self.transform = fn

    def _open_rgb(self, path: str) -> Image.Image:
        return open_rgb(path)

    def __getitem__(self, i):
        im = self._open_rgb(self.path(i))
        if self.transform is not None:
            return self.transform(im), i
        return resize_center_crop(im, self.image_size), i

    def check_readable(self, max_files: int | None = None) -> None:
        """Decode every file (or the first ``max_files``); raise :class:`UserError` naming the first
        bad one, so bad data fails at start rather than hours into training. JPEGs are decoded at
        reduced scale (all compressed data is still read, so truncation is caught)."""
        n = len(self) if max_files is None else min(int(max_files), len(self))
        for i in range(n):
            path = self.path(i)
            try:
                with Image.open(path) as im:
                    im.verify()
                with Image.open(path) as im:
                    im.draft("RGB", (64, 64))
                    im.load()
            except FileNotFoundError:
                raise UserError(f"image file {path} no longer exists; rescan the data folder") from None
            except _DECODE_ERRORS as e:
                raise UserError(
                    f"image file {path} is unreadable or corrupt ({_one_line(e)}); remove or replace it"
                ) from None

    def subset(self, indices) -> "FileImageSet":
        """The items at ``indices``, with the same classes, image size, transform, default label,
        ``split_dir`` and ``note``."""
        idx = torch.as_tensor(indices, dtype=torch.long).flatten()
        out = FileImageSet([self.path(int(i)) for i in idx], {k: v[idx] for k, v in self.labels.items()},
                           self.classes, self.image_size, self.name)
        out.transform = self.transform
        for attr in ("default_label", "split_dir", "note"):
            if attr in vars(self):
                setattr(out, attr, getattr(self, attr))
        return out


def resize_center_crop(im: Image.Image, size: int) -> torch.Tensor:
    """Resize the shorter side of a PIL RGB image to ``size`` (bilinear, antialiased), centre-crop
    to ``size`` x ``size``; returns uint8 (3, size, size)."""
    w, h = im.size
    if (w, h) != (size, size):
        if w <= h:
            nw, nh = size, max(size, int(size * h / w))
        else:
            nw, nh = max(size, int(size * w / h)), size
        if (nw, nh) != (w, h):
            # PIL's bilinear filter widens its support when downscaling: antialiased.
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
        im = im.crop((left, top, left + size, top + size))
    arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def open_rgb(path: str) -> Image.Image:
    """An image file as an 8-bit RGB PIL image; a missing or undecodable file is a UserError naming it.

    See :func:`to_rgb` for how modes other than RGB are converted (16-bit and float grayscale are
    scaled, not clipped)."""
    try:
        with Image.open(path) as im:
            return to_rgb(im)  # converting loads the pixels, so decode errors surface here
    except FileNotFoundError:
        raise UserError(f"image file {path} no longer exists; rescan the data folder") from None
    except _DECODE_ERRORS as e:
        raise UserError(f"image file {path} is unreadable or corrupt ({_one_line(e)}); remove or replace it") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """A PIL image of any mode as 8-bit RGB.

    - 16-bit grayscale (modes ``I;16``, ``I;16L``, ``I;16B``, ``I;16N``: what Pillow gives for a
      16-bit grayscale PNG or TIFF) and 32-bit integer ``I`` (taken to hold 16-bit values, as
      older Pillows decode 16-bit PNGs): ``round(v * 255 / 65535)``, values clipped to 0..65535.
      (``convert("RGB")`` would clip them to 0..255, making almost every pixel white.)
    - 32-bit float ``F`` (e.g. a float TIFF): an image whose largest value is <= 1 is taken to be
      in [0, 1] and scaled by 255, any other in [0, 255]; then clipped to 0..255 and rounded
      (NaN becomes 0). The choice is per image: a [0, 255] image that is almost black (all values
      <= 1) comes out brightened.
    - Palette images (``P``, ``PA``) go through RGBA, so transparency never triggers Pillow's
      warning; alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency) is dropped, not blended,
      as in torchvision's loader; ``CMYK``, ``1``, ``L``, ``YCbCr`` use Pillow's conversion.
      16-bit RGB(A) PNGs are decoded by Pillow to 8 bits (its high byte) already.
    """
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im)
        a = np.clip(a.astype(np.int64), 0, 65535)
        return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        finite = a[np.isfinite(a)]
        if finite.size and finite.max() <= 1.0:
            a = a * 255.0
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "PA" or (mode == "P" and "transparency" in im.info):
        return im.convert("RGBA").convert("RGB")
    return im.convert("RGB")  # a copy, so it outlives the file it was read from


def _scan_dirs(folder: str) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        entries = [e for e in it if not e.name.startswith(".")]
    return sorted(entries, key=lambda e: e.name)


def _scan_images(folder: str) -> list[str]:
    """All image files below ``folder`` (recursively), sorted by path within each level."""
    found = []
    for e in _scan_dirs(folder):
        if e.is_dir():
            found.extend(_scan_images(e.path))
        elif e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS):
            found.append(e.path)
    return found


def _scan_split(folder: str) -> dict[str, list[str]]:
    """{class name: sorted image paths} of an ImageFolder split."""
    class_dirs = [e for e in _scan_dirs(folder) if e.is_dir()]
    if not class_dirs:
        raise UserError(
            f"{folder} has no class sub-folders; expected the ImageFolder layout {folder}/<class>/<image>"
        )
    out = {}
    for e in class_dirs:
        images = _scan_images(e.path)
        if not images:
            raise UserError(
                f"class folder {e.path} has no images (extensions {_EXT_TEXT}); add images or remove the folder"
            )
        out[e.name] = images
    return out


TEST_DIR_CANDIDATES = ("val", "test")


def load_imagefolder(root, train_dir: str = "train", test_dir: str | None = "auto",
                     image_size: int = 224) -> tuple[FileImageSet, FileImageSet | None]:
    """An ImageFolder tree ``root/<train_dir>/<class>/<image>``: returns ``(train, test)``.

    ``test_dir``: ``"auto"`` uses ``root/val`` if it is a folder, else ``root/test``, else there is
    no test split (``test`` is None); a folder name (or path) must exist, or it is a UserError;
    None means no test split. The test classes must be a subset of the training classes and share
    their label indices. Labels: ``{"label": class index}``, classes: ``{"label": sorted class names}``.

    Both sets get ``split_dir``, the folder they were read from. Under ``"auto"``, ``train.note``
    is a one-line message for the user when the choice needs saying (no test split, so the kNN
    monitor is off; or both ``val/`` and ``test/`` exist and ``val/`` is used), else None.
    Errors are one-line :class:`UserError`.
    """
    if root is None:
        raise UserError("data.root is not set; set data.root=<folder containing "
                        f"{train_dir}/<class>/<image>>")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise UserError(f"data folder {root} does not exist; set data.root=<folder containing "
                        f"{train_dir}/<class>/<image>>")
    train_path = os.path.join(root, train_dir)
    if not os.path.isdir(train_path):
        raise UserError(f"training folder {train_path} does not exist; expected the ImageFolder layout "
                        f"{root}/{train_dir}/<class>/<image>, or set data.train_dir=<sub-folder name>")
    test_path, note = _pick_test_dir(root, test_dir)
    train_scan = _scan_split(train_path)
    names = sorted(train_scan)
    index = {c: k for k, c in enumerate(names)}

    def build(scan: dict[str, list[str]], split: str, folder: str) -> FileImageSet:
        paths = [p for c in sorted(scan) for p in scan[c]]
        labels = torch.tensor([index[c] for c in sorted(scan) for _ in scan[c]], dtype=torch.long)
        out = FileImageSet(paths, {"label": labels}, {"label": list(names)}, image_size,
                           f"{os.path.basename(os.path.normpath(root))}-{split}")
        out.split_dir = folder
        return out

    train = build(train_scan, "train", train_path)
    train.note = note
    test = None
    if test_path is not None:
        test_scan = _scan_split(test_path)
        extra = sorted(set(test_scan) - set(index))
        if extra:
            shown = ", ".join(extra[:5]) + (f" (+{len(extra) - 5} more)" if len(extra) > 5 else "")
            raise UserError(f"test folder {test_path} has classes not in {train_path}: {shown}; "
                            "the test classes must be a subset of the training classes")
        test = build(test_scan, "test", test_path)
    return train, test


def _pick_test_dir(root: str, test_dir: str | None) -> tuple[str | None, str | None]:
    """(the test split's folder or None, a note for the user or None); see :func:`load_imagefolder`."""
    if test_dir is None:
        return None, None
    if test_dir == "auto":
        found = [d for d in TEST_DIR_CANDIDATES if os.path.isdir(os.path.join(root, d))]
        if not found:
            return None, (f"no val/ or test/ folder under {root}: the kNN monitor is off and eval needs a "
                          "test split")
        note = None
        if len(found) > 1:
            note = (f"both val/ and test/ under {root}: using val/ as the test split "
                    "(set data.test_dir=test to use test/)")
        return os.path.join(root, found[0]), note
    path = os.path.join(root, test_dir)
    if not os.path.isdir(path):
        raise UserError(f"test folder {path} does not exist; create it ({path}/<class>/<image>), or set "
                        "data.test_dir=auto (val/ or test/ when present) or data.test_dir=null (no test split)")
    return path, None


def worker_error_line(exc: BaseException) -> str | None:
    """The original one-line message of a :class:`UserError` (or :class:`ConfigError`) raised in a
    DataLoader worker (or pin-memory thread) and re-raised in the main process, else None.

    PyTorch re-raises a worker's exception as the same type, with a message of several lines:
    ``Caught UserError in DataLoader worker process 0.``, ``Original Traceback (most recent call
    last):``, the worker's traceback, and last ``contrastlab.errors.UserError: <message>``; this
    returns ``<message>``. For any other exception (a plain UserError, a worker's KeyError, ...)
    it returns None, so the caller can keep the traceback of real bugs."""
    text = str(exc)
    head = re.match(r"Caught (\w+) in [^\n]*\.\nOriginal Traceback", text)
    if head is None:
        return None
    name = head.group(1)
    if not (isinstance(exc, (UserError, ConfigError)) or name in ("UserError", "ConfigError")):
        return None
    lines = text.splitlines()
    last = re.compile(rf"^(?:[\w.]+\.)?{re.escape(name)}: (.*)$")
    for k in range(len(lines) - 1, 0, -1):
        m = last.match(lines[k])
        if m:
            return " ".join(" ".join([m.group(1), *lines[k + 1:]]).split()) or None
    return None


# ----------------------------------------------------------------------------- CIFAR
_CIFAR = {
    "cifar10": dict(title="CIFAR-10", folder="cifar-10-batches-py",
                    train=[f"data_batch_{k}" for k in range(1, 6)], test=["test_batch"], meta="batches.meta"),
    "cifar100": dict(title="CIFAR-100", folder="cifar-100-python", train=["train"], test=["test"], meta="meta"),
}

# The globals a CIFAR pickle may reference (numpy arrays); anything else is refused, so a
# tampered file cannot run code.
_SAFE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _read_pickle(path: str, title: str) -> dict:
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as e:
        raise UserError(f"{title} file {path} is unreadable or corrupt ({_one_line(e)}); "
                        "delete it and pass data.download=true, or replace it") from None
    if not isinstance(d, dict):
        raise UserError(f"{title} file {path} is not a CIFAR pickle (a dict); delete it and pass "
                        "data.download=true, or replace it")
    return d


def _field(d: dict, key: str, path: str, title: str):
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise UserError(f"{title} file {path} has no {key!r} entry; delete it and pass data.download=true, "
                    "or replace it")


def _names(values) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def _read_cifar_split(folder: str, files: list[str], label_keys: list[str], title: str):
    images, labels = [], {k: [] for k in label_keys}
    for fname in files:
        path = os.path.join(folder, fname)
        d = _read_pickle(path, title)
        data = np.asarray(_field(d, "data", path, title))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise UserError(f"{title} file {path} holds data of shape {data.shape} ({data.dtype}), expected "
                            "(N, 3072) uint8; delete it and pass data.download=true, or replace it")
        for k in label_keys:
            lab = np.asarray(_field(d, k, path, title), dtype=np.int64).reshape(-1)
            if len(lab) != len(data):
                raise UserError(f"{title} file {path} has {len(lab)} {k} for {len(data)} images; "
                                "delete it and pass data.download=true, or replace it")
            labels[k].append(lab)
        images.append(data.reshape(-1, 3, 32, 32))
    x = torch.from_numpy(np.ascontiguousarray(np.concatenate(images)))
    return x, {k: torch.from_numpy(np.concatenate(v)) for k, v in labels.items()}


def _ensure_files(title: str, root: str, folder: str, needed: list[str], download: bool, fetch) -> None:
    """Raise a one-line UserError unless every needed file is in ``folder``; ``fetch()``
    (torchvision's downloader) runs only when files are missing and ``download`` is true."""
    missing = [f for f in needed if not os.path.isfile(os.path.join(folder, f))]
    if missing and download:
        try:
            fetch()
        except Exception as e:
            raise UserError(f"could not download {title} to {root} ({_one_line(e)}); download it by hand "
                            f"into {folder} or check the network") from None
        missing = [f for f in needed if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        if not os.path.isdir(folder):
            raise UserError(f"{title} not found under {root} (expected {folder}); pass data.download=true "
                            "to download it or set data.root")
        raise UserError(f"{title} under {root} is incomplete: {os.path.join(folder, missing[0])} is missing; "
                        "delete the folder and pass data.download=true, or set data.root")


def load_cifar(root, which: str = "cifar10", download: bool = False) -> tuple[TensorImageSet, TensorImageSet]:
    """CIFAR-10 or CIFAR-100 from torchvision's layout under ``root``: ``(train, test)`` of uint8
    (N, 3, 32, 32). Labels ``{"label"}`` (CIFAR-100 also ``{"coarse_label"}``, the 20 superclasses)."""
    if which not in _CIFAR:
        raise UserError(f"unknown CIFAR variant {which!r}; expected one of {', '.join(_CIFAR)}")
    spec = _CIFAR[which]
    title = spec["title"]
    if root is None:
        raise UserError(f"data.root is not set; set data.root=<folder for {title}> (add data.download=true "
                        "to download it there)")
    root = os.fspath(root)
    folder = os.path.join(root, spec["folder"])
    needed = [*spec["train"], *spec["test"], spec["meta"]]
    from torchvision import datasets

    cls = datasets.CIFAR10 if which == "cifar10" else datasets.CIFAR100
    _ensure_files(title, root, folder, needed, download, lambda: cls(root, train=False, download=True))

    meta_path = os.path.join(folder, spec["meta"])
    meta = _read_pickle(meta_path, title)
    if which == "cifar10":
        label_keys = {"labels": "label"}
        classes = {"label": _names(_field(meta, "label_names", meta_path, title))}
    else:
        label_keys = {"fine_labels": "label", "coarse_labels": "coarse_label"}
        classes = {"label": _names(_field(meta, "fine_label_names", meta_path, title)),
                   "coarse_label": _names(_field(meta, "coarse_label_names", meta_path, title))}
    out = []
    for split in ("train", "test"):
        x, raw = _read_cifar_split(folder, spec[split], list(label_keys), title)
        labels = {label_keys[k]: v for k, v in raw.items()}
        for k, v in labels.items():
            if len(v) and (int(v.min()) < 0 or int(v.max()) >= len(classes[k])):
                raise UserError(f"{title} under {folder} has {k} values outside 0..{len(classes[k]) - 1}; "
                                "delete the folder and pass data.download=true")
        out.append(TensorImageSet(x, labels, classes, f"{which}-{split}"))
    return out[0], out[1]


# ----------------------------------------------------------------------------- STL-10
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

    _ensure_files("STL-10", root, folder, needed, download, lambda: datasets.STL10(root, split="test", download=True))

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


# ----------------------------------------------------------------------------- registry entries
def cifar_datasets(dcfg):
    """``data.name=cifar10 | cifar100``: torchvision's python version under ``data.root``."""
    return load_cifar(str(data_root(dcfg)), dcfg.name, download=dcfg.download)


def stl10_datasets(dcfg):
    """``data.name=stl10``: the binary version under ``data.root`` (``data.stl_split``)."""
    return load_stl10(str(data_root(dcfg)), dcfg.stl_split, download=dcfg.download, image_size=dcfg.image_size)


def imagefolder_datasets(dcfg):
    """``data.name=imagefolder``: ``root/train/<class>/...`` and the test split (``data.test_dir``)."""
    return load_imagefolder(str(data_root(dcfg)), dcfg.train_dir, dcfg.test_dir, image_size=dcfg.image_size)
