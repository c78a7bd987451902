"""Pixel-level losses of PixPro and PixContrast (Xie, Lin, Zhang, Cao, Lin, Hu, CVPR 2021, "Propagate
Yourself: Exploring Pixel-Level Consistency for Unsupervised Visual Representation Learning"), and the
positive pixel pairs they are computed over.

Pure functions of tensors. Feature maps are (B, C, H, W) or already flattened (B, C, H*W); pixels are
in row-major order (pixel i = row * W + column), as ``torch.flatten`` gives them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _pixel_centres(boxes: torch.Tensor, flips: torch.Tensor, h: int, w: int):
    """The centres of a view's h x w feature-map bins in the original image's normalised coordinates
    ((B, h*w) x and y, row-major) and each view's bin diagonal (B,). A bin is the box's extent divided
    by w and h. A view mirrored left-right after its crop has its column c at the box's right edge
    minus (c + 1/2) bin widths."""
    x0, y0, x1, y1 = boxes.unbind(1)
    bw, bh = (x1 - x0) / w, (y1 - y0) / h
    cols = torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5
    rows = torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5
    cx = torch.where(flips[:, None], x1[:, None] - cols * bw[:, None], x0[:, None] + cols * bw[:, None])  # (B, w)
    cy = y0[:, None] + rows * bh[:, None]  # (B, h)
    b = boxes.shape[0]
    return (cx[:, None, :].expand(b, h, w).reshape(b, h * w), cy[:, :, None].expand(b, h, w).reshape(b, h * w),
            torch.sqrt(bw**2 + bh**2))  # fmt: skip


def positive_pixel_mask(
    boxes1: torch.Tensor,
    flips1: torch.Tensor,
    boxes2: torch.Tensor,
    flips2: torch.Tensor,
    size: tuple[int, int],
    threshold: float = 0.7,
) -> torch.Tensor:
    """PixPro's positive pixel pairs (Xie et al., CVPR 2021, section 3.1).

    ``boxes1``, ``boxes2`` (B, 4): each view's crop as (x0, y0, x1, y1) in the original image's
    normalised coordinates [0, 1]; ``flips1``, ``flips2`` (B,) bool: whether the view was mirrored
    left-right after the crop; ``size`` (H, W): the feature map's size (the same for both views).
    Pixel (r, c) of a view covers a bin of the box of width (x1 - x0) / W and height (y1 - y0) / H;
    its centre in the original image is

        x = x0 + (c + 1/2) (x1 - x0) / W     (flipped view: x = x1 - (c + 1/2) (x1 - x0) / W)
        y = y0 + (r + 1/2) (y1 - y0) / H

    Returns a bool (B, H*W, H*W) whose [b, i, j] says whether pixel i of view 1 and pixel j of view 2
    (row-major) are a positive pair: the distance of their centres is below ``threshold`` times the
    larger of the two views' bin diagonals, ``dist(i, j) < threshold * max(diag_1, diag_2)``.
    """
    if boxes1.dim() != 2 or boxes1.shape[1] != 4 or boxes2.shape != boxes1.shape:
        raise ValueError(f"positive_pixel_mask expects boxes1 and boxes2 of shape (B, 4), got {tuple(boxes1.shape)} "
                         f"and {tuple(boxes2.shape)}")  # fmt: skip
    b = boxes1.shape[0]
    if flips1.shape != (b,) or flips2.shape != (b,):
        raise ValueError(f"positive_pixel_mask expects flips1 and flips2 of shape ({b},), got {tuple(flips1.shape)} "
                         f"and {tuple(flips2.shape)}")  # fmt: skip
    if len(size) != 2 or int(size[0]) < 1 or int(size[1]) < 1:
        raise ValueError(f"positive_pixel_mask expects size=(H, W) with H, W >= 1, got {tuple(size)}")
    if not threshold > 0:
        raise ValueError(f"positive_pixel_mask expects threshold > 0, got {threshold}")
    h, w = int(size[0]), int(size[1])
    dtype = torch.promote_types(boxes1.dtype, torch.float32)
    x1, y1, d1 = _pixel_centres(boxes1.to(dtype), flips1.bool(), h, w)
    x2, y2, d2 = _pixel_centres(boxes2.to(dtype).to(boxes1.device), flips2.bool().to(boxes1.device), h, w)
    dist = torch.sqrt((x1[:, :, None] - x2[:, None, :]) ** 2 + (y1[:, :, None] - y2[:, None, :]) ** 2)
    return dist < threshold * torch.maximum(d1, d2)[:, None, None]


def _flat(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dim() == 4:
        return x.flatten(2)
    if x.dim() != 3:
        raise ValueError(f"{what} expects feature maps (B, C, H, W) or (B, C, H*W), got {tuple(x.shape)}")
    return x


def _pair_cosines(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, what: str) -> torch.Tensor:
    """cos(a_i, b_j) for every pixel pair of each image: (B, N, N), after shape checks."""
    a, b = _flat(a, what), _flat(b, what)
    if a.shape != b.shape or mask.shape != (a.shape[0], a.shape[2], a.shape[2]):
        raise ValueError(f"{what} expects two maps of the same shape (B, C, N) and a mask (B, N, N), got "
                         f"{tuple(a.shape)}, {tuple(b.shape)} and {tuple(mask.shape)}")  # fmt: skip
    a, b = F.normalize(a.float(), dim=1), F.normalize(b.float(), dim=1)
    return torch.einsum("bci,bcj->bij", a, b)


def pixel_consistency_loss(y: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PixPro's pixel-to-propagation consistency, one direction (Xie et al., CVPR 2021, section 3.3).

    ``y`` (B, C, H, W): the propagated features of view A (online branch, after the PPM); ``x``: the
    momentum branch's features of view B; ``mask`` (B, N, N) bool, N = H*W: [b, i, j] when pixel i of A
    and pixel j of B are a positive pair (:func:`positive_pixel_mask`). Per image, the mean cosine over
    its positive pairs; the loss is minus the mean over the images:

        L = -1/B sum_b [ sum_{(i, j) positive} cos(y_bi, x_bj) / max(1, #positives of b) ]

    An image without a positive pair contributes 0 (as the official code, which divides by the count
    plus 1e-6; its -2 cos is twice this). The symmetric loss adds the other direction (B's propagated
    features against A's momentum features, with the transposed mask).
    """
    cos = _pair_cosines(y, x, mask, "pixel_consistency_loss")
    m = mask.to(cos.dtype)
    per_image = (cos * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp_min(1)
    return -per_image.mean()


def pixel_info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    pos_mask: torch.Tensor,
    temperature: float = 0.3,
    neg_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """PixContrast's pixel-level InfoNCE, one direction (Xie et al., CVPR 2021, section 3.2).

    ``q`` (B, C, H, W): the online branch's features of view A; ``k``: the momentum branch's of view B;
    ``pos_mask`` (B, N, N) bool: the positive pairs (pixel i of A, pixel j of B); ``neg_mask`` (B, N, N)
    bool: the negative pairs (default: every pixel of B that is not a positive of i). With
    s_ij = cos(q_i, k_j) / t, for each pixel i of A that has a positive, the positives' share of the
    exponentials over its positives and negatives (several positives are summed inside the log):

        l_i = -log( sum_{j in P_i} exp(s_ij) / sum_{j in P_i or N_i} exp(s_ij) )

    The loss is the mean of l_i over the pixels that have a positive, over the whole batch (0 when no
    pixel has one). Negatives are pixels of the same image's other view.
    """
    if not temperature > 0:
        raise ValueError(f"pixel_info_nce expects temperature > 0, got {temperature}")
    logits = _pair_cosines(q, k, pos_mask, "pixel_info_nce") / temperature
    if neg_mask is None:
        neg_mask = ~pos_mask
    elif neg_mask.shape != pos_mask.shape:
        raise ValueError(f"pixel_info_nce expects neg_mask of shape {tuple(pos_mask.shape)}, got {tuple(neg_mask.shape)}")
    pos, every = pos_mask.bool(), pos_mask.bool() | neg_mask.bool()
    ninf = torch.finfo(logits.dtype).min
    lse_pos = torch.logsumexp(logits.masked_fill(~pos, ninf), dim=2)
    lse_all = torch.logsumexp(logits.masked_fill(~every, ninf), dim=2)
    anchors = pos.any(dim=2)  # (B, N)
    per_pixel = (lse_all - lse_pos) * anchors
    return per_pixel.sum() / anchors.sum().clamp_min(1)


def pooled_cosine_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The instance branch's regression loss (BYOL-style, as PixPro's official instance branch): minus
    the mean over the batch of cos(p_b, z_b), for (B, d) predictions ``p`` and targets ``z``."""
    if p.dim() != 2 or p.shape != z.shape:
        raise ValueError(f"pooled_cosine_loss expects two (B, d) tensors of the same shape, got {tuple(p.shape)} "
                         f"and {tuple(z.shape)}")  # fmt: skip
    return -F.cosine_similarity(p.float(), z.float(), dim=1).mean()
