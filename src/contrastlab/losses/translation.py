"""Losses for unpaired image-to-image translation: PatchNCE and the adversarial losses.

Pure functions of tensors, used by CUT-style methods (CUT: Park et al., ECCV 2020;
DCLGAN / SimDCL: Han et al., CVPRW 2021).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

GAN_MODES = ("lsgan", "hinge", "nonsaturating")


def patch_nce(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Patchwise InfoNCE of CUT (Park et al., ECCV 2020), as used by DCLGAN (Han et al., CVPRW 2021).

    q, k: (B, P, d) query and key embeddings of P patches per image, taken at the same
    locations (row i of q and row i of k come from the same position). Both are L2-normalised
    here; the keys are detached (no gradient reaches k). For query patch i of image b the
    positive is k[b, i] and the negatives are the other P - 1 keys of the SAME image b (CUT's
    default; patches of the other images of the batch are not negatives):

        s_ij = cos(q[b, i], k[b, j])
        l(b, i) = -log( exp(s_ii / t) / sum_j exp(s_ij / t) ),   j over all P keys of image b

    which is the cross entropy of the logits ``[s_ii, s_ij (j != i)] / t`` to the positive.
    The loss is the mean of l over the B * P queries (a scalar); P = 1 gives 0.
    """
    if q.dim() != 3 or q.shape != k.shape:
        raise ValueError(f"patch_nce expects q and k of the same shape (B, P, d), "
                         f"got {tuple(q.shape)} and {tuple(k.shape)}")  # fmt: skip
    if temperature <= 0:
        raise ValueError(f"patch_nce needs a positive temperature, got {temperature}")
    b, p, _ = q.shape
    q = F.normalize(q.float(), dim=2)
    k = F.normalize(k.detach().float(), dim=2)
    logits = torch.bmm(q, k.transpose(1, 2)) / temperature  # (B, P, P); the positive is the diagonal
    target = torch.arange(p, device=q.device).repeat(b)
    return F.cross_entropy(logits.reshape(b * p, p), target)


def gan_loss(pred: torch.Tensor, target_real: bool, mode: str, for_discriminator: bool) -> torch.Tensor:
    """Adversarial loss of one discriminator output ``pred`` (a PatchGAN map, any shape), averaged
    over all its elements.

    Discriminator (``for_discriminator=True``), for D(real) with ``target_real=True`` and D(fake)
    with ``target_real=False``; its full loss is the sum of the two terms (CycleGAN / CUT /
    DCLGAN then halve the sum; the method applies that factor):

        lsgan:          (D(real) - 1)^2          D(fake)^2               (Mao et al., 2017)
        hinge:          relu(1 - D(real))        relu(1 + D(fake))       (Lim & Ye, 2017)
        nonsaturating:  softplus(-D(real))       softplus(D(fake))       (Goodfellow et al., 2014)

    Generator (``for_discriminator=False``, ``pred`` = D(G(x)), ``target_real`` must be True):

        lsgan: (D(fake) - 1)^2    hinge: -D(fake)    nonsaturating: softplus(-D(fake))
    """
    if mode not in GAN_MODES:
        raise ValueError(f"unknown GAN loss mode {mode!r}; expected one of {', '.join(GAN_MODES)}")
    pred = pred.float()
    if not for_discriminator:
        if not target_real:
            raise ValueError("the generator's GAN loss pushes D(fake) towards real: call it with target_real=True")
        if mode == "hinge":
            return -pred.mean()
        target_real = True  # lsgan and nonsaturating: the generator uses the discriminator's real term
    if mode == "lsgan":
        return ((pred - 1.0) ** 2).mean() if target_real else (pred**2).mean()
    if mode == "hinge":
        return F.relu(1.0 - pred).mean() if target_real else F.relu(1.0 + pred).mean()
    return F.softplus(-pred).mean() if target_real else F.softplus(pred).mean()
