"""Data sets, one file each (or one per family), registered by name in ``DATASETS``: the
embedded digit scenes and digit domains, CIFAR-10/100, STL-10, image folders, PASCAL VOC segmentation folders and unpaired
folders. A data set's entry is a function ``(data config) -> (train, test)`` (test may be
None); ``build_datasets`` then applies what every labelled set shares (the label, the
subsets of the training split: hold-out, index files, long-tailed subset; ``splits.py``).
Adding a data set is a new file plus one line here."""
from __future__ import annotations

import difflib
import importlib
from typing import NamedTuple

from ..errors import ConfigError, UserError
from .base import ImageSet, TensorImageSet, data_root
from .digits import DIGIT_CLASSES, DigitScenesSpec, digit_scenes
from .long_tail import long_tail_indices, long_tail_subset
from .splits import read_index_file, split_training_set

__all__ = ["ImageSet", "TensorImageSet", "DigitScenesSpec", "DATASETS", "DataSplits", "build_datasets", "build_splits",
           "digit_scenes", "long_tail_indices", "long_tail_subset", "read_index_file", "data_root"]

DATASETS = {
    "digits": "contrastlab.data.digits:datasets",
    "cifar10": "contrastlab.data.cifar:cifar_datasets",
    "cifar100": "contrastlab.data.cifar:cifar_datasets",
    "stl10": "contrastlab.data.stl10:stl10_datasets",
    "imagefolder": "contrastlab.data.imagefolder:imagefolder_datasets",
    "voc": "contrastlab.data.voc:voc_datasets",
    "digit_domains": "contrastlab.data.unpaired:digit_domains_datasets",
    "unpaired": "contrastlab.data.unpaired:folder_datasets",
    "organs": "contrastlab.data.episodes:organ_datasets",
    "pascal5i": "contrastlab.data.fewshot_sets:pascal5i_datasets",
    "coco20i": "contrastlab.data.fewshot_sets:coco20i_datasets",
    "slices": "contrastlab.data.fewshot_sets:slices_datasets",
}
# sets whose items are pairs of unpaired domains (translation), not labelled images
DOMAIN_SETS = ("digit_domains", "unpaired")


def dataset_problem(name: str) -> str | None:
    """Why ``name`` is not a registered data set (None when it is)."""
    if name in DATASETS:
        return None
    near = difflib.get_close_matches(name, list(DATASETS), n=1)
    return (f"unknown data set {name!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
            + f"; available: {', '.join(DATASETS)}")  # fmt: skip


class DataSplits(NamedTuple):
    """The sets of a DataConfig: ``train`` (what training uses: the long-tailed subset when
    ``data.long_tail_ratio`` is set), ``val`` (the validation hold-out of the training split,
    ``data.val_file`` / ``data.val_per_class``, or None) and ``test`` (or None)."""

    train: ImageSet
    val: ImageSet | None
    test: ImageSet | None


def build_datasets(dcfg) -> tuple[ImageSet, ImageSet | None]:
    """(train, test) for a DataConfig; the subsets of the training split (the long-tail profile,
    the hold-out, index files: :mod:`contrastlab.data.splits`) apply to train only."""
    splits = build_splits(dcfg)
    return splits.train, splits.test


def build_splits(dcfg) -> DataSplits:
    """(train, val, test) for a DataConfig: :func:`build_datasets` with the validation hold-out
    (for an evaluation's model selection, as SDCLR's 45k/5k split of CIFAR's training set)."""
    problem = dataset_problem(dcfg.name)
    if problem:
        raise ConfigError(f"data.name: {problem}")
    module, fn = DATASETS[dcfg.name].split(":")
    train, test = getattr(importlib.import_module(module), fn)(dcfg)
    if dcfg.name in DOMAIN_SETS:
        return DataSplits(train, None, test)
    label = dcfg.label
    if label == "digit" and "digit" not in train.labels and "label" in train.labels:
        label = "label"  # the default label of the embedded set; real sets call it "label"
    if label not in train.labels:
        raise UserError(f"data.label={dcfg.label!r} is not a label of {dcfg.name}; available: {', '.join(train.labels)}")
    train.default_label = label
    if test is not None:
        test.default_label = label
    train, val = split_training_set(train, dcfg, label)
    if val is not None:
        val.default_label = label
    return DataSplits(train, val, test)
