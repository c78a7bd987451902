"""Joint image + mask augmentation for segmentation training (``data.seg_aug``): the training transforms of
PSPNet's code base (hszhao/semseg util/transform.py, copied by RePRI and CWT: mboudiaf/RePRI-for-Few-Shot-Segmentation
src/dataset/transform.py), on batches of tensors, every draw from a seeded generator.

Per image, in this order (each op off at its default):

- random scale (``scale: [min, max]``, RandScale, transform.py:140-173): s ~ U[min, max], the image resized
  by s (bilinear, half-pixel centres as OpenCV's INTER_LINEAR), the mask by nearest neighbour;
- random rotation (``rotate: [min, max]`` degrees, with probability ``rotate_p``, RandRotate, transform.py:243-271):
  angle ~ U[min, max] about the point (w / 2, h / 2), counter-clockwise as seen for a positive angle (OpenCV's
  getRotationMatrix2D), the image bilinear, the mask nearest; what comes from outside the image is 0 in the
  image and 255 (ignore) in the mask;
- horizontal flip with probability ``hflip``, vertical flip with probability ``vflip``
  (RandomHorizontalFlip / RandomVerticalFlip, transform.py:274-293, p = 0.5 there);
- back to the input's size when the scale changed it (Crop with crop_type 'rand', transform.py:176-240): padded
  (half before, half after) with 0 in the image and 255 in the mask up to the size, then a random crop.

The image padding value 0 is the official one (``padding=[0 for x in args.mean]`` in RePRI / CWT
src/dataset/dataset.py, applied to 0-255 pixels before normalisation, as 0 is here to [0, 1] images before the
encoder's input norm). Images are uint8 or float (B, C, H, W), masks integer (B, H, W); the outputs have the
inputs' shapes and dtypes (uint8 images rounded back). Random numbers: seven uniforms per image, drawn in image
order from ``generator`` whether an op is on or not, so a run's augmentation is a function of its seed and step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..fields import option

IGNORE = 255

__all__ = ["SegAugConfig", "augment_pairs", "seg_aug_active"]


@dataclass
class SegAugConfig:
    """``data.seg_aug``: the joint image + mask augmentation of segmentation training (all off by default)."""

    scale: tuple[float, float] = option((1.0, 1.0), gt=0, doc="RandScale's [min, max] factor; [1, 1]: off")
    rotate: tuple[float, float] = option((0.0, 0.0), ge=-180, le=180, doc="RandRotate's [min, max] degrees; [0, 0]: off")
    rotate_p: float = option(0.5, ge=0, le=1, doc="probability of a rotation (RandRotate's p)")
    hflip: float = option(0.0, ge=0, le=1, doc="probability of a horizontal flip")
    vflip: float = option(0.0, ge=0, le=1, doc="probability of a vertical flip")


def seg_aug_active(c: SegAugConfig) -> bool:
    return tuple(c.scale) != (1.0, 1.0) or (tuple(c.rotate) != (0.0, 0.0) and c.rotate_p > 0) or c.hflip > 0 or c.vflip > 0


def _rotate(image: torch.Tensor, mask: torch.Tensor, degrees: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, H, W) float image, (H, W) mask rotated by ``degrees`` about (w / 2, h / 2); outside: 0 / 255."""
    h, w = mask.shape
    a = math.radians(degrees)
    cos, sin = math.cos(a), math.sin(a)
    cx, cy = w / 2, h / 2
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    dx, dy = xs - cx, ys - cy
    # output = M input with M = [[cos, sin], [-sin, cos]] about the centre (getRotationMatrix2D): input = M^-1 output
    src_x, src_y = cos * dx - sin * dy + cx, sin * dx + cos * dy + cy
    grid = torch.stack([2 * src_x / max(w - 1, 1) - 1, 2 * src_y / max(h - 1, 1) - 1], -1)[None].to(image.dtype)
    grid = grid.to(image.device)
    out = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    shifted = (mask.to(image.dtype) + 1)[None, None]  # 0 marks what came from outside
    m = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=True)[0, 0].round().long()
    return out, torch.where(m == 0, IGNORE, m - 1).to(mask.dtype)


def _pad_crop(image, mask, size, u_y, u_x):
    """Pad (half before, half after; 0 / 255) up to ``size``, then the crop at offsets floor(u * (room + 1))."""
    th, tw = size
    h, w = mask.shape
    ph, pw = max(th - h, 0), max(tw - w, 0)
    if ph or pw:
        pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        image = F.pad(image, pads, value=0.0)
        mask = F.pad(mask, pads, value=IGNORE)
        h, w = mask.shape
    y0 = min(int(u_y * (h - th + 1)), h - th)
    x0 = min(int(u_x * (w - tw + 1)), w - tw)
    return image[:, y0:y0 + th, x0:x0 + tw], mask[y0:y0 + th, x0:x0 + tw]


def augment_pairs(images: torch.Tensor, masks: torch.Tensor, c: SegAugConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(B, C, H, W) images and (B, H, W) masks -> the same, each pair augmented together (see the module docstring)."""
    if not seg_aug_active(c):
        return images, masks
    b, _, h, w = images.shape
    u = torch.rand(b, 7, generator=generator, dtype=torch.float64).tolist()
    work = images.dtype if images.is_floating_point() else torch.float32
    out_i, out_m = [], []
    for i in range(b):
        s_u, r_p, r_u, hf, vf, cy, cx = u[i]
        img = images[i].to(work)
        msk = masks[i]
        lo, hi = c.scale
        if (lo, hi) != (1.0, 1.0):
            s = lo + (hi - lo) * s_u
            size = (max(int(round(h * s)), 1), max(int(round(w * s)), 1))
            img = F.interpolate(img[None], size, mode="bilinear", align_corners=False)[0]
            msk = F.interpolate(msk[None, None].float(), size, mode="nearest")[0, 0].round().to(masks.dtype)
        r_lo, r_hi = c.rotate
        if (r_lo, r_hi) != (0.0, 0.0) and r_p < c.rotate_p:
            img, msk = _rotate(img, msk, r_lo + (r_hi - r_lo) * r_u)
        if hf < c.hflip:
            img, msk = img.flip(-1), msk.flip(-1)
        if vf < c.vflip:
            img, msk = img.flip(-2), msk.flip(-2)
        if msk.shape != (h, w):
            img, msk = _pad_crop(img, msk, (h, w), cy, cx)
        out_i.append(img)
        out_m.append(msk)
    img = torch.stack(out_i)
    if images.dtype == torch.uint8:
        img = img.round().clamp(0, 255).to(torch.uint8)
    return img.to(images.dtype), torch.stack(out_m).to(masks.dtype)
