"""Few-shot episodes: the folds, the binary coding of a class mask, the sampler (layout, class,
distinct images, determinism from (seed, index) alone), the base-class view's re-coding, the
embedded sources (digit scenes, synthetic organs), the one-line errors for too few images of a
class, and the readers of the public layouts (PASCAL-5i, COCO-20i, medical slices) on tiny
fixtures written here in those layouts, with their bad-data errors."""
import pytest
import torch

from contrastlab.data.episodes import (IGNORE, EpisodeSource, OrganSpec, binary_mask, block_folds, episode_source,
                                       interleaved_folds, organ_slices)  # fmt: skip
from contrastlab.errors import UserError


def _toy_source(n=12, size=8, min_pixels=1):
    """Images of 4 classes (2 folds of 2): image i contains class 1 + i % 4 in its top-left quarter,
    class 1 + (i + 1) % 4 in its bottom-right quarter, a 255 border row."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    for i in range(n):
        masks[i, : size // 2, : size // 2] = 1 + i % 4
        masks[i, size // 2 :, size // 2 :] = 1 + (i + 1) % 4
        masks[i, 0, :] = IGNORE
    return EpisodeSource(images, masks, ["bg", "a", "b", "c", "d"], [[1, 2], [3, 4]], name="toy", min_pixels=min_pixels)


def test_folds_pascal_blocks_and_coco_interleaved():
    assert block_folds(20, 4) == [list(range(5 * i + 1, 5 * i + 6)) for i in range(4)]
    folds = interleaved_folds(80, 4)
    for i in range(4):
        assert folds[i] == [4 * k + i + 1 for k in range(20)]
    assert sorted(c for f in folds for c in f) == list(range(1, 81))
    with pytest.raises(UserError, match="equal folds"):
        block_folds(10, 3)


def test_binary_mask_codes_class_other_and_ignore():
    m = torch.tensor([[0, 3, 5], [255, 3, 1]], dtype=torch.uint8)
    want = [[0, 1, 0], [255, 1, 0]]
    assert binary_mask(m, 3).tolist() == want
    assert binary_mask(m, 3).dtype == torch.long


def test_novel_and_base_classes():
    src = _toy_source()
    assert src.novel_classes(0) == [1, 2] and src.base_classes(0) == [3, 4]
    assert src.novel_classes(1) == [3, 4] and src.base_classes(1) == [1, 2]
    with pytest.raises(UserError, match="fold=2: toy has folds 0..1"):
        src.novel_classes(2)


def test_episode_layout_and_content():
    src = _toy_source()
    k, b = 3, 5
    batch = src.novel_episodes(0, k, seed=7).batch(range(b))
    assert batch["support_images"].shape == (b, k, 3, 8, 8) and batch["support_images"].dtype == torch.float32
    assert batch["support_masks"].shape == (b, k, 8, 8) and batch["support_masks"].dtype == torch.long
    assert batch["query_image"].shape == (b, 3, 8, 8) and batch["query_mask"].shape == (b, 8, 8)
    assert batch["class_id"].shape == (b,) and batch["class_id"].dtype == torch.long
    assert 0 <= float(batch["support_images"].min()) and float(batch["support_images"].max()) <= 1
    for e in range(b):
        c = int(batch["class_id"][e])
        assert c in (1, 2)
        q, s = int(batch["query_index"][e]), batch["support_index"][e].tolist()
        assert len(set([q, *s])) == k + 1  # all distinct
        for i, m in zip([q, *s], [batch["query_mask"][e], *batch["support_masks"][e]]):
            # each image contains the class, its mask is the loop-coded binary mask
            want = [[255 if v == 255 else int(v == c) for v in row] for row in src.masks[i].tolist()]
            assert m.tolist() == want
            assert (m == 1).any()
        assert torch.equal(batch["query_image"][e], src.images[q].float() / 255)


def test_episodes_depend_on_seed_and_index_only():
    src = _toy_source()
    s1 = src.novel_episodes(1, 2, seed=3)
    s2 = src.novel_episodes(1, 2, seed=3)
    a = s1.batch([5, 9])
    s2.batch(range(20))  # drawing others first changes nothing
    b = s2.batch([5, 9])
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert s1.draw(9)[1] == int(b["query_index"][1])
    c = src.novel_episodes(1, 2, seed=4).batch(range(20))
    assert not torch.equal(c["query_index"], s1.batch(range(20))["query_index"])
    # over many episodes every novel class and many images are drawn
    many = s1.batch(range(200))
    assert set(many["class_id"].tolist()) == {3, 4}


def test_too_few_images_for_k_shots_is_one_line():
    src = _toy_source(n=8)  # each class in 4 images (two quarters of consecutive images)
    src.novel_episodes(0, 3)
    with pytest.raises(UserError) as e:
        src.novel_episodes(0, 4)
    msg = str(e.value)
    assert "\n" not in msg and "toy" in msg and "class 1 (a)" in msg and "fewer than the 5" in msg


def test_min_pixels():
    src = _toy_source(size=8, min_pixels=17)  # a quarter holds 16 pixels (12 below the 255 row)
    assert len(src.images_of(1)) == 0


@pytest.mark.parametrize("novel, code", [("background", 0), ("ignore", 255)])
def test_base_view_recodes(novel, code):
    src = _toy_source()
    view = src.base_view(0, novel=novel)  # base classes 3, 4 -> 1, 2; novel 1, 2 -> code
    assert view.mask_classes == ["bg", "c", "d"]
    idx = view.labels["index"].tolist()
    for j, i in enumerate(idx):
        orig = src.masks[i].tolist()
        lut = {0: 0, 255: 255, 1: code, 2: code, 3: 1, 4: 2}
        assert view.masks[j].tolist() == [[lut[v] for v in row] for row in orig]
        assert torch.equal(view.images[j], src.images[i])
    # every image here has a base class (class 1 + i % 4 or 1 + (i + 1) % 4 is 3 or 4 except for i % 4 == 0)
    assert idx == [i for i in range(len(src)) if i % 4 != 0]


def test_digit_source_and_base_view():
    from contrastlab.data import DigitScenesSpec, digit_scenes
    from contrastlab.data.episodes import digit_episode_source

    _, test = digit_scenes(DigitScenesSpec(n_train=64, n_test=300))
    src = digit_episode_source(test, n_folds=2)
    assert src.novel_classes(1) == [6, 7, 8, 9, 10] and src.class_names[6] == "5"
    assert digit_episode_source(test, n_folds=5).novel_classes(2) == [5, 6]
    b = src.novel_episodes(1, 1, seed=0).batch(range(4))
    assert set(b["class_id"].tolist()) <= {6, 7, 8, 9, 10}
    assert ((b["query_mask"] == 1).flatten(1).sum(1) > 0).all()
    with pytest.raises(UserError, match="2, 5 or 10 folds"):
        digit_episode_source(test, n_folds=3)


def test_organ_slices_deterministic_with_held_out_folds():
    a, folds = organ_slices(OrganSpec(n_volumes=3, depth=8, size=24, seed=1))
    b, _ = organ_slices(OrganSpec(n_volumes=3, depth=8, size=24, seed=1))
    c, _ = organ_slices(OrganSpec(n_volumes=3, depth=8, size=24, seed=2))
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (24, 3, 24, 24) and a.volumes.tolist() == [v for v in range(3) for _ in range(8)]
    assert folds.tolist() == [[1], [2], [3], [4]]
    assert set(a.masks.unique().tolist()) == {0, 1, 2, 3, 4}
    # each organ has its own intensity: the organs' mean grey values are apart
    means = [float(a.images[:, 0][a.masks == k].float().mean()) for k in range(1, 5)]
    assert min(abs(x - y) for i, x in enumerate(means) for y in means[i + 1 :]) > 5
    src = episode_source(a, folds.tolist())
    ep = src.novel_episodes(2, 1, seed=0).batch(range(3))
    assert (ep["class_id"] == 3).all() and (ep["volume"] >= 0).all()


# ----------------------------------------------------------------------------- public layouts on tiny fixtures
def _dcfg(name, root, **kw):
    from contrastlab.config import DataConfig

    return DataConfig(name=name, root=str(root), image_size=kw.pop("image_size", 12), **kw)


def _write_pair(img_path, mask_path, mask, size=None, seed=0):
    import numpy as np
    from PIL import Image

    h, w = mask.shape if size is None else size
    rng = np.random.default_rng(seed)
    img_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(img_path, quality=95)
    Image.fromarray(mask.astype(np.uint8), mode="L").save(mask_path)


def _pascal(root, n_per_class=3, classes=(1, 6, 11, 16), size=12):
    """A PASCAL-5i folder: for each class, n images whose top-left block is the class, one 255 row,
    and (every other image) a block of a second class; train list in PFENet's form, val list of ids."""
    import numpy as np

    truth, lines, ids = {}, [], []
    for c in classes:
        for j in range(n_per_class):
            m = np.zeros((size, size), dtype=np.uint8)
            m[:6, :6] = c
            if j % 2:
                m[6:, 6:] = 20
            m[-1, :] = 255
            name = f"2008_{c:03d}{j}"
            _write_pair(root / "JPEGImages" / f"{name}.jpg", root / "SegmentationClassAug" / f"{name}.png", m, seed=c * 10 + j)
            truth[name] = m
            lines.append(f"JPEGImages/{name}.jpg SegmentationClassAug/{name}.png")
            ids.append(name)
    (root / "lists").mkdir(parents=True, exist_ok=True)
    (root / "lists" / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "lists" / "val.txt").write_text("\n".join(ids) + "\n")
    return truth, ids


