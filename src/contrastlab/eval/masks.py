"""Masks: foreground / background IoU of a Labels4Free run's masks against ground-truth masks of real images.

Labels4Free segments the images its generator makes, and generated images have no ground truth.
The protocol therefore measures the masks where a ground truth exists, the real test images of the
run's data set (the digit scenes: ``mask > 0`` is the digit), through a segmenter trained on the
masks alone:

1. draw ``n_generated`` images from the run's frozen generator (the truncated foreground pass) and
   their Labels4Free masks (the EMA alpha network, thresholded at ``method.threshold``: 0.9 as the
   paper);
2. train a small fully convolutional segmenter (:class:`MaskSegmenter`: four 3 x 3 convolutions,
   dilations 1, 2, 4, 1, then a 1 x 1 to one logit per pixel) on these (image, mask) pairs with the
   per-pixel binary cross-entropy (Adam, ``steps`` steps of ``batch_size``);
3. predict the real test images (foreground where the logit > 0) and score them against the truth.

No real image and no true mask is seen before step 3, so the score says how well the masks
Labels4Free finds on generated images transfer to real images: it is bounded both by the masks and
by how close the generator's images are to the real ones. For scale, the same scores of

- ``all_foreground``: every pixel foreground;
- ``centred_box``: a centred square of side ``box_fraction`` of the image;
- ``supervised`` (``supervised_reference=true``): the same segmenter trained the same way on the real
  training images with their true masks (an upper reference, not an unsupervised result).

Scores (over all test pixels together): foreground IoU = |P and T| / |P or T|, background IoU the
same for the complements, mIoU their mean. The result also has the mean coverage of the Labels4Free
masks on generated images and of the true masks on the test images. The first ``n_examples``
test scenes and generated samples are drawn as overlays in ``RUN/masks_overlay.png``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError
from ..fields import option

__all__ = ["MasksOptions", "Options", "run", "mask_ious", "official_table", "read_mask_folder", "score_mask_folders",
           "centred_box", "MaskSegmenter", "train_segmenter",
           "predict", "overlay"]  # fmt: skip


@dataclass
class MasksOptions:
    """The options of ``contrastlab eval masks RUN [key=value ...]``."""

    n_generated: int = option(2000, ge=1)  # generated images (with their masks) the segmenter learns from
    steps: int = option(400, ge=1)  # segmenter training steps
    batch_size: int = option(64, ge=1)
    lr: float = option(0.003, gt=0)  # Adam
    width: int = option(16, ge=1)  # segmenter channels
    box_fraction: float = option(0.5, gt=0, le=1)  # side of the centred-box baseline / image side
    supervised_reference: bool = True  # also train the segmenter on the real training masks (upper reference)
    n_examples: int = option(8, ge=0)  # overlays drawn in RUN/masks_overlay.png
    seed: int = option(0, unbounded="any integer seed")
    device: str = "cpu"  # cpu | cuda | auto


Options = MasksOptions


def mask_ious(pred: Tensor, truth: Tensor) -> dict:
    """Foreground IoU, background IoU and their mean, over all pixels of boolean masks (N, H, W)
    together: IoU = |P and T| / |P or T| (1.0 when both are empty)."""
    pred, truth = pred.bool(), truth.bool()
    if pred.shape != truth.shape:
        raise ValueError(f"predicted masks {tuple(pred.shape)} and true masks {tuple(truth.shape)} differ in shape")

    def iou(p, t):
        union = int((p | t).sum())
        return 1.0 if union == 0 else int((p & t).sum()) / union

    fg, bg = iou(pred, truth), iou(~pred, ~truth)
    return {"fg_iou": fg, "bg_iou": bg, "miou": (fg + bg) / 2}


def official_table(truth: Tensor, pred: Tensor, eps: float = 1e-4) -> dict:
    """The table of the official Labels4Free mask test (RameenAbdal/Labels4Free test_customdata.py,
    ``Metrics.get_table``) for boolean masks (N, H, W): one 2 x 2 confusion matrix over all pixels
    (rows truth, columns prediction; class 0 = False, 1 = True), then per class c

        IoU = tp / (eps + (tp + fp) + (tp + fn) - tp),  P = tp / (eps + tp + fp),  R = tp / (eps + tp + fn),
        F1 = 2 P R / (eps + P + R),  Acc = (total - (fp + fn)) / total

    with eps = 1e-4, and ``total``: the mean of each column over the two classes. The official table
    names class 0 'fg' and class 1 'bg'; here they are named by the mask value they count (in the
    released masks white, 1, is the object), so ``"1"`` is the foreground row."""
    truth, pred = truth.bool(), pred.bool()
    if truth.shape != pred.shape:
        raise ValueError(f"true masks {tuple(truth.shape)} and predicted masks {tuple(pred.shape)} differ in shape")
    t, p = truth.reshape(-1).long(), pred.reshape(-1).long()
    cm = torch.bincount(2 * t + p, minlength=4).reshape(2, 2).double()
    total = cm.sum()
    tp, col, row = cm.diagonal(), cm.sum(0), cm.sum(1)
    rows = {}
    for c in (0, 1):
        iou = tp[c] / (eps + col[c] + row[c] - tp[c])
        prec, rec = tp[c] / (eps + col[c]), tp[c] / (eps + row[c])
        f1 = 2 * prec * rec / (eps + prec + rec)
        acc = (total - (col[c] + row[c] - 2 * tp[c])) / total
        rows[str(c)] = {"iou": float(iou), "f1": float(f1), "precision": float(prec), "recall": float(rec),
                        "accuracy": float(acc)}  # fmt: skip
    rows["total"] = {k: (rows["0"][k] + rows["1"][k]) / 2 for k in rows["0"]}
    return rows


def _natural_key(name: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def read_mask_folder(folder) -> tuple[list[str], Tensor]:
    """The ``*.png`` masks of ``folder`` in natural order (``natsorted``, as the official test pairs
    them), read as the official test reads them: the luminance of ``convert('LA')``, divided by 255
    and truncated to an integer, so a pixel is True only where its luminance is 255. (names, (N, H, W) bool)."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"mask folder {folder} does not exist")
    files = sorted(folder.glob("*.png"), key=lambda f: _natural_key(f.name))
    if not files:
        raise UserError(f"mask folder {folder} holds no .png file")
    masks = []
    for f in files:
        try:
            lum = np.asarray(Image.open(f).convert("LA"))[..., 0]
        except OSError as e:
            raise UserError(f"{f}: not a readable image ({e})") from None
        if masks and lum.shape != masks[0].shape:
            raise UserError(f"{f}: a {lum.shape[1]} x {lum.shape[0]} mask where {files[0].name} is "
                            f"{masks[0].shape[1]} x {masks[0].shape[0]}; the masks of one folder share a size")  # fmt: skip
        masks.append(lum == 255)
    return [f.name for f in files], torch.from_numpy(np.stack(masks))


