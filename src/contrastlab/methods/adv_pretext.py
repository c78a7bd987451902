"""Adversarial self-supervised pre-training and adversarial fine-tuning (Chen, Liu, Chang, Cheng,
Amini and Wang, "Adversarial Robustness: From Self-Supervised Pre-Training to Fine-Tuning", CVPR 2020;
official code TAMU-VITA/Adv-SS-Pretraining).

Pre-training (:class:`AdvPretext`: ``adv_rotation``, ``adv_jigsaw``, ``adv_ensemble``), per step:

    x = a standard view of each image (crop, flip)
    for each task t (rotation: 4 turns; jigsaw: permutation classes of a grid):
        x_t, y_t = task_t(x)                                     (contrastlab.data.pretext)
    x_t_adv = PGD maximising sum_t CE(head_t(trunk(x_t + d_t)), y_t) [+ lambda * div]   (BN in eval mode)
    L = mean_t [ 0.5 CE(head_t(trunk(x_t_adv)), y_t) + 0.5 CE(head_t(trunk(x_t)), y_t) ]  + lambda * div
    div = mean_b log det(G_b^T G_b + 1e-5 I), G_b the unit input gradients of the tasks' adversarial
          losses (ensemble only; losses.gradient_diversity)

One task is the paper's adversarial rotation / jigsaw pre-training (``train_adv_rotation.py``,
``train_adv_jigsaw.py``: 0.5 / 0.5 of adversarial and clean cross-entropy); both tasks on one shared
trunk with one head each is the ensemble (``ensemble_pretrain.py``: the mean of all clean and
adversarial losses + 0.1 log det, the same term in the attack, ``attack_algo_ensemble.py``
``PGD_attack_3module``). The trunk is the recipe's encoder, which the kNN monitor and fine-tuning use.

Fine-tuning (:class:`AdvFinetune`, ``adv_finetune``): Madry adversarial training on the data set's
labels (``finetune/main.py``: CE of the PGD images only), the encoder optionally initialised from a
pre-trained run's encoder (``method.init_from``), all of it trained or only the parameters named by
``method.trainable``; ``classify(x)`` gives its logits for images in [0, 1], so ``eval robust``
evaluates it as a classifier. Its monitor reports clean and PGD-k accuracy on the test set.

The attacks run inside :func:`contrastlab.attacks.attacking`: BatchNorm layers in eval mode and
parameters without gradients, both restored after (the official code attacks with BN in train
mode, which updates the running statistics with the attack's iterates: a difference on purpose).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attacks import attacking, pgd
from ..checkpoint import load_checkpoint, load_weights
from ..data.pretext import jigsaw_permutations, jigsaw_task, rotation_task
from ..errors import ConfigError, UserError
from ..fields import option
from ..losses.adversarial import clean_adversarial_ce, gradient_diversity
from ..nn import MLPHead
from .common import build_encoder, build_views, require_batched_views

TASKS = {"adv_rotation": ("rotation",), "adv_jigsaw": ("jigsaw",), "adv_ensemble": ("rotation", "jigsaw")}


@dataclass
class AttackOptions:
    """The training attack: l_inf PGD with random start (the paper's 8/255, 2/255, 10 steps)."""

    eps: float = option(8 / 255, ge=0, le=1, doc="the l_inf radius, in [0, 1] pixel units")
    step_size: float = option(2 / 255, gt=0, le=1)
    attack_steps: int = option(10, ge=1)
    random_start: bool = True


@dataclass
class AdvPretextConfig(AttackOptions):
    name: Literal["adv_rotation", "adv_jigsaw", "adv_ensemble"] = "adv_rotation"
    adv_weight: float = option(0.5, ge=0, le=1, doc="the adversarial loss's share (the clean loss has the rest)")
    jigsaw_grid: int = option(4, ge=2, le=8, doc="patches per side")
    jigsaw_classes: int = option(31, ge=2, doc="permutation classes, the identity included")
    jigsaw_seed: int = option(0, ge=0, doc="seed of the permutation set")
    jigsaw_identity_p: float = option(0.1, ge=0, le=1, doc="share of images left unshuffled (class 0) on top")
    head_hidden: int = option(0, ge=0, doc="hidden width of each task's head; 0: a linear head")
    diversity_weight: float = option(0.1, ge=0, doc="lambda of the gradient-diversity term (ensemble only)")
    diversity_in_attack: bool = True  # the attack maximises the tasks' losses + lambda * div, as the official

    @classmethod
    def check(cls, cfg) -> None:
        m = cfg.method
        if "jigsaw" in TASKS[m["name"]]:
            jigsaw_permutations(m["jigsaw_classes"], m["jigsaw_grid"], m["jigsaw_seed"])  # raises a one-line error
            size = cfg.views.size or cfg.data.image_size
            if size // m["jigsaw_grid"] < 2:
                raise ConfigError(f"method.jigsaw_grid={m['jigsaw_grid']}: patches under 2 px at {size} px views; "
                                  "lower jigsaw_grid")  # fmt: skip
        require_batched_views(cfg, f"{m['name']} makes its pretext inputs from batched images")


def task_head(in_dim: int, n_classes: int, hidden: int) -> nn.Module:
    return nn.Linear(in_dim, n_classes) if hidden == 0 else MLPHead([in_dim, hidden, n_classes])


def one_view(views, batch: dict) -> torch.Tensor:
    """One standard view of each image of the batch, float in [0, 1]."""
    if "views" in batch:
        return batch["views"][0]
    return views(batch["images"], batch.get("generator"))


class AdvPretext(nn.Module):
    Config = AdvPretextConfig

    def __init__(self, cfg):
        super().__init__()
        self.cfg = c = self.Config(**cfg.method)
        self.tasks = TASKS[c.name]
        self.encoder = build_encoder(cfg.model)  # the shared trunk
        classes = {"rotation": 4, "jigsaw": c.jigsaw_classes}
        self.heads = nn.ModuleDict({t: task_head(self.encoder.out_dim, classes[t], c.head_hidden) for t in self.tasks})
        if "jigsaw" in self.tasks:
            self.register_buffer("perms", jigsaw_permutations(c.jigsaw_classes, c.jigsaw_grid, c.jigsaw_seed),
                                 persistent=False)  # fmt: skip
        self.views = build_views(cfg)

    def pretext(self, x: torch.Tensor, generator=None):
        """Each task's input and labels from the views x: lists of (B, 3, S, S) and (B,)."""
        inputs, labels = [], []
        for t in self.tasks:
            if t == "rotation":
                xi, yi = rotation_task(x, generator)
            else:
                c = self.cfg
                xi, yi = jigsaw_task(x, self.perms, c.jigsaw_grid, c.jigsaw_identity_p, generator)
            inputs.append(xi)
            labels.append(yi)
        return inputs, labels

    def logits(self, xs: torch.Tensor) -> list[torch.Tensor]:
        """xs (T, B, 3, S, S), task t's inputs at xs[t] -> each task's logits (one trunk pass per task)."""
        return [self.heads[t](self.encoder(xs[i])) for i, t in enumerate(self.tasks)]

    def diversity(self, losses: list[torch.Tensor], xs: torch.Tensor) -> torch.Tensor:
        """div of the tasks' input gradients (each task's loss depends on its own slice of xs only,
        so the gradient of the sum is each task's gradient at its slice); differentiable."""
        (g,) = torch.autograd.grad(sum(losses), xs, create_graph=True)
        return gradient_diversity(list(g.unbind(0)))

    def attack_loss(self, labels: list[torch.Tensor]):
        c, ensemble = self.cfg, len(self.tasks) > 1

        def loss(xs):
            losses = [F.cross_entropy(z.float(), y) for z, y in zip(self.logits(xs), labels)]
            total = sum(losses)
            if ensemble and c.diversity_in_attack and c.diversity_weight > 0:
                total = total + c.diversity_weight * self.diversity(losses, xs)
            return total

        return loss

    def forward(self, batch: dict) -> dict:
        c = self.cfg
        inputs, labels = self.pretext(one_view(self.views, batch), batch.get("generator"))
        x = torch.stack(inputs)  # (T, B, 3, S, S)
        with attacking(self):  # BN in eval mode, no weight gradients; restored after
            x_adv = pgd(self.attack_loss(labels), x, c.eps, c.step_size, c.attack_steps, random_start=c.random_start)
        use_div = len(self.tasks) > 1 and c.diversity_weight > 0
        if use_div:
            x_adv.requires_grad_(True)
        clean, adv = self.logits(x), self.logits(x_adv)
        out, loss = {}, 0.0
        for t, zc, za, y in zip(self.tasks, clean, adv, labels):
            loss = loss + clean_adversarial_ce(zc, za, y, c.adv_weight) / len(self.tasks)
            out[f"{t}_acc"] = (zc.argmax(1) == y).float().mean().detach()
            out[f"{t}_adv_acc"] = (za.argmax(1) == y).float().mean().detach()
        if use_div:
            div = self.diversity([F.cross_entropy(za.float(), y) for za, y in zip(adv, labels)], x_adv)
            loss = loss + c.diversity_weight * div
            out["diversity"] = div.detach()
        return {"loss": loss, **out}


@dataclass
class AdvFinetuneConfig(AttackOptions):
    name: Literal["adv_finetune"] = "adv_finetune"
    n_classes: int = option(10, ge=2, doc="classes of the fine-tuning label (data.label)")
    adv_weight: float = option(1.0, ge=0, le=1, doc="the adversarial loss's share; 1: Madry (the official)")
    # a checkpoint or run folder whose encoder starts the fine-tuning (same model: section); None: random init
    init_from: Optional[str] = None
    # names (prefixes of parameter names, e.g. classifier, encoder.backbone.features.8) of what trains; (): all
    trainable: tuple[str, ...] = ()
    eval_steps: int = option(20, ge=1, doc="PGD steps of the monitor's robust accuracy")
    eval_images: int = option(1000, ge=1, doc="test images the monitor evaluates")


def _named(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


MODEL_KEYS = ("backbone", "width", "depth", "norm", "cifar_stem", "timm_kwargs")


class AdvFinetune(nn.Module):
    Config = AdvFinetuneConfig

    def __init__(self, cfg):
        super().__init__()
        self.cfg = c = self.Config(**cfg.method)
        self.model_cfg = cfg.model
        self.label_name = cfg.data.label
        self.encoder = build_encoder(cfg.model)
        self.classifier = nn.Linear(self.encoder.out_dim, c.n_classes)
        self.views = build_views(cfg)
        self.register_buffer("labels", torch.empty(0, dtype=torch.long), persistent=False)
        if c.trainable:
            names = [n for n, _ in self.named_parameters()]
            for p in c.trainable:
                if not any(_named(n, [p]) for n in names):
                    blocks = sorted({n.rsplit(".", 1)[0] for n in names})
                    raise ConfigError(f"method.trainable: {p!r} names no parameters; use prefixes of "
                                      f"{', '.join(blocks)}")  # fmt: skip
            for n, prm in self.named_parameters():
                prm.requires_grad_(_named(n, c.trainable))

    def frozen_norms(self):
        """BatchNorm layers outside ``trainable``: kept in eval mode, so their statistics stay as loaded."""
        if not self.cfg.trainable:
            return []
        return [m for n, m in self.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not _named(n, self.cfg.trainable)]  # fmt: skip

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.frozen_norms():
            m.train(False)
        return self

    def setup_data(self, train_set) -> None:
        """The training labels (looked up by ``batch["index"]``) and the pre-trained encoder."""
        name = self.label_name or getattr(train_set, "default_label", None)
        labels = getattr(train_set, "labels", {}) or {}
        if name not in labels:
            raise UserError(f"adv_finetune trains on labels, and the training set has no label {name!r} "
                            f"(data.label); available: {', '.join(labels) or 'none'}")  # fmt: skip
        y = torch.as_tensor(labels[name], dtype=torch.long)
        if len(y) != len(train_set) or (y < 0).any():
            raise UserError(f"data.label={name}: some training images have no label; adv_finetune needs all labelled")
        if int(y.max()) >= self.cfg.n_classes:
            raise ConfigError(f"method.n_classes={self.cfg.n_classes}: the label {name!r} has classes up to "
                              f"{int(y.max())}; set n_classes={int(y.max()) + 1}")  # fmt: skip
        self.labels = y.to(self.classifier.weight.device)
        if self.cfg.init_from:
            self.load_encoder(self.cfg.init_from)

    def load_encoder(self, path: str) -> None:
        where = f"method.init_from={path}"
        try:
            ckpt = load_checkpoint(path)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        theirs = ckpt["config"].get("model", {})
        ours = vars(self.model_cfg) if not isinstance(self.model_cfg, dict) else self.model_cfg
        diff = [k for k in MODEL_KEYS if k in theirs and theirs.get(k) != ours.get(k)]
        if diff:
            raise ConfigError(f"{where}: its encoder was built with another model ("
                              + ", ".join(f"model.{k}={theirs[k]} here {ours.get(k)}" for k in diff)
                              + "); set the same model: keys")  # fmt: skip
        state = {k[len("encoder."):]: v for k, v in ckpt["model"].items() if k.startswith("encoder.")}
        if not state:
            raise UserError(f"{where}: the checkpoint has no encoder weights (a {ckpt['config'].get('method', {}).get('name')} "
                            "run); start from a run with an encoder")  # fmt: skip
        load_weights(self.encoder, state, where)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of images in [0, 1] (normalisation inside the encoder)."""
        return self.classifier(self.encoder(x))

    def forward(self, batch: dict) -> dict:
        c = self.cfg
        if self.labels.numel() == 0:
            raise UserError("adv_finetune has no training labels: it is trained through the trainer's set-up "
                            "(setup_data), which a set-up without data does not have")  # fmt: skip
        y = self.labels[batch["index"].to(self.labels.device)]
        x = one_view(self.views, batch)
        with attacking(self):
            x_adv = pgd(lambda v: F.cross_entropy(self.classify(v).float(), y), x, c.eps, c.step_size,
                        c.attack_steps, random_start=c.random_start)  # fmt: skip
        z_adv = self.classify(x_adv)
        z_clean = self.classify(x) if c.adv_weight < 1 else z_adv
        loss = clean_adversarial_ce(z_clean, z_adv, y, c.adv_weight)
        return {"loss": loss, "adv_acc": (z_adv.argmax(1) == y).float().mean().detach()}

    def monitor(self, train_set, test_set, run_dir, step, device) -> dict:
        """Clean and PGD-``eval_steps`` accuracy (l_inf, ``eps``, ``step_size``, random start) on the
        first ``eval_images`` test images, the model in eval mode."""
        c = self.cfg
        name = self.label_name or getattr(test_set, "default_label", None)
        n = min(len(test_set), c.eval_images)
        x_all = test_set.images[:n] if hasattr(test_set, "images") else torch.stack([test_set[i][0] for i in range(n)])
        y_all = torch.as_tensor(test_set.labels[name][:n])
        self.eval()
        right = right_adv = 0
        for i in range(0, n, 250):
            x = x_all[i : i + 250].to(device).float().div(255)
            y = y_all[i : i + 250].to(device)
            with torch.no_grad():
                right += int((self.classify(x).argmax(1) == y).sum())
            with attacking(self):
                x_adv = pgd(lambda v: F.cross_entropy(self.classify(v).float(), y), x, c.eps, c.step_size, c.eval_steps)
            with torch.no_grad():
                right_adv += int((self.classify(x_adv).argmax(1) == y).sum())
        return {"clean_acc": right / n, f"pgd{c.eval_steps}_acc": right_adv / n}