def test_pascal5i_layout_reads_masks_folds_and_episodes(tmp_path):
    from contrastlab.data import build_datasets
    from contrastlab.data.episodes import source_of

    truth, ids = _pascal(tmp_path)
    train, test = build_datasets(_dcfg("pascal5i", tmp_path))
    assert len(train) == len(test) == len(ids) and train.mask_classes[1] == "aeroplane"
    for i, name in enumerate(ids):
        assert test.masks[i].numpy().tolist() == truth[name].tolist()  # same size: nearest resize is exact
        assert test.files[i].endswith(f"JPEGImages/{name}.jpg")
    src = source_of(test)
    assert src.folds == [list(range(5 * i + 1, 5 * i + 6)) for i in range(4)]
    assert src.novel_classes(1) == [6, 7, 8, 9, 10]
    ep = src.sampler([6], 2, seed=0).batch(range(3))  # class 6 (bus) has 3 images: 2 supports + 1 query
    assert (ep["class_id"] == 6).all() and int((ep["query_mask"] == 255).sum()) == 3 * 12
    assert torch.equal(src.base_view(1).masks, src.base_view(1, novel="ignore").masks)  # the default
    base = src.base_view(1, novel="background")  # fold 1 novel: class 6 -> 0; base [1..5, 11..20] -> 1..15 (20 -> 15)
    for j, i in enumerate(base.labels["index"].tolist()):
        orig = src.masks[i]
        assert (base.masks[j][orig == 6] == 0).all() and (base.masks[j][orig == 20] == 15).all()
        assert (base.masks[j][orig == 11] == 6).all() and (base.masks[j][orig == 255] == 255).all()
    assert len(base) == len(ids) - 2  # the two bus images without class 20 have no base class: dropped


