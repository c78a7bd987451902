"""Long-tailed subsets of a labelled data set: the exponential profile of CIFAR-10-LT (Cao et al.,
NeurIPS 2019), used by SDCLR's experiments. One function for every data set (the embedded digit
scenes and the real ones): ``data.long_tail_ratio`` applies it to the training split."""
from __future__ import annotations

import math

import torch

from ..errors import UserError
from .base import ImageSet


def long_tail_indices(labels: torch.Tensor, imbalance_ratio: float, n_classes: int | None = None) -> torch.Tensor:
    """Exponential long-tail profile (Cao et al. 2019, as CIFAR-10-LT).

    Class i keeps floor(n_max * (1 / ratio) ** (i / (C - 1))) samples, where n_max is the size
    of the smallest class (so every class can provide its quota). The kept samples of each
    class are its first ones in data order: deterministic, and nested across ratios.
    """
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1, got {imbalance_ratio}")
    labels = torch.as_tensor(labels)
    n_classes = n_classes or int(labels.max()) + 1
    per_class = [torch.nonzero(labels == c).flatten() for c in range(n_classes)]
    n_max = min(len(p) for p in per_class)
    keep = []
    for c, idx in enumerate(per_class):
        n_c = int(math.floor(n_max * (1.0 / imbalance_ratio) ** (c / max(n_classes - 1, 1))))
        keep.append(idx[: max(n_c, 1)])
    return torch.cat(keep).sort().values


def long_tail_subset(ds: ImageSet, ratio: float, label: str = "label") -> ImageSet:
    """The exponential long-tail subset of ``ds`` (see :func:`long_tail_indices`): class i keeps
    its first floor(n_max * (1/ratio) ** (i / (C - 1))) samples, n_max the smallest class size.
    E.g. CIFAR-10 train with ratio 100 keeps 5000, 2997, ..., 50: 12,406 images."""
    if not ratio >= 1:
        raise UserError(f"data.long_tail_ratio must be >= 1, got {ratio}")
    labels = ds.label(label)
    if len(labels) and int(labels.min()) < 0:
        what = getattr(ds, "name", "") or "the data set"
        raise UserError(f"a long-tailed subset needs every image labelled, but {what} has "
                        f"{int((labels < 0).sum())} images without a {label!r} label (e.g. STL-10 unlabeled: "
                        "use data.stl_split=train)")
    n_classes = len(ds.classes.get(label, [])) or (int(labels.max()) + 1 if len(labels) else 0)
    counts = torch.bincount(labels, minlength=n_classes)
    if n_classes == 0 or int(counts.min()) == 0:
        empty = [k for k in range(n_classes) if counts[k] == 0]
        raise UserError(f"a long-tailed subset needs samples of every class, but {label!r} class(es) "
                        f"{empty[:5]} have none")
    return ds.subset(long_tail_indices(labels, ratio, n_classes))
