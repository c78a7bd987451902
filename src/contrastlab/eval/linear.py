"""Linear: an L-BFGS probe on frozen features, long-tail groups (class_counts=train|FILE), few-shot (label_fraction).

Default optimiser: full-batch L-BFGS (strong-Wolfe line search) on the
cross-entropy plus ``weight_decay / 2 * ||W||^2``.  The problem is convex, so this
converges in a few dozen iterations to the same solution whatever the seed, needs
no learning-rate tuning, and on CPU takes about a second for 10k x 512 features and
10 classes.  The loss is accumulated over row chunks so memory stays bounded for
large training sets.  Pass ``batch_size`` to use mini-batch Adam instead (cosine
learning-rate decay, shuffled with ``seed``) -- useful for very large sets on GPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..fields import option

__all__ = ["LinearOptions", "Options", "run", "LinearClassifier", "linear_probe", "per_class_accuracy", "long_tail_groups",
           "group_counts", "groups_result", "probe_config", "run_train_labels"]


@dataclass
class LinearOptions:
    """The options of ``contrastlab eval linear RUN [key=value ...]`` (each with its range)."""

    label: Optional[str] = None  # the data set's label to classify (default: its default label)
    epochs: int = option(100, ge=1)
    weight_decay: float = option(1e-3, ge=0)
    features: Literal["model", "random", "pixels"] = "model"  # random / pixels: baselines
    device: str = "auto"
    batch_size: int = option(512, ge=1)  # images per feature-extraction batch
    groups: Literal["thirds", "imagenet"] = "thirds"  # long-tail groups (see long_tail_groups)
    probe_data: Literal["balanced", "pretrain"] = "balanced"  # long-tailed runs: the set the probe is trained on
    # few-shot: the probe trains on a class-stratified, seeded fraction of the training labels
    label_fraction: float = option(1.0, gt=0, le=1, doc="the share of the training labels the probe uses")
    subset_seed: int = option(0, ge=0)  # draws the label_fraction subset
    # long-tail groups by per-class training counts: "train" (the run's training set) or a list file
    class_counts: Optional[str] = None  # default: groups only for a long-tailed run, by its pre-training counts

# Rows per chunk are chosen so that a logits block holds at most this many values.
_MAX_LOGIT_ELEMS = 1 << 24


@dataclass
class LinearClassifier:
    """A trained probe: ``logits = ((x - mean) / std) @ weight.T + bias``."""

    weight: Tensor  # (C, d)
    bias: Tensor  # (C,)
    mean: Tensor | None = None  # (d,), None when not standardised
    std: Tensor | None = None

    @torch.no_grad()
    def logits(self, feats: Tensor) -> Tensor:
        x = feats.to(device=self.weight.device, dtype=torch.float32)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x @ self.weight.T + self.bias

    @torch.no_grad()
    def predict(self, feats: Tensor, chunk_size: int = 65536) -> Tensor:
        """Predicted classes (N,) int64 on the classifier's device."""
        out = [self.logits(feats[s : s + chunk_size]).argmax(1) for s in range(0, feats.shape[0], chunk_size)]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=self.weight.device)


def per_class_accuracy(pred: Tensor, labels: Tensor, n_classes: int) -> list[float]:
    """Accuracy of each class over rows with that label (NaN for classes with no row).

    Rows labelled -1 are ignored.
    """
    pred = pred.reshape(-1).cpu().long()
    labels = labels.reshape(-1).cpu().long()
    keep = labels >= 0
    pred, labels = pred[keep], labels[keep]
    total = torch.bincount(labels, minlength=n_classes).double()
    correct = torch.bincount(labels[pred == labels], minlength=n_classes).double()
    acc = correct / total  # 0/0 -> nan
    return [float(a) for a in acc[:n_classes]]


