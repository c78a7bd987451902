"""Image files on disk: decoding any image mode to 8-bit RGB (:func:`open_rgb`, :func:`to_rgb`),
resize and centre crop, the :class:`FileImageSet` that decodes on demand, recursive scans of image
folders, the one-line message of a DataLoader worker's error, and the check that a data set's
files are present (downloading them only when asked). Image folders, unpaired folders and the
translation metrics read files through this module."""
from __future__ import annotations

import os
import re

import numpy as np
import torch
from PIL import Image

from contrastlab.errors import ConfigError, UserError
from contrastlab.data.base import ImageSet

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
EXTENSIONS_TEXT = " ".join(IMAGE_EXTENSIONS)
# What PIL raises for undecodable, truncated or absurdly large files.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class FileImageSet(ImageSet):
    """Image files decoded on demand.

    ``__getitem__(i)`` returns ``(uint8 (3, image_size, image_size), i)``: the file is opened with
    PIL, converted to RGB, its shorter side resized to ``image_size`` (bilinear, antialiased) and
    centre-cropped to a square. With :meth:`set_transform`, it returns ``(fn(rgb_pil_image), i)``
    instead. An undecodable file raises :class:`UserError` naming it.

    The paths are stored packed in two numpy arrays rather than as a list of Python strings, so
    DataLoader workers do not slowly copy the whole list (reference counts touch every page).

    Attributes set by :func:`load_imagefolder` (None otherwise): ``split_dir``, the folder the files
    were scanned from (``ROOT/train``, ``ROOT/val``, ...), and ``note``, a one-line message for the
    user about how the split was chosen (on the training set; e.g. that there is no test split).
    """

    split_dir: str | None = None
    note: str | None = None

    def __init__(self, paths: list[str], labels: dict[str, torch.Tensor], classes: dict[str, list[str]],
                 image_size: int, name: str = ""):
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        encoded = [os.fsencode(p) for p in paths]
        lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self._offsets[1:])
        self._blob = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)
        self.labels = {k: torch.as_tensor(v, dtype=torch.long) for k, v in (labels or {}).items()}
        for k, v in self.labels.items():
            if len(v) != len(encoded):
                raise ValueError(f"label {k!r} has {len(v)} entries for {len(encoded)} files")
        self.classes = dict(classes or {})
        self.image_size = int(image_size)
        self.name = name
        self.transform = None

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def path(self, i: int) -> str:
        i = int(i)
        if i < 0:
            i += len(self)
        return os.fsdecode(self._blob[self._offsets[i]:self._offsets[i + 1]].tobytes())

    @property
    def paths(self) -> list[str]:
        return [self.path(i) for i in range(len(self))]

    def set_transform(self, fn) -> None:
        """Per-image transform ``fn(rgb PIL image) -> anything``, used instead of resize + crop
        (``None`` restores the default). It must be picklable for DataLoader workers."""
        self.transform = fn

    def _open_rgb(self, path: str) -> Image.Image:
        return open_rgb(path)

    def __getitem__(self, i):
        im = self._open_rgb(self.path(i))
        if self.transform is not None:
            return self.transform(im), i
        return resize_center_crop(im, self.image_size), i

    def check_readable(self, max_files: int | None = None) -> None:
        """Decode every file (or the first ``max_files``); raise :class:`UserError` naming the first
        bad one, so bad data fails at start rather than hours into training. JPEGs are decoded at
        reduced scale (all compressed data is still read, so truncation is caught)."""
        n = len(self) if max_files is None else min(int(max_files), len(self))
        for i in range(n):
            path = self.path(i)
            try:
                with Image.open(path) as im:
                    im.verify()
                with Image.open(path) as im:
                    im.draft("RGB", (64, 64))
                    im.load()
            except FileNotFoundError:
                raise UserError(f"image file {path} no longer exists; rescan the data folder") from None
            except _DECODE_ERRORS as e:
                raise UserError(
                    f"image file {path} is unreadable or corrupt ({one_line(e)}); remove or replace it"
                ) from None

    def to_memory(self, progress: bool = True):
        """A :class:`~contrastlab.data.base.TensorImageSet` of every image decoded as ``__getitem__``
        does (resized and centre-cropped to ``image_size``), with the same labels, classes, name,
        default label, ``split_dir`` and ``note``. An undecodable file raises :class:`UserError`
        naming it. ``progress``: a progress bar on stderr for sets of more than 2,000 files."""
        from tqdm import tqdm

        from .base import TensorImageSet

        if self.transform is not None:
            raise ValueError("to_memory keeps the images at image_size; this set has a per-image transform")
        images = torch.empty(len(self), 3, self.image_size, self.image_size, dtype=torch.uint8)
        bar = tqdm(range(len(self)), desc=f"decoding {self.name or 'images'}", unit="img", leave=False,
                   disable=not progress or len(self) <= 2000)
        for i in bar:
            images[i] = self[i][0]
        out = TensorImageSet(images, self.labels, self.classes, self.name)
        out.split_dir, out.note = self.split_dir, self.note
        if "default_label" in vars(self):
            out.default_label = self.default_label
        return out

    def subset(self, indices) -> "FileImageSet":
        """The items at ``indices``, with the same classes, image size, transform, default label,
        ``split_dir`` and ``note``."""
        idx = torch.as_tensor(indices, dtype=torch.long).flatten()
        out = FileImageSet([self.path(int(i)) for i in idx], {k: v[idx] for k, v in self.labels.items()},
                           self.classes, self.image_size, self.name)
        out.transform = self.transform
        for attr in ("default_label", "split_dir", "note"):
            if attr in vars(self):
                setattr(out, attr, getattr(self, attr))
        return out


