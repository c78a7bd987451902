"""Real data readers, on tiny fixtures written in the exact on-disk formats."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from contrastlab.config import UserError
from contrastlab.data.base import TensorImageSet
from contrastlab.data.real import (
    FileImageSet,
    load_cifar,
    load_imagefolder,
    load_stl10,
    long_tail_subset,
)


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
    train, test = load_imagefolder(folder_root, test_dir="missing")
    assert test is None
    _, test = load_imagefolder(folder_root, test_dir=None)
    assert test is None
    _save(folder_root / "val" / "wolf" / "w.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(UserError, match=r"test folder .*val has classes not in .*train: wolf"):
        load_imagefolder(folder_root)


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
