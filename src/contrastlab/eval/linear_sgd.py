"""Linear SGD: the papers' probes, a linear layer trained by SGD / Adam on augmented crops (preset=moco|sdclr|sdclr_fewshot|dcl).

The encoder stays in eval mode for the whole probe (frozen BatchNorm: its running statistics
do not change; it runs under ``no_grad``), only the linear layer trains; the training images are
augmented anew every epoch (random crop + flip), the validation and test images are seen
through one fixed view (the plain image, or a centre crop: ``test_crop``). Presets reproduce the
official scripts (every value below is read from the file named; ``epochs`` and any other
option override a preset's value; milestones count epochs from 0: the lr is multiplied by 0.1
from each milestone epoch on):

``preset=moco`` -- facebookresearch/moco ``main_lincls.py`` (MIT, commit 7397dfe): SGD lr 30,
momentum 0.9, weight decay 0, batch 256, 100 epochs, lr x0.1 at epochs 60 and 80
(``adjust_learning_rate``: ``lr *= 0.1 if epoch >= milestone``), ``model.eval()`` during
training, fc initialised N(0, 0.01) with zero bias; train view ``RandomResizedCrop(224)`` +
``RandomHorizontalFlip()``, test view ``Resize(256)`` + ``CenterCrop(224)`` (here a centre crop
of 224/256 of the side, resized to ``data.image_size``). No validation split: the last epoch's
classifier is tested.

``preset=sdclr`` -- VITA-Group/SDCLR ``cmds/shell_scrips/cifar-10-LT.sh`` (``cmd_full``) and
``train_cifar.py``: ``--fixbn --fixto layer4`` (every BatchNorm in eval mode, only ``fc``
trains), SGD lr 30, momentum 0.9 (the default), ``--wd 0``, batch 128 (the default
``--batch-size``), 30 epochs, ``--decreasing_lr 10,20``; ``train_cifar.py`` counts epochs from 1
and steps its ``MultiStepLR`` before each epoch, so the lr is 30 for 9 epochs, 3 for 10 and 0.3
for 11: milestones 9 and 19 here. Train view ``RandomCrop(32, padding=4)`` +
``RandomHorizontalFlip()`` (zero padding of 1/8 of the side), test view the plain image. The
probe trains on 45,000 of the 50,000 training images and the epoch with the best accuracy on
the other 5,000 (``split/cifar10/trainIdxList.npy`` / ``valIdxList.npy``; ``is_best = vali_tacc
> best_prec1``, checked every epoch) is the one tested: ``val_fraction=0.1`` here, drawn at
random with ``seed``. fc initialised N(0, 0.01), zero bias (``cvt_state_dict``).

``preset=sdclr_fewshot`` -- the same file's ``cmd_few_shot``: the 1% subset
(``split*_S_b.npy``: 450 of the 45,000 training images; here ``label_fraction=0.01``, class-
stratified, at least one image per class, drawn with ``subset_seed``), 100 epochs,
``--decreasing_lr 40,60`` (milestones 39 and 59 here), ``--test_freq 5`` (the validation
accuracy that picks the epoch is checked every 5 epochs: ``val_every=5``), otherwise as
``sdclr``.

``preset=dcl`` -- chingyaoc/DCL ``linear.py``: Adam lr 1e-3, weight decay 1e-6, batch 512,
100 epochs, constant lr, ``nn.Linear``'s default initialisation; train view
``utils.train_transform``, the whole SimCLR family (``RandomResizedCrop(32)``, flip, colour
jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale p 0.2, Gaussian blur p 0.5 with kernel 3 and sigma
in [0.1, 2]); test view the plain image. One difference is kept on purpose: DCL's ``train_val``
calls ``net.train()``, so its encoder's BatchNorm layers use batch statistics and update their
running statistics during the probe; here the encoder stays in eval mode, as in the other
presets (a probe that changes the encoder is not a linear probe on frozen features).

Images are the data set's (at ``data.image_size``) and are cropped and resized to that size;
the official scripts crop ImageNet's full-resolution files (MoCo) or CIFAR's 32-pixel images.
Long-tail groups, ``class_counts`` and ``probe_data`` are those of ``eval linear``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..fields import option

__all__ = ["LinearSgdOptions", "Options", "Preset", "PRESETS", "run", "resolve", "lr_at_epoch", "crop_views",
           "centre_view", "train_linear_on_crops"]  # fmt: skip

AUGMENTS = ("resized_crop_flip", "pad_crop_flip", "simclr", "none")


@dataclass(frozen=True)
class Preset:
    """One paper's probe, with the file its values are read from."""

    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    epochs: int
    milestones: tuple[int, ...]  # epochs (from 0) from which the lr is multiplied by 0.1 (each)
    batch_size: int
    augment: str
    flip_p: float
    test_crop: float  # side of the centre crop of the test view (1: the plain image)
    val_fraction: float  # share of the labelled training images held out to pick the epoch
    val_every: int  # epochs between validation checks
    label_fraction: float
    init: Literal["normal", "default"]  # fc: N(0, 0.01) and zero bias, or nn.Linear's own
    source: str


