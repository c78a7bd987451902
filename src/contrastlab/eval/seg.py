"""Seg: a dense linear probe (1x1 conv on the frozen feature map, upsampled) and its mIoU on data with masks.

The probe of the dense pre-training papers (PixPro, DetCo, DenseCL) in its linear form: the
encoder's final feature map ``forward_features(x)`` (B, C, h, w) is computed once for every image
(the encoder frozen, in eval mode), standardised per channel with the training maps' mean and
std, and a 1x1 convolution (C -> K classes, zero-initialised) maps it to logits (B, K, h, w),
which are upsampled bilinearly (``align_corners=False``) to the image size (H, W). The loss is the
per-pixel cross-entropy over the training masks, pixels valued 255 (VOC's borders) ignored;
optimiser: Adam with a cosine-decayed learning rate, the batch order drawn with ``seed`` (same seed,
same probe).

Metrics on the test split, from the confusion matrix over all test pixels whose truth is not 255:
per-class IoU = TP / (TP + FP + FN), mIoU = the mean over the classes present in the truth or the
prediction somewhere in the test set (a class absent from both has 0 / 0 and is left out of the mean,
as in mmsegmentation's ``nanmean``; ``classes_scored`` says how many were kept), and pixel accuracy.
Background is a class.

``classes=all``: every class of the data set's masks (the digit scenes: background + 10 digits = 11;
VOC: 21); ``classes=binary``: foreground vs background. ``features=random | pixels``: the baselines
(a random-init encoder of the same architecture; the image itself as a 3-channel map at full
resolution, a per-pixel colour classifier).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError
from ..fields import option

__all__ = ["SegOptions", "Options", "run", "confusion_matrix", "segmentation_scores", "DenseLinearProbe",
           "dense_features", "probe_loss", "train_dense_probe", "predict_masks", "dense_probe", "mask_targets", "IGNORE"]  # fmt: skip

IGNORE = 255


@dataclass
class SegOptions:
    """The options of ``contrastlab eval seg RUN [key=value ...]`` (each with its range)."""

    classes: Literal["all", "binary"] = "all"  # all: every class of the masks; binary: foreground vs background
    epochs: int = option(20, ge=1, doc="passes over the training maps")
    lr: float = option(0.01, gt=0)  # Adam's peak learning rate (cosine decay to 0)
    batch_size: int = option(64, ge=1)  # images per step (and per feature-extraction batch)
    features: Literal["model", "random", "pixels"] = "model"  # random / pixels: baselines
    device: str = "auto"
    seed: int = option(0, unbounded="any integer seed")  # the batch order
    n_examples: int = option(8, ge=0)  # test scenes whose predicted masks are kept for the report


# --------------------------------------------------------------------------- metrics
def confusion_matrix(pred: Tensor, target: Tensor, n_classes: int, ignore_index: int = IGNORE) -> Tensor:
    """(K, K) int64 counts, row = true class, column = predicted class, over the pixels whose
    target is not ``ignore_index``. ``pred`` and ``target``: integer tensors of the same shape;
    a target outside 0..K-1 (other than the ignore value) or a prediction outside it is a ValueError."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    t = target.reshape(-1).long()
    p = pred.reshape(-1).long()
    keep = t != ignore_index
    t, p = t[keep], p[keep]
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n_classes):
        raise ValueError(f"target values must be 0..{n_classes - 1} or {ignore_index}, got {int(t.min())}..{int(t.max())}")
    if p.numel() and (int(p.min()) < 0 or int(p.max()) >= n_classes):
        raise ValueError(f"predictions must be 0..{n_classes - 1}")
    return torch.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes).cpu()


