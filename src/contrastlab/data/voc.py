"""PASCAL VOC segmentation layout (``data.name=voc``): ``ROOT/JPEGImages/<id>.jpg``,
``ROOT/SegmentationClass/<id>.png`` (palette PNGs whose pixel values are class indices 0-20,
255 for the borders and "difficult" areas, which losses and metrics ignore) and the split lists
``ROOT/ImageSets/Segmentation/{train,val}.txt`` (one image id a line). ``ROOT`` is the
``VOC2012`` folder of the official archive (``VOCdevkit/VOC2012``).

Both splits are decoded once into memory (uint8 tensors, as the embedded sets are): each image is
resized to ``data.image_size`` x ``data.image_size`` (bilinear, antialiased; the aspect ratio is
not kept, so every pixel of the image is seen) and its mask to the same size with nearest-neighbour
sampling (class indices are never blended). ``train`` is the training split and ``val`` the test
split (``data.train_dir`` / ``data.test_dir`` name other lists of the same folder, e.g.
``trainval``). Each image's ``label`` is its dominant object class (the non-background class with
the most pixels; -1 for an image with none), so kNN / linear also run on the set."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from .base import TensorImageSet, data_root
from .files import _DECODE_ERRORS, one_line, open_rgb

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]  # fmt: skip
IGNORE = 255
LAYOUT = "ROOT/JPEGImages/<id>.jpg, ROOT/SegmentationClass/<id>.png, ROOT/ImageSets/Segmentation/<split>.txt"


def voc_palette() -> list[int]:
    """VOC's colour map as a flat PIL palette (768 values): class c's colour spreads the bits of c
    over the high bits of R, G and B (bit 0 -> R, bit 1 -> G, bit 2 -> B, then the next bit down);
    255 (ignore) is the light beige (224, 224, 192) of the official PNGs."""
    pal = []
    for c in range(256):
        r = g = b = 0
        v = c
        for shift in range(7, -1, -1):
            r |= (v & 1) << shift
            g |= ((v >> 1) & 1) << shift
            b |= ((v >> 2) & 1) << shift
            v >>= 3
        pal += [r, g, b]
    pal[3 * IGNORE : 3 * IGNORE + 3] = [224, 224, 192]
    return pal


def read_ids(root: str, split: str) -> list[str]:
    """The image ids of ``ROOT/ImageSets/Segmentation/<split>.txt`` (one-line errors when missing or empty)."""
    path = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
    if not os.path.isfile(path):
        raise UserError(f"split list {path} does not exist; expected the VOC layout {LAYOUT} (data.root=ROOT, "
                        "the VOC2012 folder)")  # fmt: skip
    with open(path, encoding="utf-8") as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise UserError(f"split list {path} is empty; list one image id per line")
    return ids


def read_mask(path: str, n_classes: int = len(VOC_CLASSES)) -> np.ndarray:
    """A VOC class PNG as (H, W) uint8 class indices (palette or grayscale PNG; values 0 to
    ``n_classes - 1`` or 255); one-line errors for a missing, unreadable or wrong-valued file."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise UserError(f"mask {path} is a {im.mode} image; expected a palette (P) or grayscale (L) PNG whose "
                                f"values are class indices 0-{n_classes - 1} or {IGNORE}")  # fmt: skip
            a = np.array(im, dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"mask {path} does not exist; every listed id needs ROOT/SegmentationClass/<id>.png") from None
    except _DECODE_ERRORS as e:
        raise UserError(f"mask {path} is unreadable or corrupt ({one_line(e)}); remove or replace it") from None
    bad = np.unique(a[(a >= n_classes) & (a != IGNORE)])
    if bad.size:
        raise UserError(f"mask {path} has values {', '.join(map(str, bad[:5]))}; expected class indices "
                        f"0-{n_classes - 1} or {IGNORE} (ignore)")  # fmt: skip
    return a


def load_voc_split(root: str, split: str, image_size: int) -> TensorImageSet:
    """One split of a VOC folder as an in-memory set with ``masks`` (N, S, S) (see the module docstring)."""
    ids = read_ids(root, split)
    n = len(ids)
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    masks = torch.empty(n, image_size, image_size, dtype=torch.uint8)
    for i, name in enumerate(ids):
        jpg = os.path.join(root, "JPEGImages", f"{name}.jpg")
        if not os.path.isfile(jpg):
            raise UserError(f"image {jpg} (listed in {split}.txt) does not exist; expected the VOC layout {LAYOUT}")
        im = open_rgb(jpg)
        mask = read_mask(os.path.join(root, "SegmentationClass", f"{name}.png"))
        if mask.shape != (im.height, im.width):
            raise UserError(f"mask of {name} is {mask.shape[1]}x{mask.shape[0]} but its image is {im.width}x{im.height}; "
                            "a mask must match its image")  # fmt: skip
        im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
        m = Image.fromarray(mask).resize((image_size, image_size), Image.Resampling.NEAREST)
        images[i] = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
        masks[i] = torch.from_numpy(np.asarray(m, dtype=np.uint8).copy())
    counts = torch.stack([(masks == c).flatten(1).sum(1) for c in range(1, len(VOC_CLASSES))], 1)  # (N, 20)
    label = torch.where(counts.amax(1) > 0, counts.argmax(1) + 1, torch.full((n,), -1))
    return TensorImageSet(images, {"label": label}, {"label": list(VOC_CLASSES)}, name=f"voc-{split}", masks=masks,
                          mask_classes=VOC_CLASSES)  # fmt: skip


def voc_datasets(dcfg):
    """``data.name=voc``: (train, val) of ``data.root`` in the VOC layout; ``data.train_dir`` /
    ``data.test_dir`` name the split lists (default ``train`` and ``val``; ``test_dir=null``: no test split)."""
    root = str(data_root(dcfg))
    if not os.path.isdir(root):
        raise UserError(f"data folder {root} is not a folder; expected the VOC layout {LAYOUT}")
    test_split = "val" if dcfg.test_dir == "auto" else dcfg.test_dir
    train = load_voc_split(root, dcfg.train_dir, dcfg.image_size)
    test = None if test_split is None else load_voc_split(root, test_split, dcfg.image_size)
    return train, test
