"""ProtoSeg: the prototype baseline of few-shot segmentation (PANet, Wang et al., ICCV 2019).

Per episode (:class:`contrastlab.nn.PrototypeSegmenter`): the support images' feature maps are
pooled under the support masks into a foreground and a background prototype (masked average
pooling, the mean over the K shots), each query pixel's feature is scored against both by
``20 * cosine``, upsampled to the image size; softmax over the two gives the query mask.

Training on the base classes of ``fold`` (meta-training, PANet section 3): each step draws
``optim.batch_size`` 1-way ``shots``-shot episodes of the base classes from the training set
(episode ``step * B + b`` of the sequence ``seed``: a function of the step alone) and minimises
the query's cross-entropy (pixels valued 255 ignored) plus ``align_weight`` times PANet's
prototype alignment loss (PAR: prototypes from the query under its predicted mask segment the
supports, cross-entropy against the support masks: each support's mean over its pixels, the mean
over the shots, the mean over the episodes whose query has some predicted foreground, as PANet's
``models/fewshot.py`` ``alignLoss``). With ``align_weight=0`` the loss is the query's cross-entropy
alone. The official code draws one episode a step (batch 1); here a step's episodes share the
mean.

Without training, the same segmenter runs on any run's frozen encoder
(``contrastlab eval fewshot RUN`` on a SimCLR / MoCo / PixPro run); ``encoder_from=RUN`` starts the
meta-training from such a run's encoder."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.episodes import IGNORE, source_of
from ..errors import ConfigError, UserError
from ..fields import option
from ..nn.prototypes import PrototypeSegmenter, episode_prototypes
from .common import build_encoder


@dataclass
class ProtoSegConfig:
    name: Literal["protoseg"] = "protoseg"
    fold: int = option(0, ge=0, doc="the fold whose classes are novel (trained on the others)")
    folds: Optional[int] = option(None, ge=1, doc="folds of the data's classes (null: the set's default)")
    shots: int = option(1, ge=1, doc="support images of each training episode")
    scale: float = option(20.0, gt=0, doc="alpha: logits = alpha * cosine (PANet: 20)")
    stage: int = option(-1, ge=-1, le=3, doc="the encoder stage whose map is used (-1: the final map)")
    align_weight: float = option(1.0, ge=0, doc="weight of PANet's prototype alignment loss (PAR)")
    episode_seed: int = option(0, unbounded="any integer seed")
    # a run (folder or checkpoint) whose encoder initialises this one before training (e.g. a SimCLR / MoCo /
    # PixPro run of the same model section): meta-training starts from self-supervised features; null: random init
    encoder_from: Optional[str] = None

    @classmethod
    def check(cls, cfg) -> None:
        m = cfg.method
        if m["folds"] is not None and m["fold"] >= m["folds"]:
            raise ConfigError(f"method.fold={m['fold']}: there are method.folds={m['folds']} folds (0..{m['folds'] - 1})")


class ProtoSeg(nn.Module):
    Config = ProtoSegConfig
    monitor_protocol = "fewshot"

    def __init__(self, cfg):
        super().__init__()
        self.cfg = self.Config(**cfg.method)
        self.encoder = build_encoder(cfg.model)
        self.segmenter = PrototypeSegmenter(self.encoder, self.cfg.stage, self.cfg.scale)
        self.episodes = None  # the base-class episode sampler, from setup_data

    def setup_data(self, train_set) -> None:
        if self.cfg.encoder_from:
            self.load_encoder(self.cfg.encoder_from)
        source = source_of(train_set, self.cfg.folds)
        self.episodes = source.base_episodes(self.cfg.fold, self.cfg.shots, seed=self.cfg.episode_seed)

    def load_encoder(self, path: str) -> None:
        """The ``encoder.*`` weights of another run's checkpoint (strict: the same ``model:`` section)."""
        from ..checkpoint import load_checkpoint, load_weights

        state = load_checkpoint(path)["model"]
        enc = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        if not enc:
            raise UserError(f"method.encoder_from={path}: that run has no encoder weights (a translation run?)")
        load_weights(self.encoder, enc, path)

    def segment_episode(self, support_images, support_masks, query_image):
        return self.segmenter.segment_episode(support_images, support_masks, query_image)

    def forward(self, batch: dict) -> dict:
        if self.episodes is None:
            raise RuntimeError("ProtoSeg trains on episodes of the training set: call setup_data(train_set) first")
        b, dev = batch["images"].shape[0], batch["images"].device
        step = int(batch.get("step", 0))
        ep = {k: v.to(dev) for k, v in self.episodes.batch(range(step * b, (step + 1) * b)).items()}
        s_img, s_mask, q_img, q_mask = ep["support_images"], ep["support_masks"], ep["query_image"], ep["query_mask"]
        k = s_img.shape[1]
        seg = self.segmenter
        feats = seg.features(torch.cat([s_img.flatten(0, 1), q_img])).float()
        fs, fq = feats[: b * k], feats[b * k :]
        logits = seg.logits(fq, episode_prototypes(fs.unflatten(0, (b, k)), s_mask), q_img.shape[-2:])
        query_loss = F.cross_entropy(logits, q_mask, ignore_index=IGNORE)
        out = {"loss": query_loss, "query_loss": query_loss.detach()}
        if self.cfg.align_weight > 0:  # PAR: the query's predicted mask -> prototypes -> segment each support
            pred = logits.argmax(1).detach()
            q_protos = episode_prototypes(fq[:, None], pred[:, None])  # (B, 2, C)
            s_logits = seg.logits(fs, q_protos.repeat_interleave(k, 0), s_img.shape[-2:])
            nll = F.cross_entropy(s_logits, s_mask.flatten(0, 1), ignore_index=IGNORE, reduction="none")
            valid = (s_mask.flatten(0, 1) != IGNORE).flatten(1).sum(1).clamp_min(1)
            per_shot = nll.flatten(1).sum(1) / valid  # each support's mean, as the official code's per-shot CE
            per_episode = per_shot.view(b, k).mean(1)
            keep = (pred == 1).flatten(1).any(1)  # episodes whose query has no predicted foreground are skipped
            align = (per_episode * keep).sum() / keep.sum().clamp_min(1)
            out["loss"] = query_loss + self.cfg.align_weight * align
            out["align_loss"] = align.detach()
        with torch.no_grad():
            fg = (logits.argmax(1) == 1) & (q_mask != IGNORE)
            t = (q_mask == 1)
            out["query_iou"] = (fg & t).sum().float() / (fg | t).sum().clamp_min(1).float()
        return out
