"""Real data readers, on tiny fixtures written in the exact on-disk formats."""
from __future__ import annotations

import math
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from contrastlab.config import UserError
from contrastlab.data.base import TensorImageSet
from contrastlab.data.cifar import load_cifar
from contrastlab.data.files import FileImageSet
from contrastlab.data.imagefolder import load_imagefolder
from contrastlab.data.stl10 import load_stl10
from contrastlab.data.long_tail import long_tail_subset


# ----------------------------------------------------------------------------- fixtures
def _dump(obj, path, protocol=2):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _cifar_rows(n, seed):
    """(n, 3072) uint8 rows; row 0 is all zero except two marked pixels (set by flat index)."""
    rows = np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)
    rows[0] = 0
    rows[0, 0 * 1024 + 0 * 32 + 1] = 255  # red,   y=0, x=1
    rows[0, 1 * 1024 + 2 * 32 + 0] = 200  # green, y=2, x=0
    rows[0, 2 * 1024 + 31 * 32 + 30] = 7  # blue,  y=31, x=30
    return rows


@pytest.fixture
def cifar10_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for k in range(1, 6):
        rows = _cifar_rows(3, k)
        labels = [(k + j) % 10 for j in range(3)]
        _dump({b"batch_label": b"x", b"data": rows, b"labels": labels, b"filenames": [b"f"] * 3},
              folder / f"data_batch_{k}")
        batches[k] = (rows, labels)
    test_rows = _cifar_rows(2, 99)
    _dump({b"data": test_rows, b"labels": [9, 0]}, folder / "test_batch", protocol=4)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump({b"label_names": names, b"num_cases_per_batch": 3, b"num_vis": 3072}, folder / "batches.meta")
    return tmp_path, batches, test_rows


@pytest.fixture
def cifar100_root(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train_rows = _cifar_rows(4, 1)
    _dump({b"data": train_rows, b"fine_labels": [0, 99, 5, 42], b"coarse_labels": [4, 19, 0, 3]}, folder / "train")
    _dump({b"data": _cifar_rows(2, 2), b"fine_labels": [1, 2], b"coarse_labels": [1, 2]}, folder / "test")
    _dump({b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
           b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}, folder / "meta")
    return tmp_path, train_rows


def _stl_write(path, images_chw):
    """Write (N, 3, 96, 96) uint8 in STL-10 order: each channel plane column-major."""
    flat = np.zeros((len(images_chw), 3 * 96 * 96), dtype=np.uint8)
    for n, img in enumerate(images_chw):
        for c in range(3):
            for x in range(96):
                flat[n, c * 9216 + x * 96: c * 9216 + (x + 1) * 96] = img[c, :, x]
    flat.tofile(path)


@pytest.fixture
def stl_root(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (3, 3, 96, 96), dtype=np.uint8)
    train[0] = 0
    train[0, 0, 0, 5] = 255  # red, y=0, x=5
    train[0, 2, 7, 0] = 100  # blue, y=7, x=0
    test = rng.integers(0, 256, (2, 3, 96, 96), dtype=np.uint8)
    test[1] = 128  # a flat grey image stays flat when resized
    unlabeled = rng.integers(0, 256, (2, 3, 96, 96), dtype=np.uint8)
    _stl_write(folder / "train_X.bin", train)
    _stl_write(folder / "test_X.bin", test)
    _stl_write(folder / "unlabeled_X.bin", unlabeled)
    np.array([1, 10, 3], dtype=np.uint8).tofile(folder / "train_y.bin")
    np.array([2, 4], dtype=np.uint8).tofile(folder / "test_y.bin")
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    return tmp_path, train, test, unlabeled, names


def _save(path, array_hwc, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array_hwc).save(path, format=fmt)


@pytest.fixture
def folder_root(tmp_path):
    root = tmp_path / "imgs"
    marked = np.zeros((16, 16, 3), dtype=np.uint8)
    marked[2, 5, 0] = 250  # red at y=2, x=5
    marked[9, 1, 1] = 120  # green at y=9, x=1
    _save(root / "train" / "cat" / "a_marked.png", marked)
    halves = np.zeros((32, 64, 3), dtype=np.uint8)  # 64 wide, 32 high: left red, right blue
    halves[:, :32, 0] = 255
    halves[:, 32:, 2] = 255
    _save(root / "train" / "cat" / "b_halves.png", halves)
    _save(root / "train" / "dog" / "sub" / "c.JPG", np.full((50, 20, 3), 90, np.uint8), "JPEG")
    _save(root / "train" / "dog" / "d.jpeg", np.full((24, 30, 3), 30, np.uint8), "JPEG")
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    (root / "train" / "dog" / "._d.jpeg").write_bytes(b"AppleDouble junk")  # hidden: ignored
    (root / "train" / ".ipynb_checkpoints").mkdir()  # hidden: not a class
    Image.fromarray(np.full((20, 20), 200, np.uint8), "L").save(root / "train" / "dog" / "e_gray.png")
    _save(root / "val" / "dog" / "v.png", np.full((10, 10, 3), 5, np.uint8))
    return root


# ----------------------------------------------------------------------------- CIFAR
def test_cifar10_pixels_labels_classes(cifar10_root):
    root, batches, test_rows = cifar10_root
    train, test = load_cifar(root, "cifar10")
    assert isinstance(train, TensorImageSet)
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (2, 3, 32, 32)
    # batches are concatenated in order 1..5
    assert train.labels["label"].tolist() == [lab for k in range(1, 6) for lab in batches[k][1]]
    assert test.labels["label"].tolist() == [9, 0]
    assert train.classes["label"][0] == "airplane" and train.classes["label"][9] == "truck"
    img = train.images[3]  # first image of data_batch_2: the marked one
    assert img[0, 0, 1] == 255 and img[1, 2, 0] == 200 and img[2, 31, 30] == 7
    assert int(img.sum()) == 255 + 200 + 7
    assert torch.equal(train.images[4].flatten(), torch.from_numpy(batches[2][0][1]))
    assert torch.equal(test.images.reshape(2, -1), torch.from_numpy(test_rows))


def test_cifar100_fine_and_coarse(cifar100_root):
    root, train_rows = cifar100_root
    train, test = load_cifar(root, "cifar100")
    assert train.labels["label"].tolist() == [0, 99, 5, 42]
    assert train.labels["coarse_label"].tolist() == [4, 19, 0, 3]
    assert test.labels["coarse_label"].tolist() == [1, 2]
    assert len(train.classes["label"]) == 100 and train.classes["coarse_label"][19] == "coarse19"
    assert train.images[0, 0, 0, 1] == 255 and train.images[0, 1, 2, 0] == 200
    assert torch.equal(train.images.reshape(4, -1), torch.from_numpy(train_rows))


def test_cifar_missing_never_downloads(tmp_path, monkeypatch):
    import torchvision.datasets

    def no_download(*a, **k):
        raise AssertionError("must not download")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_download)
    with pytest.raises(UserError) as e:
        load_cifar(tmp_path / "nowhere", "cifar10")
    msg = str(e.value)
    assert "CIFAR-10 not found under" in msg and str(tmp_path / "nowhere") in msg
    assert "cifar-10-batches-py" in msg and "data.download=true" in msg and "\n" not in msg
    with pytest.raises(UserError, match="CIFAR-100 not found.*cifar-100-python"):
        load_cifar(tmp_path, "cifar100")


