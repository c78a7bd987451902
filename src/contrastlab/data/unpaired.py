"""Unpaired image domains for translation (CycleGAN / CUT / DCLGAN): folders and an embedded pair.

- :class:`UnpairedFolders`: the common layout ``ROOT/trainA``, ``ROOT/trainB``, ``ROOT/testA``,
  ``ROOT/testB``, each a folder of image files (any of ``real.IMAGE_EXTENSIONS``, listed
  recursively in sorted order; names starting with ``.`` are ignored).
- :func:`digit_domains` / :class:`DigitDomains`: the embedded pair of domains, generated offline
  from scikit-learn's handwritten digits with the same pose ranges as the digit scenes
  (``digits.py``). Domain A: thin dark strokes on a light, plain, slightly tinted background.
  Domain B: bold bright strokes on a dark striped, noisy background, in another colour family.
  Translating A -> B must change stroke width, polarity, colour and texture while keeping the
  digit, its position and its pose.
- :func:`write_domain_folders`: the embedded domains as PNG files in the folder layout.

Both data sets return ``(a, b)``: float tensors in [0, 1] of shape ``(3, S, S)``, ``a`` the
i-th image of domain A (modulo its size), ``b`` an image of domain B picked independently.
``len`` is ``max(len A, len B)``, as in CycleGAN and CUT.

Randomness (the B pick, crops, flips) is a function of ``(seed, epoch, i)`` only: item i seeds
its own generator from those three numbers. The result does not depend on access order or on
the number of DataLoader workers (a generator shared by the data set would be copied into
every worker and repeat the same draws), and a resumed run sees the same pairs. The caller
must call ``set_epoch(e)`` at each epoch, otherwise every epoch repeats the pairs of epoch 0.
The test split has no randomness: item i is ``(A[i % len A], B[i % len B])``, resized only, so
one pass visits every image of both domains.
"""
from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from contrastlab.files import atomic_save
from contrastlab.data.digits import (
    N_ROTATIONS,
    ROTATION_CENTRES,
    ROTATION_JITTER,
    _hsv_to_rgb,
    _render_alpha,
    _source_digits,
    cache_dir,
    cached,
)
from contrastlab.data.files import EXTENSIONS_TEXT, FileImageSet, scan_images
from contrastlab.errors import UserError

__all__ = ["UnpairedFolders", "DigitDomains", "digit_domains", "write_domain_folders", "default_load_size"]

SPLITS = ("train", "test")
DOMAINS = ("A", "B")
DOMAINS_VERSION = 1  # bump when the domain generator changes: invalidates the cache
TEST_SOURCE_FRACTION = 1 / 3  # as DigitScenesSpec: a third of the source digits are test-only


def default_load_size(image_size: int) -> int:
    """CycleGAN's resize before the random crop: 286 for 256, i.e. ``round(image_size * 286 / 256)``."""
    return int(round(image_size * 286 / 256))


def _item_rng(seed: int, epoch: int, i: int) -> np.random.Generator:
    """The generator of item ``i`` at ``epoch``: a function of the three numbers only."""
    return np.random.default_rng([int(seed), int(epoch), int(i)])


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255)


def _pil_to_float(im: Image.Image) -> torch.Tensor:
    return _to_float(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1))


