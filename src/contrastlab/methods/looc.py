"""LooC / LooC++: leave-one-out contrastive learning (Xiao, Wang, Efros, Darrell, ICLR 2021, "What
should not be contrastive in contrastive learning"), on the MoCo core.

Per step, for n atomic augmentations (``augmentations``): draw the query view q and n + 1 keys
(k_0 differs from q in every augmentation, k_i shares q's augmentation i only;
:class:`contrastlab.data.views.LeaveOneOutViews`); momentum-update the key branch; encode all keys with the
key backbone (shuffle-BN) and embed each in the n + 1 spaces of the key heads; embed q in the n + 1
spaces of the online heads (one shared backbone); one InfoNCE loss per space
(:func:`contrastlab.losses.leave_one_out_info_nce`: in Z_0 every key is a positive, in Z_i only k_i,
the image's other keys being negatives there), each against that space's own queue; the loss is
their mean; then each space's queue takes the k_0 keys embedded in it.

Evaluation (the ``encoder`` the protocols use): ``looc`` evaluates the backbone feature V;
``looc_pp`` (LooC++) the concatenation of the n + 1 spaces' L2-normalised embeddings Z_0..Z_n.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.views import LeaveOneOutViews, loo_augmentations_allowed
from ..errors import ConfigError
from ..fields import option
from ..losses import leave_one_out_info_nce
from ..nn.momentum import frozen_copy, momentum_update
from ..nn.queue import Queue
from .common import build_encoder, build_projector, require_batched_views
from .moco import shuffled_keys


@dataclass
class LooCConfig:
    # looc: evaluate the backbone feature; looc_pp (LooC++): the concatenation of the heads' spaces
    name: Literal["looc", "looc_pp"] = "looc"
    # the atomic augmentations left out one at a time, each with its own space (rotation by k x 90
    # degrees, color, crop, blur); the others of the views: section are common to all views
    augmentations: tuple[str, ...] = option(("rotation", "color", "crop"), check=loo_augmentations_allowed)
    temperature: float = option(0.2, gt=0)
    queue_size: int = option(16384, ge=1, doc="the length of each space's queue")
    momentum: float = option(0.999, ge=0, lt=1, doc="the key encoder's EMA momentum")
    bn: Literal["shuffle", "none"] = "shuffle"  # how the key encoder avoids BN leakage (as MoCo)
    shuffle_groups: int = option(8, ge=1)  # shuffle-BN in one process: keys encoded in this many sub-batches

    @classmethod
    def check(cls, cfg) -> None:
        """Leave-one-out views are made on the device from whole batches; a blur space needs blur."""
        require_batched_views(cfg, f"{cfg.method['name']} draws its leave-one-out views from batched images")
        if "blur" in cfg.method["augmentations"] and cfg.views.blur_p == 0:
            raise ConfigError("method.augmentations has blur but views.blur_p=0: the blur space would see no "
                              "blur; set views.blur_p > 0 or drop blur")  # fmt: skip


class ConcatSpaces(nn.Module):
    """LooC++'s features: the backbone's feature embedded by each head, L2-normalised, concatenated
    ((B, (n + 1) d)). Holds references to the method's modules (not registered twice)."""

    def __init__(self, backbone: nn.Module, heads: nn.ModuleList, out_dim: int):
        super().__init__()
        self.backbone, self.heads, self.out_dim = backbone, heads, out_dim

    def forward(self, x):
        f = self.backbone(x)
        return torch.cat([F.normalize(h(f), dim=1) for h in self.heads], dim=1)


class LooC(nn.Module):
    Config = LooCConfig

    def __init__(self, cfg):
        super().__init__()
        self.cfg = c = self.Config(**cfg.method)
        n_spaces = len(c.augmentations) + 1
        self.backbone = build_encoder(cfg.model)
        self.heads = nn.ModuleList([build_projector(self.backbone.out_dim, cfg.model) for _ in range(n_spaces)])
        self.key_backbone = frozen_copy(self.backbone)
        self.key_heads = frozen_copy(self.heads)
        self.queues = nn.ModuleList([Queue(c.queue_size, cfg.model.proj_dim) for _ in range(n_spaces)])
        self.views = LeaveOneOutViews(cfg.views, cfg.views.size or cfg.data.image_size, c.augmentations)
        self.proj_dim = cfg.model.proj_dim

    @property
    def encoder(self) -> nn.Module:
        """What the evaluation protocols see: the backbone (LooC), or the concatenated spaces (LooC++)."""
        if self.cfg.name == "looc_pp":
            return ConcatSpaces(self.backbone, self.heads, len(self.heads) * self.proj_dim)
        return self.backbone

    @property
    def space_names(self) -> tuple[str, ...]:
        """The spaces' names, in head order: Z_0 ``invariant``, Z_i ``<augmentation>-sensitive``."""
        return ("invariant", *(f"{a}-sensitive" for a in self.cfg.augmentations))

    def embedding_spaces(self, x) -> dict[str, torch.Tensor]:
        """x (B, 3, S, S) float in [0, 1] -> ``{space name: (B, d)}``: the query branch's embeddings
        (the backbone, then each online head; not normalised), as the report's neighbours use."""
        return dict(zip(self.space_names, self.spaces(self.backbone, self.heads, x)))

    def spaces(self, backbone, heads, x):
        """x (N, 3, S, S) -> its embeddings in every space (S, N, d)."""
        f = backbone(x)
        return torch.stack([h(f) for h in heads])

    @torch.no_grad()
    def keys(self, keys: list[torch.Tensor], generator=None) -> torch.Tensor:
        """The n + 1 key views (each (B, 3, S, S)) -> (S spaces, S keys, B, d), k[s, j] = key j in space s."""
        n_keys, b = len(keys), keys[0].shape[0]
        net = lambda v: self.spaces(self.key_backbone, self.key_heads, v).permute(1, 0, 2).flatten(1)  # noqa: E731
        x = torch.cat(keys)
        z = shuffled_keys(net, x, generator, self.cfg.shuffle_groups) if self.cfg.bn == "shuffle" else net(x)
        return z.view(n_keys, b, len(self.key_heads), -1).permute(2, 0, 1, 3)

    def forward(self, batch: dict) -> dict:
        q, keys = self.views.views(batch)
        with torch.no_grad():
            momentum_update(self.backbone, self.key_backbone, self.cfg.momentum)
            momentum_update(self.heads, self.key_heads, self.cfg.momentum)
            k = self.keys(keys, batch.get("generator"))
        zq = self.spaces(self.backbone, self.heads, q)
        queues = torch.stack([qu.keys for qu in self.queues])  # a copy: the queues before this step's push
        losses = leave_one_out_info_nce(zq, k, queues, self.cfg.temperature)
        for s, qu in enumerate(self.queues):
            qu.push(k[s, 0])  # each space's queue takes the k_0 keys embedded in it
        out = {"loss": losses.mean()}
        names = ("all", *self.cfg.augmentations)
        out.update({f"loss_{n}": v.detach() for n, v in zip(names, losses)})
        return out
