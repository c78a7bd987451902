"""Weighted k-nearest-neighbour evaluation on frozen features.

The classifier is the one of Wu et al. 2018 ("Unsupervised Feature Learning via
Non-Parametric Instance Discrimination"), also used by DINO and most SSL papers:
features are L2-normalised, each test point looks up its ``k`` most cosine-similar
training points, and each neighbour votes for its own class with weight
``exp(sim / temperature)``.  The predicted class is the argmax of the summed votes.

Memory: nothing of size ``N_test x N_train`` is ever built.  Test rows are processed
``chunk_size`` at a time and, when ``chunk_size x N_train`` would exceed
``max_sim_elems`` similarities, the bank is processed in chunks as well with a
running top-k merge (:func:`topk_neighbours`).  With the defaults the similarity
block is at most 32M float32 values (128 MiB) whatever the sizes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor

from ..fields import option

__all__ = ["KnnOptions", "topk_neighbours", "knn_predict", "knn_eval", "knn_accuracy"]


@dataclass
class KnnOptions:
    """The options of ``contrastlab eval knn RUN [key=value ...]`` (each with its range)."""

    label: Optional[str] = None  # the data set's label to classify (default: its default label)
    k: int = option(20, ge=1, doc="neighbours per test image")
    temperature: float = option(0.1, gt=0)
    features: Literal["model", "random", "pixels"] = "model"  # random / pixels: baselines
    device: str = "auto"
    batch_size: int = option(512, ge=1)  # images per feature-extraction batch

# Largest similarity block (queries x bank rows) computed at once by knn_predict.
_MAX_SIM_ELEMS = 1 << 25


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


def _inverse_norms(x: Tensor, chunk_size: int = 65536, eps: float = 1e-12) -> Tensor:
    """1 / ||x_i|| (float32), computed chunk-wise so an fp16 bank is never fully upcast."""
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for s in range(0, x.shape[0], chunk_size):
        out[s : s + chunk_size] = x[s : s + chunk_size].to(torch.float32).norm(dim=1).clamp_min(eps).reciprocal()
    return out


@torch.no_grad()
def _knn_votes(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    n_classes: int,
    k: int,
    temperature: float,
    chunk_size: int,
    bank_chunk_size: int | None,
):
    """Yield (start, votes) with votes (B, n_classes) float32 for each test chunk."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    if k < 1:
        raise ValueError("k must be >= 1")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    if train_feats.shape[0] != train_labels.shape[0]:
        raise ValueError("train_feats and train_labels have different lengths")
    device = train_feats.device
    train_labels = train_labels.to(device=device, dtype=torch.long).reshape(-1)
    keep = train_labels >= 0
    if not bool(keep.all()):  # unknown labels (-1) are not part of the bank
        train_feats, train_labels = train_feats[keep], train_labels[keep]
    if train_labels.numel() == 0:
        raise ValueError("no labelled training features (all labels are -1)")
    if int(train_labels.max()) >= n_classes:
        raise ValueError(f"train label {int(train_labels.max())} >= n_classes={n_classes}")
    n_train = train_feats.shape[0]
    k = min(k, n_train)
    if bank_chunk_size is None:
        bank_chunk_size = max(k, _MAX_SIM_ELEMS // max(1, min(chunk_size, test_feats.shape[0])))
    inv_norm = _inverse_norms(train_feats)
    for start in range(0, test_feats.shape[0], chunk_size):
        q = test_feats[start : start + chunk_size].to(device=device, dtype=torch.float32)
        q = torch.nn.functional.normalize(q, dim=1)
        sims, idx = topk_neighbours(q, train_feats, k, chunk_size=bank_chunk_size, bank_scale=inv_norm)
        # exp((s - s_max) / T): same argmax as exp(s / T), but cannot overflow for small T.
        weights = ((sims - sims[:, :1]) / temperature).exp_()
        votes = torch.zeros(q.shape[0], n_classes, dtype=torch.float32, device=device)
        votes.scatter_add_(1, train_labels[idx], weights)
        yield start, votes


@torch.no_grad()
def knn_predict(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    n_classes: int,
    k: int = 20,
    temperature: float = 0.1,
    chunk_size: int = 1024,
    bank_chunk_size: int | None = None,
) -> Tensor:
    """Weighted kNN class predictions, (N_test,) int64 on ``test_feats``'s device.

    Cosine similarity (features are L2-normalised here, in float32, chunk by chunk),
    the ``k`` nearest training points each vote ``exp(sim / temperature)`` for their
    label; argmax of the votes wins.  Training rows labelled -1 are ignored.
    ``chunk_size`` test rows are handled at once; ``bank_chunk_size`` (default: auto,
    the whole bank unless the similarity block would exceed 32M values) bounds the
    bank rows per block.  The computation runs on ``train_feats``'s device.
    """
    out = torch.empty(test_feats.shape[0], dtype=torch.long, device=train_feats.device)
    for start, votes in _knn_votes(
        train_feats, train_labels, test_feats, n_classes, k, temperature, chunk_size, bank_chunk_size
    ):
        out[start : start + votes.shape[0]] = votes.argmax(dim=1)
    return out.to(test_feats.device)


@torch.no_grad()
def knn_eval(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    n_classes: int,
    k: int = 20,
    temperature: float = 0.1,
    chunk_size: int = 1024,
    bank_chunk_size: int | None = None,
) -> dict:
    """kNN top-1 and top-5 accuracy (fractions in [0, 1]).

    Returns ``{"top1": float, "top5": float | None}``; top5 is None when
    ``n_classes < 5``.  Test rows labelled -1 are left out of the accuracies (and
    training rows labelled -1 out of the bank).  NaN when no test row is labelled.
    A ``k`` larger than the bank is clamped to the bank's size; then the result also
    holds ``"k"`` (the neighbours used) and ``"k_requested"``.
    """
    test_labels = test_labels.reshape(-1).to(device=train_feats.device, dtype=torch.long)
    n_bank = int((train_labels.reshape(-1) >= 0).sum())
    used = {"k": n_bank, "k_requested": k} if 1 <= n_bank < k else {}
    if test_labels.shape[0] != test_feats.shape[0]:
        raise ValueError("test_feats and test_labels have different lengths")
    correct1 = correct5 = 0
    total = 0
    for start, votes in _knn_votes(
        train_feats, train_labels, test_feats, n_classes, k, temperature, chunk_size, bank_chunk_size
    ):
        y = test_labels[start : start + votes.shape[0]]
        valid = y >= 0
        if not bool(valid.any()):
            continue
        votes, y = votes[valid], y[valid]
        total += y.numel()
        correct1 += int((votes.argmax(dim=1) == y).sum())
        if n_classes >= 5:
            top5 = votes.topk(5, dim=1).indices
            correct5 += int((top5 == y[:, None]).any(dim=1).sum())
    if total == 0:
        return {"top1": math.nan, "top5": math.nan if n_classes >= 5 else None, **used}
    return {"top1": correct1 / total, "top5": correct5 / total if n_classes >= 5 else None, **used}


def knn_accuracy(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    n_classes: int,
    k: int = 20,
    temperature: float = 0.1,
    chunk_size: int = 1024,
    *,
    test_labels: Tensor,
    bank_chunk_size: int | None = None,
) -> float:
    """kNN top-1 accuracy in [0, 1] (see :func:`knn_eval`); ``test_labels`` is keyword-only."""
    return knn_eval(
        train_feats, train_labels, test_feats, test_labels, n_classes,
        k=k, temperature=temperature, chunk_size=chunk_size, bank_chunk_size=bank_chunk_size,
    )["top1"]
