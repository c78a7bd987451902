"""Few-shot segmentation metrics, accumulated over episodes (pure: tensors in, numbers out).

An episode's prediction and truth are binary masks of its query (1 = the episode's class,
0 = background; truth pixels valued 255 are ignored: they count in no sum). Over all episodes:

- **per-class IoU** of a class c = (sum over the episodes of class c of |P n G|) /
  (sum over the same episodes of |P u G|): intersection and union are accumulated per class over
  all of its episodes, then divided (the protocol of PANet / PFENet / CWT; not a mean of the
  episodes' IoUs). **mIoU** = the mean of the per-class IoUs over the classes that had at least
  one episode (a class never drawn, or whose union is 0, has no IoU: it is reported as None and
  left out of the mean).
- **FB-IoU** = (IoU of the foreground + IoU of the background) / 2, each accumulated over all
  episodes whatever their class: foreground IoU = sum |P=1 n G=1| / sum |P=1 u G=1|, background
  the same for the pixels valued 0.
- **Dice of the episodes' slices of a volume** (:class:`FewShotScores`): for a volume v and a class c,
  2 sum |P n G| / (sum |P| + sum |G|) over the random episodes of class c whose query is a slice of v;
  the class's value is the mean over its volumes. A (volume, class) pair with no foreground in truth
  and prediction (0 / 0) is left out. It covers only the slices the episodes happened to draw:
  ``eval fewshot`` reports the whole-volume Dice below instead.
- **Whole-volume Dice** (:class:`VolumeDice`, :func:`volume_dice`; the medical protocol of
  :mod:`contrastlab.eval.fewshot_volumes`): for a query volume v, a class c and a support run r,
  Dice = 2 |P n G| / (|P| + |G|) with P, G the 3-D prediction and truth over all the scored slices
  of v; the class's Dice is the mean over its (run, volume) pairs, the mean Dice the mean over classes.
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import Tensor

IGNORE = 255

__all__ = ["IGNORE", "episode_counts", "FewShotScores", "volume_dice", "VolumeDice"]


def episode_counts(pred: Tensor, truth: Tensor, ignore_index: int = IGNORE) -> dict:
    """Per-episode pixel counts (long tensors (B,)) of binary ``pred`` and ``truth`` (B, H, W):
    ``inter`` |P=1 n G=1|, ``union`` |P=1 u G=1|, ``pred_fg`` |P=1|, ``true_fg`` |G=1|, ``inter_bg``
    |P=0 n G=0|, ``union_bg`` |P=0 u G=0|, all over the pixels whose truth is not ``ignore_index``."""
    if pred.shape != truth.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and truth {tuple(truth.shape)} differ in shape")
    valid = truth != ignore_index
    t, p = truth.long(), pred.long()
    bad = valid & (t != 0) & (t != 1)
    if bool(bad.any()):
        raise ValueError(f"truth values must be 0, 1 or {ignore_index}")
    if bool(((p != 0) & (p != 1)).any()):
        raise ValueError("predictions must be 0 or 1")
    pf, tf = (p == 1) & valid, (t == 1) & valid
    pb, tb = (p == 0) & valid, (t == 0) & valid
    s = lambda m: m.flatten(1).sum(1)  # noqa: E731
    return {"inter": s(pf & tf), "union": s(pf | tf), "pred_fg": s(pf), "true_fg": s(tf),
            "inter_bg": s(pb & tb), "union_bg": s(pb | tb)}  # fmt: skip


class FewShotScores:
    """Accumulates episodes (:meth:`add`) and reports the scores of the module docstring (:meth:`result`)."""

    def __init__(self):
        self.inter = defaultdict(int)
        self.union = defaultdict(int)
        self.episodes = defaultdict(int)
        self.fg = [0, 0]  # intersection, union of the foreground over all episodes
        self.bg = [0, 0]
        self.dice = defaultdict(lambda: [0, 0])  # (volume, class) -> [2 |P n G|, |P| + |G|]

    def add(self, pred: Tensor, truth: Tensor, class_id: Tensor, volume: Tensor | None = None) -> None:
        """Episodes' predictions and truths (B, H, W) of classes ``class_id`` (B,); ``volume`` (B,):
        the volume of each query (-1 or None: not a slice of a volume)."""
        c = episode_counts(pred, truth)
        for b, k in enumerate(class_id.tolist()):
            self.inter[k] += int(c["inter"][b])
            self.union[k] += int(c["union"][b])
            self.episodes[k] += 1
            self.fg[0] += int(c["inter"][b])
            self.fg[1] += int(c["union"][b])
            self.bg[0] += int(c["inter_bg"][b])
            self.bg[1] += int(c["union_bg"][b])
            if volume is not None and int(volume[b]) >= 0:
                d = self.dice[(int(volume[b]), k)]
                d[0] += 2 * int(c["inter"][b])
                d[1] += int(c["pred_fg"][b]) + int(c["true_fg"][b])

    def result(self, classes=None, names: dict | None = None) -> dict:
        """``miou``, ``fb_iou``, ``fg_iou``, ``bg_iou``, ``per_class_iou`` ({name: IoU or None}),
        ``episodes_per_class``; with volumes also ``dice`` (mean over classes), ``per_class_dice``
        and ``per_volume_dice`` ({"volume/class": Dice}). ``classes``: the class ids to report
        (default: those seen); ``names``: class id -> name for the keys."""
        classes = sorted(self.episodes) if classes is None else list(classes)
        name = (lambda k: str(names.get(k, k))) if names else str
        per_class = {}
        for k in classes:
            u = self.union.get(k, 0)  # 0 when never drawn, or drawn with every pixel of its queries ignored
            per_class[name(k)] = self.inter[k] / u if u > 0 else None
        scored = [v for v in per_class.values() if v is not None]
        fg = self.fg[0] / self.fg[1] if self.fg[1] else math.nan
        bg = self.bg[0] / self.bg[1] if self.bg[1] else math.nan
        out = {"miou": sum(scored) / len(scored) if scored else math.nan, "fb_iou": (fg + bg) / 2, "fg_iou": fg,
               "bg_iou": bg, "per_class_iou": per_class,
               "episodes_per_class": {name(k): self.episodes.get(k, 0) for k in classes}}  # fmt: skip
        if self.dice:
            per_volume, by_class = {}, defaultdict(list)
            for (v, k), (num, den) in sorted(self.dice.items()):
                if den == 0:
                    continue
                per_volume[f"{v}/{name(k)}"] = num / den
                by_class[k].append(num / den)
            per_class_dice = {name(k): sum(d) / len(d) for k, d in sorted(by_class.items())}
            out["per_class_dice"] = per_class_dice
            out["per_volume_dice"] = per_volume
            out["dice"] = sum(per_class_dice.values()) / len(per_class_dice) if per_class_dice else math.nan
        return out


def volume_dice(pred: Tensor, truth: Tensor, ignore_index: int = IGNORE) -> float | None:
    """The Dice of a 3-D binary prediction ``pred`` and truth ``truth`` (D, H, W): 2 |P n G| / (|P| + |G|)
    summed over all D slices (truth pixels valued ``ignore_index`` count nowhere); None when both are
    empty (0 / 0)."""
    c = episode_counts(pred, truth, ignore_index)
    den = int(c["pred_fg"].sum()) + int(c["true_fg"].sum())
    return 2 * int(c["inter"].sum()) / den if den else None


class VolumeDice:
    """Whole-volume Dice (module docstring): slices of each (run, volume, class) accumulated by
    :meth:`add` (in any number of calls), scored by :meth:`result`."""

    def __init__(self):
        self.counts: dict = {}  # (run, volume, class) -> [2 |P n G|, |P| + |G|]

    def add(self, volume: int, class_id: int, pred: Tensor, truth: Tensor, run=0) -> None:
        """Slices (S, H, W) of the prediction and truth of ``volume`` for class ``class_id``, segmented
        in support run ``run`` (any hashable: e.g. the support volumes)."""
        c = episode_counts(pred, truth)
        d = self.counts.setdefault((run, int(volume), int(class_id)), [0, 0])
        d[0] += 2 * int(c["inter"].sum())
        d[1] += int(c["pred_fg"].sum()) + int(c["true_fg"].sum())

    def result(self, names: dict | None = None) -> dict:
        """``dice`` (mean over classes), ``per_class_dice`` ({name: mean over its (run, volume) pairs}),
        ``per_volume_dice`` ({"volume/class": mean over its runs}), ``volume_pairs`` (the pairs scored);
        a pair whose prediction and truth are both empty is left out."""
        name = (lambda k: str(names.get(k, k))) if names else str
        by_class, by_volume = defaultdict(list), defaultdict(list)
        for (run, v, k), (num, den) in sorted(self.counts.items(), key=lambda kv: (kv[0][2], kv[0][1], str(kv[0][0]))):
            if den == 0:
                continue
            by_class[k].append(num / den)
            by_volume[(v, k)].append(num / den)
        per_class = {name(k): sum(d) / len(d) for k, d in sorted(by_class.items())}
        return {"dice": sum(per_class.values()) / len(per_class) if per_class else math.nan, "per_class_dice": per_class,
                "per_volume_dice": {f"{v}/{name(k)}": sum(d) / len(d) for (v, k), d in sorted(by_volume.items())},
                "volume_pairs": sum(len(d) for d in by_class.values())}  # fmt: skip
