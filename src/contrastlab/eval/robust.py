"""Robust: clean, PGD-k and FGSM accuracy (l_inf / l_2, a list of eps) of a linear probe or the run's own classifier, robust linear evaluation, transfer attacks from a second run (source=RUN2).

What is attacked: a run whose method is itself a classifier (``classify(x)``, methods/contract.py
``Classifies``: adversarial fine-tuning) is attacked as it is; any other run gets a linear probe on
the frozen features of its encoder (the L-BFGS probe of ``eval linear``), and the attack goes through
encoder and probe end to end, on images in [0, 1] (the normalisation inside the encoder).

- clean and PGD accuracy: ``steps`` (default 20) iterations of ``step_size`` (default eps / 4, 2/255
  at 8/255) from a random start, at each radius of ``eps`` (default 8/255; a list gives the
  accuracy-against-eps curve, e.g. ``eps=[0.0157,0.0314,0.0627]``), and FGSM at the same radii;
- robust linear evaluation (RoCL's r-LE, ``robust_linear=true``): a linear layer trained on PGD examples
  of the frozen encoder (``train_steps`` x ``train_step_size`` in the ``train_eps`` ball, made against
  the layer being trained, as the official linear_eval.py --adv_img), by SGD with momentum, warm
  started from the standard probe; the same clean / PGD / FGSM scores;
- transfer (black-box) attack, ``source=RUN2``: PGD examples at the first eps made against the second
  run's classifier (its own, or a standard probe on its features fitted here), scored on this run's.

``n_train`` / ``n_test`` evaluate a seeded subset of each split (attacks cost ``steps`` forward and
backward passes per image). The first ``n_examples`` attacked test images are kept in
``RUN/robust_examples_<features>.pt`` for ``contrastlab report`` (clean, adversarial, perturbation).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attacks import attacking, fgsm, pgd
from ..errors import UserError
from ..fields import option

__all__ = ["RobustOptions", "Options", "run", "ProbeHead", "ProbeClassifier", "attacked_accuracy",
           "robust_linear_probe", "default_step_size"]  # fmt: skip


@dataclass
class RobustOptions:
    """The options of ``contrastlab eval robust RUN [key=value ...]`` (each with its range)."""

    label: Optional[str] = None  # the data set's label to classify (default: its default label)
    features: Literal["model", "random", "pixels"] = "model"  # random / pixels: baselines
    eps: tuple[float, ...] = option((8 / 255,), ge=0, le=1, doc="the attack radii, in [0, 1] pixel units")
    steps: int = option(20, ge=1, doc="PGD iterations of the evaluation attack")
    step_size: Optional[float] = option(None, gt=0, le=1, doc="PGD step; default eps / 4 for each eps")
    norm: Literal["linf", "l2"] = "linf"
    random_start: bool = True
    fgsm: bool = True  # also FGSM (l_inf) at each eps
    robust_linear: bool = True  # also the linear layer trained on PGD examples (r-LE)
    train_eps: float = option(8 / 255, ge=0, le=1, doc="r-LE: the training attack's radius")
    train_steps: int = option(10, ge=1, doc="r-LE: the training attack's PGD iterations")
    train_step_size: float = option(0.007, gt=0, le=1, doc="r-LE: the training attack's step")
    probe_epochs: int = option(10, ge=1, doc="r-LE: passes over the training images")
    probe_lr: float = option(0.1, gt=0)
    probe_weight_decay: float = option(5e-4, ge=0)
    epochs: int = option(100, ge=1, doc="L-BFGS iterations of the standard probe")
    weight_decay: float = option(1e-3, ge=0)
    n_train: Optional[int] = option(None, ge=1, doc="a seeded subset of the training split")
    n_test: Optional[int] = option(None, ge=1, doc="a seeded subset of the test split")
    source: Optional[str] = None  # a second run: transfer (black-box) attack from its classifier
    n_examples: int = option(8, ge=0)  # attacked test images kept for the report
    batch_size: int = option(256, ge=1)
    seed: int = option(0, ge=0)
    device: str = "auto"


Options = RobustOptions


def default_step_size(eps: float, step_size: float | None) -> float:
    """The PGD step at radius ``eps``: ``step_size``, or eps / 4 (2/255 at 8/255)."""
    return step_size if step_size is not None else eps / 4


class ProbeHead(nn.Module):
    """A linear probe as a differentiable layer: ``((f - mean) / std) @ weight.T + bias``."""

    def __init__(self, weight, bias, mean=None, std=None, trainable: bool = False):
        super().__init__()
        d = weight.shape[1]
        self.weight = nn.Parameter(weight.detach().clone().float(), requires_grad=trainable)
        self.bias = nn.Parameter(bias.detach().clone().float(), requires_grad=trainable)
        self.register_buffer("mean", (mean if mean is not None else torch.zeros(d)).detach().clone().float())
        self.register_buffer("std", (std if std is not None else torch.ones(d)).detach().clone().float())

    def forward(self, f):
        return ((f.float() - self.mean) / self.std) @ self.weight.T + self.bias

    @classmethod
    def from_classifier(cls, clf, trainable: bool = False):
        """From :class:`contrastlab.eval.linear.LinearClassifier`."""
        return cls(clf.weight, clf.bias, clf.mean, clf.std, trainable)


class ProbeClassifier(nn.Module):
    """Images in [0, 1] -> logits: a frozen encoder and a probe head, or a method's ``classify``."""

    def __init__(self, encoder=None, head=None, method=None):
        super().__init__()
        self.encoder, self.head, self.method = encoder, head, method

    def forward(self, x):
        if self.method is not None:
            return self.method.classify(x)
        return self.head(self.encoder(x))


