"""Segmentation networks: PSPNet's pyramid pooling decoder on a backbone (Zhao et al., CVPR 2017; the
stage-1 network of CWT), and the U-Net feature extractor of RP-Net (Ronneberger et al., MICCAI 2015).

:class:`PyramidPooling`: the map x and, per bin size s, AdaptiveAvgPool(s) -> conv1x1 (C -> C / #bins,
no bias) -> BN -> ReLU, upsampled back (bilinear, align_corners) and concatenated: 2C channels.
:class:`PSPNet`: ``features(x)`` = bottleneck(PPM(encoder.forward_features(x))), the bottleneck a
conv3x3 (2C -> d, no bias) -> BN -> ReLU -> Dropout2d; ``forward(x)`` = a 1x1 classifier (d -> classes,
no bias) upsampled to the input. As CWT's official src/model/pspnet.py (bins 1, 2, 3, 6;
bottleneck_dim 512; dropout 0.1 in config_files/*.yaml), but on any backbone of ``nn.backbones``
(the official one is a dilated ResNet at output stride 8; torchvision's here keep stride 32).
:class:`UNetFeatures`: five conv blocks (two conv3x3-BN-ReLU each, max-pool between), then two
up-steps (upsample x2, conv3x3-BN-ReLU, concatenation with the skip, conv block): the decoder's
map at 1/4 of the input with ``widths[2]`` channels, as RP-Net's net/unet.py U_Net (widths
64, 128, 256, 512, 1024; output ``d4``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import InputNorm


class PyramidPooling(nn.Module):
    def __init__(self, in_dim: int, bins=(1, 2, 3, 6)):
        super().__init__()
        red = in_dim // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), nn.Conv2d(in_dim, red, 1, bias=False), nn.BatchNorm2d(red),
                          nn.ReLU(inplace=True)) for s in bins)  # fmt: skip
        self.out_dim = in_dim + red * len(bins)

    def forward(self, x):
        size = x.shape[2:]
        return torch.cat([x] + [F.interpolate(s(x), size, mode="bilinear", align_corners=True) for s in self.stages], 1)


class PSPNet(nn.Module):
    """encoder -> PPM -> bottleneck (``features``, (B, d, h, w)) -> classifier (``forward``); with
    ``num_classes=None``, no classifier (the frozen feature extractor of CWT's stage 2)."""

    def __init__(self, encoder: nn.Module, num_classes: int | None, bins=(1, 2, 3, 6), bottleneck_dim: int = 512,
                 dropout: float = 0.1):  # fmt: skip
        super().__init__()
        self.encoder = encoder
        self.ppm = PyramidPooling(encoder.feature_dim, bins)
        self.bottleneck = nn.Sequential(nn.Conv2d(self.ppm.out_dim, bottleneck_dim, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(bottleneck_dim), nn.ReLU(inplace=True), nn.Dropout2d(dropout))  # fmt: skip
        self.classifier = nn.Conv2d(bottleneck_dim, num_classes, 1, bias=False) if num_classes else None
        self.feature_dim = bottleneck_dim

    def features(self, x):
        return self.bottleneck(self.ppm(self.encoder.forward_features(x)))

    def forward(self, x):
        if self.classifier is None:
            raise RuntimeError("this PSPNet has no classifier (num_classes=None): call features(x)")
        out = self.classifier(self.features(x))
        return F.interpolate(out, x.shape[2:], mode="bilinear", align_corners=True)


def _block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))  # fmt: skip


def _up(cin, cout):
    return nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))  # fmt: skip


class UNetFeatures(nn.Module):
    """(B, 3, H, W) float images in [0, 1] (H, W multiples of 16) -> (B, widths[2], H / 4, W / 4)."""

    scale = 4

    def __init__(self, widths=(64, 128, 256, 512, 1024), in_channels: int = 3, norm: str = "per_image"):
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"UNetFeatures needs five widths, got {tuple(widths)}")
        self.input_norm = InputNorm(norm)
        cins = (in_channels,) + tuple(widths[:4])
        self.down = nn.ModuleList(_block(ci, co) for ci, co in zip(cins, widths))
        self.up5, self.dec5 = _up(widths[4], widths[3]), _block(2 * widths[3], widths[3])
        self.up4, self.dec4 = _up(widths[3], widths[2]), _block(2 * widths[2], widths[2])
        self.feature_dim = widths[2]

    def forward(self, x):
        skips, x = [], self.input_norm(x)
        for i, block in enumerate(self.down):
            x = block(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        d5 = self.dec5(torch.cat([skips[3], self.up5(skips[4])], 1))
        return self.dec4(torch.cat([skips[2], self.up4(d5)], 1))
