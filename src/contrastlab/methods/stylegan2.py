"""StyleGAN2 (Karras et al., CVPR 2020): an unconditional generator trained on the training images,
here to give Labels4Free a generator that the whole pipeline can train offline on the CPU.

Per step (D first, then G, as train.py of rosinality/stylegan2-pytorch):

    z ~ N(0, I);  fake = G(z)   [style mixing with probability mixing_prob: a second z from a random layer]
    L_D = softplus(D(fake)) + softplus(-D(real))                    (logistic loss; means over the batch)
    every d_reg_every steps:  L_R1 = r1 / 2 * ||grad_x D(real)||^2 * d_reg_every       (lazy R1)
    L_G = softplus(-D(G(z)))                                         (non-saturating)
    G_ema <- beta G_ema + (1 - beta) G,  beta = 0.5 ** (batch / ema_half_life_images)

Not here: the path-length regulariser of G (rosinality's --path_regularize, every 4 steps) and
adaptive augmentation (ADA); so G's Adam takes optim.lr and optim.betas as they are, while D's
are corrected for the lazy R1 as the official code does (lr * c, betas ** c, c = k / (k + 1)).

The monitor saves a sample grid of G_ema (``RUN/samples/``) and writes the generator in the public
checkpoint format (``RUN/stylegan2.pt``: ``g_ema``, ``g``, ``d``, ``latent_avg``;
:func:`contrastlab.nn.stylegan2.save_stylegan2`), which Labels4Free's recipes read.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..fields import option
from ..losses.gan import gan_loss, r1_penalty
from ..nn.generators import to_signed, to_unit
from ..nn.momentum import frozen_copy, momentum_update, set_requires_grad
from ..nn.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator, save_stylegan2


@dataclass
class GeneratorOptions:
    """The architecture of a StyleGAN2 generator / discriminator (the public config F: style_dim 512,
    n_mlp 8, channel_multiplier 2, max_channels 512, channel_base 16384)."""

    size: int = option(256, ge=8)  # image side, a power of two
    style_dim: int = option(512, ge=1)
    n_mlp: int = option(8, ge=1)
    channel_multiplier: int = option(2, ge=1)
    max_channels: int = option(512, ge=1)
    channel_base: int = option(16384, ge=1)

    @staticmethod
    def check_networks(cfg) -> None:
        """The checks both GAN methods share: a power-of-two size equal to the data's, and a batch the
        discriminator's minibatch-stddev groups of 4 divide."""
        s, image_size = cfg.method["size"], cfg.data.image_size
        if s & (s - 1):
            raise ConfigError(f"method.size={s}: StyleGAN2 sizes are powers of two (32, 64, 256, ...)")
        if s != image_size:
            raise ConfigError(f"method.size={s} but data.image_size={image_size}: set them equal")
        if cfg.optim.batch_size % min(cfg.optim.batch_size, 4):
            raise ConfigError(f"optim.batch_size={cfg.optim.batch_size}: the discriminator's minibatch-stddev groups "
                              f"of 4 need a batch divisible by 4")  # fmt: skip


def build_generator(m) -> StyleGAN2Generator:
    return StyleGAN2Generator(m.size, m.style_dim, m.n_mlp, m.channel_multiplier, m.max_channels, m.channel_base)


def build_discriminator(m) -> StyleGAN2Discriminator:
    return StyleGAN2Discriminator(m.size, m.channel_multiplier, m.max_channels, m.channel_base)


@dataclass
class StyleGAN2Config(GeneratorOptions):
    name: Literal["stylegan2"] = "stylegan2"
    r1: float = option(10.0, ge=0)  # R1 weight gamma (rosinality train.py --r1 10)
    d_reg_every: int = option(16, ge=1)  # lazy R1 interval (--d_reg_every 16)
    mixing_prob: float = option(0.9, ge=0, le=1)  # style mixing probability (--mixing 0.9)
    # G_ema half-life in images (rosinality: accum = 0.5 ** (32 / (10 * 1000)): 10k images at its batch 32)
    ema_half_life_images: float = option(10000.0, gt=0)
    truncation_samples: int = option(4096, ge=1, resume_safe=True)  # z drawn for latent_avg (mean_latent(4096))
    grid_images: int = option(64, ge=1, resume_safe=True)  # images of the monitor's sample grid

    @classmethod
    def check(cls, cfg) -> None:
        cls.check_networks(cfg)


