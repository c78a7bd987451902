"""Unpaired domains: the trainA/trainB/testA/testB folders and the embedded digit domains."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from contrastlab.data.unpaired import (
    DigitDomains,
    UnpairedFolders,
    default_load_size,
    digit_domains,
    write_domain_folders,
)
from contrastlab.errors import UserError

TINY = dict(n_train=50, n_test=20, seed=0, cache=False)


# ----------------------------------------------------------------------------- fixtures
def _save(path, arr_hwc):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr_hwc, dtype=np.uint8)).save(path)


def _flat(colour, size=12):
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (size, size, 3)).copy()


@pytest.fixture
def flat_root(tmp_path):
    """7 A images and 3 B images, each one flat colour (identified by its red value); mixed extensions."""
    for k in range(7):
        _save(tmp_path / "trainA" / f"a{k}.png", _flat((10 * k + 1, 50, 60)))
    for k in range(3):
        _save(tmp_path / "trainB" / f"b{k}{'.bmp' if k == 1 else '.png'}", _flat((100 + 10 * k, 70, 80)))
    (tmp_path / "trainB" / "notes.txt").write_text("not an image")
    for d in "AB":
        _save(tmp_path / f"test{d}" / "x.png", _flat((5, 5, 5)))
    return tmp_path


def _red(x):
    """The (flat) red value of a float image, back in 0..255."""
    v = x[0] * 255
    assert float(v.max() - v.min()) < 1.5, "expected a flat image"
    return int(round(float(v.mean())))


# ----------------------------------------------------------------------------- folders: errors
def test_missing_root_and_domain_folders_name_the_layout(tmp_path):
    with pytest.raises(UserError, match="nope does not exist.*trainA.*trainB.*testA.*testB"):
        UnpairedFolders(tmp_path / "nope")
    _save(tmp_path / "trainA" / "0.png", _flat((1, 2, 3)))
    with pytest.raises(UserError, match=r"trainB is missing.*trainA.*testA.*testB") as e:
        UnpairedFolders(tmp_path)
    assert "\n" not in str(e.value)
    _save(tmp_path / "trainB" / "0.png", _flat((1, 2, 3)))
    UnpairedFolders(tmp_path)  # the train split does not need the test folders
    with pytest.raises(UserError, match="testA is missing"):
        UnpairedFolders(tmp_path, split="test")
    with pytest.raises(UserError, match="unknown split 'val'"):
        UnpairedFolders(tmp_path, split="val")
    with pytest.raises(UserError, match="load_size=8 is smaller than image_size=12"):
        UnpairedFolders(tmp_path, image_size=12, load_size=8)


def test_empty_domain_folder(tmp_path):
    _save(tmp_path / "trainA" / "0.png", _flat((1, 2, 3)))
    (tmp_path / "trainB").mkdir()
    (tmp_path / "trainB" / "readme.txt").write_text("x")
    with pytest.raises(UserError, match=r"trainB has no images \(extensions .*\.png"):
        UnpairedFolders(tmp_path)


def test_corrupt_image_is_named(flat_root):
    bad = flat_root / "trainB" / "b2.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    ds = UnpairedFolders(flat_root, image_size=8, load_size=10)  # listing does not decode
    with pytest.raises(UserError, match=r"b2\.png is unreadable or corrupt"):
        ds.check_readable()
    ds.set_epoch(0)
    bad_item = next(i for i in range(len(ds)) if ds.pick_b(i) == 2)
    with pytest.raises(UserError, match=r"b2\.png is unreadable or corrupt"):
        ds[bad_item]


# ----------------------------------------------------------------------------- folders: items
def test_lengths_shapes_and_listing(flat_root):
    ds = UnpairedFolders(flat_root, image_size=8)
    assert (ds.n_a, ds.n_b, len(ds)) == (7, 3, 7)
    assert ds.load_size == default_load_size(8) == 9 and default_load_size(256) == 286
    assert [p.rsplit("/", 1)[1] for p in ds.paths("B")] == ["b0.png", "b1.bmp", "b2.png"]
    ds.check_readable()
    for i in range(len(ds)):
        a, b = ds[i]
        assert a.shape == b.shape == (3, 8, 8) and a.dtype == b.dtype == torch.float32
        assert _red(a) == 10 * (i % 7) + 1  # a = A[i % len A]
        assert _red(b) == 100 + 10 * ds.pick_b(i)  # b = the picked B image
        assert float(a.min()) >= 0 and float(a.max()) <= 1
    with pytest.raises(IndexError):
        ds[7]
    # the longer domain sets the length, whichever it is
    for k in range(3, 12):
        _save(flat_root / "trainB" / f"c{k:02d}.png", _flat((200, 0, 0)))
    assert len(UnpairedFolders(flat_root, image_size=8)) == 12


def test_b_picks_deterministic_independent_and_order_free(flat_root):
    ds = UnpairedFolders(flat_root, image_size=8, seed=3)
    picks = {}
    for epoch in range(30):
        ds.set_epoch(epoch)
        forward = [ds.pick_b(i) for i in range(len(ds))]
        backward = [_red(ds[i][1]) for i in reversed(range(len(ds)))][::-1]
        assert backward == [100 + 10 * j for j in forward]  # access order does not matter
        picks[epoch] = forward
    again = UnpairedFolders(flat_root, image_size=8, seed=3)
    again.set_epoch(7)
    assert [again.pick_b(i) for i in range(7)] == picks[7]  # same seed and epoch: same pairs
    other = UnpairedFolders(flat_root, image_size=8, seed=4)
    other_picks = []
    for epoch in range(30):
        other.set_epoch(epoch)
        other_picks.append([other.pick_b(i) for i in range(7)])
    assert sum(o != p for o, p in zip(other_picks, picks.values())) > 20  # another seed: other pairs
    assert len({tuple(p) for p in picks.values()}) > 20  # epochs draw fresh pairs
    flat = np.array(list(picks.values())).ravel()  # 210 draws of 3 indices: all used, roughly evenly
    counts = np.bincount(flat, minlength=3)
    assert counts.min() > 40
    serial = [i % 3 for i in range(7)]
    assert sum(p == serial for p in picks.values()) <= 2  # not the serial pairing


def _pattern(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _windows(big, s):
    """Every s x s window of big (H, W, 3) and its mirror image, as (3, s, s) uint8 tensors."""
    out = []
    for y in range(big.shape[0] - s + 1):
        for x in range(big.shape[1] - s + 1):
            w = torch.from_numpy(big[y:y + s, x:x + s].copy()).permute(2, 0, 1)
            out.append((w, False))
            out.append((w.flip(-1), True))
    return out


def test_train_transform_is_resize_crop_flip_and_test_split_is_fixed(tmp_path):
    img_a, img_b = _pattern(20, 30, 1), _pattern(16, 16, 2)
    _save(tmp_path / "trainA" / "0.png", img_a)
    _save(tmp_path / "trainB" / "0.png", img_b)
    _save(tmp_path / "testA" / "0.png", img_b)
    _save(tmp_path / "testB" / "0.png", img_a)
    # Independent reference: PIL bilinear resize to the square load_size, then every window.
    big = np.asarray(Image.fromarray(img_a).resize((13, 13), Image.Resampling.BILINEAR))
    windows = _windows(big, 10)
    ds = UnpairedFolders(tmp_path, image_size=10, load_size=13)
    seen = set()
    for epoch in range(40):
        ds.set_epoch(epoch)
        a, _ = ds[0]
        a8 = (a * 255).round().to(torch.uint8)
        match = [k for k, (w, _) in enumerate(windows) if torch.equal(w, a8)]
        assert match, "the train output is not a (flipped) crop of the resized image"
        seen.add(windows[match[0]][1])
    assert seen == {False, True}  # flipped and unflipped crops both occur
    ds_noflip = UnpairedFolders(tmp_path, image_size=10, load_size=13, flip=False)
    outs = []
    for epoch in range(20):
        ds_noflip.set_epoch(epoch)
        a8 = (ds_noflip[0][0] * 255).round().to(torch.uint8)
        assert any(torch.equal(w, a8) for w, f in windows if not f)
        outs.append(a8)
    assert any(not torch.equal(outs[0], o) for o in outs)  # the crop position is random

    # Test split: resize to image_size only; identical whatever the epoch or the seed.
    test = UnpairedFolders(tmp_path, split="test", image_size=16, seed=5)
    a, b = test[0]
    assert torch.equal((a * 255).round().to(torch.uint8), torch.from_numpy(img_b).permute(2, 0, 1))
    ref_b = np.asarray(Image.fromarray(img_a).resize((16, 16), Image.Resampling.BILINEAR))
    assert torch.equal((b * 255).round().to(torch.uint8), torch.from_numpy(ref_b.copy()).permute(2, 0, 1))
    for epoch in (1, 9):
        test.set_epoch(epoch)
        a2, b2 = test[0]
        assert torch.equal(a, a2) and torch.equal(b, b2)
    assert torch.equal(UnpairedFolders(tmp_path, split="test", image_size=16, seed=6)[0][1], b)


def test_test_split_pairs_serially(flat_root):
    for k in range(1, 4):
        _save(flat_root / "testB" / f"y{k}.png", _flat((10 * k, 5, 5)))
    ds = UnpairedFolders(flat_root, split="test", image_size=8)
    assert len(ds) == 4
    assert [_red(ds[i][1]) for i in range(4)] == [5, 10, 20, 30]  # B[i % len B], sorted listing
    assert [_red(ds[i][0]) for i in range(4)] == [5, 5, 5, 5]  # A[i % 1]


# ----------------------------------------------------------------------------- embedded domains
@pytest.fixture(scope="module")
def domains():
    return digit_domains(**TINY)


def test_digit_domains_shapes_and_determinism(domains):
    for split, n in (("train", 50), ("test", 20)):
        for d in "AB":
            x = domains[split][d]
            assert x["images"].shape == (n, 3, 32, 32) and x["images"].dtype == torch.uint8
            assert x["digit"].shape == (n,) and int(x["digit"].min()) >= 0 and int(x["digit"].max()) <= 9
            assert x["mask"].shape == (n, 32, 32)
    again = digit_domains(**TINY)
    other = digit_domains(**{**TINY, "seed": 1})
    for split in ("train", "test"):
        for d in "AB":
            for k in ("images", "digit", "source", "mask"):
                assert torch.equal(domains[split][d][k], again[split][d][k])
            assert not torch.equal(domains[split][d]["images"], other[split][d]["images"])
    # the test set does not depend on the size of the training set
    bigger = digit_domains(**{**TINY, "n_train": 60})
    assert torch.equal(bigger["test"]["B"]["images"], domains["test"]["B"]["images"])
    assert digit_domains(**{**TINY, "image_size": 48})["train"]["A"]["images"].shape[-1] == 48
    with pytest.raises(UserError, match="n_train must be >= 1"):
        digit_domains(n_train=0, cache=False)


def test_labels_sources_unpaired_and_disjoint(domains):
    from sklearn.datasets import load_digits

    targets = torch.tensor(load_digits().target)
    for split in ("train", "test"):
        for d in "AB":
            x = domains[split][d]
            assert torch.equal(x["digit"], targets[x["source"]])  # the label is the source digit's class
    tr = set(domains["train"]["A"]["source"].tolist()) | set(domains["train"]["B"]["source"].tolist())
    te = set(domains["test"]["A"]["source"].tolist()) | set(domains["test"]["B"]["source"].tolist())
    assert tr.isdisjoint(te)
    # independent draws: A and B do not show the same digits in the same order
    assert (domains["train"]["A"]["source"] == domains["train"]["B"]["source"]).float().mean() < 0.2
    assert len(set(domains["train"]["A"]["digit"].tolist())) == 10


def _value(x):
    """HSV value (the brightest channel) in [0, 1] of uint8 images (N, 3, H, W): (N, H, W)."""
    return x.float().amax(dim=1) / 255


def test_domains_differ_in_polarity_width_colour_texture(domains):
    a, b = domains["train"]["A"], domains["train"]["B"]
    la, lb = _value(a["images"]), _value(b["images"])
    ma, mb = a["mask"].bool(), b["mask"].bool()
    # polarity: A light background, darker strokes; B dark background, brighter strokes
    assert la[~ma].mean() > 0.75 and lb[~mb].mean() < 0.35
    assert la[ma].mean() < 0.5 and lb[mb].mean() > 0.7
    # stroke width, from the pixels alone (dark in A, bright in B), and from the masks
    area_a = (la < 0.5).float().mean(dim=(1, 2))
    area_b = (lb > 0.7).float().mean(dim=(1, 2))
    assert area_b.mean() > 1.8 * area_a.mean() and area_a.mean() > 0.03
    assert mb.float().mean() > 1.6 * ma.float().mean()
    # colour family: A strokes blue over red, B strokes red over blue
    pa, pb = a["images"].float().permute(1, 0, 2, 3)[:, ma], b["images"].float().permute(1, 0, 2, 3)[:, mb]
    assert pa[2].mean() > pa[0].mean() and pb[0].mean() > 2 * pb[2].mean()
    # texture: the background (2 px away from any stroke) of B varies far more within an image than A's
    far_a = F.max_pool2d(ma.float()[:, None], 5, stride=1, padding=2)[:, 0] == 0
    far_b = F.max_pool2d(mb.float()[:, None], 5, stride=1, padding=2)[:, 0] == 0
    std_a = torch.stack([la[i][far_a[i]].std() for i in range(len(la))])
    std_b = torch.stack([lb[i][far_b[i]].std() for i in range(len(lb))])
    assert std_b.median() > 3 * std_a.median()


def test_digit_domains_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRASTLAB_CACHE", str(tmp_path))
    opts = dict(n_train=12, n_test=5, seed=2)
    first = digit_domains(**opts)
    files = list(tmp_path.glob("digit-domains-*.pt"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp*"))
    assert torch.equal(digit_domains(**opts)["train"]["B"]["images"], first["train"]["B"]["images"])
    files[0].write_bytes(b"corrupt")  # a corrupt cache is regenerated
    assert torch.equal(digit_domains(**opts)["test"]["A"]["images"], first["test"]["A"]["images"])
    digit_domains(**{**opts, "seed": 3})
    assert len(list(tmp_path.glob("digit-domains-*.pt"))) == 2  # the key depends on the options


def test_digit_domains_dataset(domains, tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRASTLAB_CACHE", str(tmp_path))  # generated once, then read back
    opts = {**TINY, "cache": True}
    ds = DigitDomains("train", pick_seed=1, **opts)
    assert len(ds) == 50 and ds.images_a.dtype == torch.uint8 and ds.labels_b.shape == (50,)
    assert torch.equal(ds.images_a, domains["train"]["A"]["images"])
    for i in (0, 17, 49):
        a, b = ds[i]
        assert a.dtype == torch.float32 and a.shape == (3, 32, 32)
        assert torch.equal(a, ds.images_a[i].float() / 255)
        assert torch.equal(b, ds.images_b[ds.pick_b(i)].float() / 255)
    picks = [ds.pick_b(i) for i in range(50)]
    assert picks == [DigitDomains("train", pick_seed=1, **opts).pick_b(i) for i in range(50)]
    ds.set_epoch(1)
    assert [ds.pick_b(i) for i in range(50)] != picks
    test = DigitDomains("test", **opts)
    assert len(test) == 20
    assert all(torch.equal(test[i][1], test.images_b[i].float() / 255) for i in range(20))


def test_write_domain_folders_round_trip(domains, tmp_path):
    root = write_domain_folders(tmp_path / "digits", domains)
    for split, n in (("train", 50), ("test", 20)):
        for d in "AB":
            assert len(list((tmp_path / "digits" / f"{split}{d}").glob("*.png"))) == n
    test = UnpairedFolders(root, split="test", image_size=32)
    test.check_readable()
    for i in range(20):
        a, b = test[i]
        assert torch.equal((a * 255).round().to(torch.uint8), domains["test"]["A"]["images"][i])
        assert torch.equal((b * 255).round().to(torch.uint8), domains["test"]["B"]["images"][i])
    train = UnpairedFolders(root, image_size=32, load_size=32, flip=False)  # crop = the whole image
    for i in (0, 31, 49):
        a, b = train[i]
        assert torch.equal((a * 255).round().to(torch.uint8), domains["train"]["A"]["images"][i])
        assert torch.equal((b * 255).round().to(torch.uint8), domains["train"]["B"]["images"][train.pick_b(i)])
    with pytest.raises(UserError, match="trainA already holds images"):
        write_domain_folders(root, domains)
