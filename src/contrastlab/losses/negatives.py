"""Losses and samplers that change the negatives: debiased / hard-negative contrastive losses
(DCL, HCL) and MoCHi's synthetic hard negatives.

Pure functions of tensors, in the style of ``contrastive.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .contrastive import _extra_logits, batch_logits


def _real(x: torch.Tensor) -> torch.Tensor:
    """float32 at least (float64 stays float64, so gradcheck works)."""
    return x if x.dtype == torch.float64 else x.float()


def _check_debias(name: str, temperature: float, tau_plus: float, beta: float) -> None:
    if not temperature > 0:
        raise ValueError(f"{name}: temperature must be > 0, got {temperature}")
    if not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"{name}: tau_plus must be in [0, 1), got {tau_plus}")
    if not beta >= 0.0:
        raise ValueError(f"{name}: beta must be >= 0, got {beta}")


def _debiased_terms(l_pos: torch.Tensor, l_neg: torch.Tensor, temperature: float, tau_plus: float, beta: float):
    """Per-anchor -log(pos / (pos + Ng)) from logits l_pos (M,) = s(i, p)/t and l_neg (M, N) = s(i, k)/t.

    Every exponential is taken relative to the row's largest logit m (detached); the common
    factor exp(m) cancels in pos / (pos + Ng), the clamp floor is scaled the same way, and
    -log(pos) is added as the logit itself, so nothing overflows or underflows into log(0).
    """
    n = l_neg.shape[1]
    m = torch.maximum(l_pos, l_neg.max(dim=1).values if n else l_pos).detach()
    pos = torch.exp(l_pos - m)
    neg = torch.exp(l_neg - m[:, None])
    if beta > 0 and n:
        # HCL: sum_k neg_k -> N * sum_k(imp_k neg_k) / sum_k imp_k with imp_k = neg_k**beta = exp(beta s/t)
        weights = torch.softmax(beta * l_neg, dim=1)
        neg_sum = n * (weights * neg).sum(dim=1)
    else:
        neg_sum = neg.sum(dim=1)
    ng = (neg_sum - tau_plus * n * pos) / (1.0 - tau_plus)
    floor = n * torch.exp(-1.0 / temperature - m)  # N exp(-1/t), in the same shifted units
    ng = torch.maximum(ng, floor)
    return torch.log(pos + ng) - (l_pos - m)


def debiased_nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.5,
    tau_plus: float = 0.1,
    beta: float = 0.0,
    gather: bool = True,
    extra_negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Debiased contrastive loss, DCL (Chuang et al., NeurIPS 2020), and its hard-negative
    variant HCL (Robinson et al., ICLR 2021), on SimCLR's two-view batch.

    z1, z2: (B, d) projections of two views, not yet normalised. As in ``nt_xent``, each of the
    2B L2-normalised anchors i has one positive p (the other view of its image) and N = 2B - 2
    negatives k (self and positive excluded). With pos = exp(s(i, p)/t), neg_k = exp(s(i, k)/t):

        Ng   = (-tau_plus * N * pos + sum_k neg_k) / (1 - tau_plus)
        Ng   = max(Ng, N * exp(-1/t))
        l(i) = -log( pos / (pos + Ng) )

    and the loss is the mean of l over the 2B anchors. HCL (``beta > 0``) replaces sum_k neg_k by
    N * sum_k(imp_k neg_k) / sum_k imp_k with imp_k = neg_k**beta = exp(beta s(i, k)/t), i.e.
    sum(imp * neg) / mean(imp); the weights are not detached. The gradient flows through pos
    inside Ng. tau_plus = 0, beta = 0 is exactly ``nt_xent``.

    ``gather`` as in ``nt_xent``: with several processes the negatives are the global batch's
    (N = 2 * global_B - 2) and each process averages over its own 2B anchors.
    ``extra_negatives`` (2B, M, d): further negatives per anchor (MoCHi), so N = 2B - 2 + M.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(
            f"debiased_nt_xent expects (B, d) tensors of the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    _check_debias("debiased_nt_xent", temperature, tau_plus, beta)
    anchors, logits, self_idx, pos_idx = batch_logits(F.normalize(_real(z1), dim=1), F.normalize(_real(z2), dim=1),
                                                      temperature, gather)  # fmt: skip
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    keep = torch.ones_like(logits, dtype=torch.bool)
    keep[rows, self_idx] = False
    keep[rows, pos_idx] = False
    l_pos = logits[rows, pos_idx]
    l_neg = logits[keep].view(rows.shape[0], logits.shape[1] - 2)
    extra = _extra_logits(anchors, extra_negatives, temperature, "debiased_nt_xent")
    if extra is not None:
        l_neg = torch.cat([l_neg, extra], dim=1)
    return _debiased_terms(l_pos, l_neg, temperature, tau_plus, beta).mean()


def debiased_info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    temperature: float = 0.2,
    tau_plus: float = 0.1,
    beta: float = 0.0,
    extra_negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """DCL / HCL (Chuang et al., NeurIPS 2020; Robinson et al., ICLR 2021) in MoCo's queue form.

    q, k: (B, d) queries and positive keys; queue: (K, d) negatives; all L2-normalised here.
    pos = exp(q.k/t), neg_j = exp(q.queue_j/t) over the N = K queue entries, then the same

        Ng = max((-tau_plus * N * pos + sum_j neg_j) / (1 - tau_plus), N * exp(-1/t))
        l  = -log( pos / (pos + Ng) )

    with HCL's reweighting of sum_j neg_j when ``beta > 0`` (see ``debiased_nt_xent``); mean
    over the batch. tau_plus = 0, beta = 0 is exactly ``info_nce``. ``extra_negatives``
    (B, M, d): further negatives per query (MoCHi), so N = K + M.
    """
    if q.dim() != 2 or q.shape != k.shape or queue.dim() != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(
            "debiased_info_nce expects q, k of shape (B, d) and queue (K, d), "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(queue.shape)}"
        )
    _check_debias("debiased_info_nce", temperature, tau_plus, beta)
    q = F.normalize(_real(q), dim=1)
    k = F.normalize(_real(k), dim=1)
    queue = F.normalize(_real(queue), dim=1)
    l_pos = (q * k).sum(dim=1) / temperature
    l_neg = q @ queue.T / temperature
    extra = _extra_logits(q, extra_negatives, temperature, "debiased_info_nce")
    if extra is not None:
        l_neg = torch.cat([l_neg, extra], dim=1)
    return _debiased_terms(l_pos, l_neg, temperature, tau_plus, beta).mean()


@torch.no_grad()
def mochi_negatives(
    q: torch.Tensor,
    queue: torch.Tensor,
    n_hard: int,
    s: int,
    s_prime: int,
    generator: torch.Generator | None = None,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """MoCHi's synthetic hard negatives (Kalantidis et al., NeurIPS 2020), per query.

    q: (B, d) queries, queue: (K, d) negatives, both L2-normalised here. For each query q_b
    separately, Qt_b = its ``n_hard`` (at most K) queue entries with the highest q_b . queue:

        h_k  = normalize(a n_i + (1 - a) n_j),  n_i, n_j ~ U(Qt_b) independently, a ~ U(0, 1),   k = 1..s
        h'_k = normalize(b q_b + (1 - b) n_j),  n_j ~ U(Qt_b), b ~ U(0, 0.5), q detached,        k = 1..s'

    Returns (B, s + s', d): the s mixes of two hard negatives, then the s' mixes with the query;
    unit norm, no gradient. Vectorised over the batch; draws come from ``generator`` if given.
    The caller appends q . h / t as extra negative logits (never enqueued).

    ``exclude`` (B, E) long, optional: rows of ``queue`` that query b must not use (when the
    pool is the batch itself: the anchor and its positive).
    """
    if q.dim() != 2 or queue.dim() != 2 or queue.shape[1] != q.shape[1] or queue.shape[0] == 0:
        raise ValueError(
            f"mochi_negatives expects q (B, d) and a non-empty queue (K, d), got {tuple(q.shape)}, {tuple(queue.shape)}"
        )
    if n_hard < 1 or s < 0 or s_prime < 0:
        raise ValueError(f"mochi_negatives needs n_hard >= 1 and s, s_prime >= 0, got {n_hard}, {s}, {s_prime}")
    q = F.normalize(_real(q.detach()), dim=1)
    queue = F.normalize(_real(queue.detach()), dim=1)
    bsz, d = q.shape
    n = min(int(n_hard), queue.shape[0])
    sims = q @ queue.T
    if exclude is not None:
        sims = sims.scatter(1, exclude.to(sims.device), float("-inf"))
        n = min(n, queue.shape[0] - exclude.shape[1])
    hard_idx = sims.topk(n, dim=1, sorted=False).indices  # (B, n): per query, never the first row's
    dev = generator.device if generator is not None else q.device

    def pick(count: int) -> torch.Tensor:  # (B, count, d) uniform draws from each row's own hard set
        idx = torch.randint(n, (bsz, count), generator=generator, device=dev).to(q.device)
        return queue[hard_idx.gather(1, idx)]  # index space first: no (B, n, d) copy of the hard set

    def uniform(count: int, high: float) -> torch.Tensor:
        return (torch.rand(bsz, count, 1, generator=generator, device=dev, dtype=q.dtype) * high).to(q.device)

    out = torch.empty(bsz, s + s_prime, d, dtype=q.dtype, device=q.device)
    a = uniform(s, 1.0)
    torch.lerp(pick(s), pick(s), 1 - a, out=out[:, :s])  # a n_i + (1 - a) n_j
    b = uniform(s_prime, 0.5)
    torch.lerp(pick(s_prime), q[:, None, :].expand(bsz, s_prime, d), b, out=out[:, s:])  # b q + (1 - b) n_j
    return out.div_(out.norm(dim=2, keepdim=True).clamp_min_(1e-12))
