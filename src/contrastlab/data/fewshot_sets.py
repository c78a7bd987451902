"""Few-shot segmentation data in the public layouts: PASCAL-5i, COCO-20i and 2-D slices of medical volumes.

PASCAL-5i and COCO-20i images are stretched to ``data.image_size`` squared, or with ``data.resize=pad``
letterboxed as the official code of PFENet / RePRI / CWT does (:func:`letterbox_size`).

Each reader returns (train, test) :class:`TensorImageSet` with ``masks`` (class ids, 255 ignore),
``mask_classes``, ``files`` (the image file of each item, for errors), and the fold scheme that
:func:`contrastlab.data.episodes.source_of` reads (``fold_scheme``, ``default_folds``). Images are
resized to ``data.image_size`` squared (bilinear) and masks with nearest-neighbour sampling, as
``data.name=voc`` does (the papers evaluate at the original resolution or at 417 / 473 px crops;
the library evaluates every episode at one square size).

**PASCAL-5i** (``data.name=pascal5i``; Shaban et al. 2017, the layout of PFENet / RePRI / CWT):
``ROOT/JPEGImages/<id>.jpg`` (VOC2012) and ``ROOT/SegmentationClassAug/<id>.png`` (the
SBD-augmented masks: grayscale or palette PNGs of class indices 0-20, 255 = ignore), split lists
``ROOT/lists/<split>.txt`` (``data.train_dir`` / ``data.test_dir``, default ``train`` and ``val``),
one item a line: either PFENet's form ``JPEGImages/<id>.jpg SegmentationClassAug/<id>.png`` (paths
relative to ROOT; PFENet's ``lists/pascal/train_aug.txt`` / ``val.txt`` work as they are) or a bare
``<id>``. 4 folds of 5 classes by class index: fold i = classes 5i + 1 .. 5i + 5.

**COCO-20i** (``data.name=coco20i``; Nguyen & Todorovic 2019, the pre-rendered label-PNG layout
of PFENet / CWT, no pycocotools): images ``ROOT/train2014/*.jpg`` / ``ROOT/val2014/*.jpg`` and label
PNGs ``ROOT/annotations/train2014/*.png`` (class indices 0-80 in COCO's order of the 80 categories,
0 = background, 255 = ignore), split lists ``ROOT/lists/<split>.txt`` (default ``train`` and
``val``) in PFENet's form ``train2014/<name>.jpg annotations/train2014/<name>.png`` (its
``lists/coco/train_data_list.txt`` / ``val_data_list.txt``, renamed). 4 interleaved folds of 20:
fold i = classes {4k + i + 1}.

**Medical slices** (``data.name=slices``; the layout of SSL-ALPNet / RP-Net's preprocessed
Synapse-CT and CHAOS-MRI): ``ROOT/image_<id>.nii.gz`` and ``ROOT/label_<id>.nii.gz`` (or ``.nii``,
or ``.npy`` arrays of the same (X, Y, Z) shape), one volume each, cut into 2-D slices along the
last axis. Class names from ``ROOT/classes.txt`` (one a line, background first), else ALPNet's four
organs in CHAOS's label order (background, liver, right kidney, left kidney, spleen). Each volume's
intensities are clipped to its 0.5 / 99.5 percentiles and scaled to 0-255 (grey copied to 3
channels). Test volumes: every fifth id in sorted order (positions 0, 5, 10, ...; the first of
ALPNet's 5-fold cross-validation splits), training volumes the rest. Folds: one organ each (the
held-out organ is the fold). NIfTI-1 files are read with nibabel when it is installed, else with
the reader here (single-file NIfTI-1, ``.nii`` or gzipped ``.nii.gz``, integer or float data,
scl_slope / scl_inter applied).

Bad data fails with one line naming the file: a mask whose size differs from its image, a mask
value outside the class list; a class with fewer than K + 1 images fails when the episodes are drawn
(:meth:`EpisodeSource.check_shots`, naming the split list or folder).
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from .base import TensorImageSet, data_root
from .files import _DECODE_ERRORS, one_line, open_rgb
from .voc import VOC_CLASSES

IGNORE = 255

COCO_CLASSES = ["background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
                "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
                "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie",
                "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
                "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon",
                "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
                "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
                "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
                "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush"]  # fmt: skip
ALPNET_ORGANS = ["background", "liver", "right_kidney", "left_kidney", "spleen"]

__all__ = ["COCO_CLASSES", "ALPNET_ORGANS", "read_label_png", "letterbox_size", "read_pairs", "pascal5i_datasets", "coco20i_datasets",
           "read_volume", "read_nifti", "slice_volumes", "slices_datasets"]  # fmt: skip


# --------------------------------------------------------------------------- 2-D image + label PNG pairs
def read_label_png(path: str, class_names: list[str]) -> np.ndarray:
    """A label PNG as (H, W) uint8 class ids; one-line errors for a missing, unreadable file or a
    value outside the class list (0 .. len(class_names) - 1, or 255)."""
    n = len(class_names)
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise UserError(f"mask {path} is a {im.mode} image; expected a grayscale (L) or palette (P) PNG of class "
                                f"indices 0-{n - 1} or {IGNORE}")  # fmt: skip
            a = np.array(im, dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"mask {path} does not exist; every listed image needs its mask") from None
    except _DECODE_ERRORS as e:
        raise UserError(f"mask {path} is unreadable or corrupt ({one_line(e)}); remove or replace it") from None
    bad = np.unique(a[(a >= n) & (a != IGNORE)])
    if bad.size:
        raise UserError(f"mask {path} has value(s) {', '.join(map(str, bad[:5]))} outside the class list (0-{n - 1}, "
                        f"{IGNORE} = ignore); fix the mask or the class list")  # fmt: skip
    return a


def _list_items(root: Path, list_file: Path, image_dir: str, mask_dir: str) -> list[tuple[str, str]]:
    if not list_file.is_file():
        raise UserError(f"split list {list_file} does not exist; expected ROOT/lists/<split>.txt with lines "
                        f"'{image_dir}/<name>.jpg {mask_dir}/<name>.png' (or bare ids)")  # fmt: skip
    items = []
    with open(list_file, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if len(parts) >= 2:
                items.append((str(root / parts[0]), str(root / parts[1])))
            else:
                items.append((str(root / image_dir / f"{parts[0]}.jpg"), str(root / mask_dir / f"{parts[0]}.png")))
    if not items:
        raise UserError(f"split list {list_file} is empty; list one image (and its mask) per line")
    return items


def letterbox_size(h: int, w: int, size: int) -> tuple[int, int]:
    """The (height, width) of the official ``Resize`` of PFENet / RePRI / CWT (RePRI src/dataset/transform.py:88-106):
    the longer side to ``size``, the other scaled alike (truncated), then each side not a multiple of 8 cut
    down to one (417 -> 416)."""
    if h >= w:
        nh, nw = size, int(w * (size / h))
    else:
        nh, nw = int(h * (size / w)), size
    return (nh // 8) * 8 if nh % 8 else nh, (nw // 8) * 8 if nw % 8 else nw


def read_pairs(items: list[tuple[str, str]], class_names: list[str], image_size: int, name: str,
               where: str, resize: str = "stretch") -> TensorImageSet:  # fmt: skip
    """(image file, mask file) pairs decoded into an in-memory set with masks (see the module docstring).
    ``resize``: ``stretch`` to image_size squared, or ``pad``: the official letterbox (:func:`letterbox_size`,
    at the top-left corner; the rest 0 in the image and 255 (ignore) in the mask: transform.py:116-133)."""
    n = len(items)
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    masks = torch.empty(n, image_size, image_size, dtype=torch.uint8)
    for i, (img_path, mask_path) in enumerate(items):
        if not os.path.isfile(img_path):
            raise UserError(f"image {img_path} (listed in {where}) does not exist")
        im = open_rgb(img_path)
        mask = read_label_png(mask_path, class_names)
        if mask.shape != (im.height, im.width):
            raise UserError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {img_path} is "
                            f"{im.width}x{im.height}; a mask must match its image")  # fmt: skip
        nh, nw = (image_size, image_size) if resize == "stretch" else letterbox_size(im.height, im.width, image_size)
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        m = Image.fromarray(mask).resize((nw, nh), Image.Resampling.NEAREST)
        if resize != "stretch":
            images[i], masks[i] = 0, IGNORE
        images[i, :, :nh, :nw] = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
        masks[i, :nh, :nw] = torch.from_numpy(np.asarray(m, dtype=np.uint8).copy())
    out = _with_label(images, masks, class_names, name)
    out.files, out.where = [p for p, _ in items], where
    return out


def _with_label(images, masks, class_names, name) -> TensorImageSet:
    """A set whose ``label`` is each image's dominant class (-1 for none), so kNN / linear run on it too."""
    n = len(images)
    counts = torch.stack([(masks == c).flatten(1).sum(1) for c in range(1, len(class_names))], 1)
    label = torch.where(counts.amax(1) > 0, counts.argmax(1) + 1, torch.full((n,), -1))
    return TensorImageSet(images, {"label": label}, {"label": list(class_names)}, name=name, masks=masks,
                          mask_classes=class_names)  # fmt: skip


