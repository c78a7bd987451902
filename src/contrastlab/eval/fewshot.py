"""Fewshot: 1-way K-shot segmentation episodes of a fold's novel classes, mIoU, FB-IoU (and Dice per volume).

``contrastlab eval fewshot RUN [shots=1|5] [fold=F] [episodes=1000] [seed=0] [data=run|digits|organs|...]``

The episodes (:mod:`contrastlab.data.episodes`) are drawn from the test split of the run's data set
(``split=train``: the training split; ``data=NAME``: another registered set with masks, read with
the run's other ``data.*`` options and the overrides given), their classes the novel classes of
``fold`` (default: the run's ``method.fold`` when it has one, else 0), folded as the set defines
(digits: 2 folds of 5 digits, ``folds=5``: 5 of 2; organs: one organ per fold; PASCAL-5i: 4 blocks
of 5; COCO-20i: 4 interleaved folds of 20). Episode ``i`` is a function of ``(seed, i)`` alone, so
every method is scored on the same episodes.

The segmenter: the run's own ``segment_episode`` when its method has one (ProtoSeg, CWT, RP-Net:
:class:`contrastlab.methods.contract.SegmentsEpisodes`), else (or with ``method=prototype``) the
prototype baseline (PANet's masked average pooling and 20 x cosine, no training) on the run's frozen
encoder at stage ``stage`` (-1: the final map); ``features=random``: the same on a random-init
encoder of the run's architecture (the floor). Prediction: the argmax of the two logits.

Metrics (:mod:`contrastlab.eval.fewshot_metrics`): per-class IoU with intersection and union
accumulated over each novel class's episodes, their mean (mIoU), FB-IoU (foreground and background
IoU accumulated over all episodes, averaged). On sets of volume slices (organs, slices) ``dice`` is the
whole-volume Dice of the medical protocol (:mod:`contrastlab.eval.fewshot_volumes`: SSL-ALPNet's, which
RP-Net reports): the last volume of the split is the support (``support=``, ``rotate_support=true``:
each in turn), each other volume's organ extent is cut into ``n_part=3`` chunks segmented with the
support slice at the centre of the support's matching chunk, and Dice = 2 |P n G| / (|P| + |G|) of the
whole 3-D prediction, averaged over the query volumes, then over classes (``per_volume_dice``,
``per_class_dice``). ``protocol=volume`` computes only that (no random episodes), ``protocol=episodes``
only the episodes. The first ``n_examples`` episodes are kept next to the run
(``fewshot_examples_*.pt``) for ``contrastlab report``'s pictures.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from ..errors import UserError
from ..fields import option
from .fewshot_metrics import FewShotScores

__all__ = ["FewShotOptions", "Options", "run", "monitor", "evaluate_episodes", "episode_segmenter"]


@dataclass
class FewShotOptions:
    """The options of ``contrastlab eval fewshot RUN [key=value ...]`` (each with its range)."""

    shots: int = option(1, ge=1, le=20, doc="support images per episode (the papers: 1 and 5)")
    fold: Optional[int] = option(None, ge=0, doc="the fold whose classes are tested (null: the run's method.fold, else 0)")
    folds: Optional[int] = option(None, ge=1, doc="folds of the set's classes (null: the run's method.folds, else the set's default)")
    episodes: int = option(1000, ge=1, doc="episodes drawn (the papers: 1000 per fold)")
    seed: int = option(0, unbounded="any integer seed: episode i is a function of (seed, i)")
    data: str = "run"  # run: the run's data set; or the name of a registered set with masks (digits, organs, ...)
    split: Literal["test", "train"] = "test"
    method: Literal["auto", "prototype"] = "auto"  # auto: the run's segment_episode when it has one
    features: Literal["model", "random"] = "model"  # random: the prototype baseline on a random-init encoder
    stage: int = option(-1, ge=-1, le=3, doc="the prototype baseline's encoder stage (-1: the final map)")
    batch_size: int = option(50, ge=1, doc="episodes per forward pass")
    device: str = "auto"
    n_examples: int = option(6, ge=0, doc="episodes kept for the report's pictures")
    # auto: the random episodes (mIoU, FB-IoU) and, on a set of volume slices, the whole-volume Dice; volume: only the
    # whole-volume Dice; episodes: only the random episodes
    protocol: Literal["auto", "volume", "episodes"] = "auto"
    n_part: int = option(3, ge=1, le=64, doc="chunks of the organ extent, each with one support slice (SSL-ALPNet: 3)")
    support: int = option(-1, ge=-1, doc="the support volume's position among the split's volumes (-1: the last, as SSL-ALPNet)")
    rotate_support: bool = False  # each volume the support in turn, the Dice averaged over all (support, query) pairs
    z_margin: int = option(0, ge=0, le=1000, doc="slices scored beyond each end of the query's organ extent (SSL-ALPNet: 0)")


Options = FewShotOptions


def episode_segmenter(cfg, method, opts, dev, checkpoint="the run"):
    """(segmenter with ``segment_episode``, its description) for a run (see the module docstring)."""
    from ..methods.contract import encodes, segments_episodes
    from ..nn.prototypes import PrototypeSegmenter

    if opts.method == "auto" and opts.features == "model" and segments_episodes(method):
        return method.to(dev), cfg.method["name"]
    if not encodes(method):
        raise UserError(f"{checkpoint} is a {cfg.method['name']} run, which has neither segment_episode nor an encoder; "
                        "eval fewshot needs a few-shot method or an encoder with feature maps")  # fmt: skip
    from .run import probe_encoder

    encoder = probe_encoder(cfg, method, opts.features, dev)
    if not hasattr(encoder, "forward_features"):
        raise UserError(f"the {cfg.method['name']} run's encoder has no forward_features (no feature map for prototypes)")
    if opts.stage >= 0 and not hasattr(encoder, "forward_stages"):
        raise UserError(f"stage={opts.stage}: the {cfg.method['name']} run's encoder has no forward_stages; use stage=-1")
    return PrototypeSegmenter(encoder, opts.stage).to(dev), f"prototype baseline on the {opts.features} encoder"


@torch.no_grad()
def evaluate_episodes(segmenter, sampler, n_episodes: int, batch_size: int = 50, device=None, keep: int = 0):
    """Runs ``segmenter.segment_episode`` on episodes ``0 .. n_episodes - 1`` of ``sampler``; returns
    (:class:`FewShotScores`, the first ``keep`` episodes with their predictions as a dict of CPU tensors
    or None). The segmenter is put in eval mode and restored."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    was = segmenter.training
    segmenter.eval()
    scores, kept = FewShotScores(), []
    has_volumes = sampler.source.volumes is not None
    try:
        for start in range(0, n_episodes, batch_size):
            ep = sampler.batch(range(start, min(n_episodes, start + batch_size)))
            logits = segmenter.segment_episode(ep["support_images"].to(device), ep["support_masks"].to(device),
                                               ep["query_image"].to(device))  # fmt: skip
            b, _, h, w = ep["query_image"].shape
            if tuple(logits.shape) != (b, 2, h, w):
                raise UserError(f"{type(segmenter).__name__}.segment_episode returned logits {tuple(logits.shape)}; "
                                f"expected (B, 2, H, W) = {(b, 2, h, w)}")  # fmt: skip
            pred = logits.argmax(1).cpu()
            scores.add(pred, ep["query_mask"], ep["class_id"], ep["volume"] if has_volumes else None)
            n_kept = sum(len(e["pred"]) for e in kept)
            if n_kept < keep:
                kept.append({**{k: v[: keep - n_kept] for k, v in ep.items()}, "pred": pred[: keep - n_kept]})
    finally:
        segmenter.train(was)
    examples = None
    if kept:
        examples = {k: torch.cat([e[k] for e in kept]) for k in kept[0]}
    return scores, examples


