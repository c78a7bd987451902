"""The labelled rows a probe trains on, and the class counts its long-tail groups come from.

- :func:`fraction_subset`: a class-stratified, seeded fraction of the training labels (the
  few-shot probes of SDCLR: 1% of the labels, ``split/cifar10_imbSub_with_subsets/split*_S_b.npy``
  in VITA-Group/SDCLR holds 450 of the 45,000 training images);
- :func:`holdout_split`: a seeded validation split held out of the training rows (SDCLR selects
  its probe by accuracy on 5,000 of CIFAR's 50,000 training images, ``split/cifar10/valIdxList.npy``);
- :func:`class_counts` and :func:`read_class_counts`: per-class training counts, counted from labels
  or read from a list file, for :func:`contrastlab.eval.linear.long_tail_groups`;
- :func:`quarter_turned`: any image set with each image turned by 0, 90, 180 or 270 degrees and
  the turn as its label ``quarter_turn`` (what a representation keeps of the orientation that
  LooC's rotation augmentation changes).
"""
from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import torch
from torch import Tensor

from ..errors import UserError

__all__ = ["fraction_subset", "fraction_quotas", "holdout_split", "class_counts", "read_class_counts", "quarter_turned",
           "QUARTER_TURN"]


def _exact(fraction: float) -> Fraction:
    """The fraction as written (0.01 is 1/100, not the binary float just below it)."""
    return Fraction(repr(float(fraction)))


def fraction_quotas(counts, fraction: float) -> list[int]:
    """How many rows of each class a class-stratified ``fraction`` keeps.

    The target size is ``round(fraction * N)`` (N = sum of ``counts``, halves rounded up),
    shared among the classes by largest remainder: class c gets ``floor(fraction * n_c)``, and
    the rows still missing go one each to the classes with the largest fractional parts of
    ``fraction * n_c`` (ties: the lower class index). Then every class with rows gets at least
    one, so the size is the target plus the number of classes raised from 0 to 1. Exact
    arithmetic on the fraction as written (``0.01 * 4500`` is 45).
    """
    f = _exact(fraction)
    if not 0 < f <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    counts = [int(c) for c in counts]
    quotas = [f * c for c in counts]
    floors = [math.floor(q) for q in quotas]
    target = math.floor(f * sum(counts) + Fraction(1, 2))
    missing = target - sum(floors)
    order = sorted(range(len(counts)), key=lambda c: (-(quotas[c] - floors[c]), c))
    out = list(floors)
    for c in order[: max(0, missing)]:
        out[c] += 1
    return [max(q, 1) if n > 0 else 0 for q, n in zip(out, counts)]


def fraction_subset(labels: Tensor, fraction: float, seed: int = 0, n_classes: int | None = None) -> Tensor:
    """Sorted row indices of a class-stratified ``fraction`` of the labelled rows (label >= 0).

    Class c keeps ``fraction_quotas(counts, fraction)[c]`` rows (at least one of every class
    present), chosen by a random permutation of its rows drawn with ``seed`` (classes in index
    order, one ``randperm`` each). The permutations do not depend on the fraction, so with one
    seed a smaller fraction's subset lies inside a larger one's. ``fraction=1`` keeps every
    labelled row.
    """
    labels = torch.as_tensor(labels).reshape(-1).long()
    n_classes = n_classes if n_classes is not None else (int(labels.max()) + 1 if labels.numel() else 0)
    rows = [torch.nonzero(labels == c).flatten() for c in range(n_classes)]
    quotas = fraction_quotas([len(r) for r in rows], fraction)
    g = torch.Generator().manual_seed(int(seed))
    keep = [r[torch.randperm(len(r), generator=g)[:q]] for r, q in zip(rows, quotas)]
    return torch.cat(keep).sort().values if keep else torch.empty(0, dtype=torch.long)


