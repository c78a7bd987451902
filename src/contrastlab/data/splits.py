"""Fixed subsets of a labelled training split, as SDCLR's protocol uses them (Jiang et al., ICML
2021; the official VITA-Group/SDCLR code): CIFAR's 50k training images are split into 45k for
training and 5k held out for validation (``split/cifar10/trainIdxList.npy``, ``valIdxList.npy``),
and the long-tailed sets are five fixed subsets of the 45k (``split/cifar10_imbSub_with_subsets/
split{1..5}_D_i.npy``: 4,500 images in the largest class, 11,165 in all at ratio 100).

The ``data.*`` options, each null by default (then the whole training split is used, as before):

- ``train_file``: the images kept for training, an index file; null: all of them;
- ``val_file`` or ``val_per_class`` (drawn with ``val_seed``): the validation hold-out, never
  trained on (a listed hold-out must not share images with ``train_file``);
- with ``long_tail_ratio``: the long-tailed subset, the exponential profile over the training
  images left (each class's first ones, or with ``long_tail_split=k`` a random draw fixed by k),
  or ``long_tail_file``, an index file (its smallest class must hold floor(largest / ratio)
  images, the profile's last class, and it must not share images with the hold-out).

An index file lists indices into the data set's training split as loaded (CIFAR: 0..49,999 in
the order of ``data_batch_1..5``, as torchvision and the official code read it): a ``.npy`` array
of integers (numpy's format, as SDCLR's ``split/*.npy``) or a text file of integers separated by
spaces, commas or new lines. Indices must be unique and in range.

The official files' rule of drawing cannot be recovered: the repository ships the index lists
without the code that drew them. ``val_per_class`` and ``long_tail_split`` follow the same
profile with draws of their own (fixed by a hash of the seed and each image's index, see
:func:`contrastlab.data.long_tail.seeded_order`); for the exact published subsets pass the
official files.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .base import ImageSet
from .long_tail import check_labelled, class_count, long_tail_indices, profile_counts, seeded_order

__all__ = ["read_index_file", "holdout_indices", "split_training_set"]


def read_index_file(path: str, key: str, n: int, what: str = "the training split") -> torch.Tensor:
    """The sorted indices listed in ``path`` (``.npy`` or text), checked against a split of ``n``
    images; one-line UserErrors name ``key`` (e.g. ``data.val_file``) and the problem."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{key}={path}: no such file (an index file: .npy or a text list of integers)")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 -- any reader failure is the file's problem
            raise UserError(f"{key}={path}: not a readable .npy array ({type(e).__name__}: {str(e)[:120]})") from None
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise UserError(f"{key}={path}: holds a {arr.dtype} array of shape {arr.shape}; expected a 1-D "
                            "array of integer indices")  # fmt: skip
        values = arr.astype(np.int64)
    else:
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{key}={path}: unreadable as a text list of integers ({type(e).__name__})") from None
        tokens = [t for t in re.split(r"[\s,]+", text) if t]
        bad = next((t for t in tokens if not re.fullmatch(r"[+-]?\d+", t)), None)
        if bad is not None:
            raise UserError(f"{key}={path}: {bad[:40]!r} is not an integer index (a text index file lists integers "
                            "separated by spaces, commas or new lines; .npy files are read with numpy)")  # fmt: skip
        values = np.array([int(t) for t in tokens], dtype=np.int64)
    if values.size == 0:
        raise UserError(f"{key}={path}: lists no index")
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        raise UserError(f"{key}={path}: index {bad} is outside 0..{n - 1} of {what} ({n} images)")
    uniq, counts = np.unique(values, return_counts=True)
    if len(uniq) != len(values):
        raise UserError(f"{key}={path}: lists index {int(uniq[counts > 1][0])} {int(counts.max())} times; "
                        "each image at most once")  # fmt: skip
    return torch.from_numpy(uniq)


