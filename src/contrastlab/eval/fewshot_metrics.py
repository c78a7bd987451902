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
- **Dice per volume** (the medical setting, slices of volumes): for a volume v and a class c,
  Dice = 2 sum |P n G| / (sum |P| + sum |G|) over the episodes of class c whose query is a slice
  of v; the class's Dice is the mean over its volumes, and the mean Dice the mean over classes.
  A (volume, class) pair with no foreground in truth and prediction (0 / 0) is left out.
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import Tensor

IGNORE = 255

__all__ = ["IGNORE", "episode_counts", "FewShotScores"]


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
