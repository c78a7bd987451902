"""Whole-volume Dice of a few-shot segmenter on a set of volume slices: the medical protocol.

The protocol of SSL-ALPNet (Ouyang et al., ECCV 2020), which RP-Net (Tang et al., ICCV 2021) reports
its numbers under; read from SSL-ALPNet's code (cheng-ouyang/Self-supervised-Fewshot-Medical-Image-
Segmentation, as copied in Armin-Saadat/SSL_ALPNet at a36041e, "add complete source code"):

- **The support**: one volume of the test split (``support_idx=[-1]``: the last one,
  ``config_ssl_upload.py:62``; with K shots the last K, ``dataloaders/ManualAnnoDatasetv2.py:92-93``).
  It is not a query (``validation.py:150``). Every other volume of the split is a query.
- **Chunks**: ``npart = 3`` (``config_ssl_upload.py:64``). The support's slices that contain the class
  (``tp1_cls_map``: at least one pixel, ``ManualAnnoDatasetv2.py:211-212``), in z order, ``Z_s``; chunk
  ``j``'s support slice is ``Z_s[int(p_j * len(Z_s))]`` with ``p_j = 1 / (2 n) + j (1 - 1 / n) / (n - 1)``
  (= (2j + 1) / (2n), the centre of chunk j; ``p = [0.5]`` for n = 1) (``ManualAnnoDatasetv2.py:367-385``).
- **Query slices**: the query's organ extent ``z_min .. z_max`` (the first and last slice containing
  the class, ``dataloaders/common.py:236-239``); slice z belongs to chunk
  ``int((z - z_min) // ((z_max - z_min) / n))`` clamped to ``0 .. n - 1`` (0 when z_max = z_min)
  (``common.py:240-249``) and is segmented with that chunk's support slice (``validation.py:161-170``).
  Only slices with ``z_min - z_margin <= z <= z_max + z_margin`` are scored, ``z_margin = 0``
  (``validation.py:175``, ``config_ssl_upload.py:60``): slices outside the extent are not evaluated;
  slices inside it where the organ happens to be absent are.
- **Dice**: TP, FP, FN summed over all scored slices of a query volume (``util/metric.py:65-81``,
  ``134-139``), Dice = 2 TP / (2 TP + FP + FN) = 2 |P n G| / (|P| + |G|) of the 3-D prediction (pixels whose
  truth is 255 are ignored, ``metric.py:67``); a class's Dice is the mean over its query volumes, the
  mean Dice the mean over classes (``metric.py:142-148``); the paper's number is then averaged over the
  5 cross-validation folds, i.e. over 5 supports (``eval_fold``, ``config_ssl_upload.py:61``).

Here ``support`` picks the support volume by position among the split's volumes (sorted ids; -1 the
last, as the official default; with K shots the K positions ending at it, circularly) and
``rotate=True`` lets each volume be the support in turn (the analogue of averaging over folds on one
split: every volume is a query equally often, so a class's Dice is the mean over all (support, query)
pairs and equals the mean of each query volume's mean). A query volume without the class is skipped
(listed in ``skipped``; RP-Net's ``dice_score_seperate`` also gives None for an empty truth,
``utils/util.py:384-388``), a support volume without it is a one-line error. ``n_part`` may be any
positive number (SSL-ALPNet asserts an odd one, ``ManualAnnoDatasetv2.py:360``; the centre formula
does not need it).

RP-Net's own test code (uci-cbcl/RP-Net, ``test_rpnet.py``, ``dataset/few_shot_reader.py``) differs:
``k: 12`` chunks (``yamls/example.yml:85``), floor-rounded chunk bounds (``few_shot_reader.py:468-473``),
a random other volume as the support of each query (``few_shot_reader.py:265-276``), 5 runs
(``n_runs``, ``example.yml:116``), and the volumes cut to ``d_min:d_max`` (the organ extent without its
last slice, ``few_shot_reader.py:17-24``). ``n_part=12`` gives its chunk count; the rest is not offered.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..data.episodes import binary_mask
from ..errors import UserError
from .fewshot_metrics import VolumeDice

__all__ = ["support_chunk_slices", "query_chunk", "chunk_assignment", "volume_slices", "evaluate_volumes"]


def support_chunk_slices(support_z: Sequence[int], n_part: int) -> list[int]:
    """The support slice of each of the ``n_part`` chunks: ``support_z[int(p_j * len(support_z))]``,
    ``p_j`` the centre of chunk j as SSL-ALPNet computes it (module docstring). ``support_z``: the
    support volume's slices that contain the class, in increasing z."""
    if n_part < 1:
        raise ValueError(f"n_part={n_part}: at least one chunk")
    if not support_z:
        raise ValueError("the support has no slice of the class")
    if n_part == 1:
        pcts = [0.5]
    else:
        half, interval = 1 / (n_part * 2), (1.0 - 1.0 / n_part) / (n_part - 1)
        pcts = [half + interval * j for j in range(n_part)]
    return [int(support_z[int(p * len(support_z))]) for p in pcts]


