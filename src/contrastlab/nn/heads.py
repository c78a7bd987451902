"""Projection heads."""
from __future__ import annotations

import torch.nn as nn


class MLPHead(nn.Module):
    """Linear -> [BN] -> ReLU ... -> Linear. ``dims`` = (in, hidden..., out); ``last_bn`` adds a
    BatchNorm after the last layer, which then has no bias: without affine parameters by default
    (as in SimCLR v2 / MoCo v3), with them when ``last_bn_affine`` (SDCLR's official head,
    512-512-512-128 with BN after every linear layer). The hidden layers have no bias before a
    BN (it would be cancelled by it) unless ``bias_before_bn``."""

    def __init__(self, dims, batch_norm: bool = True, last_bn: bool = False, bias_before_bn: bool = False,
                 last_bn_affine: bool = False):
        super().__init__()
        if len(dims) < 2:
            raise ValueError(f"an MLP head needs at least (in, out) dims, got {dims}")
        layers = []
        for i in range(len(dims) - 2):
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=bias_before_bn or not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(dims[i + 1]))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Linear(dims[-2], dims[-1], bias=not last_bn))
        if last_bn:
            layers.append(nn.BatchNorm1d(dims[-1], affine=last_bn_affine))
        self.net = nn.Sequential(*layers)
        self.out_dim = dims[-1]

    def forward(self, x):
        return self.net(x)


class ConvMLPHead(nn.Module):
    """The per-pixel MLP of dense methods: 1x1 conv -> [BN] -> ReLU ... -> 1x1 conv on a feature map
    (B, C, H, W) -> (B, dims[-1], H, W); ``dims`` = (in, hidden..., out), as :class:`MLPHead` but
    applied at every pixel (PixPro's projection and instance heads: 2048-4096-256 with BN after the
    hidden layer, official ``MLP2d``). Hidden layers have no bias before a BN (it would be cancelled)."""

    def __init__(self, dims, batch_norm: bool = True):
        super().__init__()
        if len(dims) < 2:
            raise ValueError(f"a conv MLP head needs at least (in, out) dims, got {dims}")
        layers = []
        for i in range(len(dims) - 2):
            layers.append(nn.Conv2d(dims[i], dims[i + 1], 1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(dims[i + 1]))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(dims[-2], dims[-1], 1))
        self.net = nn.Sequential(*layers)
        self.out_dim = dims[-1]

    def forward(self, x):
        return self.net(x)