def test_coco20i_layout_interleaved_folds(tmp_path):
    import numpy as np

    from contrastlab.data import build_datasets
    from contrastlab.data.episodes import source_of

    lines = []
    for c in (1, 2, 5, 80):
        for j in range(2):
            m = np.zeros((10, 10), dtype=np.uint8)
            m[2:7, 2:7] = c
            name = f"COCO_train2014_{c:06d}{j}"
            _write_pair(tmp_path / "train2014" / f"{name}.jpg", tmp_path / "annotations" / "train2014" / f"{name}.png", m)
            lines.append(f"train2014/{name}.jpg annotations/train2014/{name}.png")
    (tmp_path / "lists").mkdir()
    for split in ("train", "val"):
        (tmp_path / "lists" / f"{split}.txt").write_text("\n".join(lines))
    train, test = build_datasets(_dcfg("coco20i", tmp_path, image_size=10))
    assert train.mask_classes[80] == "toothbrush" and len(train.mask_classes) == 81
    src = source_of(test)
    assert src.novel_classes(0)[:3] == [1, 5, 9] and 80 in src.novel_classes(3) and 2 in src.novel_classes(1)
    ep = src.sampler([1, 5], 1, seed=0).batch(range(6))
    assert set(ep["class_id"].tolist()) <= {1, 5} and ((ep["query_mask"] == 1).flatten(1).sum(1) == 25).all()
    with pytest.raises(UserError, match=r"lists/val.txt: class 1 \(person\) is in 2 image"):
        src.sampler([1, 5], 2)
    with pytest.raises(UserError, match=r"class 9 \(boat\) is in 0 image"):  # fold 0 has classes absent here
        src.novel_episodes(0, 1)