def _pair_datasets(dcfg, class_names, image_dir, mask_dir, scheme, name):
    root = data_root(dcfg)
    if not root.is_dir():
        raise UserError(f"data folder {root} is not a folder; expected the {name} layout (see contrastlab.data.fewshot_sets)")
    test_split = "val" if dcfg.test_dir == "auto" else dcfg.test_dir
    out = []
    for split in (dcfg.train_dir, test_split):
        if split is None:
            out.append(None)
            continue
        list_file = root / "lists" / f"{split}.txt"
        s = read_pairs(_list_items(root, list_file, image_dir, mask_dir), class_names, dcfg.image_size,
                       f"{name}-{split}", str(list_file), getattr(dcfg, "resize", "stretch"))  # fmt: skip
        s.fold_scheme, s.default_folds = scheme, 4
        out.append(s)
    return out[0], out[1]


def pascal5i_datasets(dcfg):
    """``data.name=pascal5i``: (train, val) of ``data.root`` in the PASCAL-5i layout (module docstring)."""
    return _pair_datasets(dcfg, VOC_CLASSES, "JPEGImages", "SegmentationClassAug", "blocks", "pascal5i")


def coco20i_datasets(dcfg):
    """``data.name=coco20i``: (train, val) of ``data.root`` in the COCO-20i label-PNG layout (module docstring)."""
    return _pair_datasets(dcfg, COCO_CLASSES, "train2014", "annotations/train2014", "interleaved", "coco20i")


