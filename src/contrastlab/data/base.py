"""The two kinds of image sets every data set becomes.

- :class:`TensorImageSet`: all images in memory as one uint8 tensor ``(N, 3, H, W)``; batches
  are drawn by indexing, with no DataLoader (digit scenes, CIFAR, STL-10).
- :class:`FileImageSet`: image files decoded on demand (ImageFolder), served by a DataLoader.

Both expose ``labels``: a dict of attribute name -> long tensor ``(N,)`` (-1 where unknown),
``classes``: attribute name -> list of class names, ``default_label``: the label that evaluation
uses unless told otherwise, and ``__getitem__(i) -> (uint8 (3, S, S), i)``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError


class ImageSet(torch.utils.data.Dataset):
    labels: dict
    classes: dict
    image_size: int

    def label(self, name: str) -> torch.Tensor:
        if name not in self.labels:
            raise KeyError(f"this data set has no label {name!r}; available: {', '.join(self.labels) or 'none'}")
        return self.labels[name]

    def subset(self, indices) -> "ImageSet":
        raise NotImplementedError


class TensorImageSet(ImageSet):
    def __init__(
        self,
        images: torch.Tensor,
        labels: dict | None = None,
        classes: dict | None = None,
        name: str = "",
        masks: torch.Tensor | None = None,
        mask_classes: list | None = None,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"TensorImageSet expects uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.labels = {k: torch.as_tensor(v, dtype=torch.long) for k, v in (labels or {}).items()}
        for k, v in self.labels.items():
            if len(v) != len(images):
                raise ValueError(f"label {k!r} has {len(v)} entries for {len(images)} images")
        self.classes = dict(classes or {})
        self.image_size = images.shape[-1]
        self.name = name
        self.masks = masks  # optional per-pixel segmentation (N, H, W) uint8; 255: ignored (e.g. VOC's borders)
        self.mask_classes = list(mask_classes) if mask_classes is not None else None  # names of the mask values
        self.default_label = next(iter(self.labels), "label")

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i], i

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[idx]

    def subset(self, indices) -> "TensorImageSet":
        idx = torch.as_tensor(indices, dtype=torch.long)
        out = TensorImageSet(
            self.images[idx],
            {k: v[idx] for k, v in self.labels.items()},
            self.classes,
            self.name,
            None if self.masks is None else self.masks[idx],
            self.mask_classes,
        )
        out.default_label = self.default_label
        return out


def data_root(dcfg) -> Path:
    """The folder ``data.root`` of a data set read from disk, with one-line errors when it is not
    set or does not exist (unless the set may be downloaded there)."""
    if dcfg.root is None:
        raise UserError(f"data.root is not set: the {dcfg.name} data set needs a folder (data.root=PATH)")
    root = Path(dcfg.root).expanduser()
    if not root.exists() and not getattr(dcfg, "download", False):
        raise UserError(f"data folder {root} does not exist; set data.root to the folder of the {dcfg.name} data")
    return root
