"""Instance-contrastive losses: SimCLR's NT-Xent and MoCo's InfoNCE.

Pure functions of tensors. Cross-process gathering is an argument (on by default, a no-op
in a single process), never hidden in a model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import gather_with_grad, rank_and_world


def _extra_logits(anchors: torch.Tensor, extra: torch.Tensor | None, temperature: float, what: str):
    """Similarities of each anchor (n, d) to its own extra negatives (n, M, d), divided by t."""
    if extra is None:
        return None
    if extra.dim() != 3 or extra.shape[0] != anchors.shape[0] or extra.shape[2] != anchors.shape[1]:
        raise ValueError(f"{what}: extra_negatives must be ({anchors.shape[0]}, M, {anchors.shape[1]}), got {tuple(extra.shape)}")
    extra = F.normalize(extra.to(anchors.dtype), dim=2)
    return torch.einsum("nd,nmd->nm", anchors, extra) / temperature


def batch_logits(z1: torch.Tensor, z2: torch.Tensor, temperature: float, gather: bool):
    """SimCLR's similarity logits for normalised (B, d) views: anchors [z1; z2] (2B, d) against the
    2N candidates of the global batch (gathered with gradient when ``gather`` and several
    processes), divided by t; with each anchor's own column ``self_idx`` and its positive's
    ``pos_idx`` (2B,). Shared by ``nt_xent`` and ``debiased_nt_xent``."""
    b = z1.shape[0]
    rank, world = rank_and_world() if gather else (0, 1)
    all1, all2 = (gather_with_grad(z1), gather_with_grad(z2)) if world > 1 else (z1, z2)
    n = all1.shape[0]  # global batch
    anchors = torch.cat([z1, z2], dim=0)
    logits = anchors @ torch.cat([all1, all2], dim=0).T / temperature  # (2b, 2n)
    local = torch.arange(b, device=z1.device) + rank * b
    return anchors, logits, torch.cat([local, local + n]), torch.cat([local + n, local])


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.5,
    gather: bool = True,
    extra_negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """SimCLR's normalized temperature-scaled cross entropy (Chen et al., ICML 2020).

    z1, z2: (B, d) projections of two views of the same B images, not yet normalised. Over
    the 2B L2-normalised embeddings, each anchor's positive is the other view of its image and
    the other 2B - 2 embeddings are its negatives:

        l(i) = -log( exp(s(i, p(i)) / t) / sum_{k != i} exp(s(i, k) / t) ),  s = cosine similarity

    and the loss is the mean of l over the 2B anchors.

    With ``gather=True`` and several processes (torch.distributed initialised), the
    embeddings of all processes are gathered with gradient, so the negatives are the global
    batch's (2 N - 2 for a global batch N) and each process averages over its own 2B anchors;
    DDP's gradient averaging then yields exactly the gradient of the single-process loss on the
    concatenated batch. In one process ``gather`` changes nothing.

    ``extra_negatives`` (2B, M, d), optional: further negatives per anchor (e.g. MoCHi's
    synthetic ones), anchors in the order [z1; z2]; normalised here, added to the denominator.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent expects two (B, d) tensors of the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    anchors, logits, self_idx, pos_idx = batch_logits(F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1),
                                                      temperature, gather)  # fmt: skip
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    logits[rows, self_idx] = float("-inf")
    extra = _extra_logits(anchors, extra_negatives, temperature, "nt_xent")
    if extra is not None:
        logits = torch.cat([logits, extra], dim=1)
    return F.cross_entropy(logits, pos_idx)


def info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    temperature: float = 0.2,
    extra_negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """MoCo's InfoNCE loss (He et al., CVPR 2020; MoCo v2: Chen et al., 2020).

    q, k: (B, d) queries and their positive keys; queue: (K, d) negative keys. All three are
    L2-normalised here (a no-op for normalised inputs). For each query the logits are
    ``[q.k, q.queue_1, ..., q.queue_K] / t`` with the positive at index 0; the loss is the mean
    cross entropy over the batch. ``extra_negatives`` (B, M, d), optional: further negatives
    per query (MoCHi's synthetic points), normalised here and appended to its logits.
    """
    if q.dim() != 2 or q.shape != k.shape or queue.dim() != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(
            f"info_nce expects q, k of shape (B, d) and queue (K, d), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(queue.shape)}"
        )
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1)
    queue = F.normalize(queue.float(), dim=1)
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue.T
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    extra = _extra_logits(q, extra_negatives, temperature, "info_nce")
    if extra is not None:
        logits = torch.cat([logits, extra], dim=1)
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def leave_one_out_info_nce(
    q: torch.Tensor, k: torch.Tensor, queues: torch.Tensor, temperature: float = 0.2
) -> torch.Tensor:
    """LooC's InfoNCE losses, one per embedding space (Xiao et al., ICLR 2021, section 3).

    n atomic augmentations give n + 1 spaces and n + 1 keys per image. ``q`` (S, B, d): the query
    embedded in each space s = 0..n; ``k`` (S, S, B, d): ``k[s, j]`` is key j of each image embedded in
    space s (key 0 differs from the query in every augmentation, key i shares its augmentation i);
    ``queues`` (S, K, d): each space's queue of negative keys. All are L2-normalised here.

    Space 0 is invariant to every augmentation: each key is a positive, with the queue as negatives,
    ``L_0 = 1/(n+1) sum_j -log(exp(q.k_j/t) / (exp(q.k_j/t) + sum_queue exp(q.n/t)))`` (one InfoNCE term per
    positive key; the other positives are not in its denominator). Space i >= 1 is sensitive to
    augmentation i: only k_i is positive, the image's other keys k_j (j != i, k_0 included) are
    negatives with the queue, ``L_i = -log(exp(q.k_i/t) / (sum_j exp(q.k_j/t) + sum_queue exp(q.n/t)))``.
    Returns the (S,) losses, each a mean over the batch.
    """
    if q.dim() != 3 or k.shape != (q.shape[0], *q.shape) or queues.dim() != 3 or queues.shape[0] != q.shape[0] \
            or queues.shape[2] != q.shape[2]:  # fmt: skip
        raise ValueError(f"leave_one_out_info_nce expects q (S, B, d), k (S, S, B, d) and queues (S, K, d), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(queues.shape)}")  # fmt: skip
    q = F.normalize(q.float(), dim=-1)
    k = F.normalize(k.float(), dim=-1)
    queues = F.normalize(queues.float(), dim=-1)
    n_spaces, b = q.shape[0], q.shape[1]
    l_keys = torch.einsum("sbd,sjbd->sbj", q, k)  # (S, B, S): each query against its image's keys
    l_queue = torch.einsum("sbd,skd->sbk", q, queues)  # (S, B, K)
    # space 0: one term per positive key j, against the queue
    neg0 = torch.logsumexp(l_queue[0] / temperature, dim=1, keepdim=True)  # (B, 1)
    pos0 = l_keys[0] / temperature  # (B, S)
    losses = [(torch.logaddexp(pos0, neg0) - pos0).mean()]
    # space i: key i against the other keys of its image and the queue
    for i in range(1, n_spaces):
        logits = torch.cat([l_keys[i], l_queue[i]], dim=1) / temperature
        target = torch.full((b,), i, dtype=torch.long, device=q.device)
        losses.append(F.cross_entropy(logits, target))
    return torch.stack(losses)
