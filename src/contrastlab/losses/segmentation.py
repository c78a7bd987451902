"""Segmentation losses: soft Dice, Dice + cross-entropy (RP-Net, Tang et al., ICCV 2021, section 3.4)
and the class-weighted cross-entropy of CWT (Lu et al., ICCV 2021).

``soft_dice_loss``: p = softmax(logits), t = one-hot(target), over the valid pixels (target != ignore)
of the whole batch, per class k: D_k = 2 sum p_k t_k / (sum (p_k + t_k) + eps); loss = 1 - mean_k D_k
(the official dice_loss_softmax, uci-cbcl/RP-Net net/rp_net.py, eps 1e-7; ignored pixels are new).
``dice_ce_loss`` = soft_dice_loss + mean cross-entropy over the valid pixels (net/rp_net.py dice_ce).
``episode_weighted_ce``: per episode e, the cross-entropy of its pixels weighted w_0 = 1 for background
and w_1 = n_background / n_foreground (the episode's own counts over its valid pixels; zero counts
taken as 1), sum w_y nll / sum w_y (PyTorch's weighted mean), summed over episodes (so each episode's
gradient is its own) or averaged (``reduction="mean"``). CWT's dynamic class weights
(zhiheLu/CWT-for-FSS src/train.py and src/test.py: ``weight=[1.0, len(back_pix) / len(target_pix)]``).
``smoothed_cross_entropy``: the cross-entropy against label-smoothed targets of RePRI's stage-1 training
(mboudiaf/RePRI-for-Few-Shot-Segmentation src/train.py:201-209 and 159-182), with C classes and smoothing eps:
q_c = 1 - eps for the pixel's class, eps / (C - 1) for each other class; loss = mean over the valid pixels
(target != ignore) of -sum_c q_c log softmax(logits)_c. (PyTorch's ``label_smoothing`` spreads eps over all C
classes, the true one included: another target, 1 - eps + eps / C.) No valid pixel: 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255, eps: float = 1e-7) -> torch.Tensor:
    """(B, K, H, W) logits and (B, H, W) long targets in [0, K) or ``ignore_index`` -> scalar."""
    k = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1).to(logits.dtype)
    t = F.one_hot(torch.where(target == ignore_index, 0, target), k).permute(0, 3, 1, 2).to(logits.dtype) * valid
    p = logits.softmax(dim=1) * valid
    dims = (0, 2, 3)
    dice = 2 * (p * t).sum(dims) / ((p + t).sum(dims) + eps)
    return 1 - dice.mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """soft Dice + cross-entropy (mean over valid pixels)."""
    return soft_dice_loss(logits, target, ignore_index) + F.cross_entropy(logits, target, ignore_index=ignore_index)


def episode_weighted_ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
                        reduction: str = "sum") -> torch.Tensor:  # fmt: skip
    """(E, N, 2, H, W) logits and (E, N, H, W) targets (E episodes of N images) -> scalar."""
    valid = target != ignore_index
    t = torch.where(valid, target, 0)
    fg = ((t == 1) & valid).flatten(1).sum(1).clamp(min=1)
    bg = ((t == 0) & valid).flatten(1).sum(1).clamp(min=1)
    w1 = (bg.to(logits.dtype) / fg.to(logits.dtype)).view(-1, *([1] * (target.dim() - 1)))
    w = torch.where(t == 1, w1, torch.ones_like(w1)) * valid.to(logits.dtype)
    nll = -logits.log_softmax(dim=2).gather(2, t.unsqueeze(2)).squeeze(2)
    per_episode = (w * nll).flatten(1).sum(1) / w.flatten(1).sum(1).clamp(min=1e-12)
    return per_episode.sum() if reduction == "sum" else per_episode.mean()


def smoothed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, eps: float, ignore_index: int = 255) -> torch.Tensor:
    """(B, C, H, W) logits and (B, H, W) long targets in [0, C) or ``ignore_index`` -> scalar (see the module
    docstring); eps = 0 is the plain mean cross-entropy over the valid pixels."""
    c = logits.shape[1]
    valid = target != ignore_index
    t = torch.where(valid, target, 0)
    one_hot = F.one_hot(t, c).permute(0, 3, 1, 2).to(logits.dtype)
    q = one_hot * (1 - eps) + (1 - one_hot) * (eps / (c - 1))
    per_pixel = -(q * logits.log_softmax(dim=1)).sum(1)
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)
