"""Data sets: the embedded digit scenes, CIFAR-10/100, STL-10 and image folders."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .base import ImageSet, TensorImageSet
from .digits import DigitScenesSpec
from .long_tail import long_tail_indices, long_tail_subset

__all__ = ["ImageSet", "TensorImageSet", "DigitScenesSpec", "build_datasets", "digit_scenes", "long_tail_indices",
           "long_tail_subset"]

DIGIT_CLASSES = {
    "digit": [str(i) for i in range(10)],
    "color": ["red", "yellow", "green", "cyan", "blue", "magenta"],
    "rotation": ["-45", "-15", "+15", "+45"],
}


def digit_scenes(spec: DigitScenesSpec | None = None) -> tuple[TensorImageSet, TensorImageSet]:
    """The embedded data set as (train, test) image sets with labels digit, color, rotation.

    The per-pixel masks are in ``.masks`` (uint8 (N, H, W): 0 background, 1 + digit class)."""
    from . import digits

    spec = spec or DigitScenesSpec()
    data = digits.load(spec)
    out = []
    for split in ("train", "test"):
        d = data[split]
        labels = {k: d[k] for k in ("digit", "color", "rotation")}
        out.append(TensorImageSet(d["images"], labels, DIGIT_CLASSES, name=f"digits-{split}", masks=d["mask"]))
    return out[0], out[1]


def build_datasets(dcfg) -> tuple[ImageSet, ImageSet | None]:
    """(train, test) for a DataConfig; the long-tail profile (if any) applies to train only."""
    label = dcfg.label
    if dcfg.name in ("digit_domains", "unpaired"):
        return build_domains(dcfg)
    if dcfg.name == "digits":
        spec = DigitScenesSpec(
            n_train=dcfg.n_train,
            n_test=dcfg.n_test,
            seed=dcfg.scene_seed,
            image_size=dcfg.image_size,
            second_digit=dcfg.second_digit,
            clutter=dcfg.clutter,
            texture=dcfg.texture,
            light_fraction=dcfg.light_fraction,
        )
        train, test = digit_scenes(spec)
    else:
        from . import real

        if dcfg.root is None:
            raise UserError(f"data.root is not set: the {dcfg.name} data set needs a folder (data.root=PATH)")
        root = Path(dcfg.root).expanduser()
        if not root.exists() and not dcfg.download:
            raise UserError(f"data folder {root} does not exist; set data.root to the folder of the {dcfg.name} data")
        if dcfg.name in ("cifar10", "cifar100"):
            train, test = real.load_cifar(str(root), dcfg.name, download=dcfg.download)
        elif dcfg.name == "stl10":
            train, test = real.load_stl10(str(root), dcfg.stl_split, download=dcfg.download, image_size=dcfg.image_size)
        else:
            train, test = real.load_imagefolder(str(root), dcfg.train_dir, dcfg.test_dir, image_size=dcfg.image_size)
        if label == "digit":  # the default label of the embedded set; real sets call it "label"
            label = "label"
    if label not in train.labels:
        raise UserError(f"data.label={dcfg.label!r} is not a label of {dcfg.name}; available: {', '.join(train.labels)}")
    train.default_label = label
    if test is not None:
        test.default_label = label
    if dcfg.long_tail_ratio is not None:
        train = long_tail_subset(train, dcfg.long_tail_ratio, label)
    return train, test


def build_domains(dcfg):
    """(train, test) pairs of unpaired domains for translation: the embedded digit domains or
    the folders ROOT/trainA, trainB, testA, testB. Items are (a, b); ``get_batch`` makes batches."""
    from .unpaired import DigitDomains, UnpairedFolders

    if dcfg.name == "digit_domains":
        opts = dict(n_train=dcfg.n_train, n_test=dcfg.n_test, image_size=dcfg.image_size, seed=dcfg.scene_seed)
        return DigitDomains("train", **opts), DigitDomains("test", **opts)
    if dcfg.root is None:
        raise UserError("data.root is not set: unpaired data needs a folder with trainA, trainB, testA, testB (data.root=PATH)")
    root = str(Path(dcfg.root).expanduser())
    train = UnpairedFolders(root, "train", image_size=dcfg.image_size, load_size=dcfg.load_size)
    test = UnpairedFolders(root, "test", image_size=dcfg.image_size) if Path(root, "testA").exists() else None
    return train, test
