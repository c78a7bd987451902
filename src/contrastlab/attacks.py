"""Adversarial attacks on images in [0, 1] (the normalisation lives inside the model).

:func:`pgd` is projected gradient ascent (Madry et al., ICLR 2018) on any differentiable scalar
``model_loss(x_adv)``: class labels (cross-entropy of a classifier) or a contrastive loss
(instance-wise attacks, RoCL). ``norm="linf"`` takes signed-gradient steps and clips the
perturbation to ``[-eps, eps]``; ``norm="l2"`` takes steps along the per-image normalised
gradient and projects the perturbation onto the l2 ball of radius ``eps`` (norms over all
non-batch dimensions). Every iterate is clamped into the [0, 1] image box. :func:`fgsm` is one
l_inf step of size ``eps`` from the clean image (Goodfellow et al., ICLR 2015).

The gradient is taken with ``torch.autograd.grad`` with respect to the image only, so no
parameter's ``.grad`` is touched. A method that attacks its own networks during training wraps
the attack in :func:`attacking`: BatchNorm layers in eval mode (the attack's forward passes do
not update the running statistics) and every parameter's ``requires_grad`` off for the attack
(no weight gradients are computed), both restored exactly afterwards.

Bottom layer of the package: imports torch and :mod:`contrastlab.errors` only.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn as nn

from .errors import ConfigError, UserError

NORMS = ("linf", "l2")


def _check(x: torch.Tensor, eps: float, step_size: float, steps: int, norm: str) -> None:
    if norm not in NORMS:
        raise ConfigError(f"attack norm={norm!r}: unknown; use one of {', '.join(NORMS)}")
    if not eps >= 0:  # also catches NaN
        raise ConfigError(f"attack eps={eps}: must be >= 0 (the radius of the perturbation ball, in [0, 1] pixel units)")
    if not step_size >= 0:
        raise ConfigError(f"attack step_size={step_size}: must be >= 0")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"attack steps={steps}: must be an integer >= 1")
    if not torch.is_floating_point(x):
        raise UserError(f"attack input of dtype {x.dtype}: give float images in [0, 1] (divide uint8 images by 255)")
    if x.numel():
        lo, hi = float(x.min()), float(x.max())
        if not (lo >= 0.0 and hi <= 1.0):
            raise UserError(f"attack input has values in [{lo:.4g}, {hi:.4g}], outside [0, 1]: attack the images "
                            "before normalisation (the model normalises inside)")  # fmt: skip


def _per_image_norm(t: torch.Tensor) -> torch.Tensor:
    """l2 norm of each image of a batch, shaped to broadcast against it."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = _per_image_norm(delta)
    return delta * torch.clamp(eps / n.clamp_min(1e-12), max=1.0)


def _random_start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return torch.empty_like(x).uniform_(-eps, eps)
    # l2: a uniform direction with a radius uniform in [0, eps]
    d = torch.randn_like(x)
    d = d / _per_image_norm(d).clamp_min(1e-12)
    r = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype)
    return d * r * eps


def _ascent_direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return g.sign()
    return g / _per_image_norm(g).clamp_min(1e-12)


def pgd(model_loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float, step_size: float,
        steps: int, norm: str = "linf", random_start: bool = True) -> torch.Tensor:
    """Projected gradient ascent on ``model_loss`` from ``x`` (images in [0, 1], batch first).

    ``model_loss(x_adv)`` returns a scalar to maximise (sum, not mean, over the batch keeps the
    step per image independent of the batch size; either works, the step uses the gradient's
    sign or direction only). Returns ``x_adv`` (detached, ``x``'s dtype) with
    ``x_adv - x`` in the ``eps`` ball of ``norm`` and ``x_adv`` in [0, 1]. ``random_start``
    begins at a uniform point of the ball (clamped into the box) instead of ``x``.
    """
    _check(x, eps, step_size, steps, norm)
    x = x.detach()
    delta = _random_start(x, eps, norm) if random_start and eps > 0 else torch.zeros_like(x)
    x_adv = (x + delta).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = model_loss(x_adv)
            if loss.dim() != 0:
                raise ConfigError(f"attack model_loss returned a tensor of shape {tuple(loss.shape)}: it must "
                                  "return a scalar (sum the per-image losses)")  # fmt: skip
            (g,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            delta = _project(x_adv + step_size * _ascent_direction(g, norm) - x, eps, norm)
            x_adv = (x + delta).clamp(0.0, 1.0)
    return x_adv.detach()


def fgsm(model_loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float) -> torch.Tensor:
    """The fast gradient sign method: one l_inf step of size ``eps`` from ``x`` (no random start)."""
    return pgd(model_loss, x, eps, step_size=eps, steps=1, norm="linf", random_start=False)


BATCHNORMS = (nn.modules.batchnorm._BatchNorm,)


@contextmanager
def attacking(*modules: nn.Module):
    """Runs an attack on ``modules`` without side effects on them: every BatchNorm layer in eval
    mode (running statistics used, not updated) and every parameter's ``requires_grad`` off;
    on exit each module's ``training`` flag and each parameter's ``requires_grad`` are restored
    to what they were, also when the attack raises."""
    mods = {id(m): m for root in modules for m in root.modules()}
    params = {id(p): p for root in modules for p in root.parameters()}
    train_flags = {k: m.training for k, m in mods.items()}
    grad_flags = {k: p.requires_grad for k, p in params.items()}
    try:
        for m in mods.values():
            if isinstance(m, BATCHNORMS):
                m.training = False
        for p in params.values():
            p.requires_grad_(False)
        yield
    finally:
        for k, m in mods.items():
            m.training = train_flags[k]
        for k, p in params.items():
            p.requires_grad_(grad_flags[k])