def resize_center_crop(im: Image.Image, size: int) -> torch.Tensor:
    """Resize the shorter side of a PIL RGB image to ``size`` (bilinear, antialiased), centre-crop
    to ``size`` x ``size``; returns uint8 (3, size, size)."""
    w, h = im.size
    if (w, h) != (size, size):
        if w <= h:
            nw, nh = size, max(size, int(size * h / w))
        else:
            nw, nh = max(size, int(size * w / h)), size
        if (nw, nh) != (w, h):
            # PIL's bilinear filter widens its support when downscaling: antialiased.
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
        im = im.crop((left, top, left + size, top + size))
    arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def open_rgb(path: str) -> Image.Image:
    """An image file as an 8-bit RGB PIL image; a missing or undecodable file is a UserError naming it.

    See :func:`to_rgb` for how modes other than RGB are converted (16-bit and float grayscale are
    scaled, not clipped)."""
    try:
        with Image.open(path) as im:
            return to_rgb(im)  # converting loads the pixels, so decode errors surface here
    except FileNotFoundError:
        raise UserError(f"image file {path} no longer exists; rescan the data folder") from None
    except _DECODE_ERRORS as e:
        raise UserError(f"image file {path} is unreadable or corrupt ({one_line(e)}); remove or replace it") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """A PIL image of any mode as 8-bit RGB.

    - 16-bit grayscale (modes ``I;16``, ``I;16L``, ``I;16B``, ``I;16N``: what Pillow gives for a
      16-bit grayscale PNG or TIFF) and 32-bit integer ``I`` (taken to hold 16-bit values, as
      older Pillows decode 16-bit PNGs): ``round(v * 255 / 65535)``, values clipped to 0..65535.
      (``convert("RGB")`` would clip them to 0..255, making almost every pixel white.)
    - 32-bit float ``F`` (e.g. a float TIFF): an image whose largest value is <= 1 is taken to be
      in [0, 1] and scaled by 255, any other in [0, 255]; then clipped to 0..255 and rounded
      (NaN becomes 0). The choice is per image: a [0, 255] image that is almost black (all values
      <= 1) comes out brightened.
    - Palette images (``P``, ``PA``) go through RGBA, so transparency never triggers Pillow's
      warning; alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency) is dropped, not blended,
      as in torchvision's loader; ``CMYK``, ``1``, ``L``, ``YCbCr`` use Pillow's conversion.
      16-bit RGB(A) PNGs are decoded by Pillow to 8 bits (its high byte) already.
    """
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im)
        a = np.clip(a.astype(np.int64), 0, 65535)
        return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        finite = a[np.isfinite(a)]
        if finite.size and finite.max() <= 1.0:
            a = a * 255.0
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "PA" or (mode == "P" and "transparency" in im.info):
        return im.convert("RGBA").convert("RGB")
    return im.convert("RGB")  # a copy, so it outlives the file it was read from


def scan_dirs(folder: str) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        entries = [e for e in it if not e.name.startswith(".")]
    return sorted(entries, key=lambda e: e.name)


def scan_images(folder: str) -> list[str]:
    """All image files below ``folder`` (recursively), sorted by path within each level."""
    found = []
    for e in scan_dirs(folder):
        if e.is_dir():
            found.extend(scan_images(e.path))
        elif e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS):
            found.append(e.path)
    return found



def worker_error_line(exc: BaseException) -> str | None:
    """The original one-line message of a :class:`UserError` (or :class:`ConfigError`) raised in a
    DataLoader worker (or pin-memory thread) and re-raised in the main process, else None.

    PyTorch re-raises a worker's exception as the same type, with a message of several lines:
    ``Caught UserError in DataLoader worker process 0.``, ``Original Traceback (most recent call
    last):``, the worker's traceback, and last ``contrastlab.errors.UserError: <message>``; this
    returns ``<message>``. For any other exception (a plain UserError, a worker's KeyError, ...)
    it returns None, so the caller can keep the traceback of real bugs."""
    text = str(exc)
    head = re.match(r"Caught (\w+) in [^\n]*\.\nOriginal Traceback", text)
    if head is None:
        return None
    name = head.group(1)
    if not (isinstance(exc, (UserError, ConfigError)) or name in ("UserError", "ConfigError")):
        return None
    lines = text.splitlines()
    last = re.compile(rf"^(?:[\w.]+\.)?{re.escape(name)}: (.*)$")
    for k in range(len(lines) - 1, 0, -1):
        m = last.match(lines[k])
        if m:
            return " ".join(" ".join([m.group(1), *lines[k + 1:]]).split()) or None
    return None


def ensure_files(title: str, root: str, folder: str, needed: list[str], download: bool, fetch) -> None:
    """Raise a one-line UserError unless every needed file is in ``folder``; ``fetch()``
    (torchvision's downloader) runs only when files are missing and ``download`` is true."""
    missing = [f for f in needed if not os.path.isfile(os.path.join(folder, f))]
    if missing and download:
        try:
            fetch()
        except Exception as e:
            raise UserError(f"could not download {title} to {root} ({one_line(e)}); download it by hand "
                            f"into {folder} or check the network") from None
        missing = [f for f in needed if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        if not os.path.isdir(folder):
            raise UserError(f"{title} not found under {root} (expected {folder}); pass data.download=true "
                            "to download it or set data.root")
        raise UserError(f"{title} under {root} is incomplete: {os.path.join(folder, missing[0])} is missing; "
                        "delete the folder and pass data.download=true, or set data.root")
