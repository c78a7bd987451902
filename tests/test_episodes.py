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
