"""Few-shot segmentation episodes: an episode source over (image, mask) pairs with class folds, a
sampler of 1-way K-shot episodes, and the base-class view of the same data for stage-1 training.

The source (:class:`EpisodeSource`) holds images uint8 ``(N, 3, H, W)`` and masks uint8
``(N, H, W)`` whose values are class ids ``0`` (background), ``1 .. C`` (the classes) or ``255``
(ignore: VOC's borders), the class names (``class_names[c]`` for ``c`` in ``0 .. C``) and the
folds (``folds[i]``: the class ids of fold ``i``). Fold ``i``'s classes are the *novel* classes
(tested), the other folds' the *base* classes (trained on).

An episode of class ``c`` (:class:`EpisodeSampler`): K support images that contain ``c`` and one
query image that contains ``c``, all distinct, with binary masks coded ``1`` = pixels of ``c``,
``0`` = every other pixel (background and the other classes), ``255`` = ignore (the 255 pixels of
the source). The episode is drawn with a generator seeded from ``(seed, index)`` alone
(:func:`episode_generator`): the same seed and index give the same episode whatever was drawn
before, so 1000 test episodes are the same for every method, and a process can draw any slice of
them. The class of an episode is drawn uniformly from the sampler's classes, then the query and
the supports uniformly from the images of that class (the PANet / PFENet protocol).

A batch of episodes (:meth:`EpisodeSampler.batch`) is the layout every few-shot method reads:

- ``support_images`` float ``(B, K, 3, H, W)`` in [0, 1],
- ``support_masks`` long ``(B, K, H, W)`` (1 / 0 / 255 as above),
- ``query_image`` float ``(B, 3, H, W)`` in [0, 1],
- ``query_mask`` long ``(B, H, W)`` (same coding),
- ``class_id`` long ``(B,)`` (the class id of the source), and ``query_index`` /
  ``support_index`` (the source's image indices; ``volume`` of the query when the source has
  volumes, -1 otherwise).

The base-class view (:meth:`EpisodeSource.base_view`) re-codes the masks for stage-1 training on
fold ``i``: base classes become ``1 .. len(base)`` in increasing class-id order, 255 stays 255,
and the novel classes become ignore (255) by default (``novel="ignore"``), as in the stage-1
training data of RePRI, on whose code CWT's is built (CWT's README; mboudiaf/RePRI-for-Few-Shot-Segmentation,
``src/dataset/dataset.py`` lines 144-159: the classes of an image outside the training class list are
set to 255): the novel objects stay in the training images, but no loss pushes them towards
background, so that the network has not learnt to suppress the classes it is tested on.
``novel="background"`` labels them 0 instead (the network then learns them as background, which
the few-shot literature counts as a leak of the novel classes into training). Images without any base-class pixel are dropped from the view.

Embedded sources: :func:`digit_episode_source` (the digit scenes' masks, each digit a class,
folds of digits) and :func:`organ_slices` (a synthetic "organ" set of 2-D slices through
ellipsoid organs of distinct intensity textures inside a textured body, for RP-Net's setting).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import UserError
from .base import TensorImageSet

IGNORE = 255

__all__ = ["IGNORE", "EpisodeSource", "EpisodeSampler", "episode_generator", "block_folds", "interleaved_folds",
           "binary_mask", "digit_episode_source", "folds_of", "source_of", "organ_slices", "OrganSpec", "ORGAN_CLASSES", "episode_source"]


# --------------------------------------------------------------------------- folds
def block_folds(n_classes: int, n_folds: int) -> list[list[int]]:
    """PASCAL-5i's folds: fold ``i`` = classes ``i * n / f + 1 .. (i + 1) * n / f`` (class ids from 1;
    with 20 classes and 4 folds, fold i = 5i + 1 .. 5i + 5)."""
    if n_folds < 1 or n_classes % n_folds:
        raise UserError(f"{n_classes} classes do not split into {n_folds} equal folds")
    per = n_classes // n_folds
    return [list(range(i * per + 1, (i + 1) * per + 1)) for i in range(n_folds)]


def interleaved_folds(n_classes: int, n_folds: int) -> list[list[int]]:
    """COCO-20i's folds: fold ``i`` = classes ``{n_folds * k + i + 1}`` (with 80 classes and 4 folds,
    fold 0 = 1, 5, 9, ..., 77)."""
    if n_folds < 1 or n_classes % n_folds:
        raise UserError(f"{n_classes} classes do not split into {n_folds} equal folds")
    return [[n_folds * k + i + 1 for k in range(n_classes // n_folds)] for i in range(n_folds)]


def binary_mask(mask: torch.Tensor, class_id: int) -> torch.Tensor:
    """The episode coding of a class mask: 1 where ``mask == class_id``, 255 where ``mask == 255``,
    0 elsewhere; long."""
    m = mask.long()
    return torch.where(m == IGNORE, IGNORE, (m == class_id).long())


def episode_generator(seed: int, index: int) -> torch.Generator:
    """The generator of episode ``index`` of the sequence ``seed`` (a function of both alone)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(index) * 7_919 + 12_345) % (2**63 - 1))


