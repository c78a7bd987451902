"""kNN: weighted k-nearest-neighbour classification on frozen features (InstDisc's: k=200 temperature=train).

The classifier is the one of Wu et al. 2018 ("Unsupervised Feature Learning via
Non-Parametric Instance Discrimination"), also used by DINO and most SSL papers:
features are L2-normalised, each test point looks up its ``k`` most cosine-similar
training points, and each neighbour votes for its own class with weight
``exp(sim / temperature)``.  The predicted class is the argmax of the summed votes.

InstDisc's protocol (zhirongw/lemniscate.pytorch: ``main.py`` and ``cifar.py`` call
``kNN(..., 200, args.nce_t)``, and ``test.py``'s ``kNN`` weighs the ``K`` nearest by
``yd.div_(sigma).exp_()``: k = 200, the weight ``exp(sim / t)`` with t the training
temperature), which the MoCo-style kNN monitors reuse, is
``contrastlab eval knn RUN k=200 temperature=train``: ``temperature=train`` reads the run's
own ``method.temperature``.

Memory: nothing of size ``N_test x N_train`` is ever built.  Test rows are processed
``chunk_size`` at a time and, when ``chunk_size x N_train`` would exceed
``max_sim_elems`` similarities, the bank is processed in chunks as well with a
running top-k merge (:func:`contrastlab.nn.neighbours.topk_neighbours`).  With the defaults the similarity
block is at most 32M float32 values (128 MiB) whatever the sizes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Union

import torch
from torch import Tensor

from ..fields import option
from ..nn.neighbours import inverse_norms, topk_neighbours

__all__ = ["KnnOptions", "Options", "run", "monitor", "knn_predict", "knn_eval", "knn_accuracy"]


def _temperature_check(value) -> Optional[str]:
    """A number (its bound is checked apart) or the word ``train``."""
    if isinstance(value, str) and value != "train":
        return "a number > 0 or 'train' (the run's method.temperature)"
    return None


@dataclass
class KnnOptions:
    """The options of ``contrastlab eval knn RUN [key=value ...]`` (each with its range)."""

    label: Optional[str] = None  # the data set's label to classify (default: its default label)
    k: int = option(20, ge=1, doc="neighbours per test image")
    # a number, or "train": the run's training temperature (method.temperature; InstDisc's protocol)
    temperature: Union[float, str] = option(0.1, gt=0, check=_temperature_check)
    features: Literal["model", "random", "pixels"] = "model"  # random / pixels: baselines
    device: str = "auto"
    batch_size: int = option(512, ge=1)  # images per feature-extraction batch

# Largest similarity block (queries x bank rows) computed at once by knn_predict.
_MAX_SIM_ELEMS = 1 << 25


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
    inv_norm = inverse_norms(train_feats)
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


Options = KnnOptions


def run(checkpoint: str, opts: KnnOptions, data_overrides=()) -> dict:
    """``contrastlab eval knn RUN``: top-1 / top-5 of the weighted kNN classifier, the training
    split as the bank, on the model's features or a baseline's (``features=random | pixels``).
    ``k=200 temperature=train``: InstDisc's protocol (the run's training temperature)."""
    from .run import load_run, probe_features, require_encoder

    cfg, method, ckpt = load_run(checkpoint, list(data_overrides))
    require_encoder(cfg, method, checkpoint)
    temperature, source = train_temperature(cfg, opts.temperature)
    _, _, label, ftr, fte, ytr, yte, n_classes = probe_features(cfg, method, opts)
    keep = ytr >= 0
    r = knn_eval(ftr[keep], ytr[keep], fte, yte, n_classes, k=opts.k, temperature=temperature)
    return {"protocol": "knn", "checkpoint": str(checkpoint), "step": int(ckpt["step"]), "label": label,
            "features": opts.features, "n_train": len(ftr), "n_test": len(fte),
            "k": opts.k, "temperature": temperature, **source, **r}  # r's k: the k used, if clamped  # fmt: skip


def train_temperature(cfg, temperature) -> tuple[float, dict]:
    """(the temperature to use, what to add to the result): a number as given; ``"train"``: the
    run's ``method.temperature`` (one line when its method has none)."""
    from ..errors import UserError

    if temperature != "train":
        return float(temperature), {}
    t = cfg.method.get("temperature")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not t > 0:
        raise UserError(f"temperature=train: the run's method {cfg.method.get('name')!r} has no training temperature "
                        "(method.temperature); give a number, e.g. temperature=0.1")  # fmt: skip
    return float(t), {"temperature_from": "method.temperature"}


def monitor(method, train_set, test_set, cfg, device, run_dir=None, step=None) -> dict:
    """The trainer's periodic check: kNN accuracy of the current encoder, a fixed subset of the
    training set (``trainer.knn_max_train``) as the bank, ``trainer.knn_k`` / ``knn_t``."""
    from .features import feature_bank

    label = train_set.default_label
    ytr = train_set.labels[label]
    ftr, bank_idx = feature_bank(method.encoder, train_set, n_max=cfg.trainer.knn_max_train, seed=12_345, label=label,
                                 device=device)  # fmt: skip
    fte, _ = feature_bank(method.encoder, test_set, device=device)
    n_classes = len(train_set.classes.get(label, [])) or int(ytr.max()) + 1
    res = knn_eval(ftr, ytr[bank_idx], fte, test_set.labels[label], n_classes, k=cfg.trainer.knn_k,
                   temperature=cfg.trainer.knn_t)  # fmt: skip
    return {f"knn_{k}": v for k, v in res.items() if k.startswith("top") and v is not None}
