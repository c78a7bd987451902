"""Image folders in torchvision's ImageFolder layout: ``ROOT/<train_dir>/<class>/<image>`` and
optionally ``ROOT/<test_dir>/<class>/...`` (by default ``ROOT/val`` or else ``ROOT/test``); images
may sit in nested folders below a class folder; names starting with ``.`` are ignored. 16-bit and
float images are scaled to 8 bits (see :func:`contrastlab.data.files.open_rgb`)."""
from __future__ import annotations

import os

import torch

from contrastlab.errors import UserError
from contrastlab.data.base import data_root
from contrastlab.data.files import EXTENSIONS_TEXT, FileImageSet, scan_dirs, scan_images

def _scan_split(folder: str) -> dict[str, list[str]]:
    """{class name: sorted image paths} of an ImageFolder split."""
    class_dirs = [e for e in scan_dirs(folder) if e.is_dir()]
    if not class_dirs:
        raise UserError(
            f"{folder} has no class sub-folders; expected the ImageFolder layout {folder}/<class>/<image>"
        )
    out = {}
    for e in class_dirs:
        images = scan_images(e.path)
        if not images:
            raise UserError(
                f"class folder {e.path} has no images (extensions {EXTENSIONS_TEXT}); add images or remove the folder"
            )
        out[e.name] = images
    return out


TEST_DIR_CANDIDATES = ("val", "test")


def load_imagefolder(root, train_dir: str = "train", test_dir: str | None = "auto",
                     image_size: int = 224) -> tuple[FileImageSet, FileImageSet | None]:
    """An ImageFolder tree ``root/<train_dir>/<class>/<image>``: returns ``(train, test)``.

    ``test_dir``: ``"auto"`` uses ``root/val`` if it is a folder, else ``root/test``, else there is
    no test split (``test`` is None); a folder name (or path) must exist, or it is a UserError;
    None means no test split. The test classes must be a subset of the training classes and share
    their label indices. Labels: ``{"label": class index}``, classes: ``{"label": sorted class names}``.

    Both sets get ``split_dir``, the folder they were read from. Under ``"auto"``, ``train.note``
    is a one-line message for the user when the choice needs saying (no test split, so the kNN
    monitor is off; or both ``val/`` and ``test/`` exist and ``val/`` is used), else None.
    Errors are one-line :class:`UserError`.
    """
    if root is None:
        raise UserError("data.root is not set; set data.root=<folder containing "
                        f"{train_dir}/<class>/<image>>")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise UserError(f"data folder {root} does not exist; set data.root=<folder containing "
                        f"{train_dir}/<class>/<image>>")
    train_path = os.path.join(root, train_dir)
    if not os.path.isdir(train_path):
        raise UserError(f"training folder {train_path} does not exist; expected the ImageFolder layout "
                        f"{root}/{train_dir}/<class>/<image>, or set data.train_dir=<sub-folder name>")
    test_path, note = _pick_test_dir(root, test_dir)
    train_scan = _scan_split(train_path)
    names = sorted(train_scan)
    index = {c: k for k, c in enumerate(names)}

    def build(scan: dict[str, list[str]], split: str, folder: str) -> FileImageSet:
        paths = [p for c in sorted(scan) for p in scan[c]]
        labels = torch.tensor([index[c] for c in sorted(scan) for _ in scan[c]], dtype=torch.long)
        out = FileImageSet(paths, {"label": labels}, {"label": list(names)}, image_size,
                           f"{os.path.basename(os.path.normpath(root))}-{split}")
        out.split_dir = folder
        return out

    train = build(train_scan, "train", train_path)
    train.note = note
    test = None
    if test_path is not None:
        test_scan = _scan_split(test_path)
        extra = sorted(set(test_scan) - set(index))
        if extra:
            shown = ", ".join(extra[:5]) + (f" (+{len(extra) - 5} more)" if len(extra) > 5 else "")
            raise UserError(f"test folder {test_path} has classes not in {train_path}: {shown}; "
                            "the test classes must be a subset of the training classes")
        test = build(test_scan, "test", test_path)
    return train, test


def _pick_test_dir(root: str, test_dir: str | None) -> tuple[str | None, str | None]:
    """(the test split's folder or None, a note for the user or None); see :func:`load_imagefolder`."""
    if test_dir is None:
        return None, None
    if test_dir == "auto":
        found = [d for d in TEST_DIR_CANDIDATES if os.path.isdir(os.path.join(root, d))]
        if not found:
            return None, (f"no val/ or test/ folder under {root}: the kNN monitor is off and eval needs a "
                          "test split")
        note = None
        if len(found) > 1:
            note = (f"both val/ and test/ under {root}: using val/ as the test split "
                    "(set data.test_dir=test to use test/)")
        return os.path.join(root, found[0]), note
    path = os.path.join(root, test_dir)
    if not os.path.isdir(path):
        raise UserError(f"test folder {path} does not exist; create it ({path}/<class>/<image>), or set "
                        "data.test_dir=auto (val/ or test/ when present) or data.test_dir=null (no test split)")
    return path, None



def imagefolder_datasets(dcfg):
    """``data.name=imagefolder``: ``root/train/<class>/...`` and the test split (``data.test_dir``);
    with ``data.in_memory``, both decoded once into memory (:meth:`FileImageSet.to_memory`)."""
    train, test = load_imagefolder(str(data_root(dcfg)), dcfg.train_dir, dcfg.test_dir, image_size=dcfg.image_size)
    if getattr(dcfg, "in_memory", False):
        train = train.to_memory()
        test = None if test is None else test.to_memory()
    return train, test