# --------------------------------------------------------------------------- the source
class EpisodeSource:
    """(image, mask) pairs with class folds (see the module docstring).

    ``files``: the file of each image (for errors; None for generated sets), ``volumes``: the
    volume of each image (long (N,), slices of medical volumes; None otherwise), ``min_pixels``:
    the pixels of a class an image needs to count as containing it (PFENet keeps training images
    whose class covers at least 2 x 32 x 32 pixels; the default 1 counts any pixel), ``where``:
    the folder or list the set was read from (named by errors)."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, class_names: list[str], folds: list[list[int]],
                 name: str = "", files: list[str] | None = None, volumes: torch.Tensor | None = None,
                 min_pixels: int = 1, where: str = ""):  # fmt: skip
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"EpisodeSource expects uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}")
        self.images, self.masks = images, masks.to(torch.uint8)
        self.class_names = list(class_names)
        self.n_classes = len(self.class_names) - 1  # class ids 1 .. C; 0 is background
        self.folds = [sorted(int(c) for c in f) for f in folds]
        for f in self.folds:
            for c in f:
                if not 1 <= c <= self.n_classes:
                    raise ValueError(f"fold class {c} is not a class id 1..{self.n_classes}")
        self.name, self.files, self.where = name, files, where or name
        self.volumes = None if volumes is None else torch.as_tensor(volumes, dtype=torch.long)
        self.min_pixels = int(min_pixels)
        # pixels of each class in each image: (N, C + 1), counted 256 images at a time (bounded memory)
        counts = torch.zeros(self.masks.shape[0], self.n_classes + 2, dtype=torch.long)
        for s in range(0, self.masks.shape[0], 256):
            m = self.masks[s : s + 256].long().flatten(1)
            m = torch.where(m == IGNORE, self.n_classes + 1, m)
            if m.numel() and int(m.max()) > self.n_classes + 1:
                raise ValueError(f"mask values above {self.n_classes} (other than {IGNORE})")
            counts[s : s + 256].scatter_add_(1, m, torch.ones_like(m))
        self.pixel_counts = counts[:, : self.n_classes + 1]

    def __len__(self):
        return self.images.shape[0]

    @property
    def n_folds(self) -> int:
        return len(self.folds)

    def check_fold(self, fold: int) -> None:
        if not 0 <= fold < self.n_folds:
            raise UserError(f"fold={fold}: {self.name} has folds 0..{self.n_folds - 1}")

    def novel_classes(self, fold: int) -> list[int]:
        self.check_fold(fold)
        return list(self.folds[fold])

    def base_classes(self, fold: int) -> list[int]:
        self.check_fold(fold)
        return sorted(c for i, f in enumerate(self.folds) if i != fold for c in f)

    def images_of(self, class_id: int) -> torch.Tensor:
        """Indices (sorted) of the images that contain at least ``min_pixels`` pixels of the class."""
        return torch.nonzero(self.pixel_counts[:, class_id] >= self.min_pixels).flatten()

    def check_shots(self, classes, shots: int) -> None:
        """A one-line error for a class with fewer than ``shots + 1`` images (K supports and a query)."""
        for c in classes:
            n = len(self.images_of(c))
            if n < shots + 1:
                raise UserError(f"{self.where}: class {c} ({self.class_names[c]}) is in {n} image(s), fewer than the "
                                f"{shots + 1} a {shots}-shot episode needs (K supports + 1 query); add images of it, "
                                "lower shots, or choose another fold")  # fmt: skip

    def sampler(self, classes, shots: int, seed: int = 0) -> "EpisodeSampler":
        return EpisodeSampler(self, classes, shots, seed)

    def novel_episodes(self, fold: int, shots: int, seed: int = 0) -> "EpisodeSampler":
        """Test episodes: the novel classes of ``fold``."""
        return EpisodeSampler(self, self.novel_classes(fold), shots, seed)

    def base_episodes(self, fold: int, shots: int, seed: int = 0) -> "EpisodeSampler":
        """Meta-training episodes: the base classes of ``fold``."""
        return EpisodeSampler(self, self.base_classes(fold), shots, seed)

    def base_view(self, fold: int, novel: str = "ignore") -> TensorImageSet:
        """The images with at least one base-class pixel, masks re-coded to the base classes of
        ``fold`` (``1 .. len(base)``; novel classes to 255 or, ``novel="background"``, 0; see the
        module docstring). ``mask_classes``: background and the base classes' names; ``index`` label: the
        image's index in the source."""
        if novel not in ("background", "ignore"):
            raise UserError(f"novel={novel!r}: novel classes become 'background' or 'ignore'")
        base = self.base_classes(fold)
        lut = torch.zeros(256, dtype=torch.uint8)
        for j, c in enumerate(base):
            lut[c] = j + 1
        for c in self.novel_classes(fold):
            lut[c] = 0 if novel == "background" else IGNORE
        lut[IGNORE] = IGNORE
        keep = torch.nonzero((self.pixel_counts[:, base] >= self.min_pixels).any(1)).flatten()
        masks = lut[self.masks[keep].long()]
        names = [self.class_names[0], *(self.class_names[c] for c in base)]
        out = TensorImageSet(self.images[keep], {"index": keep}, {}, name=f"{self.name}-base{fold}", masks=masks,
                             mask_classes=names)  # fmt: skip
        return out


