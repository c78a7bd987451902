"""CUT: Contrastive Unpaired Translation (Park, Efros, Zhang and Zhu, ECCV 2020), the baseline of DCLGAN.

One generator G: A -> B, one PatchGAN discriminator D on domain B, one set of patch heads F.
Per step (D first, then G, as CUT does):

    fake_B = G(real_A),  idt_B = G(real_B)                                 (one pass on both)
    L_D = 0.5 [ gan(D(real_B), real) + gan(D(pool(fake_B)), fake) ]
    L_G = lambda_GAN gan(D(fake_B), real) + lambda_NCE PatchNCE(real_A -> fake_B)
          [+ with nce_idt: the mean of that NCE and PatchNCE(real_B -> idt_B)]

PatchNCE: keys F(G.enc(real_A)) at random patch positions, queries F(G.enc(fake_B)) at the same
positions; the positive of a query is the key at its position, the negatives the other
patches of the same image (``contrastlab.losses.patch_nce``; keys detached, as in our spec).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from ..losses.gan import gan_loss
from ..nn.discriminators import ImagePool, PatchDiscriminator
from ..nn.generators import ResnetGenerator, to_signed
from ..nn.momentum import set_requires_grad
from ..nn.patch_heads import PatchSampleHeads
from .cut_common import TranslationConfig, adam, patch_nce_loss


@dataclass
class CUTConfig(TranslationConfig):
    name: Literal["cut"] = "cut"
    nce_idt: bool = True  # PatchNCE on (real_B, G(real_B)) too: CUT's identity term (False: FastCUT)


class CUT(nn.Module):
    Config = CUTConfig
    manual_optimization = True
    monitor_protocol = "translation"  # its periodic check: sample grids and FID / KID (eval/translation.py)

    def __init__(self, cfg):
        super().__init__()
        self.cfg = m = self.Config(**cfg.method)
        init = {"init_type": m.init_type, "init_gain": m.init_gain}
        self.G = ResnetGenerator(3, 3, m.ngf, m.n_blocks, m.n_down, antialias=m.antialias, antialias_up=m.antialias_up,
                                 **init)  # fmt: skip
        self.D = PatchDiscriminator(3, m.ndf, m.n_layers_d, antialias=m.antialias, **init)
        self.layers = list(m.nce_layers)
        self.F = PatchSampleHeads(self.G.feature_channels(self.layers), m.head_dim, **init)
        self.pool = ImagePool(m.pool_size)

    def configure_optimizers(self, ocfg) -> dict:
        """D: Adam(D); G: Adam over G and the heads F (the official CUT gives F its own Adam with
        G's lr and betas, models/cut_model.py: the same updates; ``method.head_lr`` splits them)."""
        m = self.cfg
        return {"D": adam(self.D.parameters(), ocfg),
                "G": adam(self.G.parameters(), ocfg, self.F.parameters(), m.head_lr, m.head_betas)}  # fmt: skip

    def nce(self, src, tgt, generator=None):
        m = self.cfg
        return patch_nce_loss(self.G, self.F, src, self.G, self.F, tgt, self.layers, m.num_patches, m.nce_t, generator)

    def forward(self, batch: dict) -> dict:
        m, opt, g = self.cfg, batch["optim"], batch.get("generator")
        real_a, real_b = to_signed(batch["a"]), to_signed(batch["b"])
        if m.nce_idt:
            fake_b, idt_b = self.G(torch.cat([real_a, real_b])).chunk(2)
        else:
            fake_b, idt_b = self.G(real_a), None
        # discriminator
        set_requires_grad([self.D], True)
        loss_d = 0.5 * (gan_loss(self.D(real_b), True, m.gan_mode, True)
                        + gan_loss(self.D(self.pool.query(fake_b.detach(), g)), False, m.gan_mode, True))  # fmt: skip
        opt.step("D", loss_d)
        # generator and heads (D frozen: its gradients are not needed)
        set_requires_grad([self.D], False)
        loss_gan = gan_loss(self.D(fake_b), True, m.gan_mode, False)
        loss_nce = self.nce(real_a, fake_b, g)
        if idt_b is not None:
            loss_nce = 0.5 * (loss_nce + self.nce(real_b, idt_b, g))
        loss_g = m.lambda_gan * loss_gan + m.lambda_nce * loss_nce
        opt.step("G", loss_g)
        set_requires_grad([self.D], True)
        return {"loss": loss_g.detach(), "loss_d": loss_d.detach(), "loss_gan": loss_gan.detach(),
                "loss_nce": loss_nce.detach()}  # fmt: skip

    def translators(self) -> dict:
        """The generator of each direction this method learns (for ``contrastlab translate``)."""
        return {"AtoB": self.G}