def score_mask_folders(truth_dir, pred_dir, box_fraction: float = 0.5) -> dict:
    """The official test of predicted mask files against true ones (test_customdata.py): the i-th
    file of each folder in natural order are a pair; :func:`official_table` over all of them, with
    :func:`mask_ious` of the same masks and of two trivial predictions (every pixel foreground; a
    centred box of side ``box_fraction``) for scale."""
    t_names, truth = read_mask_folder(truth_dir)
    p_names, pred = read_mask_folder(pred_dir)
    if len(t_names) != len(p_names):
        raise UserError(f"{truth_dir} holds {len(t_names)} masks and {pred_dir} {len(p_names)}; the official test "
                        "pairs them one to one")  # fmt: skip
    if truth.shape != pred.shape:
        raise UserError(f"{pred_dir}/{p_names[0]}: masks of {tuple(pred.shape[1:])} where {truth_dir}/{t_names[0]} "
                        f"is {tuple(truth.shape[1:])}")  # fmt: skip
    n, h, w = truth.shape
    return {"pairs": [[a, b] for a, b in zip(t_names, p_names)], "size": [h, w],
            "truth_coverage": float(truth.float().mean()), "pred_coverage": float(pred.float().mean()),
            "official_table": official_table(truth, pred), "ious": mask_ious(pred, truth),
            "all_foreground": mask_ious(torch.ones_like(truth), truth),
            "centred_box": mask_ious(centred_box(n, h, w, box_fraction), truth), "box_fraction": box_fraction}  # fmt: skip


def centred_box(n: int, h: int, w: int, fraction: float) -> Tensor:
    """(n, h, w) boolean masks of a centred rectangle of round(fraction * side) pixels per side."""
    bh, bw = max(1, round(fraction * h)), max(1, round(fraction * w))
    top, left = (h - bh) // 2, (w - bw) // 2
    m = torch.zeros(n, h, w, dtype=torch.bool)
    m[:, top : top + bh, left : left + bw] = True
    return m


class MaskSegmenter(nn.Module):
    """A small fully convolutional segmenter: 3 x 3 convolutions with dilations 1, 2, 4, 1 (ReLU), a 1 x 1 to one logit."""

    def __init__(self, width: int = 32):
        super().__init__()
        layers, c = [], 3
        for d in (1, 2, 4, 1):
            layers += [nn.Conv2d(c, width, 3, padding=d, dilation=d), nn.ReLU()]
            c = width
        self.body = nn.Sequential(*layers, nn.Conv2d(width, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x * 2 - 1)[:, 0]


def _float(x: Tensor) -> Tensor:
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def train_segmenter(images: Tensor, masks: Tensor, opts: MasksOptions, device) -> MaskSegmenter:
    """The segmenter trained on (images in [0, 1] or uint8 (N, 3, H, W), boolean masks (N, H, W))."""
    g = torch.Generator().manual_seed(opts.seed)
    torch.manual_seed(opts.seed)
    net = MaskSegmenter(opts.width).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=opts.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, opts.steps)
    for _ in range(opts.steps):
        idx = torch.randint(0, images.shape[0], (min(opts.batch_size, images.shape[0]),), generator=g)
        x, y = _float(images[idx]).to(device), masks[idx].float().to(device)
        flip = torch.rand(x.shape[0], generator=g).to(device) < 0.5  # horizontal flips
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = torch.where(flip[:, None, None], y.flip(-1), y)
        loss = F.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


