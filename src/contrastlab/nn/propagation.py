"""PixPro's pixel propagation module (PPM; Xie et al., CVPR 2021, section 3.3): each pixel's feature
is replaced by a similarity-weighted sum of the transformed features of the pixels of its own view,

    s(i, j) = max(cos(x_i, x_j), 0) ** gamma,        y_i = sum_j s(i, j) g(x_j),

where g is a transform of 0, 1 or 2 layers of 1x1 convolutions (BatchNorm and ReLU between two).
The clamp at 0 drops dissimilar pixels; gamma sharpens the weights (the paper's default 2)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .heads import ConvMLPHead


def propagation_weights(x: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """s(i, j) = max(cos(x_i, x_j), 0) ** gamma for the pixels of each map x (B, C, H, W):
    (B, H*W, H*W), row-major pixels."""
    f = F.normalize(x.flatten(2), dim=1)
    return torch.einsum("bci,bcj->bij", f, f).clamp(min=0) ** gamma


class PixelPropagation(nn.Module):
    """The PPM: ``forward(x)`` (B, C, H, W) -> y (B, C, H, W), y_i = sum_j s(i, j) g(x_j).

    ``transform_layers``: g is the identity (0), a 1x1 conv (1, the paper's default) or 1x1 conv ->
    BN -> ReLU -> 1x1 conv (2). ``normalize_values``: each g(x_j) is L2-normalised over channels before
    the weighted sum, as the official code does (the paper's formula sums g(x_j) as they are)."""

    def __init__(self, dim: int, transform_layers: int = 1, gamma: float = 2.0, normalize_values: bool = True):
        super().__init__()
        if transform_layers not in (0, 1, 2):
            raise ValueError(f"PixelPropagation: transform_layers must be 0, 1 or 2, got {transform_layers}")
        self.gamma, self.normalize_values = gamma, normalize_values
        if transform_layers == 0:
            self.transform = nn.Identity()
        elif transform_layers == 1:
            self.transform = nn.Conv2d(dim, dim, 1)
        else:
            self.transform = ConvMLPHead([dim, dim, dim])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        v = self.transform(x).flatten(2)
        if self.normalize_values:
            v = F.normalize(v, dim=1)
        s = propagation_weights(x, self.gamma)  # (B, N, N)
        return torch.einsum("bij,bcj->bci", s.to(v.dtype), v).reshape(b, -1, h, w)
