"""NT-Xent over more than two views of each image: every other view of an anchor's image is a positive
(RoCL's three-view loss over [t(x), t'(x), t(x)^adv], Kim et al., NeurIPS 2020)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..distributed import gather_with_grad, rank_and_world


def multi_view_nt_xent(views: Sequence[torch.Tensor], temperature: float = 0.5, gather: bool = True) -> torch.Tensor:
    """NT-Xent over V >= 2 views of the same B images.

    views: V tensors (B, d), not yet normalised; s = cosine similarity. Over the V B embeddings
    (the global batch's V N with ``gather`` and several processes), anchor i's positives P(i) are
    the V - 1 other views of its image and every other embedding is a negative; each positive is
    a term of its own, with the anchor's full denominator (the other positives in it too):

        L = 1 / (V B) sum_i sum_{p in P(i)} -log( exp(s(i, p) / t) / sum_{k != i} exp(s(i, k) / t) )

    (RoCL's official loss.py NT_xent with adv_type='Rep': (1 / 3N) times the sum of the six
    positive diagonals of the 3N x 3N matrix). For V = 2 this is :func:`nt_xent`.
    """
    if len(views) < 2:
        raise ValueError(f"multi_view_nt_xent needs at least 2 views, got {len(views)}")
    shape = views[0].shape
    if len(shape) != 2 or any(v.shape != shape for v in views):
        raise ValueError(f"multi_view_nt_xent expects V tensors (B, d) of one shape, got {[tuple(v.shape) for v in views]}")
    n_views, b = len(views), shape[0]
    z = [F.normalize(v.float(), dim=1) for v in views]
    rank, world = rank_and_world() if gather else (0, 1)
    cands = [gather_with_grad(v) for v in z] if world > 1 else z
    n = cands[0].shape[0]  # images in the global batch
    anchors = torch.cat(z)  # (V b, d), view-major
    logits = anchors @ torch.cat(cands).T / temperature  # (V b, V n), candidate column v n + j
    dev = anchors.device
    local = torch.arange(b, device=dev) + rank * b  # each anchor's image in the global batch
    view_of = torch.arange(n_views, device=dev).repeat_interleave(b)  # (V b,)
    image_of = local.repeat(n_views)
    rows = torch.arange(n_views * b, device=dev)
    logits[rows, view_of * n + image_of] = float("-inf")  # no self-similarity
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    total = anchors.new_zeros(())
    for shift in range(1, n_views):  # the positive in view (v + shift) mod V of each anchor
        pos = ((view_of + shift) % n_views) * n + image_of
        total = total - log_prob[rows, pos].sum()
    return total / (n_views * b)
