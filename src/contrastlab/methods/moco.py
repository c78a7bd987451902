"""MoCo v2 (He et al., CVPR 2020; Chen et al., 2020): momentum key encoder and a queue.

Per step: momentum-update the key branch, encode keys of view 2 (with shuffle-BN across
processes), encode queries of view 1, InfoNCE against the queue, then enqueue the keys of
all processes. ``symmetric`` adds the swapped pair (view 2 queries, view 1 keys) and enqueues the
keys of both views (2B per step, as the symmetric demo of facebookresearch/moco).

Axes of the instance-contrastive core, all off by default and combinable: the debiased / hard
loss over the queue (DCL, HCL: ``tau_plus``, ``beta``), negative mixing (MoCHi: ``mochi_*``),
and SDCLR's pruned branch (``pruned_branch``: the swapped pair's query comes from the pruned
encoder, so the dense model sees view 1 and the pruned one view 2).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from ..distributed import gather_no_grad, rank_and_world
from ..errors import ConfigError
from ..fields import option
from ..losses import mochi_negatives
from ..nn.momentum import cosine_momentum, frozen_copy, momentum_update
from ..nn.queue import Queue
from .common import AxesConfig, build_encoder, build_projector, build_views, mochi_active, queue_criterion, setup_axes


@dataclass
class MoCoConfig(AxesConfig):
    name: Literal["moco"] = "moco"
    temperature: float = option(0.2, gt=0)
    queue_size: int = option(65536, ge=1)
    momentum: float = option(0.999, ge=0, lt=1, doc="the key encoder's EMA momentum")
    # constant, or cosine from `momentum` up to 1 over the run (BYOL; MoCo v3): m_k = 1 - (1 - m)(cos(pi k / K) + 1) / 2
    momentum_schedule: Literal["constant", "cosine"] = "constant"
    bn: Literal["shuffle", "sync", "none"] = "shuffle"  # how the key encoder avoids BN leakage
    # shuffle-BN in one process: keys are encoded in this many shuffled sub-batches
    shuffle_groups: int = option(8, ge=1)
    symmetric: bool = False

    @classmethod
    def check(cls, cfg) -> None:
        """MoCHi's hard negatives are drawn from the queue."""
        super().check(cfg)
        n_hard, k = cfg.method["mochi_n_hard"], cfg.method["queue_size"]
        if n_hard > k:
            raise ConfigError(f"method.mochi_n_hard={n_hard}: more than the method.queue_size={k} negatives "
                              "of the queue; lower mochi_n_hard or raise queue_size")  # fmt: skip


@torch.no_grad()
def shuffled_keys(key_net: nn.Module, x: torch.Tensor, generator=None, groups: int = 1) -> torch.Tensor:
    """Shuffle-BN: the key encoder sees the global batch in a random order, so the BatchNorm
    statistics of a key and of its query come from different sub-batches (otherwise a query can
    find its key through the batch statistics, a shortcut the MoCo paper calls BN leakage).
    Across processes the batch is gathered, permuted with a permutation shared by all ranks,
    split, encoded and un-shuffled. In one process the same is simulated: the batch is permuted
    and encoded in ``groups`` sub-batches (``groups=1``: plain BN over the whole batch)."""
    rank, world = rank_and_world()
    if world == 1:
        if groups <= 1:
            return key_net(x)
        perm = torch.randperm(x.shape[0], device=x.device, generator=generator)
        k = torch.cat([key_net(c) for c in x[perm].chunk(groups)])
        return k[torch.argsort(perm)]
    b = x.shape[0]
    x_all = gather_no_grad(x)
    perm = torch.randperm(x_all.shape[0], device=x.device)
    torch.distributed.broadcast(perm, src=0)
    k = key_net(x_all[perm[rank * b : (rank + 1) * b]])
    k_all = gather_no_grad(k)
    inv = torch.argsort(perm)
    return k_all[inv][rank * b : (rank + 1) * b]


class MoCo(nn.Module):
    Config = MoCoConfig

    def __init__(self, cfg):
        super().__init__()
        self.cfg = c = self.Config(**cfg.method)
        self.encoder = build_encoder(cfg.model)
        self.projector = build_projector(self.encoder.out_dim, cfg.model)
        self.key_encoder = frozen_copy(self.encoder)
        self.key_projector = frozen_copy(self.projector)
        self.queue = Queue(c.queue_size, cfg.model.proj_dim)
        self.views = build_views(cfg)
        self.criterion = queue_criterion(c)  # InfoNCE, or DCL / HCL's debiased form
        setup_axes(self, c)

    def momentum_at(self, step: int, total: int | None) -> float:
        """The key encoder's EMA momentum at ``step`` of ``total``."""
        m = self.cfg.momentum
        return m if self.cfg.momentum_schedule == "constant" else cosine_momentum(m, step, total)

    def keys(self, x, generator=None):
        net = lambda v: self.key_projector(self.key_encoder(v))  # noqa: E731
        return shuffled_keys(net, x, generator, self.cfg.shuffle_groups) if self.cfg.bn == "shuffle" else net(x)

    def loss(self, q, k, queue, batch):
        extra = None
        if mochi_active(self, batch):
            extra = mochi_negatives(q, queue, *self.mochi, generator=batch.get("generator"))
        return self.criterion(q, k, queue, extra_negatives=extra)

    def forward(self, batch: dict) -> dict:
        x1, x2 = self.views.pair(batch)
        with torch.no_grad():
            m = self.momentum_at(batch.get("step", 0), batch.get("total_steps"))
            momentum_update(self.encoder, self.key_encoder, m)
            momentum_update(self.projector, self.key_projector, m)
            g = batch.get("generator")
            k2 = self.keys(x2, g)
            k1 = self.keys(x1, g) if self.cfg.symmetric or self.pruned is not None else None
        queue = self.queue.keys.clone()  # the loss needs the queue as it was before this push
        if self.pruned is not None:
            # SDCLR on a queue: the dense encoder queries with view 1, the pruned branch with view 2
            q1 = self.projector(self.encoder(x1))
            q2 = self.pruned(self.encoder, self.projector, x2, batch.get("epoch", 0))
            loss = 0.5 * (self.loss(q1, k2, queue, batch) + self.loss(q2, k1, queue, batch))
        elif self.cfg.symmetric:
            q1, q2 = self.projector(self.encoder(torch.cat([x1, x2]))).chunk(2)
            loss = 0.5 * (self.loss(q1, k2, queue, batch) + self.loss(q2, k1, queue, batch))
        else:
            q1 = self.projector(self.encoder(x1))
            loss = self.loss(q1, k2, queue, batch)
        # symmetric: both views' keys join the queue (2B per step, as in the official symmetric demo)
        self.queue.push(torch.cat([k1, k2]) if self.cfg.symmetric and self.pruned is None else k2)
        return {"loss": loss}