# --------------------------------------------------------------------------- the sampler
class EpisodeSampler:
    """1-way K-shot episodes of ``classes`` from a source, episode ``i`` a function of
    ``(seed, i)`` (see the module docstring)."""

    def __init__(self, source: EpisodeSource, classes, shots: int, seed: int = 0):
        if shots < 1:
            raise UserError(f"shots={shots}: an episode needs at least one support image")
        self.source, self.classes, self.shots, self.seed = source, [int(c) for c in classes], int(shots), int(seed)
        if not self.classes:
            raise UserError(f"{source.where}: no classes to draw episodes from")
        source.check_shots(self.classes, self.shots)
        self._pools = {c: source.images_of(c) for c in self.classes}

    def draw(self, index: int) -> tuple[int, int, list[int]]:
        """(class id, query index, support indices) of episode ``index``."""
        g = episode_generator(self.seed, index)
        c = self.classes[int(torch.randint(len(self.classes), (1,), generator=g))]
        pool = self._pools[c]
        pick = torch.randperm(len(pool), generator=g)[: self.shots + 1]
        return c, int(pool[pick[0]]), [int(pool[j]) for j in pick[1:]]

    def episode(self, index: int) -> dict:
        """Episode ``index`` unbatched: support_images (K, 3, H, W), support_masks (K, H, W),
        query_image (3, H, W), query_mask (H, W), class_id, query_index, support_index, volume."""
        c, q, s = self.draw(index)
        src = self.source
        sup = torch.tensor(s, dtype=torch.long)
        return {
            "support_images": src.images[sup].float().div(255),
            "support_masks": binary_mask(src.masks[sup], c),
            "query_image": src.images[q].float().div(255),
            "query_mask": binary_mask(src.masks[q], c),
            "class_id": c,
            "query_index": q,
            "support_index": sup,
            "volume": -1 if src.volumes is None else int(src.volumes[q]),
        }

    def batch(self, indices) -> dict:
        """Episodes ``indices`` stacked in the batch layout of the module docstring."""
        eps = [self.episode(int(i)) for i in indices]
        if not eps:
            raise ValueError("an empty batch of episodes")
        out = {k: torch.stack([e[k] for e in eps]) for k in ("support_images", "support_masks", "query_image",
                                                              "query_mask", "support_index")}  # fmt: skip
        for k in ("class_id", "query_index", "volume"):
            out[k] = torch.tensor([e[k] for e in eps], dtype=torch.long)
        return out


