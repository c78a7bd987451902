"""RP-Net's context relation encoder (Tang et al., ICCV 2021, "Recurrent Mask Refinement for Few-Shot
Medical Image Segmentation", section 3.2) and the local correlation it is built on.

:func:`local_correlation` (a, b of shape (B, C, H, W), window radius r):

    corr[:, (dy + r)(2r + 1) + (dx + r), y, x] = sum_c a[:, c, y, x] b[:, c, y + dy, x + dx] / sqrt(C)

for dy, dx in [-r, r] (row-major over the window), b taken as 0 outside the map (zero padding).
:class:`ContextRelationEncoder` ``CRE(f, m)``: a = conv3x3-BN-ReLU(f * m) (the foreground context),
b = conv3x3-BN-ReLU(f * (1 - m)) (the background around it), out = conv1x1-BN-ReLU([corr(a, b), a]).
Radius 5 (an 11 x 11 window, 121 channels) and 64 output channels are the official values
(uci-cbcl/RP-Net net/rp_net.py ContextCorrelationEncoder, num_feat = 64; yamls/example.yml
mask_refinement_correlation_radius: 5).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def local_correlation(a: torch.Tensor, b: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, C, H, W) x (B, C, H, W) -> (B, (2 radius + 1)^2, H, W): the dot product of each pixel of
    ``a`` with the pixels of ``b`` in the window around it, over sqrt(C); zero outside the map.
    One shifted product per window offset (memory of one map, not of the window times the map)."""
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"local_correlation needs two (B, C, H, W) maps of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    _, c, h, w = a.shape
    r = radius
    padded = F.pad(b, (r, r, r, r))
    out = [(a * padded[:, :, r + dy : r + dy + h, r + dx : r + dx + w]).sum(dim=1)
           for dy in range(-r, r + 1) for dx in range(-r, r + 1)]  # fmt: skip
    return torch.stack(out, dim=1) / math.sqrt(c)


def _conv_bn_relu(cin, cout, k):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ContextRelationEncoder(nn.Module):
    """CRE(f, m): features (B, C, h, w) and a soft mask (B, 1, h, w) in [0, 1] -> (B, out_channels, h, w)."""

    def __init__(self, channels: int, radius: int = 5, out_channels: int = 64):
        super().__init__()
        self.radius = radius
        self.fg = _conv_bn_relu(channels, channels, 3)  # official w_k
        self.bg = _conv_bn_relu(channels, channels, 3)  # official w_q
        self.out = _conv_bn_relu(channels + (2 * radius + 1) ** 2, out_channels, 1)  # official q
        self.out_channels = out_channels

    def forward(self, f: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        a = self.fg(f * m)
        b = self.bg(f * (1 - m))
        return self.out(torch.cat([local_correlation(a, b, self.radius), a], dim=1))