def _sampler(cfg, opts, checkpoint):
    from ..data import build_datasets
    from ..data.episodes import source_of

    train, test = build_datasets(cfg.data)
    image_set = train if opts.split == "train" else test
    if image_set is None:
        raise UserError(f"the {cfg.data.name} data set has no test split; use split=train or a set with one")
    folds = opts.folds or cfg.method.get("folds")
    source = source_of(image_set, folds)
    fold = opts.fold if opts.fold is not None else int(cfg.method.get("fold", 0) or 0)
    source.check_fold(fold)
    return source, fold, source.novel_episodes(fold, opts.shots, seed=opts.seed)


def run(checkpoint: str, opts: FewShotOptions, data_overrides=()) -> dict:
    """``contrastlab eval fewshot RUN``: the scores of the module docstring as a dict (the CLI prints it
    as the JSON of its last line)."""
    from ..data import DATASETS
    from .run import device, load_run

    overrides = list(data_overrides)
    if opts.data != "run":
        if opts.data not in DATASETS:
            raise UserError(f"data={opts.data}: not a registered data set; available: {', '.join(DATASETS)}")
        overrides.append(f"data.name={opts.data}")
    cfg, method, ckpt = load_run(checkpoint, overrides)
    dev = device(opts.device)
    segmenter, kind = episode_segmenter(cfg, method, opts, dev, checkpoint)
    source, fold, sampler = _sampler(cfg, opts, checkpoint)
    names = dict(enumerate(source.class_names))
    volumes = opts.protocol == "volume" or (opts.protocol == "auto" and source.volumes is not None)
    variant = f"{opts.shots}shot/fold{fold}" + ("" if opts.data == "run" else f"/{opts.data}") + (
        "" if opts.method == "auto" else f"/{opts.method}") + ("" if opts.stage < 0 else f"/stage{opts.stage}") + (
        "" if opts.protocol == "auto" else f"/{opts.protocol}") + (
        "" if not volumes or (opts.n_part, opts.support, opts.rotate_support, opts.z_margin) == (3, -1, False, 0)
        else f"/npart{opts.n_part}-support{'all' if opts.rotate_support else opts.support}-margin{opts.z_margin}")  # fmt: skip
    result = {"protocol": "fewshot", "checkpoint": str(checkpoint), "step": int(ckpt["step"]), "label": "mask",
              "features": opts.features, "variant": variant, "segmenter": kind, "data": cfg.data.name,
              "split": opts.split, "shots": opts.shots, "fold": fold, "folds": source.n_folds,
              "novel_classes": [names[c] for c in sampler.classes]}  # fmt: skip
    start = time.perf_counter()
    examples = None
    if opts.protocol != "volume":
        scores, examples = evaluate_episodes(segmenter, sampler, opts.episodes, opts.batch_size, dev, keep=opts.n_examples)
        r = scores.result(sampler.classes, names)
        result.update({"episodes": opts.episodes, "seed": opts.seed, "miou": r["miou"], "fb_iou": r["fb_iou"],
                       "fg_iou": r["fg_iou"], "bg_iou": r["bg_iou"], "per_class_iou": _round(r["per_class_iou"]),
                       "episodes_per_class": r["episodes_per_class"]})  # fmt: skip
    if volumes:
        from .fewshot_volumes import evaluate_volumes

        v = evaluate_volumes(segmenter, source, sampler.classes, opts.shots, opts.n_part, opts.support,
                             opts.rotate_support, opts.z_margin, opts.batch_size, dev)  # fmt: skip
        result.update({"dice_protocol": "volume", "n_part": opts.n_part, "z_margin": opts.z_margin,
                       "dice": v["dice"], "per_class_dice": _round(v["per_class_dice"]),
                       "per_volume_dice": _round(v["per_volume_dice"]), "volume_pairs": v["volume_pairs"],
                       "support_volumes": v["support_volumes"], "scored_slices": v["scored_slices"],
                       "skipped_volumes": v["skipped"]})  # fmt: skip
    result["seconds"] = round(time.perf_counter() - start, 2)
    if examples is not None:
        result["examples"] = _keep_examples(checkpoint, variant, opts.features, examples, names)
    return result


