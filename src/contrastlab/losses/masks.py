"""Regularisers of a soft foreground mask m in [0, 1] (B, 1, H, W), as Labels4Free (Abdal et al.,
ICCV 2021, section 3) trains its alpha network with them; the formulas are those of train.py in
RameenAbdal/Labels4Free (``binarization_loss``, ``fg_mask_coverage_loss``, ``bg_mask_coverage_loss``,
lines 56-65), the first two taken from PerturbGAN (Bielski and Favaro, NeurIPS 2019)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def binarization_loss(mask: torch.Tensor) -> torch.Tensor:
    """mean over all pixels of min(m, 1 - m): zero when every pixel is 0 or 1."""
    return torch.minimum(mask, 1 - mask).mean()


def min_coverage_loss(mask: torch.Tensor, phi: float) -> torch.Tensor:
    """mean over the batch of relu(phi - mean_{pixels} m): the mask must cover at least phi of the image."""
    return F.relu(phi - mask.mean(dim=(2, 3))).mean()


def background_coverage_loss(mask: torch.Tensor, value: float) -> torch.Tensor:
    """mean over the batch of relu(value - mean_{pixels} (1 - m)): the background must cover at least
    ``value`` of the image (the official code's bg coverage term, ``--bg_coverage_value``)."""
    return F.relu(value - (1 - mask.mean(dim=(2, 3)))).mean()
