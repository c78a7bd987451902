"""NT-Xent over more than two views of each image: every other view of an anchor's image is a positive
(RoCL's three-view loss over [t(x), t'(x), t(x)^adv], Kim et al., NeurIPS 2020), and its debiased /
hard-negative form (DCL, Chuang et al., NeurIPS 2020; HCL, Robinson et al., ICLR 2021) with the V - 1
positives of each anchor known, so that RoCL combines with the core's loss axis. Both take MoCHi's
synthetic negatives per anchor (``extra_negatives``)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..distributed import gather_with_grad, rank_and_world
from .contrastive import _extra_logits
from .negatives import _check_debias, _real


def _views_logits(views: Sequence[torch.Tensor], temperature: float, gather: bool, what: str):
    """The V views' anchors (V b, d), view-major and normalised, their logits (V b, V n) against the
    V n candidates of the global batch (candidate column u n + j: view u of global image j), and each
    anchor's view and global image (V b,)."""
    if len(views) < 2:
        raise ValueError(f"{what} needs at least 2 views, got {len(views)}")
    shape = views[0].shape
    if len(shape) != 2 or any(v.shape != shape for v in views):
        raise ValueError(f"{what} expects V tensors (B, d) of one shape, got {[tuple(v.shape) for v in views]}")
    n_views, b = len(views), shape[0]
    z = [F.normalize(_real(v), dim=1) for v in views]
    rank, world = rank_and_world() if gather else (0, 1)
    cands = [gather_with_grad(v) for v in z] if world > 1 else z
    n = cands[0].shape[0]  # images in the global batch
    anchors = torch.cat(z)  # (V b, d), view-major
    logits = anchors @ torch.cat(cands).T / temperature  # (V b, V n)
    dev = anchors.device
    view_of = torch.arange(n_views, device=dev).repeat_interleave(b)
    image_of = (torch.arange(b, device=dev) + rank * b).repeat(n_views)
    return anchors, logits, view_of, image_of, n