def holdout_indices(labels: torch.Tensor, per_class: int, seed: int, ids: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Sorted positions into ``labels`` of a hold-out of ``per_class`` images of each class, each
    class's first ones in :func:`seeded_order` of ``ids`` under the key ``val/<seed>``."""
    keep = []
    for c in range(n_classes):
        idx = torch.nonzero(labels == c).flatten()
        keep.append(idx[seeded_order(ids[idx], f"val/{seed}")][:per_class])
    return torch.cat(keep).sort().values


def _overlap(a: torch.Tensor, b: torch.Tensor) -> int:
    return int(torch.isin(a, b).sum())


def split_training_set(full: ImageSet, dcfg, label: str) -> tuple[ImageSet, ImageSet | None]:
    """(training set, validation hold-out or None) of a labelled training split under the
    ``data.*`` subset options (see the module's text); the long-tailed subset applies when
    ``data.long_tail_ratio`` is set. With none of them: ``(full, None)``."""
    n = len(full)
    labels = full.label(label)
    ratio = getattr(dcfg, "long_tail_ratio", None)
    get = lambda k: getattr(dcfg, k, None)  # noqa: E731 -- older configs (tests' namespaces) lack the keys
    if not any(get(k) is not None for k in ("train_file", "val_file", "val_per_class")) and ratio is None:
        return full, None
    if ratio is not None and not ratio >= 1:
        raise UserError(f"data.long_tail_ratio must be >= 1, got {ratio}")
    pool = read_index_file(get("train_file"), "data.train_file", n) if get("train_file") else torch.arange(n)
    val = None
    if get("val_file"):
        val = read_index_file(get("val_file"), "data.val_file", n)
        if get("train_file") and _overlap(val, pool):
            raise UserError(f"data.val_file={get('val_file')} and data.train_file={get('train_file')} share "
                            f"{_overlap(val, pool)} images; a held-out image must not be trained on")  # fmt: skip
        pool = pool[~torch.isin(pool, val)]
    elif get("val_per_class") is not None:
        k = get("val_per_class")
        n_classes = class_count(full, labels[pool], label)
        check_labelled(full, labels[pool], n_classes, label, f"data.val_per_class={k}")
        smallest = int(torch.bincount(labels[pool], minlength=n_classes).min())
        if k >= smallest:
            raise UserError(f"data.val_per_class={k} holds out every image of a class with {smallest} images; "
                            f"hold out fewer than {smallest} per class")  # fmt: skip
        val = pool[holdout_indices(labels[pool], k, int(get("val_seed") or 0), pool, n_classes)]
        pool = pool[~torch.isin(pool, val)]
    if ratio is None:
        idx = pool
    elif get("long_tail_file"):
        idx = _long_tail_from_file(full, labels, label, ratio, get("long_tail_file"), val, n)
    else:
        n_classes = class_count(full, labels[pool], label)
        check_labelled(full, labels[pool], n_classes, label, "a long-tailed subset")
        split = get("long_tail_split")
        draw = None if split is None else f"long_tail/{split}"
        idx = pool[long_tail_indices(labels[pool], ratio, n_classes, draw=draw, ids=pool)]
    train = full if len(idx) == n else full.subset(idx)
    return train, (None if val is None else full.subset(val))


def _long_tail_from_file(full, labels, label, ratio, path, val, n) -> torch.Tensor:
    idx = read_index_file(path, "data.long_tail_file", n)
    if val is not None and _overlap(idx, val):
        raise UserError(f"data.long_tail_file={path} shares {_overlap(idx, val)} images with the validation hold-out; "
                        "a held-out image must not be trained on")  # fmt: skip
    n_classes = class_count(full, labels, label)
    check_labelled(full, labels[idx], n_classes, label, f"data.long_tail_file={path}")
    counts = torch.bincount(labels[idx], minlength=n_classes)
    largest, smallest = int(counts.max()), int(counts.min())
    expected = profile_counts(largest, ratio, n_classes)[-1]
    if smallest != expected:
        raise UserError(f"data.long_tail_file={path} holds {largest} to {smallest} images per class, but the profile of "
                        f"data.long_tail_ratio={ratio:g} ends at {expected} (floor({largest} / {ratio:g})); set the "
                        f"ratio the file follows (about {largest / smallest:.4g})")  # fmt: skip
    return idx
