"""Parts of a momentum (teacher) branch: a frozen copy of a network, its exponential moving
average update, and freezing / unfreezing networks (MoCo's key encoder, BYOL-style targets,
PixPro's momentum branch; a GAN's discriminators while its generators update)."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy for a momentum branch: same weights, no gradient."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, m: float) -> None:
    """target <- m * target + (1 - m) * online, parameters and floating buffers (BN stats are
    copied as the online ones' EMA as well)."""
    op = [p.detach() for p in online.parameters()]
    tp = [p.detach() for p in target.parameters()]
    torch._foreach_mul_(tp, m)
    torch._foreach_add_(tp, op, alpha=1 - m)
    for ob, tb in zip(online.buffers(), target.buffers()):
        if tb.dtype.is_floating_point:
            tb.mul_(m).add_(ob.detach(), alpha=1 - m)


def cosine_momentum(base: float, step: int, total: int | None) -> float:
    """The momentum of a cosine schedule from ``base`` at step 0 up to 1 at step ``total`` (BYOL; PixPro):
    m_k = 1 - (1 - base) (cos(pi k / K) + 1) / 2, with k clipped to K; ``base`` when ``total`` is unknown."""
    if not total:
        return base
    return 1 - (1 - base) * (math.cos(math.pi * min(max(step, 0), total) / total) + 1) / 2


def set_requires_grad(modules, flag: bool) -> None:
    """Freeze / unfreeze networks (e.g. the discriminators while the generators update)."""
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(flag)
