"""The alpha network of Labels4Free (Abdal et al., ICCV 2021, section 3.2): a small network on a
generator's intermediate feature maps that outputs a soft foreground mask at full resolution.

As ``bg_extractor`` in model_new.py of RameenAbdal/Labels4Free (lines 853-913), generalised to any
number of resolution levels: the feature maps come in pairs, two per resolution (the upsampling
and the second styled convolution of a StyleGAN2 level), lowest resolution first. Each map is
reduced by its own 1 x 1 convolution to 3 channels; a level is the concatenation of its pair (6
channels). Then

    out = up(level_0)
    for each middle level l:  out = up(lrelu_0.2(conv1x1_{12->6}([level_l, out])))
    mask = sigmoid(conv1x1_{6->1}(level_last + out))

where ``up`` is bicubic upsampling (align_corners=True) by 2. The official network uses the last
six levels of the generator (from 8 px for a 256 px generator, 16 px for 512, 32 px for 1024:
``res_idx`` in model_new.py line 397); ``levels`` chooses how many here (the 32 px digit generator
has three: 8, 16 and 32 px)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class AlphaNetwork(nn.Module):
    def __init__(self, feature_channels: list[int], reduce: int = 3):
        super().__init__()
        if len(feature_channels) < 4 or len(feature_channels) % 2:
            raise ValueError(f"the alpha network needs pairs of feature maps of at least two levels, got {len(feature_channels)} maps")
        self.reduce0 = nn.ModuleList([nn.Conv2d(c, reduce, 1) for c in feature_channels[0::2]])
        self.reduce1 = nn.ModuleList([nn.Conv2d(c, reduce, 1) for c in feature_channels[1::2]])
        self.merge = nn.ModuleList([nn.Conv2d(4 * reduce, 2 * reduce, 1) for _ in range(len(feature_channels) // 2 - 2)])
        self.out = nn.Conv2d(2 * reduce, 1, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """feats: the maps of the last ``2 * levels`` generator layers, lowest resolution first -> mask (B, 1, S, S)."""
        if len(feats) != 2 * len(self.reduce0):
            raise ValueError(f"the alpha network takes {2 * len(self.reduce0)} feature maps, got {len(feats)}")

        def level(i):
            return torch.cat([self.reduce0[i](feats[2 * i]), self.reduce1[i](feats[2 * i + 1])], 1)

        def up(x):
            return F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=True)

        out = up(level(0))
        for i, merge in enumerate(self.merge, start=1):
            out = up(F.leaky_relu(merge(torch.cat([level(i), out], 1)), 0.2))
        return torch.sigmoid(self.out(level(len(self.reduce0) - 1) + out))
