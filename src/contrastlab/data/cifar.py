"""CIFAR-10 and CIFAR-100, read directly from torchvision's on-disk layout (torchvision's own
classes verify md5 sums of whole files and would need the full archives); torchvision is only used
to download, and only when ``download=True``. Nothing downloads unless asked.

- CIFAR-10: ``ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``. Each batch
  is a pickle dict with ``b'data'`` (N, 3072) uint8 -- a row is 1024 red, 1024 green then 1024 blue
  values, each plane row-major, i.e. it reshapes to (N, 3, 32, 32) -- and ``b'labels'`` (list of
  int); ``batches.meta`` holds ``b'label_names'``.
- CIFAR-100: ``ROOT/cifar-100-python/{train, test, meta}``; batches hold ``b'data'``,
  ``b'fine_labels'`` and ``b'coarse_labels'``; ``meta`` holds ``b'fine_label_names'`` and
  ``b'coarse_label_names'``.

The pickles are read with an unpickler that accepts only numpy's array globals.
"""
from __future__ import annotations

import os
import pickle

import numpy as np
import torch

from contrastlab.errors import UserError
from contrastlab.data.base import TensorImageSet, data_root
from contrastlab.data.files import ensure_files, one_line

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
        raise UserError(f"{title} file {path} is unreadable or corrupt ({one_line(e)}); "
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
    ensure_files(title, root, folder, needed, download, lambda: cls(root, train=False, download=True))

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



def cifar_datasets(dcfg):
    """``data.name=cifar10 | cifar100``: torchvision's python version under ``data.root``."""
    return load_cifar(str(data_root(dcfg)), dcfg.name, download=dcfg.download)
