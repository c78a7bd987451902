"""PixPro and PixContrast: pixel-level pretext tasks (Xie, Lin, Zhang, Cao, Lin, Hu, CVPR 2021, "Propagate
Yourself: Exploring Pixel-Level Consistency for Unsupervised Visual Representation Learning").

Per step: draw two views of every image with their crop boxes and flips (on the device); momentum-update
the momentum branch (cosine schedule from ``momentum`` to 1 over the run); encode each view to the
backbone's final map and project every pixel (a 1x1-conv MLP head), online and momentum; find the
positive pixel pairs, whose centres in the original image are closer than ``threshold`` times the
larger bin diagonal (:func:`contrastlab.losses.positive_pixel_mask`); then

- ``pixpro``: propagate each online map through the PPM (y_i = sum_j max(cos(x_i, x_j), 0)^gamma g(x_j),
  :class:`contrastlab.nn.PixelPropagation`) and pull y_i towards the momentum features x'_j of the other
  view over the positive pairs, both directions (:func:`contrastlab.losses.pixel_consistency_loss`);
- ``pixcontrast``: a pixel-level InfoNCE of the online features against the other view's momentum ones,
  positives from the mask, negatives the pixels farther than ``neg_threshold`` bin diagonals, both
  directions (:func:`contrastlab.losses.pixel_info_nce`).

With ``instance_weight`` > 0, the instance branch of the official code is added (BYOL-style): an
instance head (1x1-conv MLP) and a predictor on the online map, average-pooled, regressed onto the
pooled momentum instance head's output of the other view (:func:`contrastlab.losses.pooled_cosine_loss`),
both directions, times ``instance_weight``.

Evaluation sees the backbone (``encoder``, pooled features).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.views import BatchedViews
from ..errors import ConfigError
from ..fields import option
from ..losses import pixel_consistency_loss, pixel_info_nce, pooled_cosine_loss, positive_pixel_mask
from ..nn import ConvMLPHead, PixelPropagation, cosine_momentum, frozen_copy, momentum_update
from .common import build_encoder


@dataclass
class PixProConfig:
    # pixpro: the PPM and the consistency loss; pixcontrast: the pixel-level InfoNCE
    name: Literal["pixpro", "pixcontrast"] = "pixpro"
    momentum: float = option(0.99, ge=0, lt=1, doc="the momentum branch's EMA momentum at step 0")
    # cosine: from `momentum` up to 1 over the run, m_k = 1 - (1 - m)(cos(pi k / K) + 1) / 2; or constant
    momentum_schedule: Literal["cosine", "constant"] = "cosine"
    threshold: float = option(0.7, gt=0, doc="positive pixel pairs: centre distance / larger bin diagonal below it")
    gamma: float = option(2.0, gt=0, doc="the PPM's sharpness exponent")
    transform_layers: int = option(1, ge=0, le=2, doc="the PPM's transform g: 0 (identity), 1 or 2 1x1 convs")
    normalize_values: bool = True  # the PPM L2-normalises g(x_j) before the weighted sum (official code)
    instance_weight: float = option(0.0, ge=0, doc="weight of the instance branch (0: off)")
    temperature: float = option(0.3, gt=0, doc="pixcontrast's InfoNCE temperature")
    neg_threshold: float = option(0.7, gt=0, doc="pixcontrast: negatives are pixels at least this many bin diagonals away")

    @classmethod
    def check(cls, cfg) -> None:
        """The pixel pairs need each view's box on the device: batched views, no rotation."""
        name, m = cfg.method["name"], cfg.method
        if cfg.views.backend != "batched":
            raise ConfigError(f"views.backend={cfg.views.backend}: {name} needs each view's crop box and flip, which "
                              "the batched views give; set views.backend=batched")  # fmt: skip
        if cfg.views.rotation:
            raise ConfigError(f"views.rotation={cfg.views.rotation}: {name} matches pixels through the crop boxes, "
                              "which a rotation would break; set views.rotation=0")  # fmt: skip
        if m["neg_threshold"] < m["threshold"]:
            raise ConfigError(f"method.neg_threshold={m['neg_threshold']} is below method.threshold={m['threshold']}: "
                              "a pixel pair would be both positive and negative; raise neg_threshold")  # fmt: skip


