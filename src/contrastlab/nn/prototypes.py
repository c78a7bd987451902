"""Prototypes of a class from annotated features (PANet, Wang et al., ICCV 2019; used by RP-Net).

:func:`masked_average_pool`: p = sum_xy f[:, :, y, x] m[y, x] / (sum_xy m[y, x] + eps), eps = 1e-5 (the
official RP-Net getFeatures, net/rp_net.py). :func:`cosine_logits`: s * cos(f[:, :, y, x], p_k) per
prototype k, s = 20 (RP-Net's calDist ``scaler``, PANet's alpha).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_average_pool(features: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(B, C, h, w) features and (B, h, w) or (B, 1, h, w) weights -> (B, C) prototypes."""
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    mask = mask.to(features.dtype)
    return (features * mask).sum(dim=(2, 3)) / (mask.sum(dim=(2, 3)) + eps)


def cosine_logits(features: torch.Tensor, prototypes: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """(B, C, h, w) features and (B, P, C) prototypes -> (B, P, h, w) scaled cosine similarities."""
    f = F.normalize(features, dim=1, eps=1e-8)
    p = F.normalize(prototypes, dim=2, eps=1e-8)
    return scale * torch.einsum("bchw,bpc->bphw", f, p)
