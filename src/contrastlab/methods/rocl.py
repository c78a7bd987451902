"""RoCL: adversarial self-supervised contrastive learning (Kim, Tack, Hwang, NeurIPS 2020) on the SimCLR core.

Per step: two views t1, t2 of every image (the standard view generator); an instance-wise PGD attack
on t1 that maximises the NT-Xent between the perturbed view and the attack's target view (t2 with
``attack_to=other``, the official default; t1 itself with ``attack_to=self``), with BatchNorm in eval
mode and no weight gradients (:func:`contrastlab.attacks.attacking`); then

    L = NT-Xent over the three views [t1, t2, t1_adv]  (each anchor's two other views are its
        positives, :func:`contrastlab.losses.multi_view.multi_view_nt_xent`)
      + adv_weight * NT-Xent(t1_adv, target)

with the three views through the network as one batch (BatchNorm statistics over the 3B images, as
the official rocl_train.py). The core's plug-ins combine with it:

- SDCLR's pruned branch (``pruned_branch``): view t2, and an ``attack_to=other`` target, go through it;
- the debiased / hard loss (DCL ``tau_plus``, HCL ``beta``): the three-view term becomes
  :func:`contrastlab.losses.multi_view.debiased_multi_view_nt_xent` (each anchor's two other views are
  known positives, out of the negatives), the pair term and the attack's loss the two-view debiased
  NT-Xent (the attack maximises the loss being trained, as the paper's); with tau_plus = beta = 0 the
  loss is RoCL's own, unchanged;
- MoCHi (``mochi_*``, from its warm-up): per anchor of the 3B embeddings, synthetic hard negatives mixed
  from the other 3B - 3 (the anchor and both its positives excluded, :func:`multi_view_mochi`), added to
  the three-view term and, for the pair term's anchors (t1_adv and its target), to that term as well;
  the attack, which runs before the training pass, has none.

Evaluation sees the encoder (``contrastlab eval robust RUN``: clean and PGD accuracy of a linear
probe, robust linear evaluation, transfer attacks).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F

from ..attacks import attacking, pgd
from ..errors import ConfigError
from ..fields import option
from ..losses import mochi_negatives
from ..losses.multi_view import debiased_multi_view_nt_xent, multi_view_nt_xent
from .common import AxesConfig, mochi_active
from .simclr import SimCLR, SimCLRConfig


@dataclass
class RoCLConfig(SimCLRConfig):
    name: Literal["rocl"] = "rocl"
    # the instance-wise attack (official argument.py parser(): --epsilon 0.0314, --alpha 0.007, --k 7, linf)
    attack_eps: float = option(8 / 255, ge=0, le=1, doc="radius of the attack's ball, in [0, 1] pixel units")
    attack_step: float = option(0.007, ge=0, le=1, doc="the attack's step size per iteration")
    attack_steps: int = option(7, ge=1, doc="PGD iterations of the attack")
    attack_norm: Literal["linf", "l2"] = "linf"
    attack_random_start: bool = True
    attack_to: Literal["other", "self"] = "other"  # the attack's (and the adversarial pair term's) target view
    adv_weight: float = option(1 / 256, ge=0, doc="weight of NT-Xent(t1_adv, target); official: 1 / lamda, lamda 256")

    @classmethod
    def check(cls, cfg) -> None:
        """SimCLR's checks, with RoCL's own MoCHi pool: an anchor's hard negatives come from the 3B
        embeddings of the three views less the anchor and its two positives, 3B - 3 (SimCLR's 2B - 2
        does not apply)."""
        b, n_hard = cfg.optim.batch_size, cfg.method["mochi_n_hard"]
        if b < 2:
            raise ConfigError(f"optim.batch_size={b}: RoCL needs at least 2 images per batch for negatives")
        AxesConfig.check(cfg)
        if n_hard > 3 * b - 3:
            raise ConfigError(f"method.mochi_n_hard={n_hard}: more than the {3 * b - 3} negatives of an anchor in "
                              f"RoCL's three views of optim.batch_size={b} images (3 x {b} - 3); lower mochi_n_hard "
                              "or raise optim.batch_size")  # fmt: skip


def multi_view_criterion(c) -> Callable[..., torch.Tensor]:
    """The loss over V views, chosen once from the config: ``criterion(views, extra_negatives=None)`` is
    RoCL's multi-view NT-Xent, or its debiased / hard form when ``tau_plus`` or ``beta`` > 0 (the two
    differ at tau_plus = beta = 0 for V >= 3: see :func:`debiased_multi_view_nt_xent`)."""
    if c.tau_plus or c.beta:
        return partial(debiased_multi_view_nt_xent, temperature=c.temperature, tau_plus=c.tau_plus, beta=c.beta)
    return partial(multi_view_nt_xent, temperature=c.temperature)


def multi_view_mochi(views: Sequence[torch.Tensor], n_hard: int, s: int, s_prime: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """MoCHi with the local batch of V views as the pool (the V-view :func:`simclr.batch_mochi`): anchors
    [views[0]; ...; views[V-1]] (V B, detached, normalised), each anchor's hard negatives drawn from the
    other V B - V embeddings (itself and the V - 1 other views of its image excluded). (V B, s+s', d)."""
    anchors = F.normalize(torch.cat(list(views)).detach().float(), dim=1)
    b, n_views = views[0].shape[0], len(views)
    i = torch.arange(n_views * b, device=anchors.device)
    exclude = (i % b)[:, None] + b * torch.arange(n_views, device=anchors.device)  # every view of i's image
    return mochi_negatives(anchors, anchors, n_hard, s, s_prime, generator=generator, exclude=exclude)


class RoCL(SimCLR):
    Config = RoCLConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        self.criterion_views = multi_view_criterion(self.cfg)  # the three-view term (DCL / HCL aware)

    def _networks(self) -> list:
        return [self.encoder, self.projector] + ([self.pruned] if self.pruned is not None else [])

    def _embed_second(self, x, epoch):
        """View t2's projection: through the pruned branch with SDCLR's plug-in, else the network."""
        if self.pruned is None:
            return self.projector(self.encoder(x))
        return self.pruned(self.encoder, self.projector, x, epoch)

    def attack(self, x1: torch.Tensor, x2: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        """The instance-wise attack on view ``x1`` (float in [0, 1]): PGD maximising NT-Xent(x1_adv,
        target) (its debiased / hard form with ``tau_plus`` or ``beta`` > 0: the loss the config trains)
        with the target's projection fixed, BatchNorm in eval mode; flags restored."""
        c = self.cfg
        with attacking(*self._networks()):
            with torch.no_grad():
                target = self._embed_second(x2, epoch) if c.attack_to == "other" else self.projector(self.encoder(x1))
                target = target.float()

            def loss(x_adv):  # the trained two-view loss (NT-Xent, or DCL / HCL's) to the target, this process's batch
                return self.criterion(self.projector(self.encoder(x_adv)), target, gather=False)

            return pgd(loss, x1, c.attack_eps, c.attack_step, c.attack_steps, norm=c.attack_norm,
                       random_start=c.attack_random_start)  # fmt: skip

    def forward(self, batch: dict) -> dict:
        c = self.cfg
        x1, x2 = self.views.pair(batch)
        x1, x2 = x1.float().clamp(0, 1), x2.float().clamp(0, 1)  # the attack's box (a no-op for the views)
        epoch = batch.get("epoch", 0)
        x_adv = self.attack(x1, x2, epoch)
        if self.pruned is None:  # one batch of the three views: BatchNorm statistics over 3B (official)
            z1, z2, za = self.projector(self.encoder(torch.cat([x1, x2, x_adv]))).chunk(3)
        else:
            z1, za = self.projector(self.encoder(torch.cat([x1, x_adv]))).chunk(2)
            z2 = self._embed_second(x2, epoch)
        extra = extra_pair = None
        if mochi_active(self, batch):  # per anchor of [z1; z2; za]; the pair term's anchors are [za; target]
            extra = multi_view_mochi([z1, z2, za], *self.mochi, generator=batch.get("generator"))
            b, tgt = z1.shape[0], 1 if c.attack_to == "other" else 0
            extra_pair = torch.cat([extra[2 * b :], extra[tgt * b : (tgt + 1) * b]])
        loss_rocl = self.criterion_views([z1, z2, za], extra_negatives=extra)
        loss_adv = self.criterion(za, z2 if c.attack_to == "other" else z1, extra_negatives=extra_pair)
        return {"loss": loss_rocl + c.adv_weight * loss_adv, "loss_rocl": loss_rocl.detach(),
                "loss_adv": loss_adv.detach()}  # fmt: skip