class PixPro(nn.Module):
    Config = PixProConfig

    def __init__(self, cfg):
        super().__init__()
        self.cfg = c = self.Config(**cfg.method)
        mc = cfg.model
        self.encoder = build_encoder(mc)
        head_dims = [self.encoder.feature_dim] + [mc.proj_hidden] * (mc.proj_layers - 1) + [mc.proj_dim]
        self.head = ConvMLPHead(head_dims)
        self.key_encoder = frozen_copy(self.encoder)
        self.key_head = frozen_copy(self.head)
        self.ppm = PixelPropagation(mc.proj_dim, c.transform_layers, c.gamma, c.normalize_values) \
            if c.name == "pixpro" else None  # fmt: skip
        if c.instance_weight > 0:
            self.instance_head = ConvMLPHead(head_dims)
            self.predictor = ConvMLPHead([mc.proj_dim, mc.proj_hidden, mc.proj_dim])
            self.key_instance_head = frozen_copy(self.instance_head)
        self.views = BatchedViews(cfg.views, cfg.views.size or cfg.data.image_size)

    def momentum_at(self, step: int, total: int | None) -> float:
        """The momentum branch's EMA momentum at ``step`` of ``total``."""
        return self.cfg.momentum if self.cfg.momentum_schedule == "constant" else cosine_momentum(self.cfg.momentum, step, total)

    def online(self, x):
        """A view (B, 3, S, S) -> its backbone map and projected pixels (B, d, h, w)."""
        f = self.encoder.forward_features(x)
        return f, self.head(f)

    @torch.no_grad()
    def momentum_branch(self, x):
        f = self.key_encoder.forward_features(x)
        z = F.normalize(self.key_head(f), dim=1)
        zi = F.normalize(self.key_instance_head(f).mean(dim=(2, 3)), dim=1) if self.cfg.instance_weight > 0 else None
        return z, zi

    def pixel_loss(self, p, k, pos, neg):
        """One direction: view A's online pixels p against view B's momentum pixels k."""
        if self.ppm is not None:
            return pixel_consistency_loss(self.ppm(p), k, pos)
        return pixel_info_nce(p, k, pos, self.cfg.temperature, neg)

    def forward(self, batch: dict) -> dict:
        if "images" not in batch:
            raise ConfigError(f"{self.cfg.name} draws its views with their crop boxes from the batch's images on the "
                              "device: set views.backend=batched")  # fmt: skip
        g, c = batch.get("generator"), self.cfg
        x1, boxes1, flips1 = self.views(batch["images"], g, return_boxes=True)
        x2, boxes2, flips2 = self.views(batch["images"], g, return_boxes=True)
        with torch.no_grad():
            m = self.momentum_at(batch.get("step", 0), batch.get("total_steps"))
            momentum_update(self.encoder, self.key_encoder, m)
            momentum_update(self.head, self.key_head, m)
            if c.instance_weight > 0:
                momentum_update(self.instance_head, self.key_instance_head, m)
            k1, ki1 = self.momentum_branch(x1)
            k2, ki2 = self.momentum_branch(x2)
        f1, p1 = self.online(x1)
        f2, p2 = self.online(x2)
        size = p1.shape[2:]
        pos12 = positive_pixel_mask(boxes1, flips1, boxes2, flips2, size, c.threshold)  # [b, pixel of 1, pixel of 2]
        neg12 = None
        if c.name == "pixcontrast" and c.neg_threshold > c.threshold:
            neg12 = ~positive_pixel_mask(boxes1, flips1, boxes2, flips2, size, c.neg_threshold)
        pos21, neg21 = pos12.transpose(1, 2), None if neg12 is None else neg12.transpose(1, 2)
        loss_pixel = self.pixel_loss(p1, k2, pos12, neg12) + self.pixel_loss(p2, k1, pos21, neg21)
        out = {"loss_pixel": loss_pixel.detach(), "momentum": torch.tensor(m),
               "pos_pixels": pos12.any(dim=2).float().mean()}  # share of view-1 pixels with a positive  # fmt: skip
        loss = loss_pixel
        if c.instance_weight > 0:
            q1 = self.predictor(self.instance_head(f1)).mean(dim=(2, 3))
            q2 = self.predictor(self.instance_head(f2)).mean(dim=(2, 3))
            loss_instance = pooled_cosine_loss(q1, ki2) + pooled_cosine_loss(q2, ki1)
            loss = loss + c.instance_weight * loss_instance
            out["loss_instance"] = loss_instance.detach()
        out["loss"] = loss
        return out
