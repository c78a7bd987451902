"""SimCLR (Chen et al., ICML 2020): two views, one encoder, NT-Xent over the global batch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn as nn

from ..losses import debiased_nt_xent, nt_xent
from .common import build_encoder, build_projector, build_views, two_views


@dataclass
class SimCLRConfig:
    name: Literal["simclr"] = "simclr"
    temperature: float = 0.5
    # the loss axis: tau_plus > 0 is the debiased loss (DCL), beta > 0 its hard variant (HCL)
    tau_plus: float = 0.0
    beta: float = 0.0


class SimCLR(nn.Module):
    Config = SimCLRConfig

    def __init__(self, cfg):
        super().__init__()
        self.temperature = cfg.method["temperature"]
        self.tau_plus, self.beta = cfg.method["tau_plus"], cfg.method["beta"]
        self.encoder = build_encoder(cfg.model)
        self.projector = build_projector(self.encoder.out_dim, cfg.model)
        self.views = build_views(cfg)

    def forward(self, batch: dict) -> dict:
        x1, x2 = two_views(self.views, batch)
        # one forward pass per view (BatchNorm statistics per view, as solo-learn): on CPUs
        # two passes of B are ~1.4x faster than one of 2B, and the result is the same method
        z1 = self.projector(self.encoder(x1))
        z2 = self.projector(self.encoder(x2))
        if self.tau_plus or self.beta:  # DCL / HCL (negatives gathered across processes)
            loss = debiased_nt_xent(z1, z2, self.temperature, self.tau_plus, self.beta)
        else:
            loss = nt_xent(z1, z2, self.temperature)  # negatives gathered across processes
        return {"loss": loss}