def test_cifar_incomplete_and_corrupt(cifar10_root):
    root, _, _ = cifar10_root
    folder = root / "cifar-10-batches-py"
    (folder / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(UserError, match="data_batch_3 is unreadable or corrupt"):
        load_cifar(root)
    os.remove(folder / "data_batch_3")
    with pytest.raises(UserError, match="incomplete.*data_batch_3 is missing"):
        load_cifar(root)


def test_cifar_pickle_cannot_run_code(cifar10_root, tmp_path):
    root, _, _ = cifar10_root
    flag = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(flag),))

    _dump({b"data": Evil(), b"labels": []}, root / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(UserError, match="test_batch is unreadable or corrupt.*refusing"):
        load_cifar(root)
    assert not flag.exists()


# ----------------------------------------------------------------------------- STL-10
def test_stl10_pixels_labels_splits(stl_root):
    root, train_x, test_x, unl_x, names = stl_root
    train, test = load_stl10(root, "train")
    assert train.images.shape == (3, 3, 96, 96)
    assert train.images[0, 0, 0, 5] == 255 and train.images[0, 2, 7, 0] == 100
    assert int(train.images[0].sum()) == 355
    assert torch.equal(train.images, torch.from_numpy(train_x))
    assert torch.equal(test.images, torch.from_numpy(test_x))
    assert train.labels["label"].tolist() == [0, 9, 2] and test.labels["label"].tolist() == [1, 3]
    assert train.classes["label"] == names

    both, _ = load_stl10(root, "train+unlabeled")
    assert torch.equal(both.images, torch.from_numpy(np.concatenate([train_x, unl_x])))
    assert both.labels["label"].tolist() == [0, 9, 2, -1, -1]
    unl, _ = load_stl10(root, "unlabeled")
    assert unl.labels["label"].tolist() == [-1, -1]


def test_stl10_resize(stl_root):
    root, *_ = stl_root
    train, test = load_stl10(root, "train", image_size=32)
    assert train.images.shape == (3, 3, 32, 32) and test.images.shape == (2, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.image_size == 32
    assert bool((test.images[1] == 128).all())


def test_stl10_errors(stl_root, tmp_path):
    with pytest.raises(UserError, match="STL-10 not found under .*stl10_binary.*data.download=true"):
        load_stl10(tmp_path / "empty")
    root, *_ = stl_root
    os.remove(root / "stl10_binary" / "unlabeled_X.bin")
    load_stl10(root, "train")  # the unlabeled file is only needed when asked for
    with pytest.raises(UserError, match="unlabeled_X.bin is missing"):
        load_stl10(root, "train+unlabeled")
    with open(root / "stl10_binary" / "test_X.bin", "ab") as f:
        f.write(b"\x00" * 10)
    with pytest.raises(UserError, match="test_X.bin has .* bytes, not a multiple"):
        load_stl10(root, "train")


# ----------------------------------------------------------------------------- ImageFolder
def test_imagefolder_scan_labels(folder_root):
    train, test = load_imagefolder(folder_root, image_size=16)
    assert isinstance(train, FileImageSet)
    assert train.classes == {"label": ["cat", "dog"]}
    names = [os.path.relpath(p, folder_root / "train") for p in train.paths]
    assert names == ["cat/a_marked.png", "cat/b_halves.png", "dog/d.jpeg", "dog/e_gray.png", "dog/sub/c.JPG"]
    assert train.labels["label"].tolist() == [0, 0, 1, 1, 1]
    assert len(test) == 1 and test.labels["label"].tolist() == [1] and test.classes == train.classes


def test_imagefolder_pixels_resize_crop(folder_root):
    train, _ = load_imagefolder(folder_root, image_size=16)
    x, i = train[0]
    assert i == 0 and x.shape == (3, 16, 16) and x.dtype == torch.uint8
    assert x[0, 2, 5] == 250 and x[1, 9, 1] == 120 and int(x.sum()) == 370  # no resampling at 16x16
    # 64x32 -> shorter side 16 -> 32x16 -> centre crop x in [8, 24): left half red, right half blue
    x, _ = train[1]
    assert x[0, 8, 2] > 250 and x[2, 8, 2] < 5
    assert x[2, 8, 13] > 250 and x[0, 8, 13] < 5
    for k in range(len(train)):
        assert train[k][0].shape == (3, 16, 16)
    gray, _ = train[3]
    assert bool((gray == 200).all())  # grayscale converted to RGB
    big, _ = load_imagefolder(folder_root, image_size=40)
    assert big[4][0].shape == (3, 40, 40)  # upscaling works too


def test_imagefolder_errors(tmp_path, folder_root):
    with pytest.raises(UserError, match=r"data folder .*nope does not exist; set data.root="):
        load_imagefolder(tmp_path / "nope")
    with pytest.raises(UserError, match=r"training folder .*imgs.training does not exist.*data.train_dir"):
        load_imagefolder(folder_root, train_dir="training")
    flat = tmp_path / "flat" / "train"
    flat.mkdir(parents=True)
    (flat / "x.png").write_bytes(b"")
    with pytest.raises(UserError, match=r"flat.train has no class sub-folders"):
        load_imagefolder(tmp_path / "flat")
    (folder_root / "train" / "zebra").mkdir()
    (folder_root / "train" / "zebra" / "readme.txt").write_text("x")
    with pytest.raises(UserError) as e:
        load_imagefolder(folder_root)
    msg = str(e.value)
    assert "class folder" in msg and str(folder_root / "train" / "zebra") in msg and "has no images" in msg
    assert ".jpg" in msg and ".webp" in msg and "\n" not in msg


def test_imagefolder_test_split(folder_root):
    _, test = load_imagefolder(folder_root, test_dir=None)
    assert test is None
    _save(folder_root / "val" / "wolf" / "w.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(UserError, match=r"test folder .*val has classes not in .*train: wolf"):
        load_imagefolder(folder_root)


def test_imagefolder_test_dir_auto_val_or_test(folder_root):
    """test_dir="auto" (the default): ROOT/val, else ROOT/test, else no test split with a note; both:
    val, said in the note. A named test_dir that is missing is a one-line error; None: no split."""
    root = folder_root
    train, test = load_imagefolder(root, image_size=16)
    assert test is not None and test.split_dir == str(root / "val") and train.split_dir == str(root / "train")
    assert train.note is None and len(test) == 1
    (root / "val").rename(root / "test")  # only test/: used, not silently ignored
    train, test = load_imagefolder(root, image_size=16)
    assert test is not None and test.split_dir == str(root / "test") and train.note is None
    assert test.labels["label"].tolist() == [1] and test.classes == train.classes
    _, named = load_imagefolder(root, test_dir="test", image_size=16)
    assert named.split_dir == str(root / "test")
    _save(root / "val" / "cat" / "v2.png", np.full((10, 10, 3), 7, np.uint8))  # both: val wins, said once
    train, test = load_imagefolder(root, image_size=16)
    assert test.split_dir == str(root / "val") and test.labels["label"].tolist() == [0]
    assert "both val/ and test/" in train.note and "using val/" in train.note and "\n" not in train.note
    import shutil

    shutil.rmtree(root / "val")
    shutil.rmtree(root / "test")
    train, test = load_imagefolder(root, image_size=16)
    assert test is None
    assert train.note == (f"no val/ or test/ folder under {root}: the kNN monitor is off and eval needs a "
                          "test split")
    with pytest.raises(UserError) as e:
        load_imagefolder(root, test_dir="val")
    msg = str(e.value)
    assert f"test folder {root / 'val'} does not exist" in msg and "data.test_dir=auto" in msg
    assert "data.test_dir=null" in msg and "\n" not in msg
    train, test = load_imagefolder(root, test_dir=None)
    assert test is None and train.note is None


def _imagefolder_cfg(root, **kw):
    from types import SimpleNamespace

    return SimpleNamespace(**{**dict(name="imagefolder", label="digit", root=str(root), download=False,
                                     train_dir="train", test_dir="auto", image_size=16, long_tail_ratio=None), **kw})


def test_build_datasets_imagefolder_test_dir_auto(folder_root):
    """build_datasets passes test_dir="auto" through to load_imagefolder."""
    from contrastlab.data import build_datasets

    (folder_root / "val").rename(folder_root / "test")
    train, test = build_datasets(_imagefolder_cfg(folder_root))
    assert test is not None and test.split_dir == str(folder_root / "test") and test.default_label == "label"
    import shutil

    shutil.rmtree(folder_root / "test")
    train, test = build_datasets(_imagefolder_cfg(folder_root))
    assert test is None and train.note.startswith("no val/ or test/ folder under")


def test_build_datasets_imagefolder_long_tail_keeps_default_label(folder_root):
    """The long-tailed subset of an image folder keeps the default label (the trainer reads it),
    the split folder and the note."""
    from contrastlab.data import build_datasets

    train, _ = build_datasets(_imagefolder_cfg(folder_root, test_dir="val", long_tail_ratio=2.0))
    assert len(train) == 3 and train.default_label == "label"
    assert train.split_dir == str(folder_root / "train")
    import shutil

    shutil.rmtree(folder_root / "val")
    train, _ = build_datasets(_imagefolder_cfg(folder_root, long_tail_ratio=2.0))
    assert train.note.startswith("no val/ or test/ folder under")


def test_imagefolder_in_memory_holds_the_decoded_files(folder_root):
    """data.in_memory=true: both splits decoded once into uint8 tensors equal, image by image, to
    what the files give on demand, with the same labels, classes, default label, folder and note."""
    from contrastlab.data import TensorImageSet, build_datasets

    on_disk = build_datasets(_imagefolder_cfg(folder_root, in_memory=False))
    in_mem = build_datasets(_imagefolder_cfg(folder_root, in_memory=True))
    for a, b in zip(on_disk, in_mem):
        assert isinstance(b, TensorImageSet) and not isinstance(a, TensorImageSet)
        assert len(a) == len(b) and b.images.dtype == torch.uint8 and b.images.shape[1:] == (3, 16, 16)
        for i in range(len(a)):
            assert torch.equal(a[i][0], b.images[i]), i
        assert torch.equal(a.labels["label"], b.labels["label"]) and a.classes == b.classes
        assert (a.default_label, a.split_dir, a.note) == (b.default_label, b.split_dir, b.note)


def test_imagefolder_in_memory_names_a_corrupt_file(folder_root):
    bad = folder_root / "train" / "dog" / "bad.png"
    bad.write_bytes(b"this is not a png at all" * 10)
    from contrastlab.data import build_datasets

    with pytest.raises(UserError, match="bad.png is unreadable or corrupt"):
        build_datasets(_imagefolder_cfg(folder_root, in_memory=True))


def test_in_memory_config_errors():
    from contrastlab.config import load_config
    from contrastlab.errors import ConfigError

    with pytest.raises(ConfigError, match="data.in_memory=true applies to data.name=imagefolder"):
        load_config("simclr", ["data.in_memory=true"])
    with pytest.raises(ConfigError, match="views.backend=torchvision crops each file at its full size"):
        load_config("simclr/imagefolder_cpu", ["views.backend=torchvision"])
    assert load_config("simclr/imagefolder_cpu").data.in_memory


def test_corrupt_image_in_test_split_named(folder_root):
    """The test split's files are checked like the training files: test.check_readable() names the file."""
    (folder_root / "val").rename(folder_root / "test")
    bad = folder_root / "test" / "cat" / "broken.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 4)
    train, test = load_imagefolder(folder_root, image_size=16)
    train.check_readable()
    with pytest.raises(UserError) as e:
        test.check_readable()
    msg = str(e.value)
    assert str(bad) in msg and "unreadable or corrupt" in msg and "remove or replace" in msg and "\n" not in msg


def test_corrupt_image_named(folder_root):
    bad = folder_root / "train" / "dog" / "bad.png"
    bad.write_bytes(b"this is not a png at all" * 10)
    train, _ = load_imagefolder(folder_root, image_size=16)
    k = train.paths.index(str(bad))
    with pytest.raises(UserError) as e:
        train[k]
    msg = str(e.value)
    assert str(bad) in msg and "corrupt" in msg and "remove or replace" in msg and "\n" not in msg
    with pytest.raises(UserError, match="bad.png is unreadable or corrupt"):
        train.check_readable()
    train.check_readable(max_files=k)  # the files before it are fine


def test_truncated_image_caught(folder_root):
    good = folder_root / "train" / "cat" / "b_halves.png"
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    train, _ = load_imagefolder(folder_root, image_size=16)
    with pytest.raises(UserError, match="b_halves.png is unreadable or corrupt"):
        train.check_readable()
    with pytest.raises(UserError, match="b_halves.png"):
        train[1]
    good.write_bytes(data)
    # verify() checks next to nothing in a JPEG: only a real decode finds the truncation
    jpeg = folder_root / "train" / "dog" / "d.jpeg"
    rng = np.random.default_rng(0)
    _save(jpeg, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "JPEG")
    jpeg.write_bytes(jpeg.read_bytes()[:-100])  # header intact, scan data cut
    with pytest.raises(UserError, match="d.jpeg is unreadable or corrupt"):
        train.check_readable()


def test_fileimageset_subset_transform_pickle(folder_root):
    train, _ = load_imagefolder(folder_root, image_size=16)
    sub = train.subset([4, 0])
    assert isinstance(sub, FileImageSet) and len(sub) == 2
    assert sub.paths == [train.paths[4], train.paths[0]]
    assert sub.labels["label"].tolist() == [1, 0] and sub.classes == train.classes
    assert torch.equal(sub[1][0], train[0][0]) and sub[1][1] == 1

    train.set_transform(lambda im: (im.mode, im.size))
    assert train[1] == (("RGB", (64, 32)), 1)
    assert train.subset([1])[0] == (("RGB", (64, 32)), 0)  # the transform is kept by subset
    train.set_transform(None)
    assert train[1][0].shape == (3, 16, 16)

    clone = pickle.loads(pickle.dumps(sub))  # DataLoader workers pickle the set
    assert clone.paths == sub.paths and torch.equal(clone[0][0], sub[0][0])


# ----------------------------------------------------------------------------- image modes
def _png16(path, array, color_type):
    """A 16-bit PNG written byte by byte (Pillow cannot write 16-bit RGB or gray + alpha):
    color_type 0 gray, 2 RGB, 4 gray + alpha, 6 RGBA; array (H, W[, C]) of uint16."""
    import struct
    import zlib

    h, w = array.shape[:2]
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def _gradient16():
    """16 x 16 uint16: a ramp over 0..65535 with rounding edges (128 -> 0.498, 129 -> 0.502, 32767 -> 127.498)."""
    v = np.linspace(0, 65535, 256).round().astype(np.uint16)
    v[1:7] = [1, 128, 129, 257, 32767, 32768]
    return v.reshape(16, 16)


def _to8(v):
    return np.floor(v.astype(np.float64) * 255 / 65535 + 0.5).astype(np.int64)


def test_16bit_grayscale_png_scaled_not_clipped(tmp_path):
    """A 16-bit grayscale PNG (Pillow mode I;16) decodes to round(v * 255 / 65535) in every channel,
    through open_rgb and FileImageSet; convert("RGB") alone clips it to 0..255 (almost all white)."""
    from contrastlab.data.files import open_rgb

    g = _gradient16()
    path = tmp_path / "g16.png"
    Image.fromarray(g).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"
    want = _to8(g)
    rgb = open_rgb(str(path))
    assert rgb.mode == "RGB" and rgb.size == (16, 16)
    got = np.asarray(rgb).astype(np.int64)
    for c in range(3):
        assert np.abs(got[..., c] - want).max() <= 1
    assert got[0, :7, 0].tolist() == [0, 0, 0, 1, 1, 127, 128]  # the rounding edges
    x, _ = FileImageSet([str(path)], {}, {}, 16)[0]  # 16 px: no resampling
    assert x.shape == (3, 16, 16) and int((x.long() - torch.from_numpy(want)).abs().max()) <= 1
    assert float(x.float().mean()) == pytest.approx(want.mean(), abs=1)  # not ~255
    # a 16-bit grayscale TIFF, and 16-bit RGB / gray + alpha PNGs (Pillow decodes those to 8 bits)
    Image.fromarray(g).save(tmp_path / "g16.tif")
    _png16(tmp_path / "rgb16.png", np.stack([g, 65535 - g, g], -1), 2)
    _png16(tmp_path / "ga16.png", np.stack([g, np.full_like(g, 65535)], -1), 4)
    for name, expected in (("g16.tif", [want] * 3), ("rgb16.png", [want, _to8(65535 - g), want]),
                           ("ga16.png", [want] * 3)):
        got = np.asarray(open_rgb(str(tmp_path / name))).astype(np.int64)
        for c in range(3):
            assert np.abs(got[..., c] - expected[c]).max() <= 1, (name, c)


def test_16bit_and_float_modes(tmp_path):
    """32-bit integer TIFFs (mode I) holding 16-bit values, float TIFFs (mode F) in [0, 1] and in
    [0, 255], and in memory I;16B (big-endian)."""
    from contrastlab.data.files import open_rgb

    g = _gradient16()
    want = _to8(g)
    Image.fromarray(g.astype(np.int32)).save(tmp_path / "i32.tif")
    unit = (np.arange(256, dtype=np.float32) / 255).reshape(16, 16)
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    scaled = unit * 255
    scaled[0, 0], scaled[0, 1] = np.nan, 300.0  # NaN -> 0, clipped at 255
    Image.fromarray(scaled).save(tmp_path / "f255.tif")
    with Image.open(tmp_path / "i32.tif") as im, Image.open(tmp_path / "unit.tif") as f:
        assert im.mode == "I" and f.mode == "F"
    assert np.abs(np.asarray(open_rgb(str(tmp_path / "i32.tif")))[..., 1].astype(np.int64) - want).max() <= 1
    assert np.asarray(open_rgb(str(tmp_path / "unit.tif")))[..., 0].reshape(-1).tolist() == list(range(256))
    out = np.asarray(open_rgb(str(tmp_path / "f255.tif")))[..., 2].reshape(-1).tolist()
    assert out == [0, 255] + list(range(2, 256))
    from contrastlab.data.files import to_rgb

    im = Image.fromarray(g.astype(">u2"))
    assert im.mode == "I;16B"
    assert np.abs(np.asarray(to_rgb(im))[..., 0].astype(np.int64) - want).max() <= 1


def _mode_case(kind, path):
    """(image file written in mode ``kind``, expected RGB pixels (H, W, 3))."""
    if kind == "LA":
        a = np.zeros((2, 2, 2), np.uint8)
        a[..., 0] = [[10, 200], [90, 255]]
        a[..., 1] = [[255, 0], [128, 255]]  # alpha is dropped, not blended
        Image.fromarray(a, "LA").save(path)
        return np.repeat(a[..., :1], 3, -1)
    if kind in ("P-index", "P-bytes"):
        im = Image.new("P", (2, 2))
        im.putpalette([255, 0, 0, 0, 0, 255, 0, 200, 0])
        im.putdata([0, 1, 2, 0])
        im.info["transparency"] = 0 if kind == "P-index" else b"\x00\x80"
        im.save(path, transparency=im.info["transparency"])
        return np.array([[[255, 0, 0], [0, 0, 255]], [[0, 200, 0], [255, 0, 0]]], np.uint8)
    if kind == "CMYK":
        a = np.array([[[0, 0, 0, 0], [255, 0, 0, 0]], [[0, 255, 255, 0], [0, 0, 0, 255]]], np.uint8)
        Image.fromarray(a, "CMYK").save(path)
        return np.array([[[255, 255, 255], [0, 255, 255]], [[255, 0, 0], [0, 0, 0]]], np.uint8)
    if kind == "1":
        Image.fromarray(np.array([[True, False], [False, True]])).save(path)
        return np.array([[[255] * 3, [0] * 3], [[0] * 3, [255] * 3]], np.uint8)
    if kind == "RGBA":
        a = np.array([[[1, 2, 3, 0], [250, 251, 252, 255]]] * 2, np.uint8)
        Image.fromarray(a, "RGBA").save(path)
        return a[..., :3]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,suffix", [("LA", "png"), ("P-index", "png"), ("P-bytes", "png"),
                                         ("CMYK", "tif"), ("1", "png"), ("RGBA", "png")])
def test_other_modes_give_plain_rgb(tmp_path, kind, suffix):
    import warnings

    from contrastlab.data.files import open_rgb

    path = tmp_path / f"im.{suffix}"
    expected = _mode_case(kind, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow warning per image (P with transparency)
        rgb = open_rgb(str(path))
    assert rgb.mode == "RGB"
    assert np.asarray(rgb).tolist() == expected.tolist()


# ----------------------------------------------------------------------------- worker errors
class _RaisesInWorker(torch.utils.data.Dataset):
    def __init__(self, exc):
        self.exc = exc

    def __len__(self):
        return 1

    def __getitem__(self, i):
        raise self.exc


def test_worker_error_line_from_dataloader_worker(folder_root):
    """A UserError in a DataLoader worker comes back with the worker's traceback in its message;
    worker_error_line recovers the original one line. Other exceptions give None."""
    from contrastlab.data.files import worker_error_line

    bad = folder_root / "train" / "dog" / "bad.png"
    bad.write_bytes(b"this is not a png at all" * 10)
    train, _ = load_imagefolder(folder_root, image_size=16)
    k = train.paths.index(str(bad))
    with pytest.raises(UserError) as direct:
        train[k]
    one_line = str(direct.value)
    ds = train.subset([0, k])
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1)
    with pytest.raises(UserError) as e:
        list(loader)
    assert "\n" in str(e.value) and "DataLoader worker" in str(e.value)  # what PyTorch gives
    assert worker_error_line(e.value) == one_line
    assert worker_error_line(direct.value) is None  # not from a worker
    assert worker_error_line(ValueError("x")) is None
    with pytest.raises(KeyError) as e:  # a bug in a worker keeps its traceback
        list(torch.utils.data.DataLoader(_RaisesInWorker(KeyError("k")), num_workers=1))
    assert worker_error_line(e.value) is None
    with pytest.raises(RuntimeError) as e:
        list(torch.utils.data.DataLoader(_RaisesInWorker(RuntimeError("boom")), num_workers=1))
    assert worker_error_line(e.value) is None


# ----------------------------------------------------------------------------- long tail
def test_long_tail_cifar10_lt_count():
    labels = torch.arange(10).repeat(5000)  # 5,000 per class, interleaved
    ds = TensorImageSet(torch.zeros(len(labels), 3, 1, 1, dtype=torch.uint8), {"label": labels},
                        {"label": [str(c) for c in range(10)]})
    lt = long_tail_subset(ds, 100)
    assert len(lt) == 12406
    counts = torch.bincount(lt.labels["label"], minlength=10).tolist()
    assert counts[0] == 5000 and counts[1] == 2997 and counts[-1] == 50
    assert counts == sorted(counts, reverse=True)
    assert len(long_tail_subset(ds, 1)) == 50000


def test_long_tail_errors_and_files(folder_root, stl_root):
    root, *_ = stl_root
    both, _ = load_stl10(root, "train+unlabeled")
    with pytest.raises(UserError, match="without a 'label' label.*stl_split=train"):
        long_tail_subset(both, 10)
    with pytest.raises(UserError, match="class.*have none"):
        long_tail_subset(load_stl10(root, "train")[0], 10)  # 3 images, 10 classes
    with pytest.raises(UserError, match=">= 1"):
        long_tail_subset(both, 0.5)
    train, _ = load_imagefolder(folder_root, image_size=16)
    lt = long_tail_subset(train, 2)  # cat 2, dog 3 -> n_max 2: cat keeps 2, dog keeps 1
    assert isinstance(lt, FileImageSet) and lt.labels["label"].tolist() == [0, 0, 1]


def test_build_datasets_long_tail_refuses_unlabelled_images(stl_root):
    """One long-tail function for every data set: build_datasets refuses a long-tailed subset of a
    split with unlabelled images (it used to drop them silently), naming the way out."""
    from types import SimpleNamespace

    from contrastlab.data import build_datasets

    root, *_ = stl_root
    cfg = SimpleNamespace(name="stl10", label="digit", root=str(root), download=False, stl_split="train+unlabeled",
                          image_size=96, long_tail_ratio=10.0)  # fmt: skip
    with pytest.raises(UserError, match="without a 'label' label.*stl_split=train"):
        build_datasets(cfg)


# ----------------------------------------------------------------------------- fixed subsets (SDCLR's splits)
@pytest.fixture
def cifar10_lt_root(tmp_path):
    """CIFAR-10 in its on-disk layout with 100 training images, 10 per class: row j of
    data_batch_k has label (j + 2k) % 10. Returns (root, rows (100, 3072), labels (100,))."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rows, labels = [], []
    for k in range(1, 6):
        r = _cifar_rows(20, 10 + k)
        lab = [(j + 2 * k) % 10 for j in range(20)]
        _dump({b"data": r, b"labels": lab}, folder / f"data_batch_{k}")
        rows.append(r)
        labels += lab
    _dump({b"data": _cifar_rows(2, 99), b"labels": [9, 0]}, folder / "test_batch")
    _dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, folder / "batches.meta")
    return tmp_path, np.concatenate(rows), np.array(labels)


def _cifar_cfg(root, *overrides):
    from contrastlab.config import load_config

    return load_config("sdclr/cifar10", [f"data.root={root}", *overrides]).data


def _rows_of(ds):
    return [bytes(x) for x in ds.images.reshape(len(ds), -1).numpy()]


def _hash_first(ids, key, k):
    """The first k of ``ids`` in the order of blake2b(f"{key}:{id}"), written out."""
    import hashlib

    return sorted(ids, key=lambda i: hashlib.blake2b(f"{key}:{i}".encode(), digest_size=8).digest())[:k]


def test_index_files_npy_and_text(tmp_path):
    from contrastlab.data import read_index_file

    np.save(tmp_path / "a.npy", np.array([7, 3, 11, 0], dtype=np.int64))  # SDCLR's split/*.npy: int64, any order
    np.save(tmp_path / "b.npy", np.array([7, 3, 11, 0], dtype=np.int32))
    (tmp_path / "c.txt").write_text("7, 3\n11\n\n  0\n")
    for name in ("a.npy", "b.npy", "c.txt"):
        got = read_index_file(str(tmp_path / name), "data.val_file", 12)
        assert got.dtype == torch.long and got.tolist() == [0, 3, 7, 11], name
    np.save(tmp_path / "float.npy", np.array([1.0, 2.0]))
    np.save(tmp_path / "2d.npy", np.zeros((2, 2), dtype=np.int64))
    (tmp_path / "dup.txt").write_text("1 2 2")
    (tmp_path / "word.txt").write_text("1 two 3")
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "neg.txt").write_text("-1 4")
    cases = {"a.npy": "index 11 is outside 0..9 of the training split (10 images)",
             "float.npy": "holds a float64 array of shape (2,); expected a 1-D array of integer indices",
             "2d.npy": "holds a int64 array of shape (2, 2)", "dup.txt": "lists index 2 2 times",
             "word.txt": "'two' is not an integer index", "empty.txt": "lists no index",
             "neg.txt": "index -1 is outside 0..9", "missing.npy": "no such file"}  # fmt: skip
    for name, msg in cases.items():
        with pytest.raises(UserError) as e:
            read_index_file(str(tmp_path / name), "data.train_file", 10)
        assert str(e.value).startswith(f"data.train_file={tmp_path / name}: ") and msg in str(e.value), str(e.value)
        assert "\n" not in str(e.value)


def test_official_style_index_files_choose_the_cifar_images(cifar10_lt_root, tmp_path):
    """train_file / val_file / long_tail_file as the official split/*.npy: the sets hold exactly the
    listed training images (pixels and labels, compared row by row with the batches)."""
    from contrastlab.data import build_datasets, build_splits

    root, rows, labels = cifar10_lt_root
    rng = np.random.default_rng(0)
    val = [int(i) for c in range(10) for i in np.flatnonzero(labels == c)[:2]]  # 2 per class: 20
    train = [i for i in range(100) if i not in val]  # the 80 others
    counts = [8, 6, 5, 4, 3, 2, 2, 1, 1, 1]  # floor(8 * (1/8) ** (c / 9)): ratio 8
    lt = [int(i) for c in range(10) for i in [j for j in train if labels[j] == c][: counts[c]]]
    np.save(tmp_path / "valIdxList.npy", rng.permutation(val).astype(np.int64))
    np.save(tmp_path / "trainIdxList.npy", rng.permutation(train).astype(np.int64))
    (tmp_path / "split1_D_i.txt").write_text("\n".join(map(str, rng.permutation(lt))))
    files = ["data.val_per_class=null", f"data.val_file={tmp_path / 'valIdxList.npy'}",
             f"data.train_file={tmp_path / 'trainIdxList.npy'}", "data.long_tail_split=null"]  # fmt: skip
    s = build_splits(_cifar_cfg(root, *files, "data.long_tail_ratio=8",
                                f"data.long_tail_file={tmp_path / 'split1_D_i.txt'}"))  # fmt: skip
    want = [bytes(rows[i]) for i in sorted(lt)]
    assert _rows_of(s.train) == want and s.train.labels["label"].tolist() == [int(labels[i]) for i in sorted(lt)]
    assert _rows_of(s.val) == [bytes(rows[i]) for i in sorted(val)] and s.val.default_label == "label"
    assert torch.bincount(s.train.labels["label"]).tolist() == counts
    # the balanced set (what eval linear probes after clearing long_tail_ratio): the training file
    import dataclasses

    balanced, _ = build_datasets(dataclasses.replace(_cifar_cfg(root, *files), long_tail_ratio=None))
    assert _rows_of(balanced) == [bytes(rows[i]) for i in sorted(train)]
    without_train_file = [files[0], files[1], files[3], "data.long_tail_ratio=null"]  # all images but the hold-out
    assert _rows_of(build_datasets(_cifar_cfg(root, *without_train_file))[0]) == [bytes(rows[i]) for i in sorted(train)]
    # a long-tailed file whose smallest class does not end the declared profile
    with pytest.raises(UserError) as e:
        build_splits(_cifar_cfg(root, *files, "data.long_tail_ratio=2", f"data.long_tail_file={tmp_path / 'split1_D_i.txt'}"))
    assert "holds 8 to 1 images per class, but the profile of data.long_tail_ratio=2 ends at 4" in str(e.value)
    # a hold-out that is trained on is refused, by either file
    (tmp_path / "bad_lt.txt").write_text(" ".join(map(str, lt + val[:1])))
    (tmp_path / "bad_train.txt").write_text(" ".join(map(str, train + val[:3])))
    with pytest.raises(UserError, match="shares 1 images with the validation hold-out"):
        build_splits(_cifar_cfg(root, *files, "data.long_tail_ratio=8", f"data.long_tail_file={tmp_path / 'bad_lt.txt'}"))
    with pytest.raises(UserError, match="share 3 images; a held-out image must not be trained on"):
        build_splits(_cifar_cfg(root, *files[:2], f"data.train_file={tmp_path / 'bad_train.txt'}", "data.long_tail_split=null"))


def test_generated_hold_out_and_long_tailed_splits(cifar10_lt_root):
    """val_per_class holds out each class's first images in the seeded order; long_tail_split=k
    draws the profile from the rest, fixed by k (the same draw twice, another for another k)."""
    from contrastlab.data import build_splits

    root, rows, labels = cifar10_lt_root
    s = build_splits(_cifar_cfg(root, "data.val_per_class=3", "data.long_tail_ratio=4", "data.long_tail_split=2"))
    val = sorted(i for c in range(10) for i in _hash_first([j for j in range(100) if labels[j] == c], "val/0", 3))
    assert _rows_of(s.val) == [bytes(rows[i]) for i in val]
    left = [i for i in range(100) if i not in val]  # 7 per class
    counts = [math.floor(7 * 0.25 ** (c / 9)) for c in range(10)]  # 7, 6, 5, 4, 3, 3, 2, 2, 1, 1
    lt = sorted(i for c in range(10) for i in _hash_first([j for j in left if labels[j] == c], "long_tail/2", counts[c]))
    assert _rows_of(s.train) == [bytes(rows[i]) for i in lt]
    assert torch.bincount(s.train.labels["label"]).tolist() == counts
    again = build_splits(_cifar_cfg(root, "data.val_per_class=3", "data.long_tail_ratio=4", "data.long_tail_split=2"))
    other = build_splits(_cifar_cfg(root, "data.val_per_class=3", "data.long_tail_ratio=4", "data.long_tail_split=3"))
    assert _rows_of(again.train) == _rows_of(s.train) and _rows_of(other.train) != _rows_of(s.train)
    assert _rows_of(other.val) == _rows_of(s.val)  # the hold-out does not move with the split
    moved = build_splits(_cifar_cfg(root, "data.val_per_class=3", "data.val_seed=1", "data.long_tail_ratio=4"))
    assert _rows_of(moved.val) != _rows_of(s.val)
    # without a split: each class's first images of those left, as before
    first = build_splits(_cifar_cfg(root, "data.val_per_class=3", "data.long_tail_ratio=4", "data.long_tail_split=null"))
    kept = sorted(i for c in range(10) for i in [j for j in left if labels[j] == c][: counts[c]])
    assert _rows_of(first.train) == [bytes(rows[i]) for i in kept]
    with pytest.raises(UserError, match=r"data.val_per_class=10 holds out every image of a class with 10 images"):
        build_splits(_cifar_cfg(root, "data.val_per_class=10"))


def test_no_subset_option_leaves_the_training_split_as_it_was(cifar10_lt_root):
    from contrastlab.data import build_splits

    root, rows, labels = cifar10_lt_root
    s = build_splits(_cifar_cfg(root, "data.val_per_class=null", "data.long_tail_split=null", "data.long_tail_ratio=null"))
    assert s.val is None and _rows_of(s.train) == [bytes(r) for r in rows]
    lt = build_splits(_cifar_cfg(root, "data.val_per_class=null", "data.long_tail_split=null"))  # ratio 100
    assert torch.equal(lt.train.images, long_tail_subset(s.train, 100).images)


def test_subset_options_given_twice_or_without_a_ratio_are_refused_at_load():
    from contrastlab.config import ConfigError, load_config

    cases = [(["data.long_tail_ratio=null"], "data.long_tail_split=1 chooses the long-tailed subset, but "
                                             "data.long_tail_ratio=null; set the ratio"),
             (["data.long_tail_file=x.npy"], "data.long_tail_split=1 and data.long_tail_file='x.npy': give the "
                                             "long-tailed subset once"),
             (["data.val_file=v.npy"], "data.val_per_class=500 and data.val_file='v.npy': give the validation hold-out once"),
             (["data.val_per_class=0"], "data.val_per_class=0: must be >= 1"),
             (["data.long_tail_split=0"], "data.long_tail_split=0: must be >= 1")]  # fmt: skip
    for overrides, msg in cases:
        with pytest.raises(ConfigError) as e:
            load_config("sdclr/cifar10", overrides)
        assert msg in str(e.value) and "\n" not in str(e.value), str(e.value)
    with pytest.raises(ConfigError, match="subsets of the training split apply to labelled data sets"):
        load_config("cut", ["data.val_per_class=5"])
