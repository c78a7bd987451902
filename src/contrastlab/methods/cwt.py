"""CWT: Classifier Weight Transformer (Lu, He, Zhu, Zhang, Song and Xiang, ICCV 2021, "Simpler is Better:
Few-shot Semantic Segmentation with Classifier Weight Transformer"), two stages, two recipes.

Stage 1 (``cwt_stage1``): a PSPNet-style network (``model.backbone`` -> pyramid pooling -> bottleneck ->
1x1 classifier, :class:`contrastlab.nn.PSPNet`) trained with cross-entropy (label-smoothed with
``method.label_smoothing``, as RePRI's) on the base classes of a fold (the data set's base-class view:
masks 0 = background, 1 .. C = base classes, 255 = ignore), its images and masks augmented together by
``data.seg_aug`` (:mod:`contrastlab.data.pair_transforms`). The official network (RePRI's / CWT's
src/model/pspnet.py) is ``model.backbone=resnet50 model.deep_stem=true model.output_stride=8`` with
``model.weights`` the ImageNet file.

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
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import load_checkpoint, load_weights
from ..data.episodes import IGNORE, source_of
from ..data.pair_transforms import augment_pairs, seg_aug_active
from ..errors import ConfigError, UserError
from ..fields import option
from ..losses.segmentation import episode_weighted_ce, smoothed_cross_entropy
from ..nn.prototypes import cosine_logits, episode_prototypes
from ..nn.segmentation import PSPNet
from ..nn.weight_transformer import ClassifierWeightTransformer
from .common import build_encoder
from .episodic import episode_batch


NET_KEYS = ("backbone", "width", "depth", "cifar_stem", "norm", "output_stride", "deep_stem")  # the model keys that shape the stage-1 network
NET_KEY_DEFAULTS = {"output_stride": None, "deep_stem": False}  # for runs written before those keys existed


def _bins_ok(v):
    return None if v and all(int(b) >= 1 for b in v) else "a non-empty list of bin sizes >= 1, e.g. [1, 2, 3, 6]"


@dataclass
class SegNetConfig:
    """The stage-1 network (both stages build it from the same keys) and the data's fold."""

    fold: int = option(0, ge=0, doc="the fold whose classes are novel (trained on the others)")
    folds: Optional[int] = option(None, ge=1, doc="folds of the data's classes (null: the set's default)")
    episode_seed: int = option(0, unbounded="any integer seed")

    bins: tuple = option((1, 2, 3, 6), check=_bins_ok, doc="the pyramid pooling's bin sizes")
    bottleneck_dim: int = option(512, ge=1, doc="d: channels of the features the classifiers see")
    decoder_dropout: float = option(0.1, ge=0, lt=1, doc="Dropout2d after the bottleneck")


@dataclass
class CWTStage1Config(SegNetConfig):
    name: Literal["cwt_stage1"] = "cwt_stage1"
    num_classes: int = option(6, ge=2, doc="background + the fold's base classes (the data's mask classes)")
    # RePRI's stage-1 label smoothing (src/train.py:207-209: eps 0.1 when smoothing: True): the pixel's class gets
    # 1 - eps, each other class eps / (num_classes - 1) (contrastlab.losses.smoothed_cross_entropy); 0: plain CE
    label_smoothing: float = option(0.0, ge=0, lt=1, doc="eps of the label-smoothed cross-entropy")


@dataclass
class CWTConfig(SegNetConfig):
    name: Literal["cwt"] = "cwt"
    stage1: str = option("", doc="the stage-1 run folder or checkpoint to start from (empty: random, for tests)")
    heads: int = option(4, ge=1, doc="attention heads of the transformer")
    dropout: float = option(0.5, ge=0, lt=1, doc="dropout after the transformer's FC")
    attn_dropout: float = option(0.1, ge=0, lt=1, doc="dropout of the attention weights")
    adapt_steps: int = option(200, ge=0, doc="SGD steps of the per-episode classifier on the support")
    classifier_lr: float = option(0.1, gt=0, doc="learning rate of the per-episode classifier")
    shots: int = option(1, ge=1, doc="support images of each meta-training episode")


def _images(x):
    return x.float().div(255) if x.dtype == torch.uint8 else x