def multi_view_nt_xent(
    views: Sequence[torch.Tensor],
    temperature: float = 0.5,
    gather: bool = True,
    extra_negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """NT-Xent over V >= 2 views of the same B images.

    views: V tensors (B, d), not yet normalised; s = cosine similarity. Over the V B embeddings
    (the global batch's V N with ``gather`` and several processes), anchor i's positives P(i) are
    the V - 1 other views of its image and every other embedding is a negative; each positive is
    a term of its own, with the anchor's full denominator (the other positives in it too):

        L = 1 / (V B) sum_i sum_{p in P(i)} -log( exp(s(i, p) / t) / sum_{k != i} exp(s(i, k) / t) )

    (RoCL's official loss.py NT_xent with adv_type='Rep': (1 / 3N) times the sum of the six
    positive diagonals of the 3N x 3N matrix). For V = 2 this is :func:`nt_xent`.
    ``extra_negatives`` (V B, M, d), optional: further negatives per anchor (MoCHi), anchors in
    the order [views[0]; views[1]; ...]; normalised here and added to that anchor's denominator.
    """
    anchors, logits, view_of, image_of, n = _views_logits(views, temperature, gather, "multi_view_nt_xent")
    n_views = len(views)
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    logits[rows, view_of * n + image_of] = float("-inf")  # no self-similarity
    extra = _extra_logits(anchors, extra_negatives, temperature, "multi_view_nt_xent")
    if extra is not None:
        logits = torch.cat([logits, extra], dim=1)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    total = anchors.new_zeros(())
    for shift in range(1, n_views):  # the positive in view (v + shift) mod V of each anchor
        pos = ((view_of + shift) % n_views) * n + image_of
        total = total - log_prob[rows, pos].sum()
    return total / anchors.shape[0]


def _multi_positive_debiased_terms(l_pos: torch.Tensor, l_neg: torch.Tensor, temperature: float, tau_plus: float,
                                   beta: float) -> torch.Tensor:  # fmt: skip
    """-log(pos_p / (pos_p + Ng)) per anchor and positive, (A, P), from logits l_pos (A, P) = s(i, p)/t
    and l_neg (A, N) = s(i, k)/t; Ng uses the mean of the anchor's P positives. Shifted by the row's
    largest logit m (detached) as ``negatives._debiased_terms``, which this is for P = 1."""
    n = l_neg.shape[1]
    m = torch.maximum(l_pos.max(dim=1).values, l_neg.max(dim=1).values if n else l_pos.max(dim=1).values).detach()
    pos = torch.exp(l_pos - m[:, None])
    neg = torch.exp(l_neg - m[:, None])
    if beta > 0 and n:  # HCL: sum_k neg_k -> N * sum_k(imp_k neg_k) / sum_k imp_k, imp_k = exp(beta s/t)
        neg_sum = n * (torch.softmax(beta * l_neg, dim=1) * neg).sum(dim=1)
    else:
        neg_sum = neg.sum(dim=1)
    ng = (neg_sum - tau_plus * n * pos.mean(dim=1)) / (1.0 - tau_plus)
    ng = torch.maximum(ng, n * torch.exp(-1.0 / temperature - m))  # floor N exp(-1/t), shifted alike
    return torch.log(pos + ng[:, None]) - (l_pos - m[:, None])


def debiased_multi_view_nt_xent(
    views: Sequence[torch.Tensor],
    temperature: float = 0.5,
    tau_plus: float = 0.1,
    beta: float = 0.0,
    gather: bool = True,
    extra_negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """The debiased (DCL, Chuang et al., NeurIPS 2020) / hard-negative (HCL, Robinson et al., ICLR
    2021) NT-Xent over V >= 2 views of the same B images, with every anchor's V - 1 positives known.

    views: V tensors (B, d), not yet normalised; s = cosine similarity. Anchor i (one of the V B
    L2-normalised embeddings, view-major) has the positives P(i), the V - 1 other views of its image,
    and N = V n - V negatives k, every other embedding of the (global, with ``gather``) batch of n
    images, plus the M rows of ``extra_negatives`` (V B, M, d) if given (MoCHi), so N = V n - V + M.
    With pos_p = exp(s(i, p)/t), neg_k = exp(s(i, k)/t), Chuang et al.'s estimator of the negatives'
    mass with the positives' mean as the estimate of a false negative's:

        Ng(i)   = max( (sum_k neg_k - tau_plus * N * mean_{p' in P(i)} pos_p') / (1 - tau_plus),  N exp(-1/t) )
        l(i, p) = -log( pos_p / (pos_p + Ng(i)) )
        L       = 1 / (V B) sum_i sum_{p in P(i)} l(i, p)

    (the scaling of :func:`multi_view_nt_xent`: each positive a term of its own). HCL (``beta > 0``)
    replaces sum_k neg_k by N * sum_k(imp_k neg_k) / sum_k imp_k, imp_k = exp(beta s(i, k)/t), the
    weights not detached, as :func:`debiased_nt_xent`. The other positives of an anchor are NOT among
    its negatives nor in the denominator of l(i, p): they are known positives (DCL's form, pos_p + Ng).

    For V = 2 this is exactly :func:`debiased_nt_xent`. With tau_plus = beta = 0 the floor never
    binds (every s >= -1, so sum_k neg_k >= N exp(-1/t)) and this is the "positives out of the
    denominator" multi-positive NT-Xent, l(i, p) = -log(pos_p / (pos_p + sum_k neg_k)), which for
    V >= 3 is NOT :func:`multi_view_nt_xent` (that keeps the other V - 2 positives in each term's
    denominator, as RoCL's official loss): RoCL therefore uses :func:`multi_view_nt_xent` when
    tau_plus = beta = 0, so its default loss is unchanged.
    Numerically stable: every exponential is taken relative to the row's largest logit.
    """
    _check_debias("debiased_multi_view_nt_xent", temperature, tau_plus, beta)
    anchors, logits, view_of, image_of, n = _views_logits(views, temperature, gather, "debiased_multi_view_nt_xent")
    n_views = len(views)
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    shifts = torch.arange(1, n_views, device=anchors.device)
    pos_cols = ((view_of[:, None] + shifts) % n_views) * n + image_of[:, None]  # (V b, V - 1)
    l_pos = logits.gather(1, pos_cols)
    keep = torch.ones_like(logits, dtype=torch.bool)
    keep[rows[:, None], torch.cat([(view_of * n + image_of)[:, None], pos_cols], dim=1)] = False  # self, positives
    l_neg = logits[keep].view(rows.shape[0], logits.shape[1] - n_views)
    extra = _extra_logits(anchors, extra_negatives, temperature, "debiased_multi_view_nt_xent")
    if extra is not None:
        l_neg = torch.cat([l_neg, extra], dim=1)
    return _multi_positive_debiased_terms(l_pos, l_neg, temperature, tau_plus, beta).sum() / anchors.shape[0]