class StyleGAN2(nn.Module):
    Config = StyleGAN2Config
    manual_optimization = True

    def __init__(self, cfg):
        super().__init__()
        self.cfg = m = self.Config(**cfg.method)
        self.batch = cfg.optim.batch_size
        self.G = build_generator(m)
        self.D = build_discriminator(m)
        self.G_ema = frozen_copy(self.G)

    def configure_optimizers(self, ocfg) -> dict:
        c = self.cfg.d_reg_every / (self.cfg.d_reg_every + 1)
        b1, b2 = ocfg.betas
        return {"D": torch.optim.Adam(self.D.parameters(), lr=ocfg.lr * c, betas=(b1**c, b2**c)),
                "G": torch.optim.Adam(self.G.parameters(), lr=ocfg.lr, betas=(b1, b2))}  # fmt: skip

    def latents(self, n, g, device):
        z = torch.randn(n, self.cfg.style_dim, generator=g, device=device)
        if self.cfg.mixing_prob > 0 and torch.rand((), generator=g, device=device).item() < self.cfg.mixing_prob:
            z2 = torch.randn(n, self.cfg.style_dim, generator=g, device=device)
            k = int(torch.randint(1, self.G.n_latent, (), generator=g, device=device))
            return z, (z2, k)
        return z, None

    def forward(self, batch: dict) -> dict:
        m, opt, g = self.cfg, batch["optim"], batch.get("generator")
        real = to_signed(batch["images"])
        n, dev = real.shape[0], real.device
        # discriminator
        set_requires_grad([self.G], False)
        set_requires_grad([self.D], True)
        z, mix = self.latents(n, g, dev)
        with torch.no_grad():
            fake = self.G(z, mix=mix)
        loss_d = gan_loss(self.D(fake), False, "nonsaturating", True) + gan_loss(self.D(real), True, "nonsaturating", True)
        opt.step("D", loss_d)
        out = {"loss_d": loss_d.detach()}
        if m.r1 > 0 and batch.get("step", 0) % m.d_reg_every == 0:
            real_r = real.detach().requires_grad_(True)
            r1 = r1_penalty(self.D(real_r), real_r)
            opt.step("D", m.r1 / 2 * r1 * m.d_reg_every)
            out["r1"] = r1.detach()
        # generator
        set_requires_grad([self.G], True)
        set_requires_grad([self.D], False)
        z, mix = self.latents(n, g, dev)
        loss_g = gan_loss(self.D(self.G(z, mix=mix)), True, "nonsaturating", False)
        opt.step("G", loss_g)
        set_requires_grad([self.D], True)
        momentum_update(self.G, self.G_ema, 0.5 ** (self.batch / m.ema_half_life_images))
        return {"loss": loss_g.detach(), **out}

    @torch.no_grad()
    def monitor(self, train_set, test_set, run_dir, step, device) -> dict:
        """A sample grid of G_ema and the public-format checkpoint ``RUN/stylegan2.pt``."""
        from torchvision.utils import save_image

        gen = torch.Generator(device="cpu").manual_seed(0)
        was = self.G_ema.training
        self.G_ema.eval()
        z = torch.randn(self.cfg.grid_images, self.cfg.style_dim, generator=gen).to(device)
        imgs = to_unit(self.G_ema(z, noise="fixed").float())
        latent_avg = self.G_ema.mean_latent(self.cfg.truncation_samples, generator=None)
        self.G_ema.train(was)
        samples = Path(run_dir) / "samples"
        samples.mkdir(parents=True, exist_ok=True)
        for name in (f"step_{step:07d}.png", "latest.png"):
            save_image(imgs.cpu(), samples / name, nrow=8)
        tmp = Path(run_dir) / "stylegan2.pt.tmp"
        save_stylegan2(tmp, self.G_ema, self.G, self.D, latent_avg.cpu())
        tmp.replace(Path(run_dir) / "stylegan2.pt")
        return {"sample_std": float(imgs.std())}