class CWTStage1(nn.Module):
    """Stage 1: the segmentation network on the base classes (cross-entropy, 255 ignored)."""

    Config = CWTStage1Config
    monitor_protocol = "fewshot"

    def __init__(self, cfg):
        super().__init__()
        self.cfg = c = self.Config(**cfg.method)
        self.net = PSPNet(build_encoder(cfg.model), c.num_classes, c.bins, c.bottleneck_dim, c.decoder_dropout)
        self.seg_aug = cfg.data.seg_aug  # the joint image + mask augmentation of the drawn images (off by default)
        self.base = None

    def setup_data(self, train_set) -> None:
        """The base-class view of the training set (fold ``method.fold``: its classes are recoded
        1 .. C, the novel ones as ``EpisodeSource.base_view`` codes them); the steps draw their images from it."""
        base = source_of(train_set, self.cfg.folds).base_view(self.cfg.fold)
        if len(base.mask_classes) != self.cfg.num_classes:
            raise ConfigError(f"method.num_classes={self.cfg.num_classes} but fold {self.cfg.fold} of "
                              f"{getattr(train_set, 'name', 'the training set')} has {len(base.mask_classes)} classes with "
                              f"the background; set method.num_classes={len(base.mask_classes)}")  # fmt: skip
        self.base = base

    def segment_episode(self, support_images, support_masks, query_image) -> torch.Tensor:
        """Stage 1 alone, as a prototype segmenter of its features (masked average pooling, 20 x cosine):
        the reference that stage 2's classifiers and transformer improve on (``eval fewshot`` on a stage-1 run)."""
        e, k = support_images.shape[:2]
        f = self.net.features(torch.cat([support_images.flatten(0, 1), query_image])).float()
        protos = episode_prototypes(f[: e * k].unflatten(0, (e, k)), support_masks)
        return F.interpolate(cosine_logits(f[e * k:], protos), query_image.shape[-2:], mode="bilinear")

    def draw(self, step: int, b: int):
        """The images and masks of a step: epoch e of the base view is a permutation seeded by
        (episode_seed, e), step s takes its s-th slice of b (a function of the step alone), augmented
        together by ``data.seg_aug`` with a generator seeded by (episode_seed, step)."""
        n = len(self.base)
        per_epoch = max(n // b, 1)
        epoch, i = divmod(step, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.episode_seed * 7_777 + epoch))
        idx = perm[i * b:(i + 1) * b]
        g = torch.Generator().manual_seed((self.cfg.episode_seed * 1_000_003 + step) * 2 + 1)
        return augment_pairs(self.base.images[idx], self.base.masks[idx].long(), self.seg_aug, g)

    def forward(self, batch: dict) -> dict:
        if "masks" in batch:
            images, masks = batch["images"], batch["masks"]
        else:
            if self.base is None:
                raise RuntimeError("cwt_stage1 trains on the base-class view of its training set: call setup_data first")
            images, masks = self.draw(int(batch.get("step", 0)), batch["images"].shape[0])
        dev = batch["images"].device
        logits = self.net(_images(images.to(dev)))
        masks = masks.to(dev).long()
        if self.cfg.label_smoothing:
            loss = smoothed_cross_entropy(logits, masks, self.cfg.label_smoothing, ignore_index=IGNORE)
        else:
            loss = F.cross_entropy(logits, masks, ignore_index=IGNORE)
        return {"loss": loss}


class CWT(nn.Module):
    """Stage 2: the frozen stage-1 network, per-episode classifiers and the weight transformer."""

    Config = CWTConfig
    monitor_protocol = "fewshot"

    def __init__(self, cfg):
        super().__init__()
        self.cfg = c = self.Config(**cfg.method)
        self.net = PSPNet(build_encoder(cfg.model), None, c.bins, c.bottleneck_dim, c.decoder_dropout)
        self.model_keys = {k: getattr(cfg.model, k) for k in NET_KEYS}
        self.net.requires_grad_(False)
        self.transformer = ClassifierWeightTransformer(c.bottleneck_dim, c.heads, c.dropout, c.attn_dropout)
        self.net.eval()
        self.seg_aug = cfg.data.seg_aug  # applied to each image of the sampler's episodes (CWT src/dataset/dataset.py:211-214)
        self.episodes = None  # the base-class episode sampler, from setup_data

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()  # frozen: BatchNorm statistics and dropout stay those of stage 1
        return self

    def setup_data(self, train_set) -> None:
        """The base-class episodes of the training set (fold ``method.fold``), and the stage-1 network
        named by ``method.stage1``, its classifier dropped (training only: evaluation loads this
        run's own checkpoint, which holds the network)."""
        self.episodes = source_of(train_set, self.cfg.folds).base_episodes(self.cfg.fold, self.cfg.shots,
                                                                           seed=self.cfg.episode_seed)  # fmt: skip
        if not self.cfg.stage1:
            return
        ckpt = load_checkpoint(self.cfg.stage1)
        trained = ckpt["config"].get("method", {}).get("name")
        if trained != "cwt_stage1":
            raise UserError(f"method.stage1={self.cfg.stage1} is a {trained} run, not a cwt_stage1 run; "
                            "name the folder of `contrastlab train cwt_stage1`")  # fmt: skip
        theirs = {k: ckpt["config"].get("model", {}).get(k, NET_KEY_DEFAULTS.get(k)) for k in NET_KEYS}
        differ = [f"model.{k}={theirs[k]} there, {v} here" for k, v in self.model_keys.items() if theirs[k] != v]
        if differ:
            raise UserError(f"method.stage1={self.cfg.stage1} built another network ({'; '.join(differ)}); "
                            "give this recipe the stage-1 run's model section")  # fmt: skip
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

    def augment_episodes(self, ep: dict, step: int) -> dict:
        """``data.seg_aug`` on every support and query image of a step's episodes, each image with its own
        draws (the official transform is called per image), from a generator seeded by (episode_seed, step)."""
        e, k = ep["support_images"].shape[:2]
        images = torch.cat([ep["support_images"].flatten(0, 1), ep["query_image"]])
        masks = torch.cat([ep["support_masks"].flatten(0, 1), ep["query_mask"]])
        g = torch.Generator().manual_seed((self.cfg.episode_seed * 1_000_003 + step) * 2 + 1)
        images, masks = augment_pairs(images, masks, self.seg_aug, g)
        return {**ep, "support_images": images[: e * k].unflatten(0, (e, k)), "query_image": images[e * k:],
                "support_masks": masks[: e * k].unflatten(0, (e, k)), "query_mask": masks[e * k:]}  # fmt: skip

    def forward(self, batch: dict) -> dict:
        """One meta-training step on ``optim.batch_size`` base-class episodes (episode ``step * B + b``
        of the sampler), or on the episodes of ``batch`` when it holds them."""
        ep = episode_batch(self.episodes, batch, "cwt")
        if "support_images" not in batch and seg_aug_active(self.seg_aug):
            ep = self.augment_episodes(ep, int(batch.get("step", 0)))
        logits = self.query_logits(ep["support_images"], ep["support_masks"], ep["query_image"], batch.get("generator"))
        loss = episode_weighted_ce(logits.unsqueeze(1), ep["query_mask"].long().unsqueeze(1), reduction="mean")
        return {"loss": loss}

