"""Small helpers that methods call: encoder and head builders, views, momentum update, queue."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.views import BatchedViews
from ..engine.distributed import gather_no_grad
from ..errors import ConfigError
from ..fields import option
from ..nn import Encoder, MLPHead, build_backbone


@dataclass
class AxesConfig:
    """The axes of the instance-contrastive core shared by SimCLR and MoCo (issue 4), all off by
    default: the loss (DCL ``tau_plus`` > 0, HCL ``beta`` > 0), negative mixing (MoCHi: per
    query, ``mochi_s`` mixes of two and ``mochi_s_prime`` mixes with the query of its
    ``mochi_n_hard`` hardest negatives, from step ``mochi_warmup_steps``; 0 = off) and SDCLR's
    pruned second branch (global magnitude pruning of the conv weights, renewed every epoch)."""

    tau_plus: float = option(0.0, ge=0, lt=1, doc="DCL's class prior")
    beta: float = option(0.0, ge=0)
    mochi_n_hard: int = option(0, ge=0)
    mochi_s: int = option(0, ge=0)
    mochi_s_prime: int = option(0, ge=0)
    mochi_warmup_steps: int = option(0, ge=0)
    pruned_branch: bool = False
    prune_fraction: float = option(0.9, ge=0, lt=1)
    prune_random_fraction: float = option(0.0, ge=0, lt=1)

    @classmethod
    def check(cls, cfg) -> None:
        """Checks across options (each option's range is declared with it): the axes', and the
        projector's BatchNorm, which needs two images per batch to train."""
        check_negatives_options(cfg.method)
        if cfg.model.proj_bn and cfg.optim.batch_size < 2:
            raise ConfigError(f"optim.batch_size={cfg.optim.batch_size}: the projector's BatchNorm (model.proj_bn=true) "
                              "needs at least 2 images per batch; raise batch_size or set model.proj_bn=false")  # fmt: skip


def setup_axes(method: nn.Module, m: dict) -> None:
    """Reads the axes of ``AxesConfig`` from a method section onto the method (after its encoder
    and projector exist): ``tau_plus``, ``beta``, ``mochi`` (n_hard, s, s') or None,
    ``mochi_warmup`` and ``pruned`` (a :class:`PrunedBranch` or None)."""
    method.tau_plus, method.beta = m["tau_plus"], m["beta"]
    method.mochi = (m["mochi_n_hard"], m["mochi_s"], m["mochi_s_prime"]) if m["mochi_n_hard"] else None
    method.mochi_warmup = m["mochi_warmup_steps"]
    method.pruned = None
    if m["pruned_branch"]:
        method.pruned = PrunedBranch(method.encoder, method.projector, m["prune_fraction"], m["prune_random_fraction"])


def mochi_active(method: nn.Module, batch: dict) -> bool:
    return method.mochi is not None and batch.get("step", 0) >= method.mochi_warmup


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


class PrunedBranch(nn.Module):
    """SDCLR's self-damaging branch (Jiang et al., ICML 2021) of an encoder + projector: the
    same weights with the encoder's conv weights masked by global magnitude pruning, renewed at
    the start of every epoch, and BatchNorm layers of its own in both encoder and projector.
    The masks and the epoch they belong to are buffers, so a resumed run continues exactly."""

    def __init__(self, encoder: nn.Module, projector: nn.Module, prune_fraction: float, random_fraction: float = 0.0):
        super().__init__()
        from ..nn.pruning import PrunedTwin

        self.prune_fraction, self.random_fraction = prune_fraction, random_fraction
        self.encoder_twin = PrunedTwin(encoder)
        self.projector_twin = PrunedTwin(projector)  # linear layers are never pruned: own BN only
        self.register_buffer("mask_epoch", torch.tensor(-1, dtype=torch.long))

    @torch.no_grad()
    def refresh(self, encoder: nn.Module, epoch: int) -> None:
        """New masks from the current weights when a new epoch starts (identical on every rank:
        the weights are, and the random part is seeded by the epoch)."""
        if int(self.mask_epoch) == epoch:
            return
        from ..nn.pruning import magnitude_masks

        dev = next(encoder.parameters()).device
        g = torch.Generator(device=dev).manual_seed(1_000_003 + epoch)
        masks = magnitude_masks(encoder, self.prune_fraction, self.random_fraction, generator=g)
        dead = [name for name, mk in masks.items() if not mk.any()]
        if dead:
            # a fully pruned layer without a skip connection makes the branch output constant
            msg = (f"method.prune_fraction={self.prune_fraction} prunes every weight of {', '.join(dead)} "
                   f"(global magnitude pruning favours small-fan-in layers); lower method.prune_fraction")
            if int(self.mask_epoch) < 0:
                from ..errors import ConfigError

                raise ConfigError(msg)
            import warnings

            warnings.warn(msg, stacklevel=2)
        self.encoder_twin.set_masks(masks)
        self.mask_epoch.fill_(epoch)

    def forward(self, encoder: nn.Module, projector: nn.Module, x: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        self.refresh(encoder, epoch)
        return self.projector_twin(projector, self.encoder_twin(encoder, x))


def build_encoder(mcfg) -> Encoder:
    return Encoder(build_backbone(mcfg.backbone, width=mcfg.width, depth=mcfg.depth, cifar_stem=mcfg.cifar_stem), norm=mcfg.norm)


def build_projector(in_dim: int, mcfg) -> MLPHead:
    dims = [in_dim] + [mcfg.proj_hidden] * (mcfg.proj_layers - 1) + [mcfg.proj_dim]
    return MLPHead(dims, batch_norm=mcfg.proj_bn)


def build_views(cfg) -> BatchedViews:
    return BatchedViews(cfg.views, cfg.data.image_size)


def two_views(views: BatchedViews, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Two augmented views of the batch: made by the loader (per-image path) or here (batched)."""
    if "views" in batch:
        v1, v2 = batch["views"][:2]
        return v1, v2
    g = batch.get("generator")
    return views(batch["images"], g), views(batch["images"], g)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy for a momentum branch: same weights, no gradient."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, m: float) -> None:
    """target <- m * target + (1 - m) * online, parameters and floating buffers (BN stats are
    copied as the online ones' EMA as well)."""
    op = [p.detach() for p in online.parameters()]
    tp = [p.detach() for p in target.parameters()]
    torch._foreach_mul_(tp, m)
    torch._foreach_add_(tp, op, alpha=1 - m)
    for ob, tb in zip(online.buffers(), target.buffers()):
        if tb.dtype.is_floating_point:
            tb.mul_(m).add_(ob.detach(), alpha=1 - m)


class Queue(nn.Module):
    """A FIFO of K normalised keys, a buffer (so it is checkpointed and moves with the model).

    ``push`` gathers the keys of all processes (rank order) so every rank's queue is the same.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, k: torch.Tensor) -> None:
        k = gather_no_grad(F.normalize(k.detach().float(), dim=1)).to(self.keys.dtype)
        size = self.keys.shape[0]
        n = k.shape[0]
        if n > size:
            k, n = k[-size:], size
        p = int(self.ptr)
        idx = (torch.arange(n, device=k.device) + p) % size
        self.keys[idx] = k
        self.ptr.fill_((p + n) % size)