def holdout_split(rows: Tensor, fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(train rows, validation rows), both sorted: ``round(fraction * len(rows))`` rows (at least
    one when ``fraction > 0``, halves rounded up) drawn at random with ``seed`` are held out.
    ``fraction=0``: all rows train, none validate. A split that leaves no training row is a
    one-line UserError."""
    rows = torch.as_tensor(rows).reshape(-1).long()
    if fraction <= 0:
        return rows.sort().values, rows[:0]
    n_val = max(1, math.floor(_exact(fraction) * len(rows) + Fraction(1, 2)))
    if n_val >= len(rows):
        raise UserError(f"val_fraction={fraction} holds out {n_val} of the {len(rows)} labelled training images, "
                        "leaving none to train on; lower val_fraction")  # fmt: skip
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(int(seed)))
    return rows[perm[n_val:]].sort().values, rows[perm[:n_val]].sort().values


def class_counts(labels: Tensor, n_classes: int) -> list[int]:
    """Rows per class (rows labelled -1 are not counted)."""
    labels = torch.as_tensor(labels).reshape(-1).long()
    return [int(c) for c in torch.bincount(labels[labels >= 0], minlength=n_classes)[:n_classes]]


def read_class_counts(path: str, n_classes: int) -> list[int]:
    """Per-class training counts from a list file, in class-index order: a JSON list
    (``[5000, 2997, ...]``) or integers separated by newlines, spaces or commas (``#`` starts a
    comment). Exactly ``n_classes`` non-negative integers; anything else is a one-line UserError."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"class_counts={path}: cannot read the file ({e.strerror or e})") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"class_counts={path}: not a JSON list ({e.msg}, line {e.lineno})") from None
        if not isinstance(items, list):
            raise UserError(f"class_counts={path}: expected a list of counts")
    else:
        body = " ".join(line.split("#", 1)[0] for line in text.splitlines())
        items = [t for t in body.replace(",", " ").split() if t]
    counts = []
    for i, item in enumerate(items):
        try:
            n = int(item) if not isinstance(item, float) or item.is_integer() else None
        except (TypeError, ValueError):
            n = None
        if n is None or isinstance(item, bool) or n < 0:
            raise UserError(f"class_counts={path}: entry {i} ({item!r}) is not a count (an integer >= 0)")
        counts.append(n)
    if len(counts) != n_classes:
        raise UserError(f"class_counts={path}: {len(counts)} counts for the {n_classes} classes of the label; "
                        "give one count per class, in class-index order")  # fmt: skip
    return counts


QUARTER_TURN = "quarter_turn"  # the label of :func:`quarter_turned`
QUARTER_TURN_CLASSES = ["0", "90", "180", "270"]  # degrees, counter-clockwise on screen


def quarter_turns(n: int, seed: int) -> Tensor:
    """The turn of each of n rows, 0..3 (x 90 degrees), uniform, drawn with ``seed``."""
    return torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(int(seed)))


def quarter_turned(dataset, seed: int):
    """``dataset`` with image i turned by ``k_i`` x 90 degrees counter-clockwise (``torch.rot90``
    over height and width; k_i from :func:`quarter_turns` with ``seed``), labelled by k_i as
    ``quarter_turn`` (its only label). Images must be square. An in-memory set becomes a new
    in-memory set; any other image set is wrapped and turned as each image is read."""
    from ..data.base import TensorImageSet

    k = quarter_turns(len(dataset), seed)
    labels, classes = {QUARTER_TURN: k}, {QUARTER_TURN: list(QUARTER_TURN_CLASSES)}
    if isinstance(dataset, TensorImageSet):
        images = dataset.images.clone()
        for turn in (1, 2, 3):
            rows = k == turn
            if rows.any():
                images[rows] = torch.rot90(dataset.images[rows], turn, dims=(-2, -1))
        out = TensorImageSet(images, labels, classes, name=f"{dataset.name}-quarter-turned")
        out.default_label = QUARTER_TURN
        return out
    return _QuarterTurned(dataset, k, labels, classes)


class _QuarterTurned(torch.utils.data.Dataset):
    """An image set read through, each image turned by its row's quarter turns."""

    def __init__(self, base, k: Tensor, labels: dict, classes: dict):
        self.base, self.k, self.labels, self.classes = base, k, labels, classes
        self.default_label = QUARTER_TURN
        self.image_size = getattr(base, "image_size", None)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, j = self.base[i]
        return torch.rot90(x, int(self.k[i]), dims=(-2, -1)), j
