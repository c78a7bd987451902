"""Prototypes for few-shot segmentation (PANet, Wang et al., ICCV 2019): masked average pooling of
support features, cosine-similarity logits of query pixels to the prototypes, and the prototype
segmenter over an encoder's feature map.

Masked average pooling (PANet eq. 1): for a feature map F (C, H, W) upsampled to the mask's size
and a binary mask M (H, W), the prototype p = sum_xy F_xy M_xy / (sum_xy M_xy + eps), eps = 1e-5
(the official code's value). With K shots, the class's prototype is the mean of the K shots'
prototypes (PANet eq. 2 / 3). The foreground mask is ``support_mask == 1``, the background mask
``support_mask == 0``; pixels valued 255 are in neither.

Logits (PANet eq. 4 / 5): for each query pixel feature F_q and prototype p_j,
``logit_j = alpha * cos(F_q, p_j)`` with alpha = 20, then a softmax over the prototypes
(background first, then the class). The logits are computed on the feature map and upsampled
bilinearly to the image size (as PANet's code)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

IGNORE = 255
EPS = 1e-5

__all__ = ["masked_average_pool", "cosine_logits", "episode_prototypes", "PrototypeSegmenter"]


def masked_average_pool(features: Tensor, mask: Tensor, eps: float = EPS) -> Tensor:
    """(N, C, h, w) features, (N, H, W) float weights in [0, 1] -> (N, C) prototypes; the features
    are upsampled bilinearly (``align_corners=False``) to (H, W) first when their size differs."""
    if features.shape[-2:] != mask.shape[-2:]:
        features = F.interpolate(features, size=tuple(mask.shape[-2:]), mode="bilinear", align_corners=False)
    m = mask.to(features.dtype)[:, None]
    return (features * m).sum((2, 3)) / (m.sum((2, 3)) + eps)


def cosine_logits(features: Tensor, prototypes: Tensor, scale: float = 20.0, eps: float = 1e-8) -> Tensor:
    """(B, C, h, w) features and (B, P, C) prototypes -> (B, P, h, w) = scale * cos(feature, prototype)
    (each norm clamped below at ``eps``)."""
    f = features / features.norm(dim=1, keepdim=True).clamp_min(eps)
    p = prototypes / prototypes.norm(dim=2, keepdim=True).clamp_min(eps)
    return scale * torch.einsum("bchw,bpc->bphw", f, p)


def episode_prototypes(support_features: Tensor, support_masks: Tensor) -> Tensor:
    """(B, K, C, h, w) support features and (B, K, H, W) masks (1 / 0 / 255) -> (B, 2, C): the
    background and foreground prototypes, each the mean over the K shots of the shot's masked
    average pool."""
    b, k = support_masks.shape[:2]
    feats = support_features.flatten(0, 1)
    masks = support_masks.flatten(0, 1)
    fg = masked_average_pool(feats, (masks == 1).float())
    bg = masked_average_pool(feats, (masks == 0).float())
    return torch.stack([bg.view(b, k, -1).mean(1), fg.view(b, k, -1).mean(1)], dim=1)


class PrototypeSegmenter(nn.Module):
    """The PANet-style baseline over an encoder: ``segment_episode(support_images, support_masks,
    query_image) -> logits (B, 2, H, W)`` (background, class). The features are the encoder's map
    after stage ``stage`` (``forward_stages``; -1: the final map ``forward_features``)."""

    def __init__(self, encoder: nn.Module, stage: int = -1, scale: float = 20.0):
        super().__init__()
        self.encoder, self.stage, self.scale = encoder, int(stage), float(scale)

    def features(self, x: Tensor) -> Tensor:
        if self.stage < 0:
            return self.encoder.forward_features(x)
        return self.encoder.forward_stages(x, [self.stage])[0]

    def logits(self, query_features: Tensor, prototypes: Tensor, size) -> Tensor:
        out = cosine_logits(query_features.float(), prototypes.float(), self.scale)
        return F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)

    def segment_episode(self, support_images: Tensor, support_masks: Tensor, query_image: Tensor) -> Tensor:
        b, k = support_images.shape[:2]
        feats = self.features(torch.cat([support_images.flatten(0, 1), query_image]))
        fs, fq = feats[: b * k], feats[b * k :]
        protos = episode_prototypes(fs.float().unflatten(0, (b, k)), support_masks)
        return self.logits(fq, protos, query_image.shape[-2:])

    def forward(self, support_images, support_masks, query_image):
        return self.segment_episode(support_images, support_masks, query_image)