# --------------------------------------------------------------------------- embedded sources
def episode_source(image_set, folds: list[list[int]], min_pixels: int = 1) -> EpisodeSource:
    """An episode source over an image set with ``masks`` (a :class:`TensorImageSet`; its
    ``mask_classes`` name the mask values, its ``files`` / ``volumes`` / ``where`` attributes are
    kept when present)."""
    if getattr(image_set, "masks", None) is None:
        raise UserError(f"{getattr(image_set, 'name', 'the data set')} has no per-pixel masks; few-shot episodes "
                        "need a set with masks (digits, organs, pascal5i, coco20i, slices)")  # fmt: skip
    names = image_set.mask_classes
    if names is None:
        valid = image_set.masks[image_set.masks != IGNORE]
        names = [str(c) for c in range(int(valid.max()) + 1 if valid.numel() else 1)]
    return EpisodeSource(image_set.images, image_set.masks, names, folds, name=getattr(image_set, "name", ""),
                         files=getattr(image_set, "files", None), volumes=getattr(image_set, "volumes", None),
                         min_pixels=min_pixels, where=getattr(image_set, "where", ""))  # fmt: skip


def folds_of(image_set, n_folds: int | None = None) -> list[list[int]]:
    """The class folds of an image set with masks: its ``fold_scheme`` (``blocks``: PASCAL-5i's
    consecutive classes, the default; ``interleaved``: COCO-20i's) into ``n_folds`` folds (default:
    the set's ``default_folds``, else 2) of its classes ``1 .. len(mask_classes) - 1``."""
    names = getattr(image_set, "mask_classes", None)
    if names is None:
        raise UserError(f"{getattr(image_set, 'name', 'the data set')} names no mask classes; few-shot folds need them")
    n = n_folds or getattr(image_set, "default_folds", 2)
    scheme = getattr(image_set, "fold_scheme", "blocks")
    make = interleaved_folds if scheme == "interleaved" else block_folds
    return make(len(names) - 1, n)


def source_of(image_set, n_folds: int | None = None, min_pixels: int = 1) -> EpisodeSource:
    """The episode source of any image set with masks, folded by :func:`folds_of`."""
    if getattr(image_set, "masks", None) is None:
        episode_source(image_set, [])  # the one-line error
    return episode_source(image_set, folds_of(image_set, n_folds), min_pixels)


def digit_episode_source(image_set, n_folds: int = 2) -> EpisodeSource:
    """The digit scenes' masks as an episode source: each digit a class (class id ``1 + digit``,
    named by the digit), folds of consecutive digits: 2 folds (default: fold 0 = digits 0-4,
    fold 1 = 5-9) or 5 folds (fold i = digits 2i, 2i + 1). Train the base classes on the training
    split and test the novel ones on the test split (unseen handwriting)."""
    if n_folds not in (1, 2, 5, 10):
        raise UserError(f"folds={n_folds}: the 10 digits split into 2, 5 or 10 folds")
    return episode_source(image_set, block_folds(10, n_folds))


# --------------------------------------------------------------------------- synthetic organs
ORGAN_CLASSES = ["background", "liver", "spleen", "left_kidney", "right_kidney"]


@dataclass(frozen=True)
class OrganSpec:
    """The synthetic organ set: ``n_volumes`` volumes of ``depth`` axial slices of ``size`` x ``size``
    pixels, the volumes' shapes drawn from ``seed``."""

    n_volumes: int = 20
    depth: int = 16
    size: int = 32
    seed: int = 0
    noise: float = 0.04


def _smooth_noise(g, n, size, cells):
    """Smooth random fields (n, size, size) in about [-1, 1]: bilinear upsampling of a cells x cells grid."""
    coarse = torch.rand(n, 1, cells, cells, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)[:, 0]


