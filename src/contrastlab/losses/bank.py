"""Losses against a memory bank: Invariance Propagation's instance loss over a background set and
its invariance loss over discovered positives (Wang et al., NeurIPS 2020; the official code's
objective.py InvariancePropagationLoss computes the same two terms).

Pure functions of similarities. With ``S_j = exp(f . v_j / t)`` for a query f and bank rows v_j,
the background set B (the K most similar rows, the query's own row among them), the query's own
row ``self`` and a set of positives P:

    L_ins = -log( S_self / sum_{j in B} S_j )
    L_inv = -log( sum_{p in P} S_p / (sum_{j in B} S_j - S_self) )   (the official --exclusive 1)

Both are computed with log-sum-exp (no overflow for small t). The bank is the same for every
process, so nothing is gathered.
"""
from __future__ import annotations

import torch

__all__ = ["background_instance_loss", "invariance_loss"]


def background_instance_loss(self_sim: torch.Tensor, background_sim: torch.Tensor, temperature: float) -> torch.Tensor:
    """L_ins, the mean over the B queries of ``-log(S_self / sum_B S)``.

    self_sim: (B,) dot products ``f . v_self``; background_sim: (B, K) dot products with the
    background rows (the query's own row included when it is among the K most similar, as the
    official code's top-K of all rows)."""
    if background_sim.dim() != 2 or self_sim.shape != background_sim.shape[:1]:
        raise ValueError(f"expected (B,) and (B, K), got {tuple(self_sim.shape)} and {tuple(background_sim.shape)}")
    return (torch.logsumexp(background_sim / temperature, dim=1) - self_sim / temperature).mean()


def invariance_loss(
    pos_sim: torch.Tensor,
    pos_mask: torch.Tensor,
    background_sim: torch.Tensor,
    background_is_self: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_inv over the queries that have at least one positive: per query
    ``-log(sum_P S / (sum_B S - S_self))``, and their mean.

    pos_sim: (B, m) dot products with candidate positives, ``pos_mask`` (B, m) bool marking the
    positives P of each query; background_sim: (B, K), ``background_is_self`` (B, K) bool marking
    the query's own row in its background (at most one per row): the denominator sums B without
    it, which is ``sum_B S - S_self`` when the row is in B (and sum_B S when it is not, where the
    difference could be negative).

    Returns ``(loss, has)``: the mean over the queries with a positive (0, with gradient, when
    none has one) and the (B,) bool of those queries."""
    if pos_sim.shape != pos_mask.shape or background_sim.shape != background_is_self.shape:
        raise ValueError("invariance_loss: each similarity tensor needs a mask of its shape")
    neg_inf = torch.tensor(float("-inf"), dtype=pos_sim.dtype, device=pos_sim.device)
    has = pos_mask.any(dim=1)
    logits = torch.where(pos_mask, pos_sim / temperature, neg_inf)
    # a row without positives would be all -inf (NaN gradients even when left out): give it zeros
    num = torch.logsumexp(torch.where(has[:, None], logits, torch.zeros_like(logits)), dim=1)
    den = torch.logsumexp(torch.where(background_is_self, neg_inf, background_sim / temperature), dim=1)
    per = den - num
    if not bool(has.any()):
        return 0.0 * (pos_sim.sum() + background_sim.sum()), has
    return per[has].mean(), has
