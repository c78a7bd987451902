"""CWT: Classifier Weight Transformer (Lu, He, Zhu, Zhang, Song and Xiang, ICCV 2021, "Simpler is Better:
Few-shot Semantic Segmentation with Classifier Weight Transformer"), two stages, two recipes.

Stage 1 (``cwt_stage1``): a PSPNet-style network (``model.backbone`` -> pyramid pooling -> bottleneck ->
1x1 classifier, :class:`contrastlab.nn.PSPNet`) trained with cross-entropy on the base classes of a fold
(the data set's base-class view: masks 0 = background, 1 .. C = base classes, 255 = ignore).

Stage 2 (``cwt``; ``method.stage1`` names the stage-1 run): the stage-1 network without its classifier
is loaded and frozen (eval mode: BatchNorm statistics and dropout fixed, no gradients); per episode

    f_s = features(support images)                                  (K, d, h, w)
    W   = 1x1 conv (d -> 2, no bias), fitted on f_s for ``adapt_steps`` plain SGD steps at
          ``classifier_lr``: class-weighted CE of W f_s (upsampled to the masks) against the support masks
    f_q = normalize(features(query))                                 (d, h, w), unit pixels
    W'  = LayerNorm(W + Dropout(FC(MultiHeadAttention(q = W, k = v = pixels of f_q))))
    logits = W' f_q, upsampled to the query

and the transformer alone is meta-trained on base-class episodes with the class-weighted CE of the
query (:func:`contrastlab.losses.episode_weighted_ce`). ``segment_episode`` is the same without the loss
(``contrastlab eval fewshot``). The two stages are two recipes rather than one method with phases:
stage 1 is an ordinary one-optimiser run over images (the trainer's plain path, its own schedule and
checkpoints), stage 2 one over episodes whose only trained network is the transformer, so each is a
normal run that resumes, logs and evaluates on its own; stage 2 reads stage 1's checkpoint once, when
training starts (``setup_data``), and its own checkpoints then hold the frozen network too, so a stage-2
run is evaluated without the stage-1 folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import load_checkpoint, load_weights
from ..errors import ConfigError, UserError
from ..fields import option
from ..losses.segmentation import episode_weighted_ce
from ..nn.segmentation import PSPNet
from ..nn.weight_transformer import ClassifierWeightTransformer
from .common import build_encoder


def _bins_ok(v):
    return None if v and all(int(b) >= 1 for b in v) else "a non-empty list of bin sizes >= 1, e.g. [1, 2, 3, 6]"


@dataclass
class SegNetConfig:
    """The stage-1 network (both stages build it from the same keys)."""

    bins: tuple = option((1, 2, 3, 6), check=_bins_ok, doc="the pyramid pooling's bin sizes")
    bottleneck_dim: int = option(512, ge=1, doc="d: channels of the features the classifiers see")
    decoder_dropout: float = option(0.1, ge=0, lt=1, doc="Dropout2d after the bottleneck")


@dataclass
class CWTStage1Config(SegNetConfig):
    name: Literal["cwt_stage1"] = "cwt_stage1"
    num_classes: int = option(6, ge=2, doc="background + the fold's base classes (the data's mask classes)")


@dataclass
class CWTConfig(SegNetConfig):
    name: Literal["cwt"] = "cwt"
    stage1: str = option("", doc="the stage-1 run folder or checkpoint to start from (empty: random, for tests)")
    heads: int = option(4, ge=1, doc="attention heads of the transformer")
    dropout: float = option(0.5, ge=0, lt=1, doc="dropout after the transformer's FC")
    attn_dropout: float = option(0.1, ge=0, lt=1, doc="dropout of the attention weights")
    adapt_steps: int = option(200, ge=0, doc="SGD steps of the per-episode classifier on the support")
    classifier_lr: float = option(0.1, gt=0, doc="learning rate of the per-episode classifier")


def _images(x):
    return x.float().div(255) if x.dtype == torch.uint8 else x


class CWTStage1(nn.Module):
    """Stage 1: the segmentation network on the base classes (cross-entropy, 255 ignored)."""

    Config = CWTStage1Config

    def __init__(self, cfg):
        super().__init__()
        self.cfg = c = self.Config(**cfg.method)
        self.net = PSPNet(build_encoder(cfg.model), c.num_classes, c.bins, c.bottleneck_dim, c.decoder_dropout)
        self._masks = None

    def monitor(self, train_set, test_set, run_dir, step, device) -> dict:
        """No periodic check: ``contrastlab eval fewshot RUN`` evaluates a run."""
        return {}

    def setup_data(self, train_set) -> None:
        """Keeps the training set's masks (the batches carry images and their indices)."""
        masks = getattr(train_set, "masks", None)
        if masks is None:
            raise UserError(f"{getattr(train_set, 'name', 'the training set')} has no masks: cwt_stage1 trains on a "
                            "segmentation set (the base-class view of an episode source)")  # fmt: skip
        names = getattr(train_set, "mask_classes", None)
        if names is not None and len(names) != self.cfg.num_classes:
            raise ConfigError(f"method.num_classes={self.cfg.num_classes} but the training masks have {len(names)} "
                              f"classes ({', '.join(map(str, names))}); set method.num_classes={len(names)}")  # fmt: skip
        self._masks = masks

    def forward(self, batch: dict) -> dict:
        masks = batch.get("masks")
        if masks is None:
            if self._masks is None:
                raise UserError("cwt_stage1 needs the masks of its batch: a segmentation training set (setup_data)")
            masks = self._masks[batch["index"].cpu()].to(batch["images"].device)
        logits = self.net(_images(batch["images"]))
        loss = F.cross_entropy(logits, masks.long(), ignore_index=255)
        return {"loss": loss}