def _chunk_rows(n_classes: int) -> int:
    return max(1024, _MAX_LOGIT_ELEMS // max(1, n_classes))


def linear_probe(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    n_classes: int,
    epochs: int = 100,
    lr: float | None = None,
    weight_decay: float = 1e-3,
    batch_size: int | None = None,
    standardize: bool = True,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict:
    """Train a linear classifier on frozen features and evaluate it.

    Args:
        train_feats, train_labels: (N, d) features (any float dtype) and (N,) labels;
            rows labelled -1 are dropped.
        test_feats, test_labels: evaluation split; rows labelled -1 get a prediction
            but are left out of the metrics.
        n_classes: number of classes.
        epochs: L-BFGS iterations (full batch) or passes over the data (Adam).
        lr: L-BFGS step scale (default 1.0, the line search adapts it) or the Adam
            peak learning rate (default 1e-3).
        weight_decay: L2 penalty ``weight_decay / 2 * ||W||^2`` (bias excluded).
            The default 1e-3 (on standardised features) barely changes easy
            problems, curbs overfitting with many classes / few rows per class, and
            makes L-BFGS converge in far fewer iterations than no penalty.
        batch_size: None -> full-batch L-BFGS (default); an int -> mini-batch Adam.
        standardize: standardise features with the training mean / std.
        seed: seeds the mini-batch order (L-BFGS starts from zeros: deterministic).
        device: where to train; default ``train_feats.device``.

    Returns:
        dict with ``top1``, ``top5`` (None when n_classes < 5), ``per_class_acc``
        (list of n_classes floats, NaN for classes absent from the test set),
        ``train_top1``, ``train_loss``, ``pred`` (LongTensor (N_test,), CPU) and
        ``classifier`` (:class:`LinearClassifier`).  Accuracies are in [0, 1].
        Drop ``pred`` and ``classifier`` before JSON-serialising.
    """
    device = torch.device(device) if device is not None else train_feats.device
    y_tr = train_labels.reshape(-1).to(device=device, dtype=torch.long)
    if y_tr.shape[0] != train_feats.shape[0]:
        raise ValueError("train_feats and train_labels have different lengths")
    keep = y_tr >= 0
    x_tr = train_feats.to(device)
    if not bool(keep.all()):
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    if y_tr.numel() == 0:
        raise ValueError("no labelled training rows")
    if int(y_tr.max()) >= n_classes:
        raise ValueError(f"train label {int(y_tr.max())} >= n_classes={n_classes}")
    x_tr = x_tr.to(torch.float32)
    n, d = x_tr.shape

    mean = std = None
    if standardize:
        mean = x_tr.mean(0)
        std = x_tr.std(0, unbiased=False).clamp_min(1e-6)
        x_tr = (x_tr - mean) / std

    weight = torch.zeros(n_classes, d, device=device, requires_grad=True)
    bias = torch.zeros(n_classes, device=device, requires_grad=True)
    params = [weight, bias]
    rows = _chunk_rows(n_classes)

    def penalty() -> Tensor:
        return 0.5 * weight_decay * weight.pow(2).sum() if weight_decay else weight.new_zeros(())

    if batch_size is None:
        opt = torch.optim.LBFGS(
            params,
            lr=1.0 if lr is None else lr,
            max_iter=max(1, int(epochs)),
            max_eval=max(1, int(epochs)) * 5 // 4 + 1,
            history_size=20,
            tolerance_grad=1e-7,
            tolerance_change=1e-10,
            line_search_fn="strong_wolfe",
        )

        def closure():
            opt.zero_grad(set_to_none=False)
            total = 0.0
            for s in range(0, n, rows):
                xb, yb = x_tr[s : s + rows], y_tr[s : s + rows]
                loss = F.cross_entropy(xb @ weight.T + bias, yb, reduction="sum") / n
                loss.backward()
                total += float(loss.detach())
            reg = penalty()
            if weight_decay:
                reg.backward()
            return torch.tensor(total + float(reg.detach()))

        opt.step(closure)
    else:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        base_lr = 1e-3 if lr is None else lr
        opt = torch.optim.Adam(params, lr=base_lr)
        steps_per_epoch = math.ceil(n / batch_size)
        total_steps = max(1, int(epochs) * steps_per_epoch)
        step = 0
        for _ in range(int(epochs)):
            perm = torch.randperm(n, generator=gen).to(device)
            for s in range(0, n, batch_size):
                idx = perm[s : s + batch_size]
                for g in opt.param_groups:
                    g["lr"] = base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
                loss = F.cross_entropy(x_tr[idx] @ weight.T + bias, y_tr[idx]) + penalty()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1

    clf = LinearClassifier(weight.detach().clone(), bias.detach().clone(), mean, std)
    with torch.no_grad():
        # x_tr is already standardised: evaluate it without the classifier's transform.
        train_loss = 0.0
        train_correct = 0
        for s in range(0, n, rows):
            logits = x_tr[s : s + rows] @ clf.weight.T + clf.bias
            train_loss += float(F.cross_entropy(logits, y_tr[s : s + rows], reduction="sum"))
            train_correct += int((logits.argmax(1) == y_tr[s : s + rows]).sum())

        y_te = test_labels.reshape(-1).to(device=device, dtype=torch.long)
        if y_te.shape[0] != test_feats.shape[0]:
            raise ValueError("test_feats and test_labels have different lengths")
        preds, c1, c5 = [], 0, 0
        for s in range(0, test_feats.shape[0], rows):
            logits = clf.logits(test_feats[s : s + rows])
            yb = y_te[s : s + rows]
            preds.append(logits.argmax(1))
            valid = yb >= 0
            c1 += int((preds[-1][valid] == yb[valid]).sum())
            if n_classes >= 5:
                c5 += int((logits[valid].topk(5, dim=1).indices == yb[valid, None]).any(1).sum())
        n_te = int((y_te >= 0).sum())
        pred = torch.cat(preds).cpu() if preds else torch.empty(0, dtype=torch.long)

    top1 = c1 / n_te if n_te else math.nan
    top5 = (c5 / n_te if n_te else math.nan) if n_classes >= 5 else None
    return {
        "top1": top1,
        "top5": top5,
        "per_class_acc": per_class_accuracy(pred, y_te, n_classes),
        "train_top1": train_correct / n,
        "train_loss": train_loss / n + float(0.5 * weight_decay * clf.weight.pow(2).sum()),
        "pred": pred,
        "classifier": clf,
    }


def long_tail_groups(per_class_acc, train_counts, scheme: str = "thirds") -> dict:
    """Mean per-class accuracy of the many / medium / few-shot classes.

    Args:
        per_class_acc: sequence of C accuracies (NaN entries -- classes without test
            rows -- are ignored in the means).
        train_counts: sequence of C training-set sizes per class.
        scheme: ``"thirds"``: classes sorted by train count (descending, ties by class
            index) and split into three groups as equal as possible, the earlier
            groups taking the extra classes (10 classes -> 4 many / 3 medium / 3
            few).  ``"imagenet"``: many = more than 100 training images, medium =
            20 to 100, few = fewer than 20 (the ImageNet-LT convention).

    Returns:
        ``{"many", "medium", "few"}`` mean accuracies (NaN for an empty group),
        ``"mean"`` and ``"std"`` (population std, ddof=0) over all classes,
        ``"group_std"``: the population std of the three group means (NaN when a group is
        empty), the balancedness SDCLR reports beside the per-class std, and
        ``"n_many"``, ``"n_medium"``, ``"n_few"`` (number of classes per group).

    SDCLR's ``exp_analyse.py`` (VITA-Group/SDCLR): ``np.std(classWiseAcc)`` and
    ``np.std([majorAcc, moderateAcc, minorAcc])``, both ddof=0; its thirds take
    ``argsort(counts)`` and give the extra classes to the many-shot group, which is this
    split when the number of classes is a multiple of 3 or one more (10, 100, 1000 classes).
    """
    acc = np.asarray([float(a) for a in per_class_acc], dtype=np.float64)
    counts = np.asarray(train_counts.tolist() if isinstance(train_counts, Tensor) else train_counts, dtype=np.float64)
    if acc.shape != counts.shape:
        raise ValueError(f"{acc.shape[0]} accuracies but {counts.shape[0]} class counts")
    c = acc.shape[0]
    if scheme == "thirds":
        order = np.argsort(-counts, kind="stable")
        many, medium, few = np.array_split(order, 3)
    elif scheme == "imagenet":
        idx = np.arange(c)
        many = idx[counts > 100]
        medium = idx[(counts >= 20) & (counts <= 100)]
        few = idx[counts < 20]
    else:
        raise ValueError(f"unknown scheme {scheme!r} (expected 'thirds' or 'imagenet')")

    def mean(ix) -> float:
        vals = acc[ix]
        vals = vals[~np.isnan(vals)]
        return float(vals.mean()) if vals.size else math.nan

    valid = acc[~np.isnan(acc)]
    means = [mean(many), mean(medium), mean(few)]
    return {
        "many": means[0],
        "medium": means[1],
        "few": means[2],
        "mean": float(valid.mean()) if valid.size else math.nan,
        "std": float(valid.std()) if valid.size else math.nan,
        "group_std": math.nan if any(math.isnan(m) for m in means) else float(np.std(means)),
        "n_many": int(len(many)),
        "n_medium": int(len(medium)),
        "n_few": int(len(few)),
    }


Options = LinearOptions


def run_train_labels(cfg, label: str | None):
    """Labels ``label`` (default: the set's default label) of the run's own training set: the
    pre-training set, long-tailed when the run's ``data.long_tail_ratio`` is set."""
    from ..data import build_datasets
    from ..errors import UserError

    train, _ = build_datasets(cfg.data)
    label = label or train.default_label
    if label not in train.labels:
        raise UserError(f"label={label!r} is not a label of {cfg.data.name}; available: {', '.join(train.labels)}")
    return train.labels[label]


def group_counts(spec: str | None, train_labels, long_tailed: bool, n_classes: int):
    """(per-class counts, where from) that the long-tail groups use, or (None, None) for none:
    ``spec`` a list file (:func:`contrastlab.eval.labels.read_class_counts`), ``"train"`` the
    counts of the run's training set ``train_labels``, None: those counts for a long-tailed run
    only."""
    from .labels import class_counts, read_class_counts

    if spec not in (None, "train"):
        return read_class_counts(spec, n_classes), spec
    if spec == "train" or long_tailed:
        return class_counts(train_labels, n_classes), "train"
    return None, None


def probe_config(cfg, opts):
    """(cfg whose data the probe reads, the run's training labels or None, long-tailed?): a
    long-tailed run is probed on the balanced set unless ``probe_data=pretrain``; the training
    labels are read when groups need them (a long-tailed run, ``class_counts=train``)."""
    import dataclasses

    long_tailed = cfg.data.long_tail_ratio is not None
    train_labels = None
    if long_tailed or opts.class_counts == "train":
        train_labels = run_train_labels(cfg, opts.label)
    if long_tailed and opts.probe_data == "balanced":
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, long_tail_ratio=None))
    return cfg, train_labels, long_tailed


