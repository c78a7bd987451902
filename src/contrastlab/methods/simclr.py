"""SimCLR (Chen et al., ICML 2020): two views, one encoder, NT-Xent over the global batch.

Axes of the instance-contrastive core, all off by default and combinable: the debiased / hard
loss (DCL, HCL: ``tau_plus``, ``beta``), negative mixing with the batch as the pool (MoCHi:
``mochi_*``), and the pruned second branch (SDCLR: ``pruned_branch``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..fields import option
from ..losses import mochi_negatives
from .common import AxesConfig, batch_criterion, build_encoder, build_projector, build_views, mochi_active, setup_axes


@dataclass
class SimCLRConfig(AxesConfig):
    name: Literal["simclr"] = "simclr"
    temperature: float = option(0.5, gt=0)

    @classmethod
    def check(cls, cfg) -> None:
        """The negatives of an anchor are the other 2B - 2 views of its process's batch: B >= 2,
        and MoCHi's hard negatives are drawn from them."""
        b, n_hard = cfg.optim.batch_size, cfg.method["mochi_n_hard"]
        if b < 2:
            raise ConfigError(f"optim.batch_size={b}: SimCLR needs at least 2 images per batch for negatives")
        super().check(cfg)
        if n_hard > 2 * b - 2:
            raise ConfigError(f"method.mochi_n_hard={n_hard}: more than the {2 * b - 2} negatives of an anchor "
                              f"in a batch of optim.batch_size={b} (2 x {b} - 2); lower mochi_n_hard or raise "
                              "optim.batch_size")  # fmt: skip


class SimCLR(nn.Module):
    Config = SimCLRConfig

    def __init__(self, cfg):
        super().__init__()
        self.cfg = self.Config(**cfg.method)
        self.encoder = build_encoder(cfg.model)
        self.projector = build_projector(self.encoder.out_dim, cfg.model)
        self.views = build_views(cfg)
        self.criterion = batch_criterion(self.cfg)  # NT-Xent, or DCL / HCL's debiased form
        setup_axes(self, self.cfg)

    def forward(self, batch: dict) -> dict:
        x1, x2 = self.views.pair(batch)
        # one forward pass per view (BatchNorm statistics per view, as solo-learn): on CPUs
        # two passes of B are ~1.4x faster than one of 2B, and the result is the same method
        z1 = self.projector(self.encoder(x1))
        if self.pruned is None:
            z2 = self.projector(self.encoder(x2))
        else:  # SDCLR: view 2 goes through the pruned branch (shared weights, own BN)
            z2 = self.pruned(self.encoder, self.projector, x2, batch.get("epoch", 0))
        extra = None
        if mochi_active(self, batch):
            extra = batch_mochi(z1, z2, *self.mochi, generator=batch.get("generator"))
        return {"loss": self.criterion(z1, z2, extra_negatives=extra)}  # negatives gathered across processes


def batch_mochi(z1, z2, n_hard, s, s_prime, generator=None):
    """MoCHi with the local batch as the pool: anchors [z1; z2], each anchor's hard negatives
    drawn from the other 2B - 2 embeddings (itself and its positive excluded). (2B, s+s', d)."""
    anchors = F.normalize(torch.cat([z1, z2]).detach().float(), dim=1)
    b = z1.shape[0]
    i = torch.arange(2 * b, device=anchors.device)
    exclude = torch.stack([i, (i + b) % (2 * b)], dim=1)
    return mochi_negatives(anchors, anchors, n_hard, s, s_prime, generator=generator, exclude=exclude)