def test_pair_layout_errors_name_the_file(tmp_path):
    import numpy as np

    from contrastlab.data import build_datasets

    _pascal(tmp_path)
    bad = tmp_path / "SegmentationClassAug" / "2008_0010.png"
    _write_pair(tmp_path / "JPEGImages" / "2008_0010.jpg", bad, np.zeros((10, 12), dtype=np.uint8), size=(12, 12))
    with pytest.raises(UserError) as e:
        build_datasets(_dcfg("pascal5i", tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and "12x10" in msg and "must match its image" in msg
    m = np.zeros((12, 12), dtype=np.uint8)
    m[3, 3] = 21
    _write_pair(tmp_path / "JPEGImages" / "2008_0010.jpg", bad, m)
    with pytest.raises(UserError) as e:
        build_datasets(_dcfg("pascal5i", tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and "value(s) 21 outside the class list" in msg


def test_pascal_class_with_too_few_images_names_the_list(tmp_path):
    from contrastlab.data import build_datasets
    from contrastlab.data.episodes import source_of

    _pascal(tmp_path, n_per_class=2)
    _, test = build_datasets(_dcfg("pascal5i", tmp_path))
    with pytest.raises(UserError) as e:
        source_of(test).novel_episodes(0, 2)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "lists" / "val.txt") in msg and "class 1 (aeroplane) is in 2 image(s)" in msg


def _write_nifti(path, a, gz=False):
    """A single-file NIfTI-1 volume written field by field (int16 data, Fortran order)."""
    import gzip
    import struct

    import numpy as np

    hdr = bytearray(348)
    struct.pack_into("<i", hdr, 0, 348)
    dims = [a.ndim, *a.shape] + [1] * (7 - a.ndim)
    struct.pack_into("<8h", hdr, 40, *dims)
    struct.pack_into("<hh", hdr, 70, 4, 16)  # datatype int16, bitpix 16
    struct.pack_into("<f", hdr, 108, 352.0)
    struct.pack_into("<ff", hdr, 112, 1.0, 0.0)
    hdr[344:348] = b"n+1\x00"
    blob = bytes(hdr) + b"\x00" * 4 + np.asarray(a, dtype="<i2").tobytes(order="F")
    (gzip.open if gz else open)(path, "wb").write(blob)


def _volumes(root, n=5, shape=(12, 12, 6), ext=".nii.gz"):
    import numpy as np

    rng = np.random.default_rng(0)
    labels = []
    for v in range(n):
        img = rng.integers(0, 400, shape).astype(np.int16)
        lab = np.zeros(shape, dtype=np.int16)
        lab[1:6, 2:7, 1:4] = 1  # liver
        lab[7:10, 7:11, 2:5] = 4 if v % 2 else 2  # spleen or right kidney
        lab[8:11, 1:4, 0:3] = 3
        img[lab == 1] += 300
        labels.append(lab)
        for kind, a in (("image", img), ("label", lab)):
            if ext == ".npy":
                np.save(root / f"{kind}_{v + 1}.npy", a)
            else:
                _write_nifti(root / f"{kind}_{v + 1}{ext}", a, gz=ext.endswith(".gz"))
    return labels


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".npy"])
def test_medical_slices_layout(tmp_path, ext):
    from contrastlab.data import build_datasets
    from contrastlab.data.episodes import source_of

    labels = _volumes(tmp_path, n=6, ext=ext)
    train, test = build_datasets(_dcfg("slices", tmp_path, image_size=12))
    # ids sorted 1..6: test = positions 0 and 5 (ids 1, 6), train the other four; 6 slices each
    assert len(test) == 12 and len(train) == 24
    assert test.volumes.tolist() == [0] * 6 + [1] * 6
    for z in range(6):
        assert test.masks[z].numpy().tolist() == labels[0][:, :, z].tolist()
        assert test.masks[6 + z].numpy().tolist() == labels[5][:, :, z].tolist()
    assert test.mask_classes == ["background", "liver", "right_kidney", "left_kidney", "spleen"]
    src = source_of(train)
    assert src.folds == [[1], [2], [3], [4]] and src.novel_classes(0) == [1]  # one organ held out per fold
    ep = src.novel_episodes(0, 1, seed=0).batch(range(4))
    assert (ep["class_id"] == 1).all() and (ep["volume"] >= 0).all()


def test_medical_errors_name_the_file(tmp_path):
    import numpy as np

    from contrastlab.data import build_datasets

    _volumes(tmp_path, n=2, ext=".npy")
    np.save(tmp_path / "label_2.npy", np.zeros((12, 11, 6)))
    with pytest.raises(UserError) as e:
        build_datasets(_dcfg("slices", tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "label_2.npy") in msg and "(12, 11, 6)" in msg
    lab = np.zeros((12, 12, 6))
    lab[0, 0, 0] = 7
    np.save(tmp_path / "label_2.npy", lab)
    with pytest.raises(UserError) as e:
        build_datasets(_dcfg("slices", tmp_path))
    assert "value(s) 7 outside the class list" in str(e.value) and str(tmp_path / "label_2.npy") in str(e.value)
    (tmp_path / "image_3.nii").write_bytes(b"not a volume")
    (tmp_path / "label_3.nii").write_bytes(b"not a volume")
    np.save(tmp_path / "label_2.npy", np.zeros((12, 12, 6)))
    with pytest.raises(UserError, match="image_3.nii is not a NIfTI-1 file"):
        build_datasets(_dcfg("slices", tmp_path))


def test_pixel_counts_over_several_chunks():
    g = torch.Generator().manual_seed(0)
    m = torch.randint(0, 4, (600, 5, 5), generator=g).to(torch.uint8)
    m[:, 0, 0] = 255
    src = EpisodeSource(torch.zeros(600, 3, 5, 5, dtype=torch.uint8), m, ["a", "b", "c", "d"], [[1], [2], [3]])
    for i in (0, 255, 256, 599):
        assert src.pixel_counts[i].tolist() == [sum(int(v == c) for v in m[i].flatten().tolist()) for c in range(4)]
