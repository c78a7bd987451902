"""Digit scenes: the embedded data set, generated from scikit-learn's handwritten digits.

Every sample is a 32x32 RGB scene built from one of the 1,797 real 8x8 handwritten digits
that ship with scikit-learn (``sklearn.datasets.load_digits``; no download). The digit is
upscaled, rotated, placed at a random position and scale, and drawn in a random foreground
colour on a random background colour, with optional distractors (a second digit, clutter,
texture). Each scene carries several labels:

- ``digit``: the digit class (10 classes);
- ``color``: the foreground hue bin (``N_COLORS`` classes);
- ``rotation``: the rotation bin (``N_ROTATIONS`` classes, centred at -15, -5, 5, 15 deg, +-3);
- ``mask``: a per-pixel segmentation map, 0 for background and ``1 + digit`` for pixels covered
  by a digit (the main digit is drawn on top of a distractor digit).

Train and test scenes are built from disjoint sets of source digit images (a stratified split of
the 1,797), so test accuracy measures generalisation to unseen handwriting. The scenes are a
deterministic function of the seed and the options; they are generated in a few seconds with
batched ``grid_sample`` and cached on disk as a ``.pt`` file of plain tensors.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .base import TensorImageSet

N_COLORS = 6
N_ROTATIONS = 4
ROTATION_CENTRES = (-15.0, -5.0, 5.0, 15.0)
ROTATION_JITTER = 3.0  # degrees either side of a centre; bins stay 4 degrees apart
GENERATOR_VERSION = 13  # bump when the scene generator changes: invalidates the cache


@dataclass(frozen=True)
class DigitScenesSpec:
    n_train: int = 10000
    n_test: int = 2000
    seed: int = 0
    image_size: int = 32
    second_digit: bool = False
    clutter: int = 0  # number of random clutter strokes per scene
    texture: bool = False  # striped background texture (an instance shortcut: SimCLR learns far less with it)
    noise: float = 0.03  # std of per-pixel Gaussian noise
    light_fraction: float = 0.5  # share of scenes on a light background (darker digit)
    test_source_fraction: float = 1 / 3

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "v": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def cache_dir() -> Path:
    root = os.environ.get("CONTRASTLAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "contrastlab"
    )
    return Path(root)


def _source_digits(seed: int, test_fraction: float):
    """The 1,797 sklearn digits as float [0,1] tensors and a stratified disjoint split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32) / 16.0
    targets = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(10_007 + seed)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = torch.nonzero(targets == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return images, targets, torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values


def _hsv_to_rgb(h, s, v):
    """Vectorised HSV -> RGB; h, s, v of shape (N,) in [0, 1]. Returns (N, 3)."""
    h6 = (h % 1.0) * 6.0
    k = torch.stack([(5 + h6) % 6, (3 + h6) % 6, (1 + h6) % 6], dim=1)
    f = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return v[:, None] - v[:, None] * s[:, None] * f


def _render_alpha(glyphs, angle_deg, scale, cx, cy, size):
    """Place 8x8 glyphs (N,8,8) on a size x size canvas; returns alpha (N,1,size,size)."""
    n = glyphs.shape[0]
    theta = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(theta), torch.sin(theta)
    # affine_grid maps output coords (normalised to [-1,1]) to input coords. The glyph of
    # side `scale` pixels centred at (cx, cy) covers output coords c +- scale/size.
    inv = size / scale
    tx = (cx / size) * 2 - 1
    ty = (cy / size) * 2 - 1
    mat = torch.zeros(n, 2, 3)
    mat[:, 0, 0] = cos * inv
    mat[:, 0, 1] = sin * inv
    mat[:, 1, 0] = -sin * inv
    mat[:, 1, 1] = cos * inv
    mat[:, 0, 2] = -(cos * tx + sin * ty) * inv
    mat[:, 1, 2] = -(-sin * tx + cos * ty) * inv
    grid = F.affine_grid(mat, (n, 1, size, size), align_corners=False)
    a = F.grid_sample(glyphs[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # The 8x8 digits are blurry; a soft threshold turns them into strokes.
    return torch.clamp((a - 0.2) * 2.5, 0, 1)


def _scenes(spec: DigitScenesSpec, images, targets, pool, n, g):
    size = spec.image_size
    # Every source image of the split is used about equally often.
    reps = math.ceil(n / len(pool))
    order = torch.cat([pool[torch.randperm(len(pool), generator=g)] for _ in range(reps)])[:n]
    order = order[torch.randperm(n, generator=g)]
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731

    rot = torch.randint(0, N_ROTATIONS, (n,), generator=g)
    angle = torch.tensor(ROTATION_CENTRES)[rot] + (u(n) * 2 - 1) * ROTATION_JITTER
    scale = size * (0.5 + 0.15 * u(n))  # glyph side 16 .. 20.8 px on a 32 px canvas
    margin = scale * 0.4  # the glyph box stays (almost) inside the canvas
    cx = margin + u(n) * (size - 2 * margin)
    cy = margin + u(n) * (size - 2 * margin)

    color = torch.randint(0, N_COLORS, (n,), generator=g)
    hue = (color.float() + (u(n) - 0.5) * 0.5) / N_COLORS
    fg = _hsv_to_rgb(hue, 0.6 + 0.4 * u(n), 0.65 + 0.35 * u(n))
    bg = _hsv_to_rgb(u(n), u(n), 0.4 * u(n))
    # Half of the scenes use a light background instead, with a darker foreground.
    light = u(n) < spec.light_fraction
    bg_light = _hsv_to_rgb(u(n), 0.35 * u(n), 0.85 + 0.15 * u(n))
    bg = torch.where(light[:, None], bg_light, bg)
    fg = torch.where(light[:, None], fg * 0.6, fg)

    canvas = bg[:, :, None, None].expand(n, 3, size, size).clone()
    if spec.texture:
        yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
        freq = 0.3 + 0.6 * u(n)
        ori = u(n) * math.pi
        phase = u(n) * 2 * math.pi
        wave = torch.sin(
            freq[:, None, None] * (xx * torch.cos(ori)[:, None, None] + yy * torch.sin(ori)[:, None, None])
            + phase[:, None, None]
        )
        canvas = canvas * (1 + 0.25 * wave[:, None])
    mask = torch.zeros(n, size, size, dtype=torch.long)
    if spec.clutter:
        for _ in range(spec.clutter):
            # a random straight stroke of random colour
            x0, y0, x1, y1 = (u(n) * size for _ in range(4))
            yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
            dx, dy = (x1 - x0)[:, None, None], (y1 - y0)[:, None, None]
            t = ((xx - x0[:, None, None]) * dx + (yy - y0[:, None, None]) * dy) / (dx**2 + dy**2 + 1e-6)
            t = t.clamp(0, 1)
            dist = torch.hypot(xx - (x0[:, None, None] + t * dx), yy - (y0[:, None, None] + t * dy))
            a = torch.clamp(1.2 - dist, 0, 1)[:, None]
            col = _hsv_to_rgb(u(n), u(n), u(n))[:, :, None, None]
            canvas = canvas * (1 - a) + col * a
    if spec.second_digit:
        other = pool[torch.randint(0, len(pool), (n,), generator=g)]
        s2 = scale * 0.6
        a2 = _render_alpha(images[other], (u(n) * 2 - 1) * 60, s2, u(n) * size, u(n) * size, size)
        col2 = _hsv_to_rgb(u(n), 0.6 + 0.4 * u(n), 0.65 + 0.35 * u(n))[:, :, None, None]
        canvas = canvas * (1 - a2) + col2 * a2
        mask = torch.where(a2[:, 0] > 0.5, targets[other][:, None, None] + 1, mask)
    alpha = _render_alpha(images[order], angle, scale, cx, cy, size)
    canvas = canvas * (1 - alpha) + fg[:, :, None, None] * alpha
    mask = torch.where(alpha[:, 0] > 0.5, targets[order][:, None, None] + 1, mask)
    if spec.noise > 0:
        canvas = canvas + spec.noise * torch.randn(canvas.shape, generator=g)
    pixels = (canvas.clamp(0, 1) * 255).round().to(torch.uint8)
    return {
        "images": pixels,
        "digit": targets[order].clone(),
        "color": color,
        "rotation": rot,
        "mask": mask.to(torch.uint8),
        "source": order.clone(),
    }


def generate(spec: DigitScenesSpec) -> dict:
    """Generate both splits; returns {'train': {...}, 'test': {...}} of tensors."""
    images, targets, train_pool, test_pool = _source_digits(spec.seed, spec.test_source_fraction)
    g = torch.Generator().manual_seed(spec.seed)
    return {
        "train": _scenes(spec, images, targets, train_pool, spec.n_train, g),
        "test": _scenes(spec, images, targets, test_pool, spec.n_test, g),
    }


def cached(path: Path, make, cache: bool = True) -> dict:
    """``make()``, or its result read from ``path``; a corrupt cache file is regenerated, never
    trusted, and the file is written atomically (temporary file, then rename)."""
    if cache and path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception:
            pass
    data = make()
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(data, tmp)
        os.replace(tmp, path)
    return data


def load(spec: DigitScenesSpec, cache: bool = True) -> dict:
    """Generate or read from the cache. The cache file is written atomically."""
    return cached(cache_dir() / f"digit-scenes-{spec.key()}.pt", lambda: generate(spec), cache)


DIGIT_CLASSES = {
    "digit": [str(i) for i in range(10)],
    "color": ["red", "yellow", "green", "cyan", "blue", "magenta"],
    "rotation": [f"{c:+g}" for c in ROTATION_CENTRES],  # the bins' centres in degrees: -15, -5, +5, +15
}


MASK_CLASSES = ["background", *DIGIT_CLASSES["digit"]]  # the mask's values: 0 background, 1 + digit


def digit_scenes(spec: DigitScenesSpec | None = None) -> tuple[TensorImageSet, TensorImageSet]:
    """The embedded data set as (train, test) image sets with labels digit, color, rotation.

    The per-pixel masks are in ``.masks`` (uint8 (N, H, W): 0 background, 1 + digit class)."""
    spec = spec or DigitScenesSpec()
    data = load(spec)
    out = []
    for split in ("train", "test"):
        d = data[split]
        labels = {k: d[k] for k in ("digit", "color", "rotation")}
        out.append(TensorImageSet(d["images"], labels, DIGIT_CLASSES, name=f"digits-{split}", masks=d["mask"],
                                  mask_classes=MASK_CLASSES))
    return out[0], out[1]


def datasets(dcfg):
    """The registry's entry for ``data.name=digits``: (train, test) digit scenes of the config."""
    spec = DigitScenesSpec(n_train=dcfg.n_train, n_test=dcfg.n_test, seed=dcfg.scene_seed, image_size=dcfg.image_size,
                           second_digit=dcfg.second_digit, clutter=dcfg.clutter, texture=dcfg.texture,
                           light_fraction=dcfg.light_fraction)  # fmt: skip
    return digit_scenes(spec)