def _check_index(i, n: int) -> int:
    i = int(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {i} out of range for {n} items")
    return i


class _Pairs(torch.utils.data.Dataset):
    """Pairing shared by both data sets: subclasses set n_a, n_b, split, seed and define _get."""

    n_a: int
    n_b: int
    split: str
    seed: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the pairs (and crops, flips) of ``epoch``; call it at the start of every epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return max(self.n_a, self.n_b)

    def pick_b(self, i: int) -> int:
        """Index of the B image paired with item ``i`` (at the current epoch)."""
        i = _check_index(i, len(self))
        if self.split == "test":
            return i % self.n_b
        return int(_item_rng(self.seed, self.epoch, i).integers(self.n_b))

    def __getitem__(self, i):
        i = _check_index(i, len(self))
        if self.split == "test":
            return self._get("A", i % self.n_a, None), self._get("B", i % self.n_b, None)
        rng = _item_rng(self.seed, self.epoch, i)
        j = int(rng.integers(self.n_b))  # the first draw: pick_b(i) repeats it
        return self._get("A", i % self.n_a, rng), self._get("B", j, rng)

    def get_batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """A training batch ``{"a", "b"}`` (float [0, 1], (B, 3, S, S)) of items ``idx``, the B picks,
        crops and flips drawn from ``generator`` (the trainer seeds it per step, so a resumed run
        sees the same batches; no ``set_epoch`` needed). The test split is serial as in ``[i]``."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        a, b = [], []
        for i in idx.tolist():
            i = _check_index(i, len(self))
            if self.split == "test":
                a.append(self._get("A", i % self.n_a, None)), b.append(self._get("B", i % self.n_b, None))
                continue
            rng = np.random.default_rng([seed, i])
            j = int(rng.integers(self.n_b))
            a.append(self._get("A", i % self.n_a, rng)), b.append(self._get("B", j, rng))
        return {"a": torch.stack(a), "b": torch.stack(b)}

    def domain_images(self, domain: str, limit: int = 0) -> torch.Tensor:
        """The first ``limit`` images of one domain (all when 0), each once, untransformed beyond
        the test resize: [0, 1] floats (N, 3, S, S), for evaluation and sample grids."""
        n = self.n_a if domain == "A" else self.n_b
        n = min(n, limit) if limit else n
        return torch.stack([self._get(domain, k, None) for k in range(n)])

    def _get(self, domain: str, k: int, rng: np.random.Generator | None) -> torch.Tensor:
        raise NotImplementedError


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected 'train' or 'test'")


# ----------------------------------------------------------------------------- folders
class UnpairedFolders(_Pairs):
    """Unpaired domains A and B read from ``root/{train,test}{A,B}`` (the CycleGAN / CUT layout).

    Train split (CycleGAN's ``resize_and_crop``): each image is resized to ``load_size`` x
    ``load_size`` (bilinear, antialiased when shrinking; the aspect ratio is not kept), a random
    ``image_size`` x ``image_size`` window is cropped and, when ``flip``, mirrored left-right with
    probability 0.5; A and B get independent crops and flips. Test split: resized to
    ``image_size`` x ``image_size`` only. ``load_size`` defaults to ``round(image_size * 286/256)``.
    Only the folders of ``split`` must exist. Unreadable files raise :class:`UserError` naming
    the file, when read or at once with :meth:`check_readable`.
    """

    def __init__(self, root, split: str = "train", image_size: int = 64, load_size: int | None = None,
                 flip: bool = True, seed: int = 0):
        _check_split(split)
        if int(image_size) < 1:
            raise UserError(f"image_size must be >= 1, got {image_size}")
        load_size = default_load_size(image_size) if load_size is None else int(load_size)
        if load_size < image_size:
            raise UserError(f"load_size={load_size} is smaller than image_size={image_size}; "
                            "set load_size >= image_size (the random crop is cut from the resized image)")
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise UserError(f"unpaired data folder {root} does not exist; expected {_layout(root)}")
        self.root, self.split, self.seed, self.flip = root, split, int(seed), bool(flip)
        self.image_size, self.load_size = int(image_size), load_size
        self.files = {d: self._scan(d) for d in DOMAINS}
        self.n_a, self.n_b = len(self.files["A"]), len(self.files["B"])

    def _scan(self, domain: str) -> FileImageSet:
        path = os.path.join(self.root, self.split + domain)
        if not os.path.isdir(path):
            raise UserError(f"domain folder {path} is missing; expected {_layout(self.root)}")
        paths = scan_images(path)
        if not paths:
            raise UserError(f"domain folder {path} has no images (extensions {EXTENSIONS_TEXT}); add images to it")
        return FileImageSet(paths, {}, {}, self.image_size, f"{os.path.basename(self.root)}-{self.split}{domain}")

    def paths(self, domain: str) -> list[str]:
        """The sorted image paths of domain ``'A'`` or ``'B'``."""
        return self.files[domain].paths

    def check_readable(self, max_files: int | None = None) -> None:
        """Decode every file of both domains (or the first ``max_files`` of each); raise
        :class:`UserError` naming the first unreadable one, so bad data fails at start."""
        for d in DOMAINS:
            self.files[d].check_readable(max_files)

    def _get(self, domain: str, k: int, rng: np.random.Generator | None) -> torch.Tensor:
        files = self.files[domain]
        im = files._open_rgb(files.path(k))  # UserError naming the file if it cannot be decoded
        s, big = self.image_size, self.load_size
        if rng is None:
            return _pil_to_float(_resize(im, s))
        im = _resize(im, big)
        x, y = int(rng.integers(big - s + 1)), int(rng.integers(big - s + 1))
        im = im.crop((x, y, x + s, y + s))
        if self.flip and rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return _pil_to_float(im)


def _layout(root: str) -> str:
    return (f"the unpaired layout {root}/trainA, {root}/trainB, {root}/testA, {root}/testB "
            "(one folder of images per split and domain)")


def _resize(im: Image.Image, size: int) -> Image.Image:
    if im.size == (size, size):
        return im
    return im.resize((size, size), Image.Resampling.BILINEAR)  # PIL widens the filter when shrinking


# ----------------------------------------------------------------------------- embedded domains
def _draw_sources(pool: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` source digit indices from ``pool``, every one used about equally often, shuffled."""
    reps = math.ceil(n / len(pool))
    order = torch.cat([pool[torch.randperm(len(pool), generator=g)] for _ in range(reps)])[:n]
    return order[torch.randperm(n, generator=g)]


def _stroke_alpha(glyphs, size: int, g: torch.Generator) -> torch.Tensor:
    """Render glyphs at random rotation, scale and position, in the digit scenes' ranges."""
    n = glyphs.shape[0]
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    rot = torch.randint(0, N_ROTATIONS, (n,), generator=g)
    angle = torch.tensor(ROTATION_CENTRES)[rot] + (u(n) * 2 - 1) * ROTATION_JITTER
    scale = size * (0.5 + 0.15 * u(n))
    margin = scale * 0.4
    cx = margin + u(n) * (size - 2 * margin)
    cy = margin + u(n) * (size - 2 * margin)
    return _render_alpha(glyphs, angle, scale, cx, cy, size)


def _morph(alpha: torch.Tensor, size: int, grow: bool) -> torch.Tensor:
    """Dilate (``grow``) or erode the strokes by about one pixel per 32 pixels of canvas."""
    r = max(1, round(size / 32))
    if grow:
        return F.max_pool2d(alpha, 2 * r + 1, stride=1, padding=r)
    return -F.max_pool2d(-alpha, 2 * r + 1, stride=1, padding=r)


def _domain_a(alpha: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Thin dark blue-violet strokes on a light, plain background with a slight random tint.
    Returns the float canvas (N, 3, S, S) and the stroke coverage (N, 1, S, S)."""
    n, size = alpha.shape[0], alpha.shape[-1]
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    # Erosion alone breaks the thinnest parts of some digits; there a faint (<= 0.6) core stays.
    thin = torch.maximum(_morph(alpha, size, grow=False), 1.2 * (alpha - 0.5).clamp(min=0))
    bg = _hsv_to_rgb(u(n), 0.05 + 0.15 * u(n), 0.85 + 0.15 * u(n))
    fg = _hsv_to_rgb(0.58 + 0.17 * u(n), 0.5 + 0.4 * u(n), 0.1 + 0.2 * u(n))
    canvas = bg[:, :, None, None] * (1 - thin) + fg[:, :, None, None] * thin
    return canvas + 0.02 * torch.randn(canvas.shape, generator=g), thin


def _domain_b(alpha: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Bold bright red-orange-yellow strokes on a dark cyan-to-purple striped, noisy background."""
    n, size = alpha.shape[0], alpha.shape[-1]
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    bold = _morph(alpha, size, grow=True)
    bg = _hsv_to_rgb(0.45 + 0.35 * u(n), 0.4 + 0.4 * u(n), 0.15 + 0.15 * u(n))
    fg = _hsv_to_rgb(0.17 * u(n), 0.7 + 0.3 * u(n), 0.85 + 0.15 * u(n))
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    freq = (0.5 + 0.7 * u(n)) * 32 / size  # stripes 5 .. 12 px apart on a 32 px canvas
    ori, phase = u(n) * math.pi, u(n) * 2 * math.pi
    wave = torch.sin(freq[:, None, None] * (xx * torch.cos(ori)[:, None, None] + yy * torch.sin(ori)[:, None, None])
                     + phase[:, None, None])
    back = bg[:, :, None, None] * (1 + 0.6 * wave[:, None]) + 0.06 * torch.randn(n, 3, size, size, generator=g)
    return back * (1 - bold) + fg[:, :, None, None] * bold + 0.02 * torch.randn(back.shape, generator=g), bold


def _generate_domain(images, targets, pool, n: int, size: int, domain: str, g: torch.Generator) -> dict:
    order = _draw_sources(pool, n, g)
    alpha = _stroke_alpha(images[order], size, g)
    canvas, cover = (_domain_a if domain == "A" else _domain_b)(alpha, g)
    return {
        "images": (canvas.clamp(0, 1) * 255).round().to(torch.uint8),
        "digit": targets[order].clone(),
        "source": order.clone(),  # index into sklearn's 1,797 digits
        "mask": (cover[:, 0] > 0.5).to(torch.uint8),  # the stroke pixels
    }


def _options_key(options: dict) -> str:
    blob = json.dumps({**options, "v": DOMAINS_VERSION}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _generate(n_train: int, n_test: int, image_size: int, seed: int) -> dict:
    images, targets, train_pool, test_pool = _source_digits(seed, TEST_SOURCE_FRACTION)
    out = {}
    for s, (split, pool, n) in enumerate((("train", train_pool, n_train), ("test", test_pool, n_test))):
        out[split] = {}
        for k, domain in enumerate(DOMAINS):
            # One stream per (split, domain): the test set does not change with n_train.
            g = torch.Generator().manual_seed(1_000_003 * seed + 2 * s + k)
            out[split][domain] = _generate_domain(images, targets, pool, n, image_size, domain, g)
    return out


def digit_domains(n_train: int = 2000, n_test: int = 500, image_size: int = 32, seed: int = 0,
                  cache: bool = True) -> dict:
    """The embedded unpaired domains: ``{split: {domain: {...}}}`` for splits ``'train'``, ``'test'``
    and domains ``'A'``, ``'B'``, each holding ``images`` uint8 (N, 3, S, S), ``digit`` (N,) the
    class, ``source`` (N,) the sklearn digit drawn and ``mask`` uint8 (N, S, S), 1 on stroke pixels.

    A and B draw their source digits independently (unpaired) from the training pool for
    ``train`` and from the disjoint test pool for ``test`` (the split of ``digits._source_digits``).
    Deterministic in the options; cached under ``digits.cache_dir()`` (atomic write; a corrupt
    cache file is regenerated).
    """
    for name, value, low in (("n_train", n_train, 1), ("n_test", n_test, 1), ("image_size", image_size, 8)):
        if int(value) < low:
            raise UserError(f"digit_domains: {name} must be >= {low}, got {value}")
    options = dict(n_train=int(n_train), n_test=int(n_test), image_size=int(image_size), seed=int(seed))
    return cached(cache_dir() / f"digit-domains-{_options_key(options)}.pt", lambda: _generate(**options), cache)


class DigitDomains(_Pairs):
    """The embedded domains of :func:`digit_domains` as a data set of ``(a, b)`` float pairs.

    No crops or flips (a mirrored digit is not a digit); ``b`` is picked as in
    :class:`UnpairedFolders` with ``pick_seed`` (train) or serially (test). ``images_a``,
    ``images_b`` (uint8), ``labels_a``, ``labels_b`` (digit classes) and ``masks_a``, ``masks_b``
    (stroke pixels) are there for evaluation. ``options`` go to :func:`digit_domains`.
    """

    def __init__(self, split: str = "train", pick_seed: int = 0, **options):
        _check_split(split)
        data = digit_domains(**options)[split]
        self.split, self.seed = split, int(pick_seed)
        self.images_a, self.images_b = data["A"]["images"], data["B"]["images"]
        self.labels_a, self.labels_b = data["A"]["digit"], data["B"]["digit"]
        self.masks_a, self.masks_b = data["A"]["mask"], data["B"]["mask"]
        self.n_a, self.n_b = len(self.images_a), len(self.images_b)
        self.image_size = self.images_a.shape[-1]

    def _get(self, domain: str, k: int, rng: np.random.Generator | None) -> torch.Tensor:
        return _to_float((self.images_a if domain == "A" else self.images_b)[k])


def write_domain_folders(root, data: dict) -> str:
    """Save :func:`digit_domains` output as PNG files ``root/{split}{domain}/NNNNN.png`` (the layout
    :class:`UnpairedFolders` reads; the sorted listing is the data order). Refuses to write into a
    domain folder that already holds images. Returns ``root``."""
    root = os.fspath(root)
    for split in data:
        for domain in data[split]:
            folder = os.path.join(root, split + domain)
            if os.path.isdir(folder) and scan_images(folder):
                raise UserError(f"{folder} already holds images; choose an empty root or delete the folder")
    for split in data:
        for domain, d in data[split].items():
            folder = os.path.join(root, split + domain)
            os.makedirs(folder, exist_ok=True)
            images = d["images"]
            width = max(5, len(str(len(images) - 1)))
            for i, img in enumerate(images):
                im = Image.fromarray(img.permute(1, 2, 0).numpy())
                atomic_save(os.path.join(folder, f"{i:0{width}d}.png"), lambda tmp: im.save(tmp, format="PNG"))
    return root


# ----------------------------------------------------------------------------- registry entries
def digit_domains_datasets(dcfg):
    """``data.name=digit_domains``: the embedded unpaired digit domains (train, test)."""
    opts = dict(n_train=dcfg.n_train, n_test=dcfg.n_test, image_size=dcfg.image_size, seed=dcfg.scene_seed)
    return DigitDomains("train", **opts), DigitDomains("test", **opts)


def folder_datasets(dcfg):
    """``data.name=unpaired``: the folders ROOT/trainA, trainB (and testA, testB when present)."""
    from pathlib import Path

    if dcfg.root is None:
        raise UserError("data.root is not set: unpaired data needs a folder with trainA, trainB, testA, testB (data.root=PATH)")
    root = str(Path(dcfg.root).expanduser())
    train = UnpairedFolders(root, "train", image_size=dcfg.image_size, load_size=dcfg.load_size)
    test = UnpairedFolders(root, "test", image_size=dcfg.image_size) if Path(root, "testA").exists() else None
    return train, test
