"""Losses of adversarial training on labels (Chen et al., "Adversarial Robustness: From
Self-Supervised Pre-Training to Fine-Tuning", CVPR 2020; official code TAMU-VITA/Adv-SS-Pretraining).

- :func:`clean_adversarial_ce`: ``w CE(f(x_adv), y) + (1 - w) CE(f(x), y)``; the paper's adversarial
  pre-training uses w = 0.5 (``pretraining/train_adv_rotation.py``: ``loss = (criterion(output_adv,
  target) + criterion(output_clean, target)) / 2``), Madry's adversarial training w = 1.
- :func:`gradient_diversity`: the ensemble's penalty on the tasks' input gradients, the mean over
  the batch of ``log det(G_b^T G_b + jitter I)`` with ``G_b = [g_1 / |g_1|, ..., g_T / |g_T|]``, the
  flattened gradient of each task's loss with respect to its (adversarial) input for image b,
  normalised to unit l2 norm (``pretraining/attack_algo_ensemble.py``, ``calculate_log_det``: norms
  + 1e-10, jitter 1e-5 I). det(G^T G) is the squared volume spanned by the unit gradients: 0 when
  two tasks' gradients are parallel, 1 when they are orthogonal.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["clean_adversarial_ce", "gradient_diversity"]


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision tensors (bf16 / fp16 runs); float32 and float64 kept."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def clean_adversarial_ce(logits_clean: torch.Tensor, logits_adv: torch.Tensor, labels: torch.Tensor,
                         adv_weight: float = 0.5) -> torch.Tensor:
    """``adv_weight * CE(logits_adv, y) + (1 - adv_weight) * CE(logits_clean, y)`` (means over the batch)."""
    loss = adv_weight * F.cross_entropy(_at_least_fp32(logits_adv), labels)
    if adv_weight < 1:
        loss = loss + (1 - adv_weight) * F.cross_entropy(_at_least_fp32(logits_clean), labels)
    return loss


def gradient_diversity(grads: Sequence[torch.Tensor], jitter: float = 1e-5, eps: float = 1e-10) -> torch.Tensor:
    """Mean over the batch of ``log det(G^T G + jitter I)``, ``G`` (D, T) the T tasks' per-image
    gradients (each (B, ...) flattened to (B, D)) divided by their l2 norm (+ ``eps``).
    Differentiable (take the gradients with ``create_graph=True`` to train through it)."""
    if len(grads) < 2:
        raise ValueError(f"gradient_diversity needs the gradients of at least 2 tasks, got {len(grads)}")
    cols = []
    for g in grads:
        g = g.flatten(1)
        g = _at_least_fp32(g)
        cols.append(g / (g.norm(dim=1, keepdim=True) + eps))
    G = torch.stack(cols, dim=2)  # (B, D, T)
    gram = G.transpose(1, 2) @ G + jitter * torch.eye(len(grads), device=G.device, dtype=G.dtype)
    return torch.logdet(gram).mean()
