"""Anti-aliased resampling (Zhang, "Making convolutional networks shift-invariant again", ICML
2019), as the generators and discriminators of CUT and DCLGAN use it by default (their
``--no_antialias`` / ``--no_antialias_up`` flags are off): a fixed binomial blur before
subsampling, and a fixed binomial blur as the interpolation filter of upsampling. The filters,
paddings and crops follow ``get_filter``, ``Downsample`` and ``Upsample`` of
models/networks.py in taesungp/contrastive-unpaired-translation (identical in JunlinHan/DCLGAN).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def binomial_filter(size: int) -> torch.Tensor:
    """The (size, size) blur kernel: the outer product of the binomial row
    [C(size-1, 0), ..., C(size-1, size-1)] with itself, divided by its sum (so it sums to 1).
    size 3: [1, 2, 1]^T [1, 2, 1] / 16; size 4: [1, 3, 3, 1]^T [1, 3, 3, 1] / 64."""
    if not 1 <= size <= 7:
        raise ValueError(f"binomial_filter supports sizes 1..7 (as the official networks), got {size}")
    row = torch.tensor([float(math.comb(size - 1, k)) for k in range(size)])
    k = torch.outer(row, row)
    return k / k.sum()


class BlurDownsample(nn.Module):
    """Blur, then keep every second pixel: reflect padding of (size-1)//2 on the top / left and
    ceil((size-1)/2) on the bottom / right, a depthwise convolution with ``binomial_filter(size)``
    at stride 2. (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2)) for size 3 (the official default).
    The filter is a non-persistent buffer: not a parameter and not part of checkpoints."""

    def __init__(self, channels: int, size: int = 3):
        super().__init__()
        self.channels, self.size = int(channels), int(size)
        self.pad = ((size - 1) // 2, -(-(size - 1) // 2)) * 2  # (left, right, top, bottom)
        self.register_buffer("kernel", binomial_filter(size).expand(self.channels, 1, size, size).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return x[:, :, ::2, ::2]
        return F.conv2d(F.pad(x, self.pad, mode="reflect"), self.kernel.to(x.dtype), stride=2, groups=x.shape[1])

    def extra_repr(self):
        return f"channels={self.channels}, size={self.size}"


class BlurUpsample(nn.Module):
    """Upsample by 2 with a blur as interpolation filter: replicate padding of 1, a depthwise
    transposed convolution at stride 2 with ``4 * binomial_filter(size)`` (the 4 = stride^2
    keeps a constant image constant) and padding 1 + (size-1)//2, then the rows and columns
    1 .. 2H (and 1 .. 2W) of the result. (B, C, H, W) -> (B, C, 2H, 2W). With the official size
    4 each output pixel is (1/4, 3/4) or (3/4, 1/4) of its two nearest inputs per axis:
    a row [a, b] becomes [a, (3a + b) / 4, (a + 3b) / 4, b]."""

    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        if not 2 <= size <= 7:
            raise ValueError(f"BlurUpsample supports filter sizes 2..7, got {size}")
        self.channels, self.size = int(channels), int(size)
        kernel = 4 * binomial_filter(size)
        self.register_buffer("kernel", kernel.expand(self.channels, 1, size, size).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = F.conv_transpose2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.kernel.to(x.dtype), stride=2,
                               padding=1 + (self.size - 1) // 2, groups=x.shape[1])  # fmt: skip
        return y[:, :, 1 : 1 + 2 * h, 1 : 1 + 2 * w]

    def extra_repr(self):
        return f"channels={self.channels}, size={self.size}"
