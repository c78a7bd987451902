"""RoCL: adversarial self-supervised contrastive learning (Kim, Tack, Hwang, NeurIPS 2020) on the SimCLR core.

Per step: two views t1, t2 of every image (the standard view generator); an instance-wise PGD attack
on t1 that maximises the NT-Xent between the perturbed view and the attack's target view (t2 with
``attack_to=other``, the official default; t1 itself with ``attack_to=self``), with BatchNorm in eval
mode and no weight gradients (:func:`contrastlab.attacks.attacking`); then

    L = NT-Xent over the three views [t1, t2, t1_adv]  (each anchor's two other views are its
        positives, :func:`contrastlab.losses.multi_view.multi_view_nt_xent`)
      + adv_weight * NT-Xent(t1_adv, target)

with the three views through the network as one batch (BatchNorm statistics over the 3B images, as
the official rocl_train.py). Of the core's plug-ins, SDCLR's pruned branch applies (view t2, and an
``attack_to=other`` target, go through it); the debiased / hard loss (DCL, HCL) and MoCHi's mixing
are written for one positive per anchor and are refused with a one-line error.

Evaluation sees the encoder (``contrastlab eval robust RUN``: clean and PGD accuracy of a linear
probe, robust linear evaluation, transfer attacks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..attacks import attacking, pgd
from ..errors import ConfigError
from ..fields import option
from ..losses import nt_xent
from ..losses.multi_view import multi_view_nt_xent
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
        m = cfg.method
        for key, off in (("tau_plus", 0.0), ("beta", 0.0), ("mochi_n_hard", 0), ("mochi_s", 0), ("mochi_s_prime", 0)):
            if m.get(key, off) != off:
                raise ConfigError(f"method.{key}={m[key]}: RoCL's three-view loss has two positives per anchor, which the "
                                  f"debiased / hard loss and MoCHi's mixing do not define; set method.{key}={off} "
                                  "(method.pruned_branch is the plug-in RoCL takes)")  # fmt: skip
        super().check(cfg)


class RoCL(SimCLR):
    Config = RoCLConfig

    def _networks(self) -> list:
        return [self.encoder, self.projector] + ([self.pruned] if self.pruned is not None else [])

    def _embed_second(self, x, epoch):
        """View t2's projection: through the pruned branch with SDCLR's plug-in, else the network."""
        if self.pruned is None:
            return self.projector(self.encoder(x))
        return self.pruned(self.encoder, self.projector, x, epoch)

    def attack(self, x1: torch.Tensor, x2: torch.Tensor, epoch: int = 0) -> torch.Tensor:
        """The instance-wise attack on view ``x1`` (float in [0, 1]): PGD maximising NT-Xent(x1_adv,
        target) with the target's projection fixed, BatchNorm in eval mode; flags restored."""
        c = self.cfg
        with attacking(*self._networks()):
            with torch.no_grad():
                target = self._embed_second(x2, epoch) if c.attack_to == "other" else self.projector(self.encoder(x1))
                target = target.float()

            def loss(x_adv):  # the two-view NT-Xent of the attacked view against its target, this process's batch
                return nt_xent(self.projector(self.encoder(x_adv)), target, temperature=c.temperature, gather=False)

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
        loss_rocl = multi_view_nt_xent([z1, z2, za], temperature=c.temperature)
        loss_adv = self.criterion(za, z2 if c.attack_to == "other" else z1)
        return {"loss": loss_rocl + c.adv_weight * loss_adv, "loss_rocl": loss_rocl.detach(),
                "loss_adv": loss_adv.detach()}  # fmt: skip