def _images(ds, idx) -> torch.Tensor:
    """uint8 (n, 3, H, W) images of a data set at rows ``idx``."""
    if isinstance(getattr(ds, "images", None), torch.Tensor):
        return ds.images[idx]
    return torch.stack([torch.as_tensor(ds[int(i)][0]) for i in idx])


def _batches(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def attacked_accuracy(model: nn.Module, images, labels, eps: float, attack: str = "pgd", steps: int = 20,
                      step_size: float | None = None, norm: str = "linf", random_start: bool = True,
                      batch_size: int = 256, device="cpu", keep: int = 0, judges=()) -> dict:  # fmt: skip
    """Accuracy of ``model`` (images in [0, 1] -> logits) on ``images`` (uint8 or float in [0, 1])
    attacked at radius ``eps`` (0: clean) by ``attack`` ("pgd" or "fgsm") against the
    cross-entropy of the true ``labels``; the model in eval mode, its flags restored
    (:func:`contrastlab.attacks.attacking`). ``judges``: further models scored on the same
    adversarial images (a transfer attack). Returns ``top1``, ``judges`` (their top-1) and,
    with ``keep`` > 0, the first ``keep`` clean / adversarial images and predictions."""
    dev = torch.device(device)
    modes = [m.training for m in (model, *judges)]
    model.eval()
    for j in judges:
        j.eval()
    correct, judged, n = 0, [0] * len(judges), len(labels)
    kept = {"clean": [], "adv": [], "pred_clean": [], "pred_adv": []}
    try:
        with attacking(model, *judges):
            for sl in _batches(n, batch_size):
                x = images[sl].to(dev)
                x = x.float().div(255) if x.dtype == torch.uint8 else x  # float images keep their dtype
                y = labels[sl].to(dev).long()

                def loss(xa):
                    return F.cross_entropy(model(xa), y, reduction="sum")

                if eps == 0:
                    xa = x
                elif attack == "fgsm":
                    xa = fgsm(loss, x, eps)
                else:
                    xa = pgd(loss, x, eps, default_step_size(eps, step_size), steps, norm=norm, random_start=random_start)
                with torch.no_grad():
                    pred = model(xa).argmax(1)
                    correct += int((pred == y).sum())
                    for k, j in enumerate(judges):
                        judged[k] += int((j(xa).argmax(1) == y).sum())
                    have = sum(t.shape[0] for t in kept["clean"])
                    if have < keep:
                        take = slice(0, keep - have)
                        kept["clean"].append(x[take].cpu())
                        kept["adv"].append(xa[take].cpu())
                        kept["pred_clean"].append(model(x[take]).argmax(1).cpu())
                        kept["pred_adv"].append(pred[take].cpu())
    finally:
        for m, mode in zip((model, *judges), modes):
            m.train(mode)
    out = {"top1": correct / n if n else math.nan, "judges": [c / n if n else math.nan for c in judged]}
    if keep:
        out["kept"] = {k: torch.cat(v) if v else torch.empty(0) for k, v in kept.items()}
    return out


def robust_linear_probe(encoder: nn.Module, head: ProbeHead, images, labels, eps: float, steps: int, step_size: float,
                        epochs: int, lr: float, weight_decay: float, batch_size: int = 256, norm: str = "linf",
                        seed: int = 0, device="cpu") -> ProbeHead:  # fmt: skip
    """Robust linear evaluation: a copy of ``head`` trained on PGD examples of the frozen ``encoder``
    (the attack against the layer being trained, at each step), SGD with momentum 0.9, cosine
    learning rate over ``epochs`` passes of ``images`` (uint8)."""
    dev = torch.device(device)
    head = ProbeHead(head.weight, head.bias, head.mean, head.std, trainable=True).to(dev)
    model = ProbeClassifier(encoder, head).to(dev)
    enc_mode = encoder.training
    encoder.eval()
    flags = [p.requires_grad for p in encoder.parameters()]
    for p in encoder.parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    n = len(labels)
    total = max(1, epochs * math.ceil(n / batch_size))
    gen = torch.Generator().manual_seed(seed)
    step = 0
    try:
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for sl in _batches(n, batch_size):
                idx = perm[sl]
                x = images[idx].to(dev).float().div(255)
                y = labels[idx].to(dev).long()
                with attacking(model):
                    xa = pgd(lambda t: F.cross_entropy(model(t), y, reduction="sum"), x, eps, step_size, steps,
                             norm=norm)  # fmt: skip
                with torch.no_grad():
                    f = encoder(xa)
                for g in opt.param_groups:
                    g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
                loss = F.cross_entropy(head(f), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
    finally:
        encoder.train(enc_mode)
        for p, f in zip(encoder.parameters(), flags):
            p.requires_grad_(f)
    head.weight.requires_grad_(False)
    head.bias.requires_grad_(False)
    return head


def _scores(model, images, labels, opts, dev, keep=0, judges=()) -> tuple[dict, dict | None]:
    """Clean accuracy and the PGD (and FGSM) curve over ``opts.eps`` of one classifier."""
    base = dict(steps=opts.steps, step_size=opts.step_size, norm=opts.norm, random_start=opts.random_start,
                batch_size=opts.batch_size, device=dev)  # fmt: skip
    torch.manual_seed(opts.seed)
    clean = attacked_accuracy(model, images, labels, 0.0, **base)["top1"]
    curve, kept = [{"eps": 0.0, "pgd": clean, **({"fgsm": clean} if opts.fgsm else {})}], None
    for i, eps in enumerate(opts.eps):
        torch.manual_seed(opts.seed + 1 + i)
        r = attacked_accuracy(model, images, labels, eps, "pgd", keep=keep if i == 0 else 0, **base)
        point = {"eps": eps, "pgd": r["top1"]}
        if i == 0 and keep:
            kept = r["kept"]
        if opts.fgsm:
            point["fgsm"] = attacked_accuracy(model, images, labels, eps, "fgsm", **base)["top1"]
        curve.append(point)
    first = curve[1] if len(curve) > 1 else curve[0]
    out = {"top1": clean, "pgd_top1": first["pgd"], "curve": curve}
    if opts.fgsm:
        out["fgsm_top1"] = first["fgsm"]
    return out, kept


def _standard_probe(encoder, train, test, itr, ite, ytr, yte, n_classes, opts, dev) -> tuple[ProbeHead, dict]:
    from .features import extract_features
    from .linear import linear_probe

    ftr = extract_features(encoder, train, device=dev, indices=itr, batch_size=opts.batch_size)
    fte = extract_features(encoder, test, device=dev, indices=ite, batch_size=opts.batch_size)
    r = linear_probe(ftr, ytr, fte, yte, n_classes, epochs=opts.epochs, weight_decay=opts.weight_decay, device=dev)
    return ProbeHead.from_classifier(r["classifier"]).to(dev), r


def _source_classifier(source: str, cfg, train, itr, ytr, test, ite, yte, n_classes, opts, dev):
    """(classifier, what it is, step) of the transfer attack's source run."""
    from ..methods.contract import classifies
    from .run import load_run, require_encoder

    scfg, smethod, sckpt = load_run(source, [])
    if scfg.data.image_size != cfg.data.image_size:
        raise UserError(f"source={source}: its images are {scfg.data.image_size} px, this run's {cfg.data.image_size} px; "
                        "transfer attacks need a source trained at the same image size")  # fmt: skip
    smethod.to(dev).eval()
    if classifies(smethod):
        return ProbeClassifier(method=smethod), "method", int(sckpt["step"])
    require_encoder(scfg, smethod, source)
    head, _ = _standard_probe(smethod.encoder, train, test, itr, ite, ytr, yte, n_classes, opts, dev)
    return ProbeClassifier(smethod.encoder, head).to(dev), "linear probe", int(sckpt["step"])


def _keep_examples(checkpoint, opts, kept: dict, labels, class_names) -> str | None:
    from ..files import atomic_save

    path = Path(checkpoint)
    run_dir = path if path.is_dir() else path.parent
    name = f"robust_examples_{opts.features}.pt"
    blob = {"clean": kept["clean"].float(), "adv": kept["adv"].float(), "labels": labels.long().clone(),
            "pred_clean": kept["pred_clean"].long(), "pred_adv": kept["pred_adv"].long(), "eps": float(opts.eps[0]),
            "norm": opts.norm, "steps": opts.steps, "class_names": list(class_names or [])}  # fmt: skip
    try:
        atomic_save(run_dir / name, lambda tmp: torch.save(blob, tmp), kept="the previous examples are kept")
    except UserError as e:
        print(f"contrastlab: warning: {e}", file=sys.stderr)
        return None
    return name


def run(checkpoint: str, opts: RobustOptions, data_overrides=()) -> dict:
    """``contrastlab eval robust RUN``: see the module docstring. The JSON has ``top1`` (clean),
    ``pgd_top1`` and ``fgsm_top1`` (at the first eps) and ``curve`` (one point per eps, eps 0
    first) of the standard classifier; ``robust_linear`` the same for the r-LE layer; ``transfer``
    the accuracies on the source run's adversarial examples."""
    from ..methods.contract import classifies
    from .features import bank_indices
    from .run import device, load_run, probe_encoder, probe_sets, require_encoder

    start = time.perf_counter()
    if not opts.eps:
        raise UserError("eval robust: eps=[] gives no attack radius; give one or more, e.g. eps=[0.0314]")
    cfg, method, ckpt = load_run(checkpoint, list(data_overrides))
    train, test, label, n_classes = probe_sets(cfg, opts)
    dev = device(opts.device)
    itr = bank_indices(len(train), opts.n_train, opts.seed)
    ite = bank_indices(len(test), opts.n_test, opts.seed + 1)
    itr = itr[train.labels[label][itr] >= 0]
    ite = ite[test.labels[label][ite] >= 0]
    ytr, yte = train.labels[label][itr], test.labels[label][ite]
    xte = _images(test, ite)
    own = classifies(method) and opts.features == "model"
    result = {"protocol": "robust", "checkpoint": str(checkpoint), "step": int(ckpt["step"]), "label": label,
              "features": opts.features, "n_train": len(itr), "n_test": len(ite), "norm": opts.norm,
              "eps": list(opts.eps), "steps": opts.steps,
              "step_size": [default_step_size(e, opts.step_size) for e in opts.eps],
              "random_start": opts.random_start, "classifier": "method" if own else "linear probe"}  # fmt: skip
    method.to(dev).eval()
    if own:
        model = ProbeClassifier(method=method)
        encoder = head = None
    else:
        require_encoder(cfg, method, checkpoint)
        encoder = probe_encoder(cfg, method, opts.features, dev)
        head, _ = _standard_probe(encoder, train, test, itr, ite, ytr, yte, n_classes, opts, dev)
        model = ProbeClassifier(encoder, head).to(dev)
    scores, kept = _scores(model, xte, yte, opts, dev, keep=opts.n_examples)
    result.update(scores)
    robust_model = None
    if opts.robust_linear and not own:
        xtr = _images(train, itr)
        torch.manual_seed(opts.seed)
        rhead = robust_linear_probe(encoder, head, xtr, ytr, opts.train_eps, opts.train_steps, opts.train_step_size,
                                    opts.probe_epochs, opts.probe_lr, opts.probe_weight_decay, opts.batch_size,
                                    opts.norm, opts.seed, dev)  # fmt: skip
        robust_model = ProbeClassifier(encoder, rhead).to(dev)
        rs, _ = _scores(robust_model, xte, yte, opts, dev)
        result["robust_linear"] = {**rs, "train_eps": opts.train_eps, "train_steps": opts.train_steps,
                                   "train_step_size": opts.train_step_size, "epochs": opts.probe_epochs,
                                   "lr": opts.probe_lr, "weight_decay": opts.probe_weight_decay}  # fmt: skip
    if opts.source:
        src, what, sstep = _source_classifier(opts.source, cfg, train, itr, ytr, test, ite, yte, n_classes, opts, dev)
        judges = [model] + ([robust_model] if robust_model is not None else [])
        torch.manual_seed(opts.seed)
        r = attacked_accuracy(src, xte, yte, opts.eps[0], "pgd", steps=opts.steps, step_size=opts.step_size,
                              norm=opts.norm, random_start=opts.random_start, batch_size=opts.batch_size, device=dev,
                              judges=judges)  # fmt: skip
        result["transfer"] = {"source": str(opts.source), "source_step": sstep, "source_classifier": what,
                              "eps": opts.eps[0], "source_top1": r["top1"], "top1": r["judges"][0]}  # fmt: skip
        if robust_model is not None:
            result["transfer"]["robust_linear_top1"] = r["judges"][1]
    if opts.n_examples and kept is not None and len(kept["clean"]):
        k = len(kept["clean"])
        result["examples"] = _keep_examples(checkpoint, opts, kept, yte[:k], test.classes.get(label))
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result