def query_chunk(z: int, z_min: int, z_max: int, n_part: int) -> int:
    """The chunk (0 .. n_part - 1) of query slice ``z`` of an organ extent ``z_min .. z_max``:
    ``int((z - z_min) // ((z_max - z_min) / n_part))`` clamped, 0 when the extent is one slice."""
    if z_max == z_min:
        return 0
    part = int((z - z_min) // ((z_max - z_min) / n_part))
    return min(max(part, 0), n_part - 1)


def chunk_assignment(query_z: Sequence[int], support_z: Sequence[int], n_part: int, depth: int | None = None,
                     z_margin: int = 0) -> dict[int, int]:  # fmt: skip
    """{query slice: its support slice} for the scored slices of a query: ``z_min - z_margin .. z_max +
    z_margin`` (cut to ``0 .. depth - 1``), where ``query_z`` lists the query's slices that contain the
    class and ``support_z`` the support's."""
    if not query_z:
        raise ValueError("the query has no slice of the class")
    centres = support_chunk_slices(support_z, n_part)
    z_min, z_max = min(query_z), max(query_z)
    lo, hi = z_min - z_margin, z_max + z_margin
    if depth is not None:
        lo, hi = max(lo, 0), min(hi, depth - 1)
    return {z: centres[query_chunk(z, z_min, z_max, n_part)] for z in range(lo, hi + 1)}


def volume_slices(source) -> dict[int, torch.Tensor]:
    """{volume id: the source indices of its slices, in z order} of an episode source with volumes."""
    if source.volumes is None:
        raise UserError(f"{source.where}: the set has no volumes (slices of 3-D scans); the whole-volume Dice needs "
                        "data=organs or data=slices, or use protocol=episodes")  # fmt: skip
    return {int(v): torch.nonzero(source.volumes == v).flatten() for v in torch.unique(source.volumes).tolist()}


def _volume_name(source, v: int, first: int) -> str:
    if source.files:
        return str(source.files[first]).rsplit(" (slice ", 1)[0]
    return f"{source.where} volume {v}"


def support_runs(n_volumes: int, shots: int, support: int, rotate: bool) -> list[list[int]]:
    """The support positions of each run: the ``shots`` positions ending at ``support`` (circular;
    -1: the last), or with ``rotate`` one run ending at each position."""
    if shots >= n_volumes:
        raise UserError(f"shots={shots}: the split has {n_volumes} volume(s); the volume protocol needs {shots} support "
                        "volume(s) and at least one query volume")  # fmt: skip
    if not -1 <= support < n_volumes:
        raise UserError(f"support={support}: the split has volumes at positions 0..{n_volumes - 1} (-1: the last)")
    ends = range(n_volumes) if rotate else [support % n_volumes]
    return [[(e - j) % n_volumes for j in range(shots)] for e in ends]


@torch.no_grad()
def evaluate_volumes(segmenter, source, classes, shots: int = 1, n_part: int = 3, support: int = -1,
                     rotate: bool = False, z_margin: int = 0, batch_size: int = 50, device=None) -> dict:  # fmt: skip
    """Segments every query volume of ``source`` for each class of ``classes`` by the protocol of the
    module docstring with ``segmenter.segment_episode`` (K = ``shots`` support volumes) and returns
    :meth:`VolumeDice.result` plus ``support_volumes`` (the support volume ids of each run),
    ``scored_slices`` and ``skipped`` (query volumes without the class)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    by_volume = volume_slices(source)
    ids = sorted(by_volume)
    runs = support_runs(len(ids), shots, support, rotate)
    names = dict(enumerate(source.class_names))
    scores, skipped, n_slices = VolumeDice(), [], 0
    was = segmenter.training
    segmenter.eval()
    try:
        for c in classes:
            has = {v: [z for z, i in enumerate(by_volume[v].tolist()) if int(source.pixel_counts[i, c]) > 0] for v in ids}
            for run in runs:
                sup = [ids[p] for p in run]
                for s in sup:
                    if not has[s]:
                        with_it = [p for p, v in enumerate(ids) if has[v]]
                        raise UserError(f"{_volume_name(source, s, int(by_volume[s][0]))}: the support volume (support="
                                        f"{support}) has no slice of class {c} ({names.get(c, c)}), so it cannot be the "
                                        f"support; choose support= one of the positions {with_it} or another fold")  # fmt: skip
                for q in ids:
                    if q in sup:
                        continue
                    if not has[q]:
                        if q not in skipped:
                            skipped.append(q)
                        continue
                    depth = len(by_volume[q])
                    plans = [chunk_assignment(has[q], has[s], n_part, depth, z_margin) for s in sup]
                    zs = sorted(plans[0])
                    for start in range(0, len(zs), batch_size):
                        chunk = zs[start : start + batch_size]
                        qi = by_volume[q][chunk]
                        si = torch.stack([torch.stack([by_volume[s][plan[z]] for s, plan in zip(sup, plans)]) for z in chunk])
                        logits = segmenter.segment_episode(source.images[si].float().div(255).to(device),
                                                           binary_mask(source.masks[si], c).to(device),
                                                           source.images[qi].float().div(255).to(device))  # fmt: skip
                        h, w = source.images.shape[-2:]
                        if tuple(logits.shape) != (len(chunk), 2, h, w):
                            raise UserError(f"{type(segmenter).__name__}.segment_episode returned logits "
                                            f"{tuple(logits.shape)}; expected (B, 2, H, W) = {(len(chunk), 2, h, w)}")  # fmt: skip
                        scores.add(q, c, logits.argmax(1).cpu(), binary_mask(source.masks[qi], c), run=tuple(sup))
                        n_slices += len(chunk)
    finally:
        segmenter.train(was)
    out = scores.result(names)
    out.update({"support_volumes": [[ids[p] for p in run] for run in runs], "scored_slices": n_slices,
                "skipped": sorted(skipped)})  # fmt: skip
    return out
