"""Long-tailed subsets of a labelled data set: the exponential profile of CIFAR-10-LT (Cao et al.,
NeurIPS 2019), used by SDCLR's experiments. One function for every data set (the embedded digit
scenes and the real ones): ``data.long_tail_ratio`` applies it to the training split, keeping each
class's first images, or (``data.long_tail_split=k``) images drawn at random, the same for every
run with the same k (SDCLR averages over five such fixed subsets)."""
from __future__ import annotations

import hashlib
import math

import torch

from ..errors import UserError
from .base import ImageSet


def profile_counts(n_max: int, imbalance_ratio: float, n_classes: int) -> list[int]:
    """Images per class of the exponential profile: class i keeps
    floor(n_max * (1 / ratio) ** (i / (C - 1))), at least 1."""
    return [max(int(math.floor(n_max * (1.0 / imbalance_ratio) ** (c / max(n_classes - 1, 1)))), 1)
            for c in range(n_classes)]  # fmt: skip


def seeded_order(ids, key: str) -> torch.Tensor:
    """A random permutation of the positions 0..len(ids)-1 fixed by ``key`` and the ids: the
    positions sorted by the hash blake2b(f"{key}:{id}") of each id. It depends on nothing else
    (no random generator, no library version, no machine), and an id keeps its rank whichever
    other ids are present, so a draw from a subset is the same images as from the whole set."""
    ids = torch.as_tensor(ids, dtype=torch.long).flatten().tolist()
    keys = [hashlib.blake2b(f"{key}:{i}".encode(), digest_size=8).digest() for i in ids]
    return torch.tensor(sorted(range(len(ids)), key=keys.__getitem__), dtype=torch.long)


def long_tail_indices(labels: torch.Tensor, imbalance_ratio: float, n_classes: int | None = None,
                      draw: str | None = None, ids=None) -> torch.Tensor:  # fmt: skip
    """Exponential long-tail profile (Cao et al. 2019, as CIFAR-10-LT).

    Class i keeps floor(n_max * (1 / ratio) ** (i / (C - 1))) samples, where n_max is the size
    of the smallest class (so every class can provide its quota). The kept samples of each
    class are its first ones in data order (deterministic, and nested across ratios), or with
    ``draw`` (a key, e.g. ``"long_tail/1"``) its first ones in :func:`seeded_order` of their
    ``ids`` (default: their positions): a random subset fixed by the key. Returns sorted
    positions into ``labels``.
    """
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1, got {imbalance_ratio}")
    labels = torch.as_tensor(labels)
    ids = torch.arange(len(labels)) if ids is None else torch.as_tensor(ids, dtype=torch.long)
    n_classes = n_classes or int(labels.max()) + 1
    per_class = [torch.nonzero(labels == c).flatten() for c in range(n_classes)]
    n_max = min(len(p) for p in per_class)
    keep = []
    for idx, n_c in zip(per_class, profile_counts(n_max, imbalance_ratio, n_classes)):
        if draw is not None:
            idx = idx[seeded_order(ids[idx], draw)]
        keep.append(idx[:n_c])
    return torch.cat(keep).sort().values


def class_count(ds: ImageSet, labels: torch.Tensor, label: str) -> int:
    """The number of classes of ``label``: its class names, or the largest label + 1."""
    return len(ds.classes.get(label, [])) or (int(labels.max()) + 1 if len(labels) else 0)


def check_labelled(ds: ImageSet, labels: torch.Tensor, n_classes: int, label: str, purpose: str) -> None:
    """One-line errors when ``labels`` (of images of ``ds``) has unlabelled images or a class
    without images; ``purpose`` names what needs them ("a long-tailed subset")."""
    if len(labels) and int(labels.min()) < 0:
        what = getattr(ds, "name", "") or "the data set"
        raise UserError(f"{purpose} needs every image labelled, but {what} has "
                        f"{int((labels < 0).sum())} images without a {label!r} label (e.g. STL-10 unlabeled: "
                        "use data.stl_split=train)")
    counts = torch.bincount(labels, minlength=n_classes)
    if n_classes == 0 or int(counts.min()) == 0:
        empty = [k for k in range(n_classes) if counts[k] == 0]
        raise UserError(f"{purpose} needs samples of every class, but {label!r} class(es) {empty[:5]} have none")


def long_tail_subset(ds: ImageSet, ratio: float, label: str = "label", split: int | None = None) -> ImageSet:
    """The exponential long-tail subset of ``ds`` (see :func:`long_tail_indices`): class i keeps
    its first floor(n_max * (1/ratio) ** (i / (C - 1))) samples, n_max the smallest class size.
    E.g. CIFAR-10 train with ratio 100 keeps 5000, 2997, ..., 50: 12,406 images. With ``split``
    k, each class's samples are drawn at random instead, the same for every call with that k."""
    if not ratio >= 1:
        raise UserError(f"data.long_tail_ratio must be >= 1, got {ratio}")
    labels = ds.label(label)
    n_classes = class_count(ds, labels, label)
    check_labelled(ds, labels, n_classes, label, "a long-tailed subset")
    draw = None if split is None else f"long_tail/{split}"
    return ds.subset(long_tail_indices(labels, ratio, n_classes, draw=draw))
