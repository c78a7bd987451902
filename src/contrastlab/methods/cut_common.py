"""Shared pieces of the unpaired translation methods (CUT, DCLGAN, SimDCL).

Not a base class: the options every translation recipe has (:class:`TranslationConfig`), the
PatchNCE term between an input and its translation (:func:`patch_nce_loss`), the Adam
optimisers of the papers, and the monitor that saves sample grids and scores translations with
FID / KID during training (:func:`translation_monitor`). Images enter the methods in [0, 1]
(``batch["a"]``, ``batch["b"]``) and the networks work in [-1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from ..errors import ConfigError
from ..fields import option
from ..losses.patch_nce import patch_nce
from ..nn.generators import ResnetGenerator


@dataclass
class TranslationConfig:
    """Options every translation method has. The defaults are the library's own choices (kept so
    that runs and checkpoints made before the options existed mean what they meant); the
    official CUT / DCLGAN / SimDCL values are set by the full-scale recipes
    (configs/cut/horse2zebra.yaml, configs/dclgan/horse2zebra.yaml, configs/simdcl/horse2zebra.yaml),
    each with the file of the official code it comes from, and docs/translation.md lists both."""

    ngf: int = option(64, ge=1)  # generator width
    n_blocks: int = option(9, ge=0)  # residual blocks of the generator
    n_down: int = option(2, ge=0)  # downsamplings of the generator
    ndf: int = option(64, ge=1)  # discriminator width
    n_layers_d: int = option(3, ge=1)  # PatchGAN depth (3: 70x70 receptive field)
    # blur-pool downsampling in the generator and the discriminator (CUT / DCLGAN: --no_antialias off)
    antialias: bool = False
    antialias_up: bool = False  # blurred upsampling in the generator (CUT / DCLGAN: --no_antialias_up off)
    # weight initialisation of every network (contrastlab.nn.init; CUT / DCLGAN: xavier, gain 0.02)
    init_type: Literal["normal", "xavier", "kaiming", "orthogonal"] = "normal"
    init_gain: float = option(0.02, gt=0)
    gan_mode: Literal["lsgan", "hinge", "nonsaturating", "vanilla"] = "lsgan"  # contrastlab.losses.gan_loss
    lambda_gan: float = option(1.0, ge=0)
    lambda_nce: float = option(1.0, ge=0)
    nce_t: float = option(0.07, gt=0)
    nce_layers: tuple[int, ...] = option((0, 4, 8, 12, 16), ge=0)  # generator module indices (see ResnetGenerator)
    num_patches: int = option(256, ge=0)  # patches per image and layer (0: all positions)
    head_dim: int = option(256, ge=1)
    # the patch heads' optimiser: null: in the generators' Adam (optim.lr, optim.betas); a number:
    # their own learning rate and head_betas (DCLGAN: 0.001 and torch's (0.9, 0.999)), same schedule
    head_lr: Optional[float] = option(None, gt=0)
    head_betas: tuple[float, float] = option((0.9, 0.999), ge=0, lt=1)  # only with head_lr
    pool_size: int = option(0, ge=0)  # discriminator history of generated images (CycleGAN's 50; 0: off)
    # test images translated and scored (FID / KID) at each monitor step (0: all)
    monitor_images: int = option(500, ge=0, resume_safe=True)
    grid_images: int = option(8, ge=1, resume_safe=True)  # images per row of the saved sample grids

    @classmethod
    def check(cls, cfg) -> None:
        """The PatchNCE layers must exist in the generator that n_down, n_blocks and the
        anti-aliasing options describe."""
        m = cfg.method
        layers, n_down, n_blocks = m["nce_layers"], m["n_down"], m["n_blocks"]
        if not layers:
            raise ConfigError("method.nce_layers=[]: PatchNCE needs at least one generator layer")
        n_modules, encoder_end = ResnetGenerator.layout(n_down, n_blocks, m["antialias"], m["antialias_up"])
        bad = [i for i in layers if not 0 <= i < n_modules]
        if bad:
            raise ConfigError(
                f"method.nce_layers {list(bad)} out of range: the generator has modules 0..{n_modules - 1} "
                f"(method.n_down={n_down}, method.n_blocks={n_blocks}, method.antialias={str(m['antialias']).lower()}, "
                f"method.antialias_up={str(m['antialias_up']).lower()}); the encoder ends at {encoder_end}"
            )


def adam(params, ocfg, heads=(), head_lr=None, head_betas=(0.9, 0.999)) -> torch.optim.Adam:
    """The translation papers' optimiser: Adam(optim.lr, optim.betas) without weight decay (lr not
    scaled) over ``params`` and ``heads``; with ``head_lr``, the ``heads`` form a second parameter
    group with their own lr and betas (Adam is per parameter, so this is the official separate
    optimiser of the heads; the schedule scales both groups by the same factor, as the official
    one scheduler per optimiser does)."""
    params = [p for p in params if p.requires_grad]
    heads = [p for p in heads if p.requires_grad]
    if head_lr is None:
        return torch.optim.Adam(params + heads, lr=ocfg.lr, betas=tuple(ocfg.betas))
    groups = [{"params": params}, {"params": heads, "lr": head_lr, "betas": tuple(head_betas)}]
    return torch.optim.Adam(groups, lr=ocfg.lr, betas=tuple(ocfg.betas))


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
