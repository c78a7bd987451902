"""Views: the SimCLR augmentation family.

Two implementations of the same family:

- :class:`BatchedViews` works on a whole batch of uint8 or float tensors ``(B, 3, H, W)`` on
  any device (CPU or accelerator), with a ``torch.Generator`` so it is seedable. Crop and flip
  are one ``affine_grid``/``grid_sample`` call; colour jitter and grayscale are folded into one
  per-image 3x3 colour matrix plus offset (brightness, contrast, saturation, hue as a rotation
  about the grey axis in YIQ space), applied with one batched matmul; blur is a separable
  Gaussian as a grouped convolution with a per-image sigma. Difference to torchvision: the
  colour operations are composed before clamping to [0, 1] (torchvision clamps after each)
  and are applied in a fixed order (brightness, contrast, saturation, hue), and hue is rotated
  in YIQ rather than shifted in HSV. These are the usual GPU-augmentation approximations.
- :func:`torchvision_views` builds the same family from ``torchvision.transforms.v2`` for a
  per-image data-loader path (images of different sizes, CPU workers).

Both return float images in [0, 1]; input standardisation happens in the encoder
(:class:`contrastlab.nn.InputNorm`) so that evaluation sees exactly what training saw.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..fields import option


@dataclass
class ViewConfig:
    """Parameters of the SimCLR augmentation family (defaults: SimCLR's CIFAR setting); each
    declares its range (checked when a config is loaded)."""

    crop_scale: tuple[float, float] = option((0.08, 1.0), gt=0, le=1)  # [min, max] share of the image area
    # the side of each view in pixels; null: data.image_size (a crop of a larger image at a smaller size,
    # e.g. DCL's 32 px crops of 96 px STL-10 images, with evaluation on the whole 96 px images)
    size: Optional[int] = option(None, ge=1)
    crop_ratio: tuple[float, float] = option((3 / 4, 4 / 3), gt=0)  # [min, max] aspect ratio of the crop
    flip_p: float = option(0.5, ge=0, le=1)
    jitter_p: float = option(0.8, ge=0, le=1)
    brightness: float = option(0.4, ge=0)
    contrast: float = option(0.4, ge=0)
    saturation: float = option(0.4, ge=0)
    hue: float = option(0.1, ge=0, le=0.5)
    grayscale_p: float = option(0.2, ge=0, le=1)
    blur_p: float = option(0.0, ge=0, le=1)
    blur_sigma: tuple[float, float] = option((0.1, 2.0), gt=0)  # [min, max] of the Gaussian's sigma in pixels
    blur_kernel_frac: float = option(0.1, ge=0, le=1)  # kernel side = 10% of the image side, odd, >= 3 (SimCLR)
    # Beyond SimCLR's family (all off by default). For synthetic scenes such as the digit
    # scenes, where orientation, colour identity and polarity identify an instance:
    # random rotation of the crop, uniform in [-rotation, +rotation] degrees
    rotation: float = option(0.0, ge=0, le=180, doc="the largest angle in degrees")
    channel_perm_p: float = option(0.0, ge=0, le=1)  # probability of a random permutation of the RGB channels
    invert_p: float = option(0.0, ge=0, le=1)  # probability of inverting the image (x -> 1 - x)
    # turn each view by 0, 90, 180 or 270 degrees (uniform) after the crop: LooC's rotation augmentation, so that
    # a MoCo / SimCLR baseline can train with the same family as a LooC run that leaves rotation out
    quarter_turns: bool = option(False)


# Luma weights (ITU-R 601), as torchvision's rgb_to_grayscale
_LUMA = torch.tensor([0.299, 0.587, 0.114])
# RGB <-> YIQ
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _uniform(lo, hi, n, g, device):
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def crop_boxes(n, h, w, scale, ratio, g, device, tries: int = 10):
    """Random-resized-crop boxes as in torchvision: (n, 4) tensor of (x0, y0, x1, y1) pixels.

    Vectorised rejection sampling: `tries` candidates per image, the first valid one is kept,
    else the whole image (torchvision's fallback is a central crop at the clamped ratio; the
    difference only matters for extreme ratios).
    """
    area = h * w
    s = _uniform(scale[0], scale[1], n * tries, g, device).view(n, tries) * area
    logr = _uniform(math.log(ratio[0]), math.log(ratio[1]), n * tries, g, device).view(n, tries)
    r = torch.exp(logr)
    cw = torch.sqrt(s * r).round()
    ch = torch.sqrt(s / r).round()
    ok = (cw <= w) & (ch <= h) & (cw > 0) & (ch > 0)
    first = torch.argmax(ok.int(), dim=1)
    any_ok = ok.any(dim=1)
    rows = torch.arange(n, device=device)
    cw = torch.where(any_ok, cw[rows, first], torch.full_like(cw[:, 0], w))
    ch = torch.where(any_ok, ch[rows, first], torch.full_like(ch[:, 0], h))
    x0 = torch.floor(torch.rand(n, generator=g, device=device) * (w - cw + 1))
    y0 = torch.floor(torch.rand(n, generator=g, device=device) * (h - ch + 1))
    return torch.stack([x0, y0, x0 + cw, y0 + ch], dim=1)


def resized_crop(images, boxes, flip, out_size, angle=None):
    """Crop each image to its box (x0, y0, x1, y1 in pixels), optionally flip, resize bilinearly.

    ``angle`` (n,) in degrees then rotates the resized view about its centre (counter-clockwise
    on screen for positive angles, as torchvision's rotate after its crop and flip); samples that
    fall outside the image repeat its border.
    """
    n, _, h, w = images.shape
    x0, y0, x1, y1 = boxes.unbind(1)
    # normalised coords (align_corners=False): pixel edge 0 -> -1, edge w -> +1
    sx = (x1 - x0) / w
    sy = (y1 - y0) / h
    cx = (x0 + x1) / w - 1
    cy = (y0 + y1) / h - 1
    fx = torch.where(flip, -sx, sx)
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=images.dtype)
    if angle is None:
        theta[:, 0, 0] = fx
        theta[:, 1, 1] = sy
    else:
        # output (u, v) -> rotated in the view's own square frame -> flipped, scaled to the crop
        a = torch.deg2rad(angle.to(images.dtype))
        cos, sin = torch.cos(a), torch.sin(a)
        theta[:, 0, 0] = fx * cos
        theta[:, 0, 1] = -fx * sin
        theta[:, 1, 0] = sy * sin
        theta[:, 1, 1] = sy * cos
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, (n, 3, out_size, out_size), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def color_matrices(n, cfg: ViewConfig, g, device):
    """Per-image colour transform x -> M x + b (before clamping) for jitter and grayscale.

    Returns M (n, 3, 3) for saturation, hue and grayscale, and the per-image contrast c and
    brightness b factors; the contrast offset depends on the image (:func:`apply_color`).
    """
    eye = torch.eye(3, device=device).expand(n, 3, 3)
    luma = _LUMA.to(device)
    gray = luma[None, :].expand(3, 3)  # each output channel = luma
    jitter = torch.rand(n, generator=g, device=device) < cfg.jitter_p
    b = _uniform(max(0, 1 - cfg.brightness), 1 + cfg.brightness, n, g, device)
    c = _uniform(max(0, 1 - cfg.contrast), 1 + cfg.contrast, n, g, device)
    s = _uniform(max(0, 1 - cfg.saturation), 1 + cfg.saturation, n, g, device)
    hh = _uniform(-cfg.hue, cfg.hue, n, g, device) * 2 * math.pi
    one = torch.ones_like(b)
    b = torch.where(jitter, b, one)
    c = torch.where(jitter, c, one)
    s = torch.where(jitter, s, one)
    hh = torch.where(jitter, hh, torch.zeros_like(hh))
    # saturation: blend with grayscale
    m_sat = s[:, None, None] * eye + (1 - s)[:, None, None] * gray
    # hue: rotate I/Q in YIQ space
    yiq = _RGB2YIQ.to(device)
    rot = torch.zeros(n, 3, 3, device=device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1] = torch.cos(hh)
    rot[:, 1, 2] = -torch.sin(hh)
    rot[:, 2, 1] = torch.sin(hh)
    rot[:, 2, 2] = torch.cos(hh)
    m_hue = torch.linalg.inv(yiq) @ rot @ yiq
    # brightness and contrast are scalars per image, applied in apply_color
    m = m_hue @ m_sat
    grayscale = torch.rand(n, generator=g, device=device) < cfg.grayscale_p
    m = torch.where(grayscale[:, None, None], gray @ m, m)
    if cfg.channel_perm_p > 0:
        # a permutation commutes with the final clamp, so it folds into M exactly
        perm = torch.argsort(torch.rand(n, 3, generator=g, device=device), dim=1)
        p = torch.rand(n, generator=g, device=device) < cfg.channel_perm_p
        perm = torch.where(p[:, None], perm, torch.arange(3, device=device))
        m = torch.eye(3, device=device)[perm] @ m
    if cfg.invert_p > 0:
        # 1 - clamp(y, 0, 1) = clamp(1 - y, 0, 1): inversion is the affine map y -> 1 - y
        inv = torch.rand(n, generator=g, device=device) < cfg.invert_p
        sign = torch.where(inv, -1.0, 1.0).to(m.dtype)
        m = m * sign[:, None, None]
        return m, c, b, grayscale, inv.to(m.dtype)
    return m, c, b, grayscale, None


def apply_color(x, m, c, b, grayscale, invert=None):
    """x (n,3,H,W) float. Implements clamp(M (c*b*x + (1-c)*b*mean_grey(x)) + invert).

    ``invert`` (n,) is 1 for images whose M was negated by :func:`color_matrices` (x -> 1 - x).

    Brightness b scales the image; contrast c blends it with its mean grey level; M holds
    saturation, hue and grayscale. Every step is affine, so they compose exactly.
    """
    luma = _LUMA.to(x.device, x.dtype)
    mean_grey = torch.einsum("c,nchw->n", luma, x) / (x.shape[2] * x.shape[3])
    scale = (c * b).to(x.dtype)
    shift = ((1 - c) * b).to(x.dtype) * mean_grey
    # M (s x + t 1) = s M x + t M 1
    out = torch.einsum("nij,njhw->nihw", m.to(x.dtype) * scale[:, None, None], x)
    off = m.to(x.dtype).sum(2) * shift[:, None]
    if invert is not None:
        off = off + invert.to(x.dtype)[:, None]
    out = out + off[:, :, None, None]
    return out.clamp_(0, 1)


def gaussian_blur(x, sigma, kernel_size):
    """Separable Gaussian blur with a per-image sigma (n,), reflect padding."""
    n, ch, h, w = x.shape
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t[None, :] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    k = k / k.sum(1, keepdim=True)  # (n, K)
    k = k.repeat_interleave(ch, 0)  # (n*ch, K)
    y = x.reshape(1, n * ch, h, w)
    y = F.pad(y, (half, half, half, half), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=n * ch)
    y = F.conv2d(y, k[:, None, :, None], groups=n * ch)
    return y.view(n, ch, h, w)


class BatchedViews:
    """Draws random views of a batch: ``views(images, generator) -> float (B,3,S,S)`` in [0, 1].

    ``return_boxes=True`` also returns where each view came from, for dense methods (PixPro's
    positive pixel pairs): ``boxes`` (B, 4) as (x0, y0, x1, y1) in the original image's
    normalised coordinates [0, 1] (the crop before its optional rotation, ``views.rotation``),
    and ``flips`` (B,) bool, whether the view was mirrored left-right after the crop."""

    def __init__(self, cfg: ViewConfig, out_size: int):
        self.cfg = cfg
        self.out_size = out_size

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None, return_boxes=False):
        cfg = self.cfg
        if images.dtype == torch.uint8:
            images = images.float().div_(255)
        n, _, h, w = images.shape
        dev = images.device
        g = generator
        boxes = crop_boxes(n, h, w, cfg.crop_scale, cfg.crop_ratio, g, dev)
        flip = torch.rand(n, generator=g, device=dev) < cfg.flip_p
        angle = _uniform(-cfg.rotation, cfg.rotation, n, g, dev) if cfg.rotation > 0 else None
        if cfg.quarter_turns:
            turn = 90.0 * torch.randint(0, 4, (n,), generator=g, device=dev).to(images.dtype)
            angle = turn if angle is None else angle + turn
        x = resized_crop(images, boxes, flip, self.out_size, angle)
        m, c, b, gs, inv = color_matrices(n, cfg, g, dev)
        x = apply_color(x, m, c, b, gs, inv)
        if cfg.blur_p > 0:
            k = max(3, int(cfg.blur_kernel_frac * self.out_size) // 2 * 2 + 1)
            sigma = _uniform(cfg.blur_sigma[0], cfg.blur_sigma[1], n, g, dev)
            blur = torch.rand(n, generator=g, device=dev) < cfg.blur_p
            if blur.any():
                x = torch.where(blur[:, None, None, None], gaussian_blur(x, sigma, k), x)
        if return_boxes:
            scale = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
            return x, boxes / scale, flip
        return x


class TwoViews(BatchedViews):
    """The standard view generator of the instance-contrastive methods: ``pair(batch)`` returns two
    independent views of every image of the batch (drawn here from ``batch["images"]`` with the
    step's ``batch["generator"]``, or the two the loader made: ``batch["views"]``, per-image
    path); calling it draws one view, as :class:`BatchedViews`. Other generators (leave-one-out,
    adversarial) are other classes with the same ``pair``."""

    def pair(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if "views" in batch:
            v1, v2 = batch["views"][:2]
            return v1, v2
        g = batch.get("generator")
        return self(batch["images"], g), self(batch["images"], g)


def torchvision_views(cfg: ViewConfig, out_size: int):
    """The same family as per-image ``torchvision.transforms.v2`` (PIL or tensor in, float out)."""
    from torchvision.transforms import v2

    ops = [
        v2.ToImage(),
        v2.RandomResizedCrop(out_size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, antialias=True),
        v2.RandomHorizontalFlip(cfg.flip_p),
    ]
    if cfg.rotation > 0:
        # torchvision fills the corners with a constant (0) where the batched path repeats the border
        ops.append(v2.RandomRotation(cfg.rotation, interpolation=v2.InterpolationMode.BILINEAR))
    if cfg.quarter_turns:  # exact turns of the square view: no interpolation, no corners to fill
        ops.append(v2.RandomChoice([v2.RandomRotation((a, a)) for a in (0.0, 90.0, 180.0, 270.0)]))
    ops += [
        v2.RandomApply([v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)], p=cfg.jitter_p),
        v2.RandomGrayscale(cfg.grayscale_p),
    ]
    if cfg.channel_perm_p > 0:
        ops.append(v2.RandomApply([v2.RandomChannelPermutation()], p=cfg.channel_perm_p))
    if cfg.invert_p > 0:
        ops.append(v2.RandomInvert(cfg.invert_p))
    if cfg.blur_p > 0:
        k = max(3, int(cfg.blur_kernel_frac * out_size) // 2 * 2 + 1)
        ops.append(v2.RandomApply([v2.GaussianBlur(k, sigma=cfg.blur_sigma)], p=cfg.blur_p))
    ops.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(ops)


# The atomic augmentations of leave-one-out views (LooC), each a group of parameters drawn together:
# "rotation" by a multiple of 90 degrees (0, 90, 180, 270, uniform; LooC's rotation), "color" (jitter,
# grayscale, channel permutation, inversion of ``views``), "crop" (random resized crop, flip and the small
# ``views.rotation`` angle) and "blur" (Gaussian blur, ``views.blur_p``: a texture augmentation).
LOO_AUGMENTATIONS = ("rotation", "color", "crop", "blur")


def loo_augmentations_allowed(names) -> str | None:
    """None when ``names`` is a non-empty list of distinct atomic augmentations, else what is allowed
    (for ``fields.option(check=...)``)."""
    names = list(names)
    if not names or len(set(names)) != len(names) or any(n not in LOO_AUGMENTATIONS for n in names):
        return f"a non-empty list of distinct names from {', '.join(LOO_AUGMENTATIONS)}"
    return None


class LeaveOneOutViews(BatchedViews):
    """Leave-one-out views (LooC: Xiao et al., ICLR 2021, section 3): for n named atomic augmentations,
    ``views(batch) -> (q, [k_0, ..., k_n])``, batched tensors (B, 3, S, S) in [0, 1].

    Each augmentation's parameters are drawn as a group (:meth:`sample`), so a group can be shared
    between views or redrawn: the query and the first key k_0 draw every group independently; key k_i
    (i = 1..n, in the order of ``augmentations``) takes the query's parameters of augmentation i and
    k_0's of every other atomic augmentation, so it differs from the query in all but augmentation i
    (and from k_0 in augmentation i only). Augmentation groups that are not atomic (e.g. the crop when
    ``augmentations`` omits it) are common augmentations: drawn independently for every view. The
    90-degree rotation is applied when "rotation" is atomic, or as a common augmentation when
    ``views.quarter_turns`` is set.
    ``views(batch, return_params=True)`` also returns each view's parameters (dicts of tensors)."""

    def __init__(self, cfg: ViewConfig, out_size: int, augmentations=("rotation", "color", "crop")):
        super().__init__(cfg, out_size)
        allowed = loo_augmentations_allowed(augmentations)
        if allowed:
            raise ConfigError(f"method.augmentations={list(augmentations)}: must be {allowed}")
        self.augmentations = tuple(augmentations)

    def sample(self, n: int, h: int, w: int, g=None, device=None) -> dict:
        """One independent draw of every group for n images of h x w: {group: {name: tensor}}."""
        cfg = self.cfg
        crop = {"boxes": crop_boxes(n, h, w, cfg.crop_scale, cfg.crop_ratio, g, device),
                "flip": torch.rand(n, generator=g, device=device) < cfg.flip_p,
                "angle": _uniform(-cfg.rotation, cfg.rotation, n, g, device)}  # fmt: skip
        if "rotation" in self.augmentations or cfg.quarter_turns:  # atomic, or common to all views
            quarter = torch.randint(0, 4, (n,), generator=g, device=device)
        else:
            quarter = torch.zeros(n, dtype=torch.long, device=device)
        m, c, b, gs, inv = color_matrices(n, cfg, g, device)
        color = {"m": m, "c": c, "b": b, "grayscale": gs, "invert": inv if inv is not None else torch.zeros_like(c)}
        blur = {"sigma": _uniform(cfg.blur_sigma[0], cfg.blur_sigma[1], n, g, device),
                "on": torch.rand(n, generator=g, device=device) < cfg.blur_p}  # fmt: skip
        return {"rotation": {"quarter": quarter}, "color": color, "crop": crop, "blur": blur}

    def render(self, images: torch.Tensor, p: dict) -> torch.Tensor:
        """The view of float ``images`` (B, 3, H, W) with parameters ``p`` (as :meth:`sample`)."""
        angle = p["crop"]["angle"] + 90.0 * p["rotation"]["quarter"].to(p["crop"]["angle"].dtype)
        x = resized_crop(images, p["crop"]["boxes"], p["crop"]["flip"], self.out_size, angle)
        c = p["color"]
        x = apply_color(x, c["m"], c["c"], c["b"], c["grayscale"], c["invert"] if self.cfg.invert_p > 0 else None)
        on = p["blur"]["on"]
        if self.cfg.blur_p > 0 and on.any():
            k = max(3, int(self.cfg.blur_kernel_frac * self.out_size) // 2 * 2 + 1)
            x = torch.where(on[:, None, None, None], gaussian_blur(x, p["blur"]["sigma"], k), x)
        return x

    def views(self, batch: dict, return_params: bool = False):
        if "images" not in batch:
            raise ConfigError("leave-one-out views are drawn from the batch's images on the device: set "
                              "views.backend=batched")  # fmt: skip
        images = batch["images"]
        if images.dtype == torch.uint8:
            images = images.float().div_(255)
        n, _, h, w = images.shape
        g, dev = batch.get("generator"), images.device
        q_p, k0_p = self.sample(n, h, w, g, dev), self.sample(n, h, w, g, dev)
        params = [q_p, k0_p]
        for aug in self.augmentations:
            p = self.sample(n, h, w, g, dev)  # the common (non-atomic) groups: drawn afresh
            for other in self.augmentations:
                p[other] = q_p[other] if other == aug else k0_p[other]
            params.append(p)
        out = [self.render(images, p) for p in params]
        if return_params:
            return out[0], out[1:], params
        return out[0], out[1:]


def jigsaw_patches(images: torch.Tensor, grid: int = 3) -> torch.Tensor:
    """Cuts each image into a ``grid`` x ``grid`` jigsaw: (B, C, H, W) -> (B, grid * grid, C, H // grid,
    W // grid), patches in row-major order (patch k is row k // grid, column k % grid). When H or W is not
    a multiple of ``grid``, the central grid * (H // grid) x grid * (W // grid) region is cut (the
    remainder's rows and columns are dropped evenly from both sides, one more at the bottom / right)."""
    if images.dim() != 4:
        raise ValueError(f"jigsaw_patches expects images (B, C, H, W), got {tuple(images.shape)}")
    b, ch, h, w = images.shape
    ph, pw = h // grid, w // grid
    if grid < 1 or ph < 1 or pw < 1:
        raise ValueError(f"jigsaw_patches: a {grid} x {grid} grid does not fit images of {h} x {w} px")
    oy, ox = (h - grid * ph) // 2, (w - grid * pw) // 2
    x = images[:, :, oy : oy + grid * ph, ox : ox + grid * pw]
    x = x.reshape(b, ch, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5)  # (B, row, col, C, ph, pw)
    return x.reshape(b, grid * grid, ch, ph, pw)


class JigsawViews(BatchedViews):
    """DetCo's local view (Xie et al., ICCV 2021): ``views(images, generator) -> (B, grid^2, 3, S, S)``.
    Each image is cut into a ``grid`` x ``grid`` jigsaw (:func:`jigsaw_patches`, patch order kept) and
    every patch is augmented on its own, as a batched view of the patch (random resized crop of the
    patch, flip, colour, blur of ``cfg``) at ``out_size`` px."""

    def __init__(self, cfg: ViewConfig, out_size: int, grid: int = 3):
        super().__init__(cfg, out_size)
        self.grid = grid

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None, return_boxes=False):
        if return_boxes:
            raise ValueError("JigsawViews gives no boxes (its crops are of the patches, not of the image)")
        patches = jigsaw_patches(images, self.grid)
        b, n = patches.shape[:2]
        x = super().__call__(patches.flatten(0, 1), generator)
        return x.view(b, n, *x.shape[1:])