def groups_result(opts, train_labels, long_tailed: bool, n_classes: int, per_class_acc) -> dict:
    """The long-tail part of a linear protocol's result (empty when no groups apply)."""
    out = {}
    if long_tailed:
        out["probe_data"] = opts.probe_data
        out["pretrain_class_counts"] = [int((train_labels == c).sum()) for c in range(n_classes)]
    counts, source = group_counts(opts.class_counts, train_labels, long_tailed, n_classes)
    if counts is not None:
        out.update({"class_counts": counts, "class_counts_from": source})
        out.update(long_tail_groups(per_class_acc, counts, scheme=opts.groups))
    return out


def run(checkpoint: str, opts: LinearOptions, data_overrides=()) -> dict:
    """``contrastlab eval linear RUN``: a linear classifier trained on the frozen features of the
    training split, its top-1 / top-5 and per-class accuracy on the test split. A run
    pre-trained on a long-tailed set (SDCLR's protocol) also gets groups by its pre-training
    class counts, with the probe trained on the balanced set (``probe_data=balanced``) or on the
    long-tailed one (``pretrain``); ``class_counts=train`` (the run's training set) or
    ``class_counts=FILE`` (one count per class) gives groups for any labelled data set.
    ``label_fraction=0.01 subset_seed=0``: the probe trains on a class-stratified 1% of the
    training labels, at least one per class (SDCLR's few-shot setting, with L-BFGS in place of
    its SGD schedule: ``eval linear_sgd preset=sdclr_fewshot`` has that)."""
    from .labels import fraction_subset
    from .run import device, load_run, probe_features, require_encoder

    cfg, method, ckpt = load_run(checkpoint, list(data_overrides))
    require_encoder(cfg, method, checkpoint)
    cfg, train_labels, long_tailed = probe_config(cfg, opts)
    _, _, label, ftr, fte, ytr, yte, n_classes = probe_features(cfg, method, opts)
    result = {"protocol": "linear", "checkpoint": str(checkpoint), "step": int(ckpt["step"]), "label": label,
              "features": opts.features, "n_train": len(ftr), "n_test": len(fte)}  # fmt: skip
    if opts.label_fraction < 1:
        rows = fraction_subset(ytr, opts.label_fraction, opts.subset_seed, n_classes)
        ftr, ytr = ftr[rows], ytr[rows]
        result.update({"variant": f"fraction{opts.label_fraction:g}", "label_fraction": opts.label_fraction,
                       "subset_seed": opts.subset_seed, "n_probe": len(rows)})  # fmt: skip
    r = linear_probe(ftr, ytr, fte, yte, n_classes, epochs=opts.epochs, weight_decay=opts.weight_decay,
                     device=device(opts.device))  # fmt: skip
    result.update({k: r[k] for k in ("top1", "top5", "train_top1") if k in r})
    result.update(groups_result(opts, train_labels, long_tailed, n_classes, r["per_class_acc"]))
    result["per_class_acc"] = [round(float(a), 4) for a in r["per_class_acc"]]
    return result