class CWT(nn.Module):
    """Stage 2: the frozen stage-1 network, per-episode classifiers and the weight transformer."""

    Config = CWTConfig

    def __init__(self, cfg):
        super().__init__()
        self.cfg = c = self.Config(**cfg.method)
        self.net = PSPNet(build_encoder(cfg.model), None, c.bins, c.bottleneck_dim, c.decoder_dropout)
        self.net.requires_grad_(False)
        self.transformer = ClassifierWeightTransformer(c.bottleneck_dim, c.heads, c.dropout, c.attn_dropout)
        self.net.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()  # frozen: BatchNorm statistics and dropout stay those of stage 1
        return self

    def monitor(self, train_set, test_set, run_dir, step, device) -> dict:
        """No periodic check: ``contrastlab eval fewshot RUN`` evaluates a run."""
        return {}

    def setup_data(self, train_set) -> None:
        """Loads the stage-1 network named by ``method.stage1`` (training only; evaluation loads this
        run's own checkpoint, which holds it). Its classifier is dropped."""
        if not self.cfg.stage1:
            return
        ckpt = load_checkpoint(self.cfg.stage1)
        trained = ckpt["config"].get("method", {}).get("name")
        if trained != "cwt_stage1":
            raise UserError(f"method.stage1={self.cfg.stage1} is a {trained} run, not a cwt_stage1 run; "
                            "name the folder of `contrastlab train cwt_stage1`")  # fmt: skip
        state = {k[len("net."):]: v for k, v in ckpt["model"].items()
                 if k.startswith("net.") and not k.startswith("net.classifier.")}  # fmt: skip
        load_weights(self.net, state, self.cfg.stage1)

    @torch.no_grad()
    def features(self, x):
        return self.net.features(x)

    def fit_classifiers(self, f_s: torch.Tensor, masks: torch.Tensor, generator=None) -> torch.Tensor:
        """Per episode, a 1x1 classifier (2, d) fitted on its support features f_s (E, K, d, h, w)
        against its masks (E, K, H, W) by ``adapt_steps`` plain SGD steps on the class-weighted CE
        (the episodes' losses summed: each episode's weights follow its own gradient). -> (E, 2, d)."""
        c = self.cfg
        e, k, d, h, w = f_s.shape
        bound = d ** -0.5  # nn.Conv2d's default initialisation of a 1x1 conv without bias
        weight = (torch.rand(e, 2, d, generator=generator, device=f_s.device) * 2 - 1) * bound
        f_s = f_s.float()
        with torch.enable_grad():
            weight.requires_grad_(True)
            for _ in range(c.adapt_steps):
                logits = torch.einsum("epd,ekdhw->ekphw", weight, f_s).flatten(0, 1)
                logits = F.interpolate(logits, masks.shape[-2:], mode="bilinear", align_corners=True)
                loss = episode_weighted_ce(logits.view(e, k, 2, *masks.shape[-2:]), masks.long())
                (grad,) = torch.autograd.grad(loss, weight)
                with torch.no_grad():
                    weight -= c.classifier_lr * grad
        return weight.detach()

    def query_logits(self, support_images, support_masks, query_image, generator=None):
        e, k = support_images.shape[:2]
        f_s = self.features(support_images.flatten(0, 1))
        f_s = f_s.view(e, k, *f_s.shape[1:])
        weight = self.fit_classifiers(f_s, support_masks, generator)
        f_q = F.normalize(self.features(query_image).float(), dim=1)
        updated = self.transformer(weight, f_q)
        logits = torch.einsum("epd,edhw->ephw", updated, f_q)
        return F.interpolate(logits, query_image.shape[-2:], mode="bilinear", align_corners=True)

    def segment_episode(self, support_images, support_masks, query_image) -> torch.Tensor:
        return self.query_logits(support_images, support_masks, query_image)

    def forward(self, batch: dict) -> dict:
        logits = self.query_logits(batch["support_images"], batch["support_masks"], batch["query_image"],
                                   batch.get("generator"))  # fmt: skip
        loss = episode_weighted_ce(logits.unsqueeze(1), batch["query_mask"].long().unsqueeze(1), reduction="mean")
        return {"loss": loss}