def segmentation_scores(conf: Tensor) -> dict:
    """From a confusion matrix (rows true, columns predicted): ``per_class_iou`` (list of K floats,
    NaN for a class absent from both truth and prediction), ``miou`` (mean over the other classes;
    NaN when none), ``classes_scored`` and ``pixel_acc`` (NaN without pixels)."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp  # TP + FP + FN
    iou = tp / union  # 0 / 0 -> NaN: the class is absent from truth and prediction
    present = union > 0
    total = conf.sum()
    return {
        "miou": float(iou[present].mean()) if bool(present.any()) else math.nan,
        "pixel_acc": float(tp.sum() / total) if total > 0 else math.nan,
        "per_class_iou": [float(v) for v in iou],
        "classes_scored": int(present.sum()),
    }


def mask_targets(masks: Tensor, classes: str) -> Tensor:
    """The probe's targets (N, H, W) int64 from stored masks: ``all`` as stored, ``binary``
    1 for any non-background class; 255 (ignore) stays 255."""
    t = masks.long()
    if classes == "binary":
        t = torch.where(t == IGNORE, t, (t > 0).long())
    return t


# --------------------------------------------------------------------------- the probe
class DenseLinearProbe(torch.nn.Module):
    """``logits = upsample(conv1x1((f - mean) / std))``: (B, C, h, w) maps -> (B, K, H, W) logits."""

    def __init__(self, in_channels: int, n_classes: int, mean: Tensor | None = None, std: Tensor | None = None):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, n_classes, kernel_size=1)
        torch.nn.init.zeros_(self.conv.weight)
        torch.nn.init.zeros_(self.conv.bias)
        self.register_buffer("mean", torch.zeros(in_channels) if mean is None else mean.float().clone())
        self.register_buffer("std", torch.ones(in_channels) if std is None else std.float().clone())

    def forward(self, feats: Tensor, size: tuple[int, int]) -> Tensor:
        x = (feats.float() - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
        logits = self.conv(x)
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return logits


@torch.no_grad()
def dense_features(encoder, images: Tensor, device=None, batch_size: int = 64) -> Tensor:
    """Feature maps (N, C, h, w) float32 on the CPU of ``encoder.forward_features`` (eval mode,
    restored afterwards) for uint8 images (N, 3, H, W), scaled to [0, 1] here; ``encoder=None``:
    the images themselves (the pixels baseline)."""
    if encoder is None:
        return images.float().div(255)
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for s in range(0, images.shape[0], batch_size):
            x = images[s : s + batch_size].to(device).float().div_(255)
            out.append(encoder.forward_features(x).float().cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def probe_loss(probe: DenseLinearProbe, feats: Tensor, targets: Tensor) -> Tensor:
    """The mean per-pixel cross-entropy of the upsampled logits over the pixels whose target is
    not 255 (0 when there is none)."""
    logits = probe(feats, tuple(targets.shape[-2:]))
    k = int((targets != IGNORE).sum())
    return F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum") / max(k, 1)


def train_dense_probe(feats: Tensor, targets: Tensor, n_classes: int, epochs: int = 20, lr: float = 0.01,
                      batch_size: int = 64, seed: int = 0, device=None) -> tuple[DenseLinearProbe, float]:  # fmt: skip
    """A :class:`DenseLinearProbe` trained with Adam (cosine lr) on maps ``feats`` (N, C, h, w)
    and targets (N, H, W) (255 ignored). Returns (the probe on ``device``, the mean training loss of
    the last epoch)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    n, c = feats.shape[:2]
    size = tuple(targets.shape[-2:])
    valid = targets != IGNORE
    if not bool(valid.any()):
        raise UserError("every training pixel is marked ignore (255): nothing to train the probe on")
    if int(targets[valid].max()) >= n_classes:
        raise ValueError(f"target {int(targets[valid].max())} >= n_classes={n_classes}")
    flat = feats.transpose(0, 1).reshape(c, -1).double()
    mean, std = flat.mean(1).float(), flat.std(1, unbiased=False).clamp_min(1e-6).float()
    probe = DenseLinearProbe(c, n_classes, mean, std).to(device)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    steps = max(1, epochs * math.ceil(n / batch_size))
    step, last = 0, math.nan
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            t = targets[idx].to(device)
            k = int((t != IGNORE).sum())
            if k == 0:
                continue
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            loss = probe_loss(probe, feats[idx].to(device), t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            total, count = total + float(loss.detach()) * k, count + k
        last = total / max(count, 1)
    return probe.eval(), last


@torch.no_grad()
def predict_masks(probe: DenseLinearProbe, feats: Tensor, size: tuple[int, int], batch_size: int = 64) -> Tensor:
    """Predicted classes (N, H, W) int64 on the CPU: argmax of the upsampled logits."""
    device = probe.conv.weight.device
    out = [probe(feats[s : s + batch_size].to(device), size).argmax(1).cpu() for s in range(0, feats.shape[0], batch_size)]
    return torch.cat(out) if out else torch.empty(0, *size, dtype=torch.long)


def dense_probe(train_feats: Tensor, train_targets: Tensor, test_feats: Tensor, test_targets: Tensor, n_classes: int,
                epochs: int = 20, lr: float = 0.01, batch_size: int = 64, seed: int = 0, device=None) -> dict:  # fmt: skip
    """Train the probe on (train_feats, train_targets) and score it on the test pair: the scores of
    :func:`segmentation_scores`, ``train_loss``, ``confusion`` (K, K) and ``pred`` (N_test, H, W)."""
    probe, train_loss = train_dense_probe(train_feats, train_targets, n_classes, epochs=epochs, lr=lr,
                                          batch_size=batch_size, seed=seed, device=device)  # fmt: skip
    pred = predict_masks(probe, test_feats, tuple(test_targets.shape[-2:]), batch_size)
    conf = confusion_matrix(pred, test_targets, n_classes)
    return {**segmentation_scores(conf), "train_loss": train_loss, "confusion": conf, "pred": pred, "probe": probe}


Options = SegOptions


def _mask_sets(cfg, checkpoint):
    """(train, test) of the run's data, with one-line errors for a set without masks or a test split."""
    from ..data import build_datasets

    train, test = build_datasets(cfg.data)
    if test is None:
        raise UserError(f"the {cfg.data.name} data set has no test split to evaluate on")
    if getattr(train, "masks", None) is None or getattr(test, "masks", None) is None:
        raise UserError(f"{checkpoint}: the {cfg.data.name} data set has no per-pixel masks; eval seg needs a set with "
                        "masks: the digit scenes (data.name=digits) or a VOC folder (data.name=voc data.root=DIR)")  # fmt: skip
    return train, test


def _feature_maps(cfg, method, opts, train, test, dev):
    from .run import probe_encoder

    encoder = None if opts.features == "pixels" else probe_encoder(cfg, method, opts.features, dev)
    if encoder is not None and not hasattr(encoder, "forward_features"):
        raise UserError(f"the {cfg.method['name']} run's encoder has no forward_features (no feature map to probe)")
    try:
        return (dense_features(encoder, train.images, dev, opts.batch_size),
                dense_features(encoder, test.images, dev, opts.batch_size))  # fmt: skip
    except ValueError as e:  # e.g. a timm token model without forward_intermediates
        raise UserError(f"eval seg: {e}") from None


def run(checkpoint: str, opts: SegOptions, data_overrides=()) -> dict:
    """``contrastlab eval seg RUN``: the dense linear probe trained on the training masks, its mIoU,
    pixel accuracy and per-class IoU on the test split; the predicted masks of the first
    ``n_examples`` test scenes are kept with their images and true masks in
    ``RUN/seg_masks_<features>_<classes>.pt``: ``contrastlab report`` draws them."""
    from .run import device, load_run, require_encoder

    cfg, method, ckpt = load_run(checkpoint, list(data_overrides))
    require_encoder(cfg, method, checkpoint)
    train, test = _mask_sets(cfg, checkpoint)
    dev = device(opts.device)
    if opts.classes == "binary":
        names = ["background", "foreground"]
    else:
        names = getattr(train, "mask_classes", None)
        if names is None:
            top = max(int(m[m != IGNORE].max()) if bool((m != IGNORE).any()) else 0 for m in (train.masks, test.masks))
            names = [str(c) for c in range(top + 1)]
    n_classes = len(names)
    start = time.perf_counter()
    ftr, fte = _feature_maps(cfg, method, opts, train, test, dev)
    r = dense_probe(ftr, mask_targets(train.masks, opts.classes), fte, mask_targets(test.masks, opts.classes), n_classes,
                    epochs=opts.epochs, lr=opts.lr, batch_size=opts.batch_size, seed=opts.seed, device=dev)  # fmt: skip
    seconds = time.perf_counter() - start
    result = {"protocol": "seg", "checkpoint": str(checkpoint), "step": int(ckpt["step"]), "label": "mask",
              "features": opts.features, "classes": opts.classes, "n_classes": n_classes,
              "miou": r["miou"], "pixel_acc": r["pixel_acc"], "classes_scored": r["classes_scored"],
              "per_class_iou": {n: (None if math.isnan(v) else round(v, 4)) for n, v in zip(names, r["per_class_iou"])},
              "train_loss": r["train_loss"], "n_train": len(train), "n_test": len(test),
              "feature_map": list(ftr.shape[1:]), "image_size": list(test.masks.shape[-2:]),
              "epochs": opts.epochs, "lr": opts.lr, "batch_size": opts.batch_size, "seed": opts.seed,
              "seconds": round(seconds, 2)}  # fmt: skip
    if opts.classes != "all":
        result["variant"] = opts.classes
    if opts.n_examples:
        k = opts.n_examples
        result["examples"] = _keep_examples(checkpoint, opts, test.images[:k], mask_targets(test.masks[:k], opts.classes),
                                            r["pred"][:k], names)  # fmt: skip
    return result


def _keep_examples(checkpoint, opts, images: Tensor, truth: Tensor, pred: Tensor, names) -> str | None:
    """Save the first test scenes, their true and predicted masks next to the run (for
    ``contrastlab report``, which then needs no data); returns the file's name, or None (with a
    warning) when it cannot be written."""
    import sys
    from pathlib import Path

    from ..files import atomic_save

    path = Path(checkpoint)
    run_dir = path if path.is_dir() else path.parent
    name = f"seg_masks_{opts.features}_{opts.classes}.pt"
    blob = {"indices": torch.arange(pred.shape[0]), "images": images.clone(), "truth": truth.to(torch.uint8),
            "pred": pred.to(torch.uint8), "class_names": list(names)}  # fmt: skip
    try:
        atomic_save(run_dir / name, lambda tmp: torch.save(blob, tmp), kept="the previous masks are kept")
    except UserError as e:
        print(f"contrastlab: warning: {e}", file=sys.stderr)
        return None
    return name
