"""RP-Net: recurrent mask refinement for few-shot segmentation (Tang, Liu, Sun, Yan, Zhang, Zhang and Xie,
ICCV 2021, "Recurrent Mask Refinement for Few-Shot Medical Image Segmentation"), 1-way K-shot.

Per episode:

    f_s, f_q = U-Net decoder features (1/4 of the input) of the supports and the query
    S   = CRE(f_s, m_s)                 m_s: the support mask average-pooled to the feature size
    q_0 = the initial query mask: ``init_mask=prototype``: the prediction of prototypes of the raw
          features (masked average pooling of f_s, cosine x 20, softmax > 0.5; PANet), or
          ``init_mask=support``: the supports' mean mask (the identity registration)
    repeat T times (``t_train`` while training, ``t_test`` in ``segment_episode``):
        Q = CRE(f_q, avg_pool(q))
        prototypes: masked average pooling of S (upsampled to the image) over the support's
                    foreground and background masks, averaged over the K shots
        logits = 20 cos(Q, [background, foreground]) -> upsampled to the image
        q = (softmax(logits)[foreground] > 0.5)
    loss = soft Dice + CE of the last logits against the query mask (+ ``align_weight`` x PANet's
           prototype alignment: prototypes of Q under the predicted query mask segment the supports, CE)

CRE (:class:`contrastlab.nn.ContextRelationEncoder`): the local correlation of a = conv(f * m) with
b = conv(f * (1 - m)) in a (2 radius + 1)^2 window, over sqrt(C), then conv1x1([corr, a]).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.episodes import source_of
from ..fields import option
from ..losses.segmentation import dice_ce_loss
from ..nn.prototypes import cosine_logits, episode_prototypes, masked_average_pool
from ..nn.relation import ContextRelationEncoder
from ..nn.segmentation import UNetFeatures
from .episodic import episode_batch


def _widths_ok(v):
    return None if len(v) == 5 and all(int(w) >= 1 for w in v) else "five channel counts >= 1, e.g. [64, 128, 256, 512, 1024]"


@dataclass
class RPNetConfig:
    name: Literal["rpnet"] = "rpnet"
    fold: int = option(0, ge=0, doc="the fold whose classes are novel (trained on the others)")
    folds: Optional[int] = option(None, ge=1, doc="folds of the data's classes (null: the set's default)")
    shots: int = option(1, ge=1, doc="support images of each training episode")
    episode_seed: int = option(0, unbounded="any integer seed")
    widths: tuple = option((64, 128, 256, 512, 1024), check=_widths_ok, doc="the U-Net's channels per level")
    radius: int = option(5, ge=0, doc="the CRE's correlation window radius (5: 11 x 11)")
    cre_channels: int = option(64, ge=1, doc="channels of the CRE's output")
    t_train: int = option(4, ge=1, doc="refinement steps while training")
    t_test: int = option(10, ge=1, resume_safe=True, doc="refinement steps at evaluation (segment_episode)")
    scale: float = option(20.0, gt=0, doc="the cosine logits' scale")
    init_mask: Literal["prototype", "support"] = "prototype"
    align_weight: float = option(1.0, ge=0, doc="weight of the prototype alignment loss (0: off)")


class RPNet(nn.Module):
    Config = RPNetConfig
    monitor_protocol = "fewshot"  # the periodic check: mIoU of novel-class episodes (eval/fewshot.py)

    def __init__(self, cfg):
        super().__init__()
        self.cfg = c = self.Config(**cfg.method)
        self.unet = UNetFeatures(c.widths, norm=cfg.model.norm)
        self.cre = ContextRelationEncoder(self.unet.feature_dim, c.radius, c.cre_channels)
        self.episodes = None  # the base-class episode sampler, from setup_data

    def setup_data(self, train_set) -> None:
        """The base-class episodes of the training set (fold ``method.fold``)."""
        self.episodes = source_of(train_set, self.cfg.folds).base_episodes(self.cfg.fold, self.cfg.shots,
                                                                           seed=self.cfg.episode_seed)  # fmt: skip

    def pooled(self, mask):
        """(B, H, W) in [0, 1] -> (B, 1, H / 4, W / 4), the share of each feature cell."""
        return F.avg_pool2d(mask.unsqueeze(1).float(), self.unet.scale)

    def episode(self, support_images, support_masks, query_image, steps: int) -> dict:
        """-> {"logits": the last step's (E, 2, H, W), "steps": each step's logits, "support": S,
        "query": the last Q, "prototypes": (E, 2, C)}."""
        e, k = support_images.shape[:2]
        size = query_image.shape[-2:]
        fg = (support_masks == 1).float()
        f_s = self.unet(support_images.flatten(0, 1))
        f_q = self.unet(query_image)
        if self.cfg.init_mask == "support":
            q = (fg.mean(1) > 0.5).float()
        else:
            raw = episode_prototypes(f_s.view(e, k, *f_s.shape[1:]), support_masks)
            init = F.interpolate(cosine_logits(f_q, raw, self.cfg.scale), size, mode="bilinear")
            q = (init.softmax(1)[:, 1] > 0.5).float().detach()
        s = self.cre(f_s, self.pooled(fg.flatten(0, 1)))
        protos = episode_prototypes(s.view(e, k, *s.shape[1:]), support_masks)
        steps_out = []
        for _ in range(steps):
            qf = self.cre(f_q, self.pooled(q))
            logits = F.interpolate(cosine_logits(qf, protos, self.cfg.scale), size, mode="bilinear")
            steps_out.append(logits)
            q = (logits.softmax(1)[:, 1] > 0.5).float().detach()
        return {"logits": steps_out[-1], "steps": steps_out, "support": s, "query": qf, "prototypes": protos}

    def segment_episode(self, support_images, support_masks, query_image) -> torch.Tensor:
        return self.episode(support_images, support_masks, query_image, self.cfg.t_test)["logits"]

    def align_loss(self, out, support_masks):
        """PANet's prototype alignment: prototypes of the last Q under the predicted query mask
        (argmax), cosine x 20 on the support features S, CE against the support masks (255 ignored);
        episodes whose prediction has no foreground are skipped (as the official alignLoss)."""
        q, s, logits = out["query"], out["support"], out["logits"]
        e, k = support_masks.shape[:2]
        pred = F.interpolate(logits, q.shape[-2:], mode="bilinear").argmax(1)
        has_fg = (pred == 1).flatten(1).any(1)
        if not has_fg.any():
            return logits.new_zeros(())
        protos = torch.stack([masked_average_pool(q, (pred == j).float()) for j in (0, 1)], dim=1)  # (E, 2, C)
        sl = cosine_logits(s, protos.repeat_interleave(k, 0), self.cfg.scale)
        sl = F.interpolate(sl, support_masks.shape[-2:], mode="bilinear")
        target = support_masks.flatten(0, 1).long()
        keep = has_fg.repeat_interleave(k)
        return F.cross_entropy(sl[keep], target[keep], ignore_index=255)

    def forward(self, batch: dict) -> dict:
        """One training step on ``optim.batch_size`` base-class episodes (episode ``step * B + b`` of
        the sampler), or on the episodes of ``batch`` when it holds them."""
        ep = episode_batch(self.episodes, batch, "rpnet")
        out = self.episode(ep["support_images"], ep["support_masks"], ep["query_image"], self.cfg.t_train)
        loss_seg = dice_ce_loss(out["logits"], ep["query_mask"].long())
        res = {"loss_seg": loss_seg.detach()}
        loss = loss_seg
        if self.cfg.align_weight > 0:
            loss_align = self.align_loss(out, ep["support_masks"])
            loss = loss + self.cfg.align_weight * loss_align
            res["loss_align"] = loss_align.detach()
        res["loss"] = loss
        return res
