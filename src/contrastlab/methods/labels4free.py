"""Labels4Free (Abdal, Zhu, Mitra and Wonka, ICCV 2021): foreground masks for free from a frozen
StyleGAN2 generator.

The generator G (pretrained, frozen) draws the same z twice:

    fg, feats = G(z, truncation psi)            (the features of its last ``alpha_levels`` resolutions)
    bg        = G(z, background branch)          (the first layer's output zeroed)
    m         = A(feats)                         (the alpha network, a mask in [0, 1] at full resolution)
    composite = m * fg + (1 - m) * bg

Per step (train.py of RameenAbdal/Labels4Free, lines 150-244):

    L_D = softplus(D(composite)) + softplus(-D(real));  every d_reg_every steps lazy R1 (r1 / 2 ...)
    L_A = sat_weight softplus(-D(composite'))                        (a new z)
          + lambda [mean(min(m, 1 - m)) + relu(phi - mean m)]        (binarisation, minimum coverage)
          + bg_coverage_weight relu(bg_coverage_value - mean(1 - m)) (background coverage)
    A_ema <- a A_ema + (1 - a) A

Masks at test time: A_ema(feats) > threshold (0.9 in the paper's test_sample.py). The discriminator
starts from scratch, or from the checkpoint's (``use_pretrained_d``, the official --use_disc).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..fields import option
from ..losses.gan import gan_loss, r1_penalty
from ..losses.masks import background_coverage_loss, binarization_loss, min_coverage_loss
from ..nn.alpha_network import AlphaNetwork, load_alpha_network
from ..nn.generators import to_signed, to_unit
from ..nn.momentum import frozen_copy, momentum_update, set_requires_grad
from ..nn.stylegan2 import load_stylegan2
from .stylegan2 import GeneratorOptions, build_discriminator, build_generator


@dataclass
class Labels4FreeConfig(GeneratorOptions):
    name: Literal["labels4free"] = "labels4free"
    # the pretrained generator: a checkpoint in the public StyleGAN2 format (rosinality/stylegan2-pytorch:
    # g_ema, d, latent_avg), e.g. RUN/stylegan2.pt of `contrastlab train stylegan2`; required
    generator_checkpoint: Optional[str] = None
    use_pretrained_d: bool = False  # start D from the checkpoint's d (official --use_disc)
    # an official alpha network (RameenAbdal/Labels4Free's released "Alpha Network" weights, or a file its train.py
    # saved): the network and its EMA start from the file's bg_extractor_ema (nn.alpha_network.load_alpha_network)
    alpha_checkpoint: Optional[str] = None
    truncation: float = option(1.0, gt=0, le=1)  # psi of the foreground pass (official --trunc)
    truncation_samples: int = option(4096, ge=1)  # z drawn for the truncation centre (mean_latent(4096))
    background: Literal["first_layer", "input"] = "first_layer"  # what the background branch zeroes
    alpha_levels: int = option(6, ge=2)  # generator resolutions (two maps each) the alpha network reads
    loss_multiplier: float = option(1.2, ge=0)  # lambda of binarisation + minimum coverage (--loss_multiplier)
    fg_coverage: float = option(0.25, ge=0, le=1)  # phi (--fg_coverage_value)
    bg_coverage_weight: float = option(0.0, ge=0)  # (--bg_coverage_wt)
    bg_coverage_value: float = option(0.75, ge=0, le=1)  # (--bg_coverage_value)
    sat_weight: float = option(1.0, ge=0)  # weight of the adversarial term (--sat_weight)
    r1: float = option(10.0, ge=0)  # (--r1)
    d_reg_every: int = option(16, ge=1)  # (--d_reg_every)
    g_reg_every: int = option(4, ge=1)  # only its lr / betas correction of the alpha network's Adam (official)
    alpha_ema: float = option(0.5 ** (32 / 10000), ge=0, lt=1)  # official accum = 0.5 ** (32 / (10 * 1000))
    threshold: float = option(0.9, gt=0, lt=1, resume_safe=True)  # mask = A_ema > threshold (--th 0.9)
    grid_images: int = option(8, ge=1, resume_safe=True)  # samples per row of the monitor's grid

    @classmethod
    def check(cls, cfg) -> None:
        m = cfg.method
        cls.check_networks(cfg)
        levels = int(m["size"]).bit_length() - 3  # resolutions 8 .. size
        if m["alpha_levels"] > levels:
            raise ConfigError(f"method.alpha_levels={m['alpha_levels']}: a {m['size']} px generator has {levels} "
                              f"resolutions after 4 px (8 .. {m['size']}); set alpha_levels <= {levels}")  # fmt: skip


class Labels4Free(nn.Module):
    Config = Labels4FreeConfig
    manual_optimization = True

    def __init__(self, cfg):
        super().__init__()
        self.cfg = m = self.Config(**cfg.method)
        if not m.generator_checkpoint:  # checked when the run starts (a recipe loads without it: the full-scale ones)
            raise ConfigError("method.generator_checkpoint is required: a StyleGAN2 checkpoint in the public format "
                              "(contrastlab train stylegan2 writes RUN/stylegan2.pt)")  # fmt: skip
        self.G = build_generator(m)
        self.D = build_discriminator(m)
        load_stylegan2(m.generator_checkpoint, self.G, self.D if m.use_pretrained_d else None)
        set_requires_grad([self.G], False)
        self.G.eval()
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("latent_avg", self.G.mean_latent(m.truncation_samples, generator=gen))
        self.n_feats = 2 * m.alpha_levels
        self.A = AlphaNetwork(self.G.feature_channels()[-self.n_feats :])
        if m.alpha_checkpoint:
            load_alpha_network(m.alpha_checkpoint, self.A)
        self.A_ema = frozen_copy(self.A)

    def train(self, mode: bool = True):
        super().train(mode)
        self.G.eval()  # frozen (no layer of G behaves differently, but keep it explicit)
        return self

    def configure_optimizers(self, ocfg) -> dict:
        m = self.cfg
        cd, cg = m.d_reg_every / (m.d_reg_every + 1), m.g_reg_every / (m.g_reg_every + 1)
        b1, b2 = ocfg.betas
        return {"D": torch.optim.Adam(self.D.parameters(), lr=ocfg.lr * cd, betas=(b1**cd, b2**cd)),
                "A": torch.optim.Adam(self.A.parameters(), lr=ocfg.lr * cg, betas=(b1**cg, b2**cg))}  # fmt: skip

    @torch.no_grad()
    def generate(self, z: torch.Tensor):
        """(foreground images, background images, the alpha network's input features) for z; G frozen."""
        m = self.cfg
        fg, feats = self.G(z, truncation=m.truncation, truncation_latent=self.latent_avg, return_features=True)
        bg = self.G(z, background=m.background)
        return fg, bg, feats[-self.n_feats :]

    def composite(self, alpha: nn.Module, z: torch.Tensor):
        fg, bg, feats = self.generate(z)
        mask = alpha(feats)
        return mask * fg + (1 - mask) * bg, mask, fg, bg

    def forward(self, batch: dict) -> dict:
        m, opt, g = self.cfg, batch["optim"], batch.get("generator")
        real = to_signed(batch["images"])
        n, dev = real.shape[0], real.device
        # discriminator: real vs composite
        set_requires_grad([self.D], True)
        with torch.no_grad():
            comp, _, _, _ = self.composite(self.A, torch.randn(n, m.style_dim, generator=g, device=dev))
        loss_d = gan_loss(self.D(comp), False, "nonsaturating", True) + gan_loss(self.D(real), True, "nonsaturating", True)
        opt.step("D", loss_d)
        out = {"loss_d": loss_d.detach()}
        if m.r1 > 0 and batch.get("step", 0) % m.d_reg_every == 0:
            real_r = real.detach().requires_grad_(True)
            r1 = r1_penalty(self.D(real_r), real_r)
            opt.step("D", m.r1 / 2 * r1 * m.d_reg_every)
            out["r1"] = r1.detach()
        # alpha network (G and D frozen)
        set_requires_grad([self.D], False)
        comp, mask, _, _ = self.composite(self.A, torch.randn(n, m.style_dim, generator=g, device=dev))
        adv = gan_loss(self.D(comp), True, "nonsaturating", False)
        binar, cover = binarization_loss(mask), min_coverage_loss(mask, m.fg_coverage)
        bg_cover = background_coverage_loss(mask, m.bg_coverage_value)
        loss = m.sat_weight * adv + m.loss_multiplier * (binar + cover) + m.bg_coverage_weight * bg_cover
        opt.step("A", loss)
        set_requires_grad([self.D], True)
        momentum_update(self.A, self.A_ema, m.alpha_ema)
        return {"loss": loss.detach(), "adv": adv.detach(), "binarization": binar.detach(), "coverage": cover.detach(),
                "bg_coverage": bg_cover.detach(), "mask_mean": mask.detach().mean(), **out}  # fmt: skip

    @torch.no_grad()
    def sample_masks(self, n: int, generator: torch.Generator | None = None, device=None, batch_size: int = 64):
        """n generated images in [0, 1] (the truncated foreground pass) with A_ema's soft masks and the
        thresholded masks: (images (n, 3, S, S), soft (n, 1, S, S), hard bool (n, S, S))."""
        device = device or self.latent_avg.device
        imgs, soft = [], []
        for i in range(0, n, batch_size):
            k = min(batch_size, n - i)
            z = torch.randn(k, self.cfg.style_dim, generator=generator).to(device)
            fg, _, feats = self.generate(z)
            imgs.append(to_unit(fg.float()).cpu())
            soft.append(self.A_ema(feats).float().cpu())
        soft = torch.cat(soft)
        return torch.cat(imgs), soft, soft[:, 0] > self.cfg.threshold

    @torch.no_grad()
    def monitor(self, train_set, test_set, run_dir, step, device) -> dict:
        """A grid (rows: foreground, background, mask, composite) of A_ema on fixed z; the mean mask."""
        from torchvision.utils import save_image

        k = self.cfg.grid_images
        z = torch.randn(k, self.cfg.style_dim, generator=torch.Generator().manual_seed(0)).to(device)
        comp, mask, fg, bg = self.composite(self.A_ema, z)
        grid = torch.cat([to_unit(fg), to_unit(bg), mask.expand(-1, 3, -1, -1), to_unit(comp)]).float().cpu()
        samples = Path(run_dir) / "samples"
        samples.mkdir(parents=True, exist_ok=True)
        for name in (f"step_{step:07d}.png", "latest.png"):
            save_image(grid, samples / name, nrow=k)
        return {"mask_mean": float(mask.mean()), "mask_above_threshold": float((mask > self.cfg.threshold).float().mean())}
