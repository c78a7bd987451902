"""Weight initialisations."""
from __future__ import annotations

import torch.nn as nn

INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")


def init_weights(module: nn.Module, gain: float = 0.02, init_type: str = "normal") -> nn.Module:
    """The initialisations of CycleGAN / CUT / DCLGAN (``init_weights`` in their
    models/networks.py), in place on every conv, transposed conv and linear layer of ``module``;
    their biases are set to 0, and affine norm layers (if any) get weight ~ N(1, gain), bias 0.
    Returns ``module``.

        normal:      weight ~ N(0, gain)                               (CycleGAN's default)
        xavier:      xavier_normal_(weight, gain): std = gain sqrt(2 / (fan_in + fan_out))
                     (CUT's and DCLGAN's default, with gain 0.02: options/base_options.py)
        kaiming:     kaiming_normal_(weight, a=0, mode='fan_in') (gain unused)
        orthogonal:  orthogonal_(weight, gain)

    The networks of this package call it at construction with their ``init_type`` / ``init_gain``
    (default normal, 0.02)."""
    if init_type not in INIT_TYPES:
        raise ValueError(f"unknown init_type {init_type!r}; expected one of {', '.join(INIT_TYPES)}")
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if init_type == "normal":
                nn.init.normal_(m.weight, 0.0, gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(m.weight, gain=gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            else:
                nn.init.orthogonal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module
