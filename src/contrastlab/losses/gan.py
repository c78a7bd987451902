"""Adversarial losses of GANs (least squares, hinge, non-saturating): pure functions of tensors."""
from __future__ import annotations

import torch
import torch.nn.functional as F


GAN_MODES = ("lsgan", "hinge", "nonsaturating", "vanilla")


def gan_loss(pred: torch.Tensor, target_real: bool, mode: str, for_discriminator: bool) -> torch.Tensor:
    """Adversarial loss of one discriminator output ``pred`` (a PatchGAN map, any shape), averaged
    over all its elements, with the formulas of ``GANLoss`` in models/networks.py of
    taesungp/contrastive-unpaired-translation and JunlinHan/DCLGAN.

    Discriminator (``for_discriminator=True``), for D(real) with ``target_real=True`` and D(fake)
    with ``target_real=False``; its full loss is the sum of the two terms (CycleGAN / CUT /
    DCLGAN then halve the sum; the method applies that factor):

        lsgan:          (D(real) - 1)^2          D(fake)^2               (Mao et al., 2017)
        hinge:          relu(1 - D(real))        relu(1 + D(fake))       (Lim & Ye, 2017)
        nonsaturating:  softplus(-D(real))       softplus(D(fake))       (Goodfellow et al., 2014)
        vanilla:        the same as nonsaturating (the official 'vanilla' is BCE with logits)

    Generator (``for_discriminator=False``, ``pred`` = D(G(x)), ``target_real`` must be True):
    the official code calls the same loss with the "real" target for the generator, so

        lsgan: (D(fake) - 1)^2    hinge: relu(1 - D(fake))    nonsaturating / vanilla: softplus(-D(fake))

    (DCLGAN's hinge generator loss is -mean(min(D(G(x)) - 1, 0)) = mean(relu(1 - D(G(x)))), not
    the -mean(D(G(x))) of Lim & Ye and SAGAN: it stops pushing a patch once D scores it >= 1.)
    """
    if mode not in GAN_MODES:
        raise ValueError(f"unknown GAN loss mode {mode!r}; expected one of {', '.join(GAN_MODES)}")
    pred = pred.float()
    if not for_discriminator and not target_real:
        raise ValueError("the generator's GAN loss pushes D(fake) towards real: call it with target_real=True")
    if mode == "lsgan":
        return ((pred - 1.0) ** 2).mean() if target_real else (pred**2).mean()
    if mode == "hinge":
        return F.relu(1.0 - pred).mean() if target_real else F.relu(1.0 + pred).mean()
    return F.softplus(-pred).mean() if target_real else F.softplus(pred).mean()


def r1_penalty(real_pred: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """R1 gradient penalty (Mescheder, Geiger and Nowozin, ICML 2018), as StyleGAN2 uses it:
    mean over the batch of ||d D(x) / d x||^2 (the squared gradient summed over a sample's pixels),
    for ``real_images`` that require grad and their scores ``real_pred`` (any shape, summed).
    The caller weights it by gamma / 2 (times the interval of lazy regularisation). The graph is
    kept (``create_graph``) so the penalty can be differentiated with respect to D's weights."""
    dt = torch.promote_types(real_pred.dtype, torch.float32)  # float32 at least (bf16 autocast), float64 kept
    (grad,) = torch.autograd.grad(real_pred.to(dt).sum(), real_images, create_graph=True)
    return grad.to(dt).pow(2).reshape(grad.shape[0], -1).sum(1).mean()
