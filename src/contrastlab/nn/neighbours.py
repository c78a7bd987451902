"""Nearest-neighbour search over a bank of features, chunk by chunk: never a full
queries x bank similarity matrix, so a 1.28M-image bank fits (kNN evaluation, a method's
neighbour graph such as Invariance Propagation's, the report's retrieval grid)."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["topk_neighbours", "inverse_norms"]


@torch.no_grad()
def topk_neighbours(
    queries: Tensor,
    bank: Tensor,
    k: int,
    chunk_size: int = 65536,
    bank_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The ``k`` largest dot products ``queries @ bank.T`` per query, bank chunk by chunk.

    Inputs are assumed L2-normalised (then the values are cosine similarities).  The
    bank is visited ``chunk_size`` rows at a time and a running top-k (values and
    global indices) is merged after each chunk, so memory is ``O(Q x chunk_size)``.
    Similarities are computed in float32 whatever the input dtype (fp16/bf16 banks
    are upcast one chunk at a time).  Computation happens on ``bank``'s device.

    Args:
        queries: (Q, d).
        bank: (N, d).
        k: neighbours per query; clamped to ``N``.
        chunk_size: bank rows per chunk.
        bank_scale: optional (N,) factors multiplying each bank column of the
            similarity (e.g. inverse norms, to get cosine similarity from an
            unnormalised bank without copying it).

    Returns:
        ``(values, indices)``, both (Q, min(k, N)), sorted by decreasing value;
        values are float32, indices int64 into ``bank``.
    """
    if queries.dim() != 2 or bank.dim() != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"expected (Q, d) and (N, d), got {tuple(queries.shape)} and {tuple(bank.shape)}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    device = bank.device
    q = queries.to(device=device, dtype=torch.float32)
    n = bank.shape[0]
    k = min(int(k), n)
    nq = q.shape[0]
    if k <= 0 or nq == 0:
        return (torch.empty(nq, max(k, 0), device=device), torch.empty(nq, max(k, 0), dtype=torch.long, device=device))
    best_v: Tensor | None = None
    best_i: Tensor | None = None
    for start in range(0, n, chunk_size):
        chunk = bank[start : start + chunk_size].to(torch.float32)
        sims = q @ chunk.T  # (Q, c) float32
        if bank_scale is not None:
            sims.mul_(bank_scale[start : start + chunk.shape[0]].to(device=device, dtype=torch.float32))
        kc = min(k, sims.shape[1])
        v, i = sims.topk(kc, dim=1)
        i += start
        del sims, chunk
        if best_v is None:
            best_v, best_i = v, i
        else:
            cat_v = torch.cat([best_v, v], dim=1)
            cat_i = torch.cat([best_i, i], dim=1)
            best_v, pos = cat_v.topk(min(k, cat_v.shape[1]), dim=1)
            best_i = cat_i.gather(1, pos)
    return best_v, best_i


def inverse_norms(x: Tensor, chunk_size: int = 65536, eps: float = 1e-12) -> Tensor:
    """1 / ||x_i|| (float32), computed chunk-wise so an fp16 bank is never fully upcast."""
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for s in range(0, x.shape[0], chunk_size):
        out[s : s + chunk_size] = x[s : s + chunk_size].to(torch.float32).norm(dim=1).clamp_min(eps).reciprocal()
    return out
