"""Shared pieces of the unpaired translation methods (CUT, DCLGAN, SimDCL).

Not a base class: the options every translation recipe has (:class:`TranslationConfig`), the
PatchNCE term between an input and its translation (:func:`patch_nce_loss`), the Adam
optimisers of the papers, and the monitor that saves sample grids and scores translations with
FID / KID during training (:func:`translation_monitor`). Images enter the methods in [0, 1]
(``batch["a"]``, ``batch["b"]``) and the networks work in [-1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import ConfigError
from ..fields import option
from ..losses.patch_nce import patch_nce


@dataclass
class TranslationConfig:
    ngf: int = option(64, ge=1)  # generator width
    n_blocks: int = option(9, ge=0)  # residual blocks of the generator
    n_down: int = option(2, ge=0)  # stride-2 downsamplings of the generator
    ndf: int = option(64, ge=1)  # discriminator width
    n_layers_d: int = option(3, ge=1)  # PatchGAN depth (3: 70x70 receptive field)
    gan_mode: Literal["lsgan", "hinge", "nonsaturating"] = "lsgan"
    lambda_gan: float = option(1.0, ge=0)
    lambda_nce: float = option(1.0, ge=0)
    nce_t: float = option(0.07, gt=0)
    nce_layers: tuple[int, ...] = option((0, 4, 8, 12, 16), ge=0)  # generator module indices (see ResnetGenerator)
    num_patches: int = option(256, ge=0)  # patches per image and layer (0: all positions)
    head_dim: int = option(256, ge=1)
    pool_size: int = option(0, ge=0)  # discriminator history of generated images (CycleGAN's 50; 0: off)
    # test images translated and scored (FID / KID) at each monitor step (0: all)
    monitor_images: int = option(500, ge=0, resume_safe=True)
    grid_images: int = option(8, ge=1, resume_safe=True)  # images per row of the saved sample grids

    @classmethod
    def check(cls, cfg) -> None:
        """The PatchNCE layers must exist in the generator that n_down and n_blocks describe."""
        m = cfg.method
        layers, n_down, n_blocks = m["nce_layers"], m["n_down"], m["n_blocks"]
        if not layers:
            raise ConfigError("method.nce_layers=[]: PatchNCE needs at least one generator layer")
        n_modules = 4 + 3 * n_down + n_blocks + 3 * n_down + 3
        bad = [i for i in layers if not 0 <= i < n_modules]
        if bad:
            raise ConfigError(
                f"method.nce_layers {list(bad)} out of range: the generator has modules 0..{n_modules - 1} "
                f"(method.n_down={n_down}, method.n_blocks={n_blocks}); the encoder ends at {3 + 3 * n_down + n_blocks}"
            )


def adam(params, ocfg) -> torch.optim.Adam:
    """The translation papers' optimiser: Adam(lr, betas) without weight decay (lr not scaled)."""
    return torch.optim.Adam([p for p in params if p.requires_grad], lr=ocfg.lr, betas=tuple(ocfg.betas))


def patch_nce_loss(enc_k, heads_k, src, enc_q, heads_q, tgt, layers, num_patches, t, generator=None):
    """PatchNCE between an image ``src`` and its translation ``tgt``, averaged over ``layers``.

    Keys: ``heads_k(enc_k.encode(src))`` at random patch positions (detached, computed without
    gradient); queries: ``heads_q(enc_q.encode(tgt))`` at the SAME positions. CUT uses one
    generator and one head for both; DCLGAN takes keys and queries from different generators
    and heads (its cross-encoder wiring)."""
    with torch.no_grad():
        keys, ids = heads_k(enc_k.encode(src, layers), num_patches, generator=generator)
    queries, _ = heads_q(enc_q.encode(tgt, layers), num_patches, patch_ids=ids)
    return sum(patch_nce(q, k, t) for q, k in zip(queries, keys)) / len(layers)