def organ_slices(spec: OrganSpec | None = None, n_folds: int = 4) -> tuple[TensorImageSet, torch.Tensor]:
    """The synthetic organ slices as a :class:`TensorImageSet` with ``masks`` (0 background, 1 liver,
    2 spleen, 3 left kidney, 4 right kidney) and ``volumes`` (the volume of each slice), and the
    folds (one organ each by default: ``n_folds=4``, fold i holds organ i + 1 out as novel).

    Each volume is a body (an elliptic cylinder of soft-tissue intensity with a smooth mottled
    texture) holding four ellipsoid organs at jittered anatomical places (liver: large, right of
    the image's left, as a CT slice shows it in radiological view; spleen: small, on the other
    side; two kidneys: small, low and nearly symmetric), each with its own mean intensity and
    texture: liver smooth and bright, spleen brighter with fine grain, kidneys darker with stripes
    (a cortex-like banding). A slice at depth z cuts every ellipsoid in an ellipse whose radii
    shrink as sqrt(1 - (z / r_z)^2), so an organ appears in some slices of a volume only. The
    grey value is copied to the 3 channels. Deterministic in ``spec``."""
    spec = spec or OrganSpec()
    g = torch.Generator().manual_seed(50_000 + spec.seed)
    s, d, nv = spec.size, spec.depth, spec.n_volumes
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    # organ: (centre x, centre y, centre z (in slices, fraction of depth), radius x, radius y, radius z (fraction), intensity)
    layout = {1: (-0.35, -0.1, 0.45, 0.38, 0.32, 0.35, 0.62), 2: (0.45, -0.15, 0.4, 0.17, 0.2, 0.25, 0.80),
              3: (-0.3, 0.38, 0.65, 0.13, 0.17, 0.22, 0.30), 4: (0.3, 0.38, 0.6, 0.13, 0.17, 0.22, 0.36)}  # fmt: skip
    images, masks, volumes = [], [], []
    for v in range(nv):
        body_rx, body_ry = 0.82 + 0.1 * u(1), 0.65 + 0.1 * u(1)
        body = ((xx / body_rx) ** 2 + (yy / body_ry) ** 2) <= 1
        tissue = 0.45 + 0.06 * _smooth_noise(g, d, s, 6)  # (d, s, s) mottled soft tissue
        img = torch.where(body, tissue, torch.full_like(tissue, 0.05))
        mask = torch.zeros(d, s, s, dtype=torch.uint8)
        z = torch.arange(d).float()[:, None, None] / max(d - 1, 1)
        for c, (cx, cy, cz, rx, ry, rz, level) in layout.items():
            cx, cy = cx + 0.08 * (u(1) * 2 - 1), cy + 0.08 * (u(1) * 2 - 1)
            cz = cz + 0.1 * (u(1) * 2 - 1)
            rx, ry, rz = rx * (0.85 + 0.3 * u(1)), ry * (0.85 + 0.3 * u(1)), rz * (0.85 + 0.3 * u(1))
            inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1  # (d, s, s)
            if c == 1:
                tex = 0.03 * _smooth_noise(g, d, s, 4)
            elif c == 2:
                tex = 0.06 * (torch.rand(d, s, s, generator=g) * 2 - 1)
            else:
                phase = float(u(1)) * 2 * math.pi
                tex = 0.07 * torch.sin(14 * (xx * 0.6 + yy * 0.8) + phase).expand(d, s, s)
            img = torch.where(inside & body, level + tex, img)
            mask = torch.where(inside & body, torch.tensor(c, dtype=torch.uint8), mask)
        img = img + spec.noise * torch.randn(img.shape, generator=g)
        images.append((img.clamp(0, 1) * 255).round().to(torch.uint8)[:, None].expand(d, 3, s, s))
        masks.append(mask)
        volumes.append(torch.full((d,), v, dtype=torch.long))
    images, masks, volumes = torch.cat(images), torch.cat(masks), torch.cat(volumes)
    counts = torch.stack([(masks == c).flatten(1).sum(1) for c in range(1, len(ORGAN_CLASSES))], 1)
    label = torch.where(counts.amax(1) > 0, counts.argmax(1) + 1, torch.zeros(len(masks), dtype=torch.long))
    out = TensorImageSet(images.contiguous(), {"label": label, "volume": volumes}, {"label": list(ORGAN_CLASSES)},
                         name=f"organs-seed{spec.seed}", masks=masks, mask_classes=ORGAN_CLASSES)  # fmt: skip
    out.volumes, out.default_folds, out.fold_scheme = volumes, n_folds, "blocks"
    return out, torch.tensor(block_folds(len(ORGAN_CLASSES) - 1, n_folds))


def organ_datasets(dcfg):
    """``data.name=organs``: (train, test) synthetic organ slices at ``data.image_size``: 20 training
    volumes (``data.scene_seed``) and 8 test volumes (seed + 1000), 16 slices each."""
    train, _ = organ_slices(OrganSpec(n_volumes=20, size=dcfg.image_size, seed=dcfg.scene_seed))
    test, _ = organ_slices(OrganSpec(n_volumes=8, size=dcfg.image_size, seed=dcfg.scene_seed + 1000))
    return train, test