# --------------------------------------------------------------------------- medical volumes
_NIFTI_TYPES = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64, 256: np.int8, 512: np.uint16,
                768: np.uint32}  # fmt: skip


def read_nifti(path: str) -> np.ndarray:
    """A single-file NIfTI-1 volume (``.nii`` or ``.nii.gz``) as a float64 array (X, Y, Z) with
    scl_slope / scl_inter applied (the header's fields: sizeof_hdr 348, dim at byte 40, datatype at
    70, vox_offset at 108, scl_slope / scl_inter at 112 / 116, magic ``n+1`` at 344)."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise UserError(f"volume {path} does not exist") from None
    except (OSError, EOFError) as e:
        raise UserError(f"volume {path} is unreadable or corrupt ({one_line(e)}); remove or replace it") from None
    if len(raw) < 348:
        raise UserError(f"volume {path} is not a NIfTI-1 file (shorter than its 348-byte header)")
    endian = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
    if struct.unpack(endian + "i", raw[:4])[0] != 348 or raw[344:347] != b"n+1":
        raise UserError(f"volume {path} is not a single-file NIfTI-1 volume (magic n+1); convert it, or install nibabel")
    dim = struct.unpack(endian + "8h", raw[40:56])
    dtype_code = struct.unpack(endian + "h", raw[70:72])[0]
    if dtype_code not in _NIFTI_TYPES:
        raise UserError(f"volume {path} has NIfTI datatype {dtype_code}, which this reader does not decode; install nibabel")
    offset = int(struct.unpack(endian + "f", raw[108:112])[0])
    slope, inter = struct.unpack(endian + "2f", raw[112:120])
    shape = tuple(int(d) for d in dim[1 : 1 + dim[0]])
    dt = np.dtype(_NIFTI_TYPES[dtype_code]).newbyteorder(endian)
    count = int(np.prod(shape))
    if len(raw) < offset + count * dt.itemsize:
        raise UserError(f"volume {path} is truncated ({len(raw)} bytes for a {shape} volume); replace it")
    a = np.frombuffer(raw, dtype=dt, count=count, offset=offset).reshape(shape, order="F").astype(np.float64)
    if slope not in (0.0, 1.0) or inter != 0.0:
        a = a * (slope if slope != 0 else 1.0) + inter
    return a


def read_volume(path: str) -> np.ndarray:
    """A volume (X, Y, Z) as float64 from ``.npy``, ``.nii`` or ``.nii.gz`` (nibabel when installed)."""
    if path.endswith(".npy"):
        try:
            return np.load(path, allow_pickle=False).astype(np.float64)
        except FileNotFoundError:
            raise UserError(f"volume {path} does not exist") from None
        except (OSError, ValueError) as e:
            raise UserError(f"volume {path} is unreadable or corrupt ({one_line(e)}); remove or replace it") from None
    try:
        import nibabel
    except ImportError:
        return read_nifti(path)
    try:
        return np.asarray(nibabel.load(path).get_fdata(), dtype=np.float64)
    except FileNotFoundError:
        raise UserError(f"volume {path} does not exist") from None
    except Exception as e:  # nibabel's errors for a corrupt file
        raise UserError(f"volume {path} is unreadable or corrupt ({one_line(e)}); remove or replace it") from None


def _volume_files(root: Path) -> list[tuple[str, str, str]]:
    """(id, image file, label file) of every ``image_<id>.<ext>`` in ROOT, sorted by id."""
    out = []
    for p in sorted(root.iterdir()):
        for ext in (".nii.gz", ".nii", ".npy"):
            if p.name.startswith("image_") and p.name.endswith(ext):
                vid = p.name[len("image_") : -len(ext)]
                out.append((vid, str(p), str(root / f"label_{vid}{ext}")))
    if not out:
        raise UserError(f"data folder {root} has no volumes; expected ROOT/image_<id>.nii.gz with ROOT/label_<id>.nii.gz "
                        "(or .nii, .npy)")  # fmt: skip
    return sorted(out, key=lambda t: (len(t[0]), t[0]))


def slice_volumes(volumes: list[tuple[str, str, str]], class_names: list[str], image_size: int, name: str,
                  where: str) -> TensorImageSet:  # fmt: skip
    """The volumes' slices along the last axis as a set with ``masks`` and ``volumes`` (the volume's
    position in ``volumes``); one-line errors naming the file for a shape mismatch or a bad label."""
    n_classes = len(class_names)
    images, masks, vols, files = [], [], [], []
    for v, (vid, img_path, lab_path) in enumerate(volumes):
        img, lab = read_volume(img_path), read_volume(lab_path)
        if img.ndim != 3:
            raise UserError(f"volume {img_path} has shape {img.shape}; expected a 3-D volume (X, Y, Z)")
        if lab.shape != img.shape:
            raise UserError(f"label {lab_path} has shape {lab.shape} but its image {img_path} has {img.shape}; "
                            "a label volume must match its image")  # fmt: skip
        if not np.all(lab == np.round(lab)):
            raise UserError(f"label {lab_path} has non-integer values; expected class indices 0-{n_classes - 1}")
        bad = np.unique(lab[((lab < 0) | (lab >= n_classes)) & (lab != IGNORE)])
        if bad.size:
            raise UserError(f"label {lab_path} has value(s) {', '.join(str(int(b)) for b in bad[:5])} outside the class "
                            f"list (0-{n_classes - 1}: {', '.join(class_names)}); fix the label or ROOT/classes.txt")  # fmt: skip
        lo, hi = np.percentile(img, [0.5, 99.5])
        grey = np.clip((img - lo) / max(hi - lo, 1e-8), 0, 1)
        x = torch.from_numpy(grey).permute(2, 0, 1)[:, None].float()  # (Z, 1, X, Y)
        y = torch.from_numpy(lab.astype(np.int64)).permute(2, 0, 1)[:, None].float()
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        y = torch.nn.functional.interpolate(y, size=(image_size, image_size), mode="nearest")
        images.append((x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1))
        masks.append(y[:, 0].to(torch.uint8))
        vols.append(torch.full((x.shape[0],), v, dtype=torch.long))
        files += [f"{img_path} (slice {z})" for z in range(x.shape[0])]
    out = _with_label(torch.cat(images).contiguous(), torch.cat(masks), class_names, name)
    out.volumes = torch.cat(vols)
    out.labels["volume"] = out.volumes
    out.files = files
    out.where, out.fold_scheme, out.default_folds = where, "blocks", n_classes - 1
    return out


def slices_datasets(dcfg):
    """``data.name=slices``: (train, test) slices of the volumes in ``data.root`` (module docstring)."""
    root = data_root(dcfg)
    if not root.is_dir():
        raise UserError(f"data folder {root} is not a folder; expected ROOT/image_<id>.nii.gz and ROOT/label_<id>.nii.gz")
    names = ALPNET_ORGANS
    listed = root / "classes.txt"
    if listed.is_file():
        names = [line.strip() for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(names) < 2:
            raise UserError(f"{listed} lists {len(names)} class(es); list background and at least one organ, one a line")
    vols = _volume_files(root)
    test = [v for i, v in enumerate(vols) if i % 5 == 0]
    train = [v for i, v in enumerate(vols) if i % 5 != 0] or test
    return (slice_volumes(train, names, dcfg.image_size, "slices-train", str(root)),
            slice_volumes(test, names, dcfg.image_size, "slices-test", str(root)))  # fmt: skip