PRESETS = {
    "moco": Preset("sgd", 30.0, 0.9, 0.0, 100, (60, 80), 256, "resized_crop_flip", 0.5, 224 / 256, 0.0, 1, 1.0,
                   "normal", "facebookresearch/moco main_lincls.py (commit 7397dfe)"),
    "sdclr": Preset("sgd", 30.0, 0.9, 0.0, 30, (9, 19), 128, "pad_crop_flip", 0.5, 1.0, 0.1, 1, 1.0, "normal",
                    "VITA-Group/SDCLR cmds/shell_scrips/cifar-10-LT.sh (cmd_full), train_cifar.py"),
    "sdclr_fewshot": Preset("sgd", 30.0, 0.9, 0.0, 100, (39, 59), 128, "pad_crop_flip", 0.5, 1.0, 0.1, 5, 0.01,
                            "normal", "VITA-Group/SDCLR cmds/shell_scrips/cifar-10-LT.sh (cmd_few_shot), train_cifar.py"),
    "dcl": Preset("adam", 1e-3, 0.0, 1e-6, 100, (), 512, "simclr", 0.5, 1.0, 0.0, 1, 1.0, "default",
                  "chingyaoc/DCL linear.py, utils.py (train_transform)"),
}  # fmt: skip


def _milestones_check(value) -> Optional[str]:
    if value is None or all(isinstance(m, int) and m >= 0 for m in value) and list(value) == sorted(set(value)):
        return None
    return "a list of increasing epochs >= 0 (from 0), e.g. [60, 80], or [] for a constant lr"


@dataclass
class LinearSgdOptions:
    """The options of ``contrastlab eval linear_sgd RUN [key=value ...]``: a ``preset`` and any of
    its values overridden (null: the preset's value)."""

    preset: Literal["moco", "sdclr", "sdclr_fewshot", "dcl"] = "moco"
    label: Optional[str] = None  # the data set's label to classify (default: its default label)
    features: Literal["model", "random", "pixels"] = "model"  # random / pixels: baselines
    optimizer: Literal["preset", "sgd", "adam"] = "preset"
    lr: Optional[float] = option(None, gt=0)
    momentum: Optional[float] = option(None, ge=0, lt=1)  # SGD only
    weight_decay: Optional[float] = option(None, ge=0)
    epochs: Optional[int] = option(None, ge=1)
    milestones: Optional[tuple[int, ...]] = option(None, check=_milestones_check)
    batch_size: Optional[int] = option(None, ge=1)  # training mini-batch (also the feature-extraction batch)
    augment: Literal["preset", "resized_crop_flip", "pad_crop_flip", "simclr", "none"] = "preset"
    flip_p: Optional[float] = option(None, ge=0, le=1)  # e.g. 0 for the digit scenes (a mirrored digit is another shape)
    test_crop: Optional[float] = option(None, gt=0, le=1, doc="side of the test view's centre crop, 1: the plain image")
    val_fraction: Optional[float] = option(None, ge=0, lt=1, doc="share of the training labels held out to pick the epoch")
    val_every: Optional[int] = option(None, ge=1)
    label_fraction: Optional[float] = option(None, gt=0, le=1, doc="the share of the training labels the probe uses")
    subset_seed: int = option(0, ge=0)  # draws the label_fraction subset
    seed: int = option(0, ge=0)  # crops, batch order, validation split and the layer's initialisation
    groups: Literal["thirds", "imagenet"] = "thirds"  # long-tail groups (see eval.linear.long_tail_groups)
    probe_data: Literal["balanced", "pretrain"] = "balanced"  # long-tailed runs: the set the probe is trained on
    class_counts: Optional[str] = None  # "train" or a list file: long-tail groups for any data set
    device: str = "auto"
    progress: bool = False  # a progress bar on stderr


