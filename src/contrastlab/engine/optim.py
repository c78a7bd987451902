"""Optimisers (SGD, Adam, AdamW, LARS) and the warm-up + cosine learning-rate schedule."""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al., 2017), as used by SimCLR.

    For each parameter tensor with ``lars=True`` in its group, the update uses
    ``local_lr = eta * ||w|| / (||g|| + weight_decay * ||w||)`` (1 when either norm is 0):

        g <- g + weight_decay * w;   v <- momentum * v + local_lr * g;   w <- w - lr * v

    Groups with ``lars=False`` (biases and normalisation layers, by convention) get plain
    SGD with momentum and no weight decay adaptation.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.02):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"] != 0:
                    g = g.add(p, alpha=group["weight_decay"])
                if group["lars"]:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm, torch.ones_like(w_norm)
                    )
                    g = g * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def param_groups(module: nn.Module, weight_decay: float, exclude_bias_bn: bool) -> list[dict]:
    """Split parameters into decayed weights and (optionally) undecayed biases / norm weights."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if exclude_bias_bn and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lars": True}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars": False})
    return groups


def build_optimizer(module: nn.Module, ocfg, global_batch: int) -> torch.optim.Optimizer:
    lr = ocfg.lr * global_batch / 256 if ocfg.scale_lr else ocfg.lr
    groups = param_groups(module, ocfg.weight_decay, ocfg.exclude_bias_bn)
    if ocfg.name == "lars":
        return LARS(groups, lr=lr, momentum=ocfg.momentum, eta=ocfg.lars_eta)
    for g in groups:
        g.pop("lars")
    if ocfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=ocfg.momentum, nesterov=getattr(ocfg, "nesterov", False))
    if ocfg.name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=ocfg.betas)
    if ocfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=ocfg.betas)
    raise ValueError(f"unknown optimizer {ocfg.name!r}")


def lr_factor(step: int, total: int, warmup: int, schedule: str = "cosine", min_frac: float = 0.0,
              decay_start: float = 0.5) -> float:  # fmt: skip
    """Linear warm-up from ~0 over ``warmup`` steps, then: ``cosine`` decay to ``min_frac`` at
    ``total``; ``constant``; or ``linear``: the full rate until ``decay_start`` of the steps after
    warm-up, then linear decay to ``min_frac`` at ``total`` (CycleGAN / CUT / DCLGAN)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        if progress <= decay_start:
            return 1.0
        return 1.0 - (1 - min_frac) * (progress - decay_start) / max(1e-12, 1 - decay_start)
    return min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer, ocfg, total_steps: int, warmup_steps: int | None = None):
    """The learning-rate schedule of ``ocfg`` over ``total_steps``; ``warmup_steps`` (default
    ``ocfg.warmup_steps``) is the warm-up in steps, e.g. converted from ``ocfg.warmup_epochs``."""
    warmup = ocfg.warmup_steps if warmup_steps is None else warmup_steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, total_steps, warmup, ocfg.schedule, ocfg.min_lr_frac, ocfg.decay_start_frac),
    )


def warmup_steps_of(ocfg, per_epoch: int) -> int:
    """The warm-up in steps: ``warmup_steps``, or ``warmup_epochs`` x steps per epoch (rounded)."""
    if ocfg.warmup_epochs is not None:
        return int(round(ocfg.warmup_epochs * per_epoch))
    return ocfg.warmup_steps


def schedule_problem(ocfg, total: int, warmup: int) -> str | None:
    """Why a schedule cannot train as written (None when it can): a warm-up not shorter than the
    run never reaches the peak learning rate, and a decaying schedule then never decays."""
    if warmup > 0 and warmup >= total:
        given = (f"optim.warmup_epochs={ocfg.warmup_epochs} ({warmup} steps)" if ocfg.warmup_epochs is not None
                 else f"optim.warmup_steps={warmup}")  # fmt: skip
        return (f"{given} is not shorter than the run ({total} steps): the learning rate would never leave its "
                "warm-up" + ("" if ocfg.schedule == "constant" else f" nor follow its {ocfg.schedule} decay")
                + "; shorten the warm-up (optim.warmup_epochs writes it in epochs) or lengthen the run")
    return None
