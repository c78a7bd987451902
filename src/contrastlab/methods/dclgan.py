"""DCLGAN and SimDCL: dual contrastive learning for unpaired translation (Han, Shoeiby, Petersson
and Armin, CVPRW 2021). Two generators, two discriminators, two patch heads, no cycle loss.

    G_A: A -> B,  G_B: B -> A;  D_A judges domain B (real_B vs G_A(real_A)), D_B domain A
    fake_B = G_A(real_A), fake_A = G_B(real_B);  idt_B = G_A(real_B), idt_A = G_B(real_A)
    L_D  = 0.5 [gan(D_A(real_B), real) + gan(D_A(pool_B(fake_B)), fake)]
         + 0.5 [gan(D_B(real_A), real) + gan(D_B(pool_A(fake_A)), fake)]
    NCE1 = PatchNCE(q = F2(G_B.enc(fake_B)), k = F1(G_A.enc(real_A)))   queries from the OTHER encoder
    NCE2 = PatchNCE(q = F1(G_A.enc(fake_A)), k = F2(G_B.enc(real_B)))   at the keys' patch positions
    L_G  = 0.5 lambda_GAN (gan(D_A(fake_B)) + gan(D_B(fake_A))) + 0.5 lambda_NCE (NCE1 + NCE2)
         + 0.5 lambda_IDT (|G_A(real_B) - real_B|_1 + |G_B(real_A) - real_A|_1)

SimDCL adds lambda_SIM [ |H_A(real_A) - H_A(fake_A)|_1 + |H_B(fake_B) - H_B(real_B)|_1 ]: small
learned mapping heads H (here: global average pool of the deepest NCE layer of the encoder that
reads that domain, G_A's for domain A and G_B's for domain B, then Linear-ReLU-Linear to 64
dimensions), pulling real and generated images of one domain together against mode collapse.
The D update comes first, then G, heads and H (as CUT, on which DCLGAN builds).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..fields import option
from ..losses.gan import gan_loss
from ..nn.discriminators import ImagePool, PatchDiscriminator
from ..nn.generators import ResnetGenerator, to_signed
from ..nn.init import init_weights
from ..nn.momentum import set_requires_grad
from ..nn.patch_heads import PatchSampleHeads
from .cut_common import TranslationConfig, adam, patch_nce_loss


@dataclass
class DCLGANConfig(TranslationConfig):
    name: Literal["dclgan"] = "dclgan"
    lambda_nce: float = option(2.0, ge=0)
    lambda_idt: float = option(1.0, ge=0)
    pool_size: int = option(50, ge=0)
    lambda_sim: float = option(0.0, ge=0)  # SimDCL's similarity loss (0: DCLGAN)
    sim_dim: int = option(64, ge=1)


@dataclass
class SimDCLConfig(DCLGANConfig):
    name: Literal["simdcl"] = "simdcl"
    lambda_sim: float = option(10.0, ge=0)


class DCLGAN(nn.Module):
    Config = DCLGANConfig
    manual_optimization = True
    monitor_protocol = "translation"  # its periodic check: sample grids and FID / KID (eval/translation.py)

    def __init__(self, cfg):
        super().__init__()
        self.cfg = m = self.Config(**cfg.method)
        self.G_A = ResnetGenerator(3, 3, m.ngf, m.n_blocks, m.n_down)
        self.G_B = ResnetGenerator(3, 3, m.ngf, m.n_blocks, m.n_down)
        self.D_A = PatchDiscriminator(3, m.ndf, m.n_layers_d)
        self.D_B = PatchDiscriminator(3, m.ndf, m.n_layers_d)
        self.layers = list(m.nce_layers)
        chans = self.G_A.feature_channels(self.layers)
        self.F1 = PatchSampleHeads(chans, m.head_dim)  # on G_A's encoder (reads domain A)
        self.F2 = PatchSampleHeads(chans, m.head_dim)  # on G_B's encoder (reads domain B)
        self.pool_A, self.pool_B = ImagePool(m.pool_size), ImagePool(m.pool_size)
        self.H_A = self.H_B = None
        if m.lambda_sim > 0:
            c = chans[-1]
            self.H_A = init_weights(nn.Sequential(nn.Linear(c, m.sim_dim), nn.ReLU(), nn.Linear(m.sim_dim, m.sim_dim)))
            self.H_B = init_weights(nn.Sequential(nn.Linear(c, m.sim_dim), nn.ReLU(), nn.Linear(m.sim_dim, m.sim_dim)))

    def configure_optimizers(self, ocfg) -> dict:
        g_params = [*self.G_A.parameters(), *self.G_B.parameters(), *self.F1.parameters(), *self.F2.parameters()]
        if self.H_A is not None:
            g_params += [*self.H_A.parameters(), *self.H_B.parameters()]
        return {"D": adam([*self.D_A.parameters(), *self.D_B.parameters()], ocfg), "G": adam(g_params, ocfg)}

    def nce_losses(self, real_a, real_b, fake_a, fake_b, generator=None):
        """(NCE1, NCE2) with DCLGAN's cross-encoder wiring: the keys of an input come from the
        generator that reads it, the queries of its translation from the other generator."""
        m = self.cfg
        args = (self.layers, m.num_patches, m.nce_t, generator)
        nce1 = patch_nce_loss(self.G_A, self.F1, real_a, self.G_B, self.F2, fake_b, *args)
        nce2 = patch_nce_loss(self.G_B, self.F2, real_b, self.G_A, self.F1, fake_a, *args)
        return nce1, nce2

    def _embed(self, enc, head, x):
        return head(enc.encode(x, self.layers[-1:])[0].mean(dim=(2, 3)))

    def forward(self, batch: dict) -> dict:
        m, opt, g = self.cfg, batch["optim"], batch.get("generator")
        mode = m.gan_mode
        real_a, real_b = to_signed(batch["a"]), to_signed(batch["b"])
        fake_b, idt_b = self.G_A(torch.cat([real_a, real_b])).chunk(2)  # idt_b = G_A(real_B) ~ real_B
        fake_a, idt_a = self.G_B(torch.cat([real_b, real_a])).chunk(2)  # idt_a = G_B(real_A) ~ real_A
        # discriminators
        nets_d = [self.D_A, self.D_B]
        set_requires_grad(nets_d, True)
        loss_d_a = 0.5 * (gan_loss(self.D_A(real_b), True, mode, True)
                          + gan_loss(self.D_A(self.pool_B.query(fake_b.detach(), g)), False, mode, True))  # fmt: skip
        loss_d_b = 0.5 * (gan_loss(self.D_B(real_a), True, mode, True)
                          + gan_loss(self.D_B(self.pool_A.query(fake_a.detach(), g)), False, mode, True))  # fmt: skip
        opt.step("D", loss_d_a + loss_d_b)
        # generators, patch heads (and SimDCL's mapping heads); discriminators frozen
        set_requires_grad(nets_d, False)
        loss_gan = 0.5 * (gan_loss(self.D_A(fake_b), True, mode, False) + gan_loss(self.D_B(fake_a), True, mode, False))
        nce1, nce2 = self.nce_losses(real_a, real_b, fake_a, fake_b, g)
        loss_idt = 0.5 * (F.l1_loss(idt_b, real_b) + F.l1_loss(idt_a, real_a))
        loss_g = m.lambda_gan * loss_gan + 0.5 * m.lambda_nce * (nce1 + nce2) + m.lambda_idt * loss_idt
        out = {}
        if self.H_A is not None:
            loss_sim = (F.l1_loss(self._embed(self.G_A, self.H_A, real_a), self._embed(self.G_A, self.H_A, fake_a))
                        + F.l1_loss(self._embed(self.G_B, self.H_B, fake_b), self._embed(self.G_B, self.H_B, real_b)))  # fmt: skip
            loss_g = loss_g + m.lambda_sim * loss_sim
            out["loss_sim"] = loss_sim.detach()
        opt.step("G", loss_g)
        set_requires_grad(nets_d, True)
        return {"loss": loss_g.detach(), "loss_d": (loss_d_a + loss_d_b).detach(), "loss_gan": loss_gan.detach(),
                "loss_nce": (0.5 * (nce1 + nce2)).detach(), "loss_idt": loss_idt.detach(), **out}  # fmt: skip

    def translators(self) -> dict:
        return {"AtoB": self.G_A, "BtoA": self.G_B}


class SimDCL(DCLGAN):
    Config = SimDCLConfig