Options = LinearSgdOptions


def resolve(opts: LinearSgdOptions) -> Preset:
    """The preset of ``opts`` with every value that ``opts`` sets replacing the preset's."""
    p = PRESETS[opts.preset]
    over = {f.name: getattr(opts, f.name) for f in dataclasses.fields(Preset) if hasattr(opts, f.name)}
    over = {k: v for k, v in over.items() if v is not None and v != "preset"}
    if "milestones" in over:
        over["milestones"] = tuple(over["milestones"])
    return dataclasses.replace(p, **over)


def lr_at_epoch(base_lr: float, milestones, epoch: int, gamma: float = 0.1) -> float:
    """The lr of epoch ``epoch`` (from 0): ``base_lr * gamma ** (number of milestones <= epoch)``,
    MoCo's ``adjust_learning_rate``."""
    return base_lr * gamma ** sum(1 for m in milestones if epoch >= m)


# ----------------------------------------------------------------------------- views
def _views_config(augment: str, flip_p: float):
    from ..data.views import ViewConfig

    if augment == "simclr":  # DCL's utils.train_transform: SimCLR's family with blur p 0.5
        return ViewConfig(flip_p=flip_p, blur_p=0.5)
    # torchvision's RandomResizedCrop defaults: scale (0.08, 1), ratio (3/4, 4/3)
    return ViewConfig(flip_p=flip_p, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


def _pad_crop_flip(x: Tensor, flip_p: float, g: torch.Generator) -> Tensor:
    """torchvision ``RandomCrop(S, padding=S/8)`` + ``RandomHorizontalFlip``: zero padding, a crop
    of the original size at a random offset, a mirror with probability ``flip_p``."""
    n, c, h, w = x.shape
    ph, pw = max(1, round(h / 8)), max(1, round(w / 8))
    padded = F.pad(x, (pw, pw, ph, ph))
    dy = torch.randint(0, 2 * ph + 1, (n,), generator=g, device=x.device)
    dx = torch.randint(0, 2 * pw + 1, (n,), generator=g, device=x.device)
    flip = torch.rand(n, generator=g, device=x.device) < flip_p
    rows = dy[:, None] + torch.arange(h, device=x.device)[None, :]  # (n, h)
    cols = dx[:, None] + torch.arange(w, device=x.device)[None, :]  # (n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def crop_views(images: Tensor, augment: str, generator: torch.Generator, flip_p: float = 0.5) -> Tensor:
    """One random training view of each image (uint8 or float (B, 3, S, S)): float in [0, 1],
    same size, drawn with ``generator`` (on the images' device). ``augment``:
    ``resized_crop_flip`` (RandomResizedCrop + flip, MoCo), ``pad_crop_flip`` (RandomCrop with
    padding S/8 + flip, SDCLR), ``simclr`` (SimCLR's family, DCL), ``none`` (the plain image)."""
    from ..data.views import BatchedViews

    x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    if augment == "none":
        return x
    if augment == "pad_crop_flip":
        return _pad_crop_flip(x, flip_p, generator)
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; expected one of {', '.join(AUGMENTS)}")
    return BatchedViews(_views_config(augment, flip_p), x.shape[-1])(x, generator)


def centre_view(images: Tensor, crop: float = 1.0) -> Tensor:
    """The fixed evaluation view: the plain image (``crop=1``) or its centre ``crop`` x side
    square at the image's size, float in [0, 1]: torchvision's ``Resize(S / crop)`` +
    ``CenterCrop(S)`` (MoCo's test view with crop 224/256), sampled bilinearly from the image."""
    from ..data.views import resized_crop

    x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    if crop >= 1:
        return x
    n, _, h, w = x.shape
    ch, cw = max(1, round(crop * h)), max(1, round(crop * w))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    box = torch.tensor([x0, y0, x0 + cw, y0 + ch], dtype=x.dtype, device=x.device).expand(n, 4)
    return resized_crop(x, box, torch.zeros(n, dtype=torch.bool, device=x.device), h)


# ----------------------------------------------------------------------------- data
def _image_batches(dataset, rows: Tensor, batch_size: int, num_workers: int = 0):
    """uint8 images (B, 3, S, S) of ``dataset`` at ``rows``, in that order, ``batch_size`` at a time."""
    from ..data.base import TensorImageSet
    from ..data.files import worker_error_line
    from ..errors import UserError

    if isinstance(dataset, TensorImageSet):
        for s in range(0, len(rows), batch_size):
            yield dataset.images[rows[s : s + batch_size]]
        return
    sub = torch.utils.data.Subset(dataset, rows.tolist())
    loader = torch.utils.data.DataLoader(sub, batch_size=batch_size, num_workers=num_workers)
    try:
        for x, _ in loader:
            yield x
    except Exception as e:  # a data error in a loader worker: its one line, not its traceback
        line = worker_error_line(e)
        if line is None:
            raise
        raise UserError(line) from None


@torch.no_grad()
def view_features(encoder, dataset, rows: Tensor, crop: float = 1.0, batch_size: int = 256, device=None,
                  num_workers: int = 0) -> Tensor:  # fmt: skip
    """Features (len(rows), d) on the CPU of the fixed view :func:`centre_view` of ``dataset``'s
    images at ``rows`` (the encoder in eval mode, restored afterwards)."""
    was = encoder.training
    encoder.eval()
    out = []
    try:
        for x in _image_batches(dataset, rows, batch_size, num_workers):
            out.append(encoder(centre_view(x.to(device), crop)).float().cpu())
    finally:
        encoder.train(was)
    return torch.cat(out) if out else torch.empty(0, getattr(encoder, "out_dim", 0))


# ----------------------------------------------------------------------------- training
def _accuracy(weight, bias, feats, labels) -> float:
    if len(labels) == 0:
        return math.nan
    pred = (feats.to(weight.device) @ weight.T + bias).argmax(1).cpu()
    return float((pred == labels.cpu()).float().mean())


def train_linear_on_crops(encoder, dataset, rows: Tensor, labels: Tensor, n_classes: int, preset: Preset, *,
                          seed: int = 0, device=None, val=None, progress: bool = False,
                          num_workers: int = 0) -> dict:  # fmt: skip
    """Train a linear layer on the frozen ``encoder``'s features of random crops of ``dataset``'s
    images at ``rows`` (labels ``labels``, aligned with ``rows``), with ``preset``'s optimiser,
    schedule, batch and views.

    The encoder is put in eval mode and runs under ``no_grad`` (its weights and BatchNorm
    statistics do not change; its mode is restored afterwards); the batch order comes from a
    CPU generator seeded with ``seed``, the crops from a generator on ``device`` seeded with
    ``seed + 1`` (one stream over all epochs: every epoch sees new crops), the layer's initial
    weights from ``seed + 2``. ``val``: (features, labels) of a fixed view of held-out images;
    the weights of the epoch with the best validation accuracy (the first of equals; checked
    every ``preset.val_every`` epochs and at the last) are returned, else the last epoch's.

    Returns ``weight`` (C, d), ``bias`` (C,), ``best_epoch`` (from 0), and ``history``: per
    epoch ``lr``, ``train_loss`` and ``train_top1`` (on the crops) and ``val_top1`` (None
    when not checked).
    """
    device = torch.device(device) if device is not None else next(encoder.parameters(), torch.empty(0)).device
    rows, labels = torch.as_tensor(rows).long(), torch.as_tensor(labels).long().cpu()
    if len(rows) != len(labels):
        raise ValueError("rows and labels have different lengths")
    if len(rows) == 0:
        raise ValueError("no labelled training rows")
    d = int(encoder.out_dim)
    layer = torch.nn.Linear(d, n_classes)
    init_gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        if preset.init == "normal":  # MoCo's main_lincls / SDCLR's cvt_state_dict
            layer.weight.copy_(torch.randn(n_classes, d, generator=init_gen) * 0.01)
            layer.bias.zero_()
        else:  # nn.Linear's default (kaiming_uniform with a = sqrt(5)), drawn from init_gen
            bound = 1 / math.sqrt(d)
            layer.weight.copy_((torch.rand(n_classes, d, generator=init_gen) * 2 - 1) * bound)
            layer.bias.copy_((torch.rand(n_classes, generator=init_gen) * 2 - 1) * bound)
    layer = layer.to(device)
    if preset.optimizer == "sgd":
        opt = torch.optim.SGD(layer.parameters(), lr=preset.lr, momentum=preset.momentum,
                              weight_decay=preset.weight_decay)  # fmt: skip
    elif preset.optimizer == "adam":
        opt = torch.optim.Adam(layer.parameters(), lr=preset.lr, weight_decay=preset.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {preset.optimizer!r}")
    order_gen = torch.Generator().manual_seed(seed)
    crop_gen = torch.Generator(device=device).manual_seed(seed + 1)
    history = {"lr": [], "train_loss": [], "train_top1": [], "val_top1": []}
    best = (-1.0, -1, None)
    bar = None
    if progress:
        import sys

        from tqdm.auto import tqdm

        steps = preset.epochs * math.ceil(len(rows) / preset.batch_size)
        bar = tqdm(total=steps, desc="linear_sgd", unit="step", file=sys.stderr, dynamic_ncols=True)
    was = encoder.training
    encoder.eval()
    try:
        for epoch in range(preset.epochs):
            lr = lr_at_epoch(preset.lr, preset.milestones, epoch)
            for g in opt.param_groups:
                g["lr"] = lr
            perm = torch.randperm(len(rows), generator=order_gen)
            total_loss, correct, seen = 0.0, 0, 0
            for s, x in zip(range(0, len(rows), preset.batch_size),
                            _image_batches(dataset, rows[perm], preset.batch_size, num_workers)):  # fmt: skip
                y = labels[perm[s : s + preset.batch_size]].to(device)
                with torch.no_grad():
                    f = encoder(crop_views(x.to(device), preset.augment, crop_gen, preset.flip_p)).float()
                logits = layer(f)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                batch_loss = float(loss.detach())
                total_loss += batch_loss * len(y)
                correct += int((logits.detach().argmax(1) == y).sum())
                seen += len(y)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, lr=f"{lr:.3g}", loss=f"{batch_loss:.3f}", refresh=False)
            history["lr"].append(lr)
            history["train_loss"].append(total_loss / seen)
            history["train_top1"].append(correct / seen)
            check = val is not None and ((epoch + 1) % preset.val_every == 0 or epoch == preset.epochs - 1)
            acc = _accuracy(layer.weight.detach(), layer.bias.detach(), *val) if check else None
            history["val_top1"].append(acc)
            if val is None or (acc is not None and acc > best[0]):
                best = (acc if acc is not None else -1.0, epoch,
                        (layer.weight.detach().clone(), layer.bias.detach().clone()))  # fmt: skip
    finally:
        encoder.train(was)
        if bar is not None:
            bar.close()
    weight, bias = best[2]
    return {"weight": weight, "bias": bias, "best_epoch": best[1], "history": history}


# ----------------------------------------------------------------------------- the protocol
def run(checkpoint: str, opts: LinearSgdOptions, data_overrides=()) -> dict:
    """``contrastlab eval linear_sgd RUN preset=moco|sdclr|sdclr_fewshot|dcl``: a linear layer
    trained on augmented crops through the frozen encoder with a paper's optimiser and schedule
    (any value overridden: ``epochs=2``, ``lr=10``, ``milestones=[]``, ``flip_p=0``,
    ``label_fraction=0.01``, ...), tested on the plain (or centre-cropped) test images; the
    epoch is chosen on a held-out validation split when the preset has one (SDCLR)."""
    from .labels import fraction_subset, holdout_split
    from .linear import groups_result, per_class_accuracy, probe_config
    from .run import device, load_run, probe_encoder, probe_sets, require_encoder

    p = resolve(opts)
    cfg, method, ckpt = load_run(checkpoint, list(data_overrides))
    require_encoder(cfg, method, checkpoint)
    cfg, train_labels, long_tailed = probe_config(cfg, opts)
    train, test, label, n_classes = probe_sets(cfg, opts)
    dev = device(opts.device)
    encoder = probe_encoder(cfg, method, opts.features, dev)
    workers = cfg.data.num_workers
    ytr = train.labels[label]
    labelled = torch.nonzero(ytr >= 0).flatten()
    fit_rows, val_rows = holdout_split(labelled, p.val_fraction, opts.seed)
    if p.label_fraction < 1:
        fit_rows = fit_rows[fraction_subset(ytr[fit_rows], p.label_fraction, opts.subset_seed, n_classes)]
    val = None
    if len(val_rows):
        val = (view_features(encoder, train, val_rows, 1.0, p.batch_size, dev, workers), ytr[val_rows])
    r = train_linear_on_crops(encoder, train, fit_rows, ytr[fit_rows], n_classes, p, seed=opts.seed, device=dev,
                              val=val, progress=opts.progress, num_workers=workers)  # fmt: skip
    yte = test.labels[label]
    fte = view_features(encoder, test, torch.arange(len(test)), p.test_crop, p.batch_size, dev, workers)
    logits = fte.to(r["weight"].device) @ r["weight"].T + r["bias"]
    pred = logits.argmax(1).cpu()
    valid = yte >= 0
    n_te = int(valid.sum())
    top1 = float((pred[valid] == yte[valid]).float().mean()) if n_te else math.nan
    top5 = None
    if n_classes >= 5:
        hit5 = (logits.cpu()[valid].topk(5, dim=1).indices == yte[valid, None]).any(1)
        top5 = float(hit5.float().mean()) if n_te else math.nan
    per_class = per_class_accuracy(pred, yte, n_classes)
    settings = {f.name: getattr(p, f.name) for f in dataclasses.fields(Preset) if f.name != "source"}
    settings["milestones"] = list(p.milestones)
    result = {"protocol": "linear_sgd", "checkpoint": str(checkpoint), "step": int(ckpt["step"]), "label": label,
              "features": opts.features, "variant": opts.preset, "preset": opts.preset, "preset_source": p.source,
              "settings": settings, "seed": opts.seed, "subset_seed": opts.subset_seed, "n_train": len(train),
              "n_probe": len(fit_rows), "n_val": len(val_rows), "n_test": len(test), "top1": top1, "top5": top5,
              "train_top1": r["history"]["train_top1"][-1], "best_epoch": r["best_epoch"]}  # fmt: skip
    if val is not None:
        result["val_top1"] = r["history"]["val_top1"][r["best_epoch"]]
    result.update(groups_result(opts, train_labels, long_tailed, n_classes, per_class))
    result["per_class_acc"] = [round(float(a), 4) for a in per_class]
    result["history"] = {k: [None if v is None else round(float(v), 6) for v in vs] for k, vs in r["history"].items()}
    return result
