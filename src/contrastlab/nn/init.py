"""Weight initialisations."""
from __future__ import annotations

import torch.nn as nn


def init_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """CycleGAN's 'normal' init: conv, transposed conv and linear weights ~ N(0, gain), biases 0;
    affine norm layers (if any) weight ~ N(1, gain), bias 0. In place; returns ``module``.
    The networks of this file call it with gain 0.02 at construction (CUT and DCLGAN always
    initialise their networks; we pick 'normal' rather than CUT's default 'xavier')."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module
