"""What the instance-contrastive methods share: the axes of the core (loss, mixing, pruned branch)
and the builders of encoder, projector and views from a recipe."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Literal, Optional

import torch
import torch.nn as nn

from ..data.views import TwoViews
from ..errors import ConfigError
from ..fields import option
from ..losses import debiased_info_nce, debiased_nt_xent, info_nce, nt_xent
from ..nn import Encoder, MLPHead, build_backbone
from ..nn.pruning import PrunedBranch


@dataclass
class AxesConfig:
    """The axes of the instance-contrastive core shared by SimCLR and MoCo (issue 4), all off by
    default: the loss (DCL ``tau_plus`` > 0, HCL ``beta`` > 0), negative mixing (MoCHi: per
    query, ``mochi_s`` mixes of two and ``mochi_s_prime`` mixes with the query of its
    ``mochi_n_hard`` hardest negatives, from step ``mochi_warmup_steps`` or epoch
    ``mochi_warmup_epochs``; 0 = off) and SDCLR's
    pruned second branch (global magnitude pruning of the conv weights, renewed every epoch, with an
    optional random part: ``prune_random_fraction`` of the survivors, or of the total with
    ``prune_random_mode=total`` as the official code)."""

    tau_plus: float = option(0.0, ge=0, lt=1, doc="DCL's class prior")
    beta: float = option(0.0, ge=0)
    mochi_n_hard: int = option(0, ge=0)
    mochi_s: int = option(0, ge=0)
    mochi_s_prime: int = option(0, ge=0)
    mochi_warmup_steps: int = option(0, ge=0)
    mochi_warmup_epochs: Optional[float] = option(None, ge=0)  # the same in epochs (the papers' unit)
    pruned_branch: bool = False
    prune_fraction: float = option(0.9, ge=0, lt=1)
    prune_random_fraction: float = option(0.0, ge=0, lt=1)
    # what prune_random_fraction is a share of: "survivors" prunes prune_fraction by magnitude, then that
    # share of the weights left; "total" (the official SDCLR code) prunes prune_fraction in all, its
    # prune_random_fraction at random and the rest by magnitude (see contrastlab.nn.magnitude_masks)
    prune_random_mode: Literal["survivors", "total"] = "survivors"

    @classmethod
    def check(cls, cfg) -> None:
        """Checks across options (each option's range is declared with it): the axes', and the
        projector's BatchNorm, which needs two images per batch to train."""
        check_negatives_options(cfg.method)
        for key in ("proj_bn", "proj_bn_last"):
            if getattr(cfg.model, key) and cfg.optim.batch_size < 2:
                raise ConfigError(f"optim.batch_size={cfg.optim.batch_size}: the projector's BatchNorm (model.{key}=true) "
                                  f"needs at least 2 images per batch; raise batch_size or set model.{key}=false")  # fmt: skip


def setup_axes(method: nn.Module, c: AxesConfig) -> None:
    """Sets the mixing and pruning axes of ``AxesConfig`` on the method, once (after its encoder
    and projector exist): ``mochi`` (n_hard, s, s') or None, ``mochi_warmup``, and ``pruned`` (a
    :class:`PrunedBranch` or None). The loss axis is the method's ``criterion``
    (:func:`batch_criterion`, :func:`queue_criterion`)."""
    method.mochi = (c.mochi_n_hard, c.mochi_s, c.mochi_s_prime) if c.mochi_n_hard else None
    method.mochi_warmup = c.mochi_warmup_steps
    method.mochi_warmup_epochs = c.mochi_warmup_epochs
    method.pruned = None
    if c.pruned_branch:
        method.pruned = PrunedBranch(method.encoder, method.projector, c.prune_fraction, c.prune_random_fraction,
                                     random_of=c.prune_random_mode)


def mochi_active(method: nn.Module, batch: dict) -> bool:
    """Whether mixing is on at this step: from ``mochi_warmup_steps``, or from
    ``mochi_warmup_epochs`` x the trainer's steps per epoch (without them: from that epoch)."""
    if method.mochi is None:
        return False
    epochs = getattr(method, "mochi_warmup_epochs", None)
    if epochs is None:
        return batch.get("step", 0) >= method.mochi_warmup
    if "steps_per_epoch" in batch:
        return batch.get("step", 0) >= round(epochs * batch["steps_per_epoch"])
    return batch.get("epoch", 0) >= epochs


def require_batched_views(cfg, why: str) -> None:
    """A one-line ConfigError unless ``views.backend`` is batched: ``why`` says what the method makes
    from whole batches on the device (e.g. "detco cuts its jigsaw views from batched images")."""
    if cfg.views.backend != "batched":
        raise ConfigError(f"views.backend={cfg.views.backend}: {why}; set views.backend=batched")


def batch_criterion(c) -> Callable[..., torch.Tensor]:
    """The loss over a two-view batch, chosen once from the config: ``criterion(z1, z2,
    extra_negatives=None)`` is NT-Xent (SimCLR), or the debiased / hard NT-Xent when
    ``tau_plus`` or ``beta`` > 0 (DCL, HCL); negatives gathered across processes."""
    if c.tau_plus or c.beta:
        return partial(debiased_nt_xent, temperature=c.temperature, tau_plus=c.tau_plus, beta=c.beta)
    return partial(nt_xent, temperature=c.temperature)


def queue_criterion(c) -> Callable[..., torch.Tensor]:
    """The loss of queries against their keys and a queue, chosen once from the config:
    ``criterion(q, k, queue, extra_negatives=None)`` is InfoNCE (MoCo), or its debiased / hard
    form when ``tau_plus`` or ``beta`` > 0."""
    if c.tau_plus or c.beta:
        return partial(debiased_info_nce, temperature=c.temperature, tau_plus=c.tau_plus, beta=c.beta)
    return partial(info_nce, temperature=c.temperature)


def check_negatives_options(m: dict) -> None:
    """Checks of the mixing axis across options (one-line errors): MoCHi needs both a pool of
    hard negatives and some mixes, or neither. The pool's size is the method's check."""
    n, s, s2 = m["mochi_n_hard"], m["mochi_s"], m["mochi_s_prime"]
    if n and not (s or s2):
        raise ConfigError(f"method.mochi_n_hard={n} but method.mochi_s=0 and method.mochi_s_prime=0: "
                          "no synthetic negatives; set one of them (or mochi_n_hard=0)")  # fmt: skip
    if (s or s2) and not n:
        raise ConfigError(f"method.mochi_s={s} and method.mochi_s_prime={s2} but method.mochi_n_hard=0: "
                          "MoCHi is off; set mochi_n_hard (the hard negatives mixed) or the mixes to 0")  # fmt: skip
    if m.get("prune_random_mode") == "total" and m.get("prune_random_fraction", 0) > m.get("prune_fraction", 0):
        raise ConfigError(f"method.prune_random_fraction={m['prune_random_fraction']} exceeds method.prune_fraction="
                          f"{m['prune_fraction']}: with method.prune_random_mode=total the random part is a share of "
                          "the total pruned; lower it or use prune_random_mode=survivors")  # fmt: skip
    if m.get("mochi_warmup_steps") and m.get("mochi_warmup_epochs") is not None:
        raise ConfigError(f"method.mochi_warmup_steps={m['mochi_warmup_steps']} and method.mochi_warmup_epochs="
                          f"{m['mochi_warmup_epochs']}: give MoCHi's warm-up once, in steps or in epochs")  # fmt: skip


def build_encoder(mcfg) -> Encoder:
    return Encoder(build_backbone(mcfg.backbone, width=mcfg.width, depth=mcfg.depth, cifar_stem=mcfg.cifar_stem,
                                  timm_kwargs=mcfg.timm_kwargs, output_stride=mcfg.output_stride,
                                  deep_stem=mcfg.deep_stem), norm=mcfg.norm)  # fmt: skip


def build_projector(in_dim: int, mcfg) -> MLPHead:
    """The projection head of ``model.proj_*``: ``proj_layers`` linear layers (in -> proj_hidden ...
    -> proj_dim), BatchNorm after each hidden one (``proj_bn``) and, with ``proj_bn_last``, an
    affine BatchNorm after the last one too, which then has no bias (SDCLR's official head)."""
    dims = [in_dim] + [mcfg.proj_hidden] * (mcfg.proj_layers - 1) + [mcfg.proj_dim]
    return MLPHead(dims, batch_norm=mcfg.proj_bn, last_bn=mcfg.proj_bn_last, last_bn_affine=mcfg.proj_bn_last)


def build_views(cfg) -> TwoViews:
    """The standard view generator of a recipe (``views:`` section, at ``data.image_size``)."""
    return TwoViews(cfg.views, cfg.views.size or cfg.data.image_size)