def _round(d: dict) -> dict:
    return {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else round(v, 4)) for k, v in d.items()}


def _keep_examples(checkpoint, variant: str, features: str, ex: dict, names: dict) -> str | None:
    """Save the first episodes (supports, query, truth, prediction) next to the run for ``contrastlab
    report``; returns the file's name, or None (with a warning) when it cannot be written."""
    import sys
    from pathlib import Path

    from ..files import atomic_save

    path = Path(checkpoint)
    run_dir = path if path.is_dir() else path.parent
    name = f"fewshot_examples_{features}_{variant.replace('/', '_')}.pt"
    blob = {"support_images": (ex["support_images"] * 255).round().to(torch.uint8),
            "support_masks": ex["support_masks"].to(torch.uint8),
            "query_image": (ex["query_image"] * 255).round().to(torch.uint8),
            "query_mask": ex["query_mask"].to(torch.uint8), "pred": ex["pred"].to(torch.uint8),
            "class_id": ex["class_id"], "query_index": ex["query_index"], "support_index": ex["support_index"],
            "class_names": [names[int(c)] for c in ex["class_id"]]}  # fmt: skip
    try:
        atomic_save(run_dir / name, lambda tmp: torch.save(blob, tmp), kept="the previous examples are kept")
    except UserError as e:
        print(f"contrastlab: warning: {e}", file=sys.stderr)
        return None
    return name


def monitor(method, train_set, test_set, cfg, device, run_dir=None, step=None) -> dict:
    """The trainer's periodic check of a few-shot method: mIoU and FB-IoU of 100 1-shot episodes of
    the novel classes of the method's fold on the test split (seed 0)."""
    from ..data.episodes import source_of

    if test_set is None:
        return {}
    source = source_of(test_set, cfg.method.get("folds"))
    sampler = source.novel_episodes(int(cfg.method.get("fold", 0) or 0), 1, seed=0)
    seg = method if hasattr(method, "segment_episode") else None
    if seg is None:
        return {}
    scores, _ = evaluate_episodes(seg, sampler, 100, 50, device)
    r = scores.result(sampler.classes)
    return {"fewshot_miou": r["miou"], "fewshot_fb_iou": r["fb_iou"]}