@torch.no_grad()
def predict(net: MaskSegmenter, images: Tensor, device, batch_size: int = 256) -> Tensor:
    return torch.cat([net(_float(images[i : i + batch_size]).to(device)).cpu() > 0 for i in range(0, len(images), batch_size)])


def overlay(images: Tensor, masks: Tensor, colour=(1.0, 0.1, 0.1), alpha: float = 0.5) -> Tensor:
    """Images (N, 3, H, W) in [0, 1] with the mask's pixels tinted by ``colour``."""
    c = torch.tensor(colour).view(1, 3, 1, 1)
    m = masks.float()[:, None]
    return images * (1 - alpha * m) + alpha * m * c


def _mask_sets(cfg, checkpoint):
    from ..data import build_datasets

    train, test = build_datasets(cfg.data)
    if test is None or getattr(test, "masks", None) is None or getattr(train, "masks", None) is None:
        raise UserError(f"{checkpoint}: eval masks needs a data set with a test split and per-pixel masks (the digit "
                        f"scenes: data.name=digits); {cfg.data.name} has none")  # fmt: skip
    return train, test


def run(checkpoint: str, opts: MasksOptions, data_overrides=()) -> dict:
    """``contrastlab eval masks RUN``: see the module docstring."""
    from torchvision.utils import save_image

    from .run import device as pick_device
    from .run import load_run

    cfg, method, ckpt = load_run(checkpoint, list(data_overrides))
    if not hasattr(method, "sample_masks"):
        raise UserError(f"{checkpoint}: a {cfg.method['name']} run makes no masks; eval masks evaluates labels4free runs")
    train, test = _mask_sets(cfg, checkpoint)
    dev = pick_device(opts.device)
    method.to(dev).eval()
    start = time.perf_counter()
    gen_images, soft, gen_masks = method.sample_masks(opts.n_generated, torch.Generator().manual_seed(opts.seed), dev)
    truth = test.masks > 0
    n, h, w = truth.shape
    if gen_images.shape[-2:] != (h, w):
        gen_images = F.interpolate(gen_images, size=(h, w), mode="bilinear", align_corners=False)
        gen_masks = F.interpolate(gen_masks[:, None].float(), size=(h, w), mode="nearest")[:, 0] > 0.5
    seg = train_segmenter(gen_images, gen_masks, opts, dev)
    pred = predict(seg, test.images, dev)
    result = {"protocol": "masks", "checkpoint": str(checkpoint), "step": int(ckpt["step"]), "label": "mask",
              "features": "labels4free", "labels4free": mask_ious(pred, truth),
              "all_foreground": mask_ious(torch.ones_like(truth), truth),
              "centred_box": mask_ious(centred_box(n, h, w, opts.box_fraction), truth)}  # fmt: skip
    if opts.supervised_reference:
        ref = train_segmenter(train.images, train.masks > 0, opts, dev)
        result["supervised"] = mask_ious(predict(ref, test.images, dev), truth)
    result.update({"generated_mask_coverage": float(gen_masks.float().mean()),
                   "generated_soft_mask_mean": float(soft.mean()),
                   "test_truth_coverage": float(truth.float().mean()),
                   "test_pred_coverage": float(pred.float().mean()),
                   "threshold": method.cfg.threshold, "n_generated": opts.n_generated, "n_test": n,
                   "steps": opts.steps, "batch_size": opts.batch_size, "lr": opts.lr, "width": opts.width,
                   "box_fraction": opts.box_fraction, "seed": opts.seed,
                   "seconds": round(time.perf_counter() - start, 2)})  # fmt: skip
    if opts.n_examples:
        k = min(opts.n_examples, n, len(gen_images))
        real = _float(test.images[:k])
        rows = torch.cat([real, overlay(real, truth[:k]), overlay(real, pred[:k]), gen_images[:k], overlay(gen_images[:k], gen_masks[:k])])
        path = Path(checkpoint)
        run_dir = path if path.is_dir() else path.parent
        try:
            save_image(rows, run_dir / "masks_overlay.png", nrow=k)
            result["examples"] = "masks_overlay.png"
        except OSError as e:
            import sys

            print(f"contrastlab: warning: could not write {run_dir / 'masks_overlay.png'}: {e}", file=sys.stderr)
    return result
