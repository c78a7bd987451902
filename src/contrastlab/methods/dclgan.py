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

Official weights (JunlinHan/DCLGAN models/dcl_model.py, compute_G_loss): lambda_GAN 1,
lambda_NCE 2, lambda_IDT 1, as the defaults here.

SimDCL adds lambda_SIM * sim: small learned mapping heads H pull real and generated images of
one domain together against mode collapse. ``method.sim_net`` chooses them:

    pooled   (the library's default): H_A / H_B = global average pool of the deepest NCE layer
             of the encoder that reads that domain (G_A's for A, G_B's for B), then
             Linear-ReLU-Linear to sim_dim;  sim = |H_A(real_A) - H_A(fake_A)|_1 + |H_B(fake_B) - H_B(real_B)|_1
    patches  (the official one, models/simdcl_model.py calculate_Sim_loss_all): four mapping
             networks (``PatchStackHead``: the L layers' P patch embeddings stacked as an
             L-channel P x d image, conv, pool, Linear-ReLU-Linear, L2-normalised), one per kind
             of image, on the patch-head embeddings: real_A = F1(G_A.enc(real_A)) at NCE1's key
             positions, fake_A = F1(G_A.enc(fake_A)) at fresh positions, real_B = F2(G_B.enc(real_B))
             at NCE2's key positions, fake_B = F2(G_B.enc(fake_B)) at fresh positions;
             sim = |H_realA - H_fakeA|_1 + |H_fakeB - H_realB|_1, both L1 means (the official
             ``L1Loss('sum')`` passes 'sum' as the legacy size_average, i.e. mean); the key
             embeddings keep their gradient here (PatchNCE still detaches them).

The official SimDCL G loss is 0.5 (GAN_A + GAN_B) + 0.5 (NCE1 + NCE2) + 0.5 (IDT_A + IDT_B)
+ lambda_SIM sim with lambda_SIM 10: its NCE term is not multiplied by lambda_NCE, which is
``method.lambda_nce=1`` here (configs/simdcl/horse2zebra.yaml). The D update comes first, then
G, heads and H (as CUT, on which DCLGAN builds).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..fields import option
from ..errors import ConfigError
from ..losses.gan import gan_loss
from ..losses.patch_nce import patch_nce
from ..nn.discriminators import ImagePool, PatchDiscriminator
from ..nn.generators import ResnetGenerator, to_signed
from ..nn.init import init_weights
from ..nn.momentum import set_requires_grad
from ..nn.patch_heads import PatchSampleHeads, PatchStackHead
from .cut_common import TranslationConfig, adam, patch_nce_loss


@dataclass
class DCLGANConfig(TranslationConfig):
    name: Literal["dclgan"] = "dclgan"
    lambda_nce: float = option(2.0, ge=0)
    lambda_idt: float = option(1.0, ge=0)
    pool_size: int = option(50, ge=0)  # the library's default; the official DCLGAN has none (0)
    lambda_sim: float = option(0.0, ge=0)  # SimDCL's similarity loss (0: DCLGAN)
    sim_dim: int = option(64, ge=1)
    # SimDCL's mapping heads: pooled (the library's) or patches (the official MappingF; see the module doc)
    sim_net: Literal["pooled", "patches"] = "pooled"

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        m = cfg.method
        if m["lambda_sim"] > 0 and m["sim_net"] == "patches":
            if m["num_patches"] < 3 or m["head_dim"] < 3:
                raise ConfigError(f"method.sim_net=patches stacks the patch embeddings as a P x d image for a 3x3 conv: "
                                  f"needs method.num_patches >= 3 and method.head_dim >= 3, got {m['num_patches']} "
                                  f"and {m['head_dim']}")  # fmt: skip
            size = cfg.data.image_size
            sizes = ResnetGenerator.spatial_sizes(size, m["n_down"], m["n_blocks"], m["antialias"], m["antialias_up"])
            small = [i for i in m["nce_layers"] if sizes[i] ** 2 < m["num_patches"]]
            if small:
                raise ConfigError(f"method.sim_net=patches needs num_patches={m['num_patches']} positions at every NCE "
                                  f"layer; at data.image_size={size} layers {small} have only "
                                  f"{min(sizes[i] ** 2 for i in small)}: lower method.num_patches")  # fmt: skip


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
        init = {"init_type": m.init_type, "init_gain": m.init_gain}
        gen = {"antialias": m.antialias, "antialias_up": m.antialias_up, **init}
        self.G_A = ResnetGenerator(3, 3, m.ngf, m.n_blocks, m.n_down, **gen)
        self.G_B = ResnetGenerator(3, 3, m.ngf, m.n_blocks, m.n_down, **gen)
        self.D_A = PatchDiscriminator(3, m.ndf, m.n_layers_d, antialias=m.antialias, **init)
        self.D_B = PatchDiscriminator(3, m.ndf, m.n_layers_d, antialias=m.antialias, **init)
        self.layers = list(m.nce_layers)
        chans = self.G_A.feature_channels(self.layers)
        self.F1 = PatchSampleHeads(chans, m.head_dim, **init)  # on G_A's encoder (reads domain A)
        self.F2 = PatchSampleHeads(chans, m.head_dim, **init)  # on G_B's encoder (reads domain B)
        self.pool_A, self.pool_B = ImagePool(m.pool_size), ImagePool(m.pool_size)
        self.H_A = self.H_B = None
        self.sim_patches = m.lambda_sim > 0 and m.sim_net == "patches"
        if m.lambda_sim > 0 and not self.sim_patches:
            c = chans[-1]
            mlp = lambda: nn.Sequential(nn.Linear(c, m.sim_dim), nn.ReLU(), nn.Linear(m.sim_dim, m.sim_dim))  # noqa: E731
            self.H_A = init_weights(mlp(), m.init_gain, m.init_type)
            self.H_B = init_weights(mlp(), m.init_gain, m.init_type)
        if self.sim_patches:  # the official F3 .. F6, one per kind of image
            stack = lambda: PatchStackHead(len(self.layers), m.sim_dim, **init)  # noqa: E731
            self.H_real_A, self.H_fake_B, self.H_real_B, self.H_fake_A = stack(), stack(), stack(), stack()

    def sim_nets(self) -> list[nn.Module]:
        if self.sim_patches:
            return [self.H_real_A, self.H_fake_B, self.H_real_B, self.H_fake_A]
        return [self.H_A, self.H_B] if self.H_A is not None else []

    def configure_optimizers(self, ocfg) -> dict:
        """D: Adam over both discriminators; G: Adam over both generators, the patch heads F1, F2
        and SimDCL's mapping heads (with ``method.head_lr`` the heads form a second group with
        their own lr and betas: the official DCLGAN's separate optimizer_F)."""
        m = self.cfg
        gens = [*self.G_A.parameters(), *self.G_B.parameters()]
        heads = [*self.F1.parameters(), *self.F2.parameters(), *(p for h in self.sim_nets() for p in h.parameters())]
        return {"D": adam([*self.D_A.parameters(), *self.D_B.parameters()], ocfg),
                "G": adam(gens, ocfg, heads, m.head_lr, m.head_betas)}  # fmt: skip

    def nce_losses(self, real_a, real_b, fake_a, fake_b, generator=None):
        """(NCE1, NCE2) with DCLGAN's cross-encoder wiring: the keys of an input come from the
        generator that reads it, the queries of its translation from the other generator."""
        m = self.cfg
        args = (self.layers, m.num_patches, m.nce_t, generator)
        nce1 = patch_nce_loss(self.G_A, self.F1, real_a, self.G_B, self.F2, fake_b, *args)
        nce2 = patch_nce_loss(self.G_B, self.F2, real_b, self.G_A, self.F1, fake_a, *args)
        return nce1, nce2

    def nce_and_patch_sim(self, real_a, real_b, fake_a, fake_b, generator=None):
        """(NCE1, NCE2, sim) of the official SimDCL (``sim_net=patches``): the same NCE terms as
        :meth:`nce_losses` (same wiring, same draws of patch positions) with the key embeddings
        kept with their gradient, plus the embeddings of each translation at fresh positions,
        all mapped by the four PatchStackHeads. Draw order: NCE1's keys, fake_B's fresh
        positions, NCE2's keys, fake_A's fresh positions."""
        m, layers, n = self.cfg, self.layers, self.cfg.num_patches

        def one(enc_k, heads_k, src, enc_q, heads_q, tgt):
            keys, ids = heads_k(enc_k.encode(src, layers), n, generator=generator)
            feats_q = enc_q.encode(tgt, layers)
            queries, _ = heads_q(feats_q, n, patch_ids=ids)
            fresh, _ = heads_q(feats_q, n, generator=generator)
            nce = sum(patch_nce(q, k, m.nce_t) for q, k in zip(queries, keys)) / len(layers)  # keys detached inside
            return nce, keys, fresh

        nce1, real_a_emb, fake_b_emb = one(self.G_A, self.F1, real_a, self.G_B, self.F2, fake_b)
        nce2, real_b_emb, fake_a_emb = one(self.G_B, self.F2, real_b, self.G_A, self.F1, fake_a)
        sim = (F.l1_loss(self.H_real_A(real_a_emb), self.H_fake_A(fake_a_emb))
               + F.l1_loss(self.H_fake_B(fake_b_emb), self.H_real_B(real_b_emb)))  # fmt: skip
        return nce1, nce2, sim

    def _embed(self, enc, head, x):
        return head(enc.encode(x, self.layers[-1:])[0].mean(dim=(2, 3)))

    def generator_loss(self, gan_a, gan_b, nce1, nce2, idt_a, idt_b, sim=None):
        """L_G = 0.5 lambda_GAN (GAN_A + GAN_B) + 0.5 lambda_NCE (NCE1 + NCE2)
        + 0.5 lambda_IDT (IDT_A + IDT_B) [+ lambda_SIM sim]  (dcl_model.py / simdcl_model.py)."""
        m = self.cfg
        loss = 0.5 * m.lambda_gan * (gan_a + gan_b) + 0.5 * m.lambda_nce * (nce1 + nce2) + 0.5 * m.lambda_idt * (idt_a + idt_b)
        return loss if sim is None else loss + m.lambda_sim * sim

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
        gan_a, gan_b = gan_loss(self.D_A(fake_b), True, mode, False), gan_loss(self.D_B(fake_a), True, mode, False)
        sim = None
        if self.sim_patches:
            nce1, nce2, sim = self.nce_and_patch_sim(real_a, real_b, fake_a, fake_b, g)
        else:
            nce1, nce2 = self.nce_losses(real_a, real_b, fake_a, fake_b, g)
            if self.H_A is not None:
                sim = (F.l1_loss(self._embed(self.G_A, self.H_A, real_a), self._embed(self.G_A, self.H_A, fake_a))
                       + F.l1_loss(self._embed(self.G_B, self.H_B, fake_b), self._embed(self.G_B, self.H_B, real_b)))  # fmt: skip
        idt_l1_b, idt_l1_a = F.l1_loss(idt_b, real_b), F.l1_loss(idt_a, real_a)
        loss_g = self.generator_loss(gan_a, gan_b, nce1, nce2, idt_l1_a, idt_l1_b, sim)
        out = {} if sim is None else {"loss_sim": sim.detach()}
        opt.step("G", loss_g)
        set_requires_grad(nets_d, True)
        return {"loss": loss_g.detach(), "loss_d": (loss_d_a + loss_d_b).detach(),
                "loss_gan": (0.5 * (gan_a + gan_b)).detach(), "loss_nce": (0.5 * (nce1 + nce2)).detach(),
                "loss_idt": (0.5 * (idt_l1_a + idt_l1_b)).detach(), **out}  # fmt: skip

    def translators(self) -> dict:
        return {"AtoB": self.G_A, "BtoA": self.G_B}


class SimDCL(DCLGAN):
    Config = SimDCLConfig
