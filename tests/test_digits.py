"""The embedded digit scenes."""
import pytest
import torch
import torch.nn.functional as F

from contrastlab.data import build_datasets, digit_scenes
from contrastlab.data.digits import DigitScenesSpec, generate
from contrastlab.data.long_tail import long_tail_indices
from contrastlab.config import load_config


def test_deterministic_labelled_and_disjoint():
    spec = DigitScenesSpec(n_train=600, n_test=200, seed=3)
    a, b = generate(spec), generate(spec)
    assert torch.equal(a["train"]["images"], b["train"]["images"])
    assert not torch.equal(a["train"]["images"], generate(DigitScenesSpec(n_train=600, n_test=200, seed=4))["train"]["images"])
    tr, te = a["train"], a["test"]
    assert tr["images"].shape == (600, 3, 32, 32) and tr["images"].dtype == torch.uint8
    assert set(tr["source"].tolist()).isdisjoint(te["source"].tolist())
    assert tr["digit"].max() == 9 and tr["color"].max() == 5 and tr["rotation"].max() == 3
    # the mask marks the digit with its class + 1 and covers a real part of the scene
    m = tr["mask"].long()
    for i in range(20):
        vals = set(m[i].unique().tolist())
        assert vals <= {0, int(tr["digit"][i]) + 1} and len(vals) == 2
    # the foreground colour class is the hue bin of the mask pixels
    from colorsys import rgb_to_hsv

    for i in range(20):
        pix = tr["images"][i].float().div(255)[:, m[i] > 0].mean(1)
        h = rgb_to_hsv(*pix.tolist())[0]
        assert round(h * 6) % 6 == int(tr["color"][i])


# The options are checked against the plain scenes of the same seed, without pixel noise: every
# draw of the main digit, its colours and the background colour comes before the options' own
# draws, so with an option on, the main digit and its mask are where they are without it.
_PLAIN = dict(n_train=60, n_test=10, noise=0.0)


def _scenes(**options):
    return generate(DigitScenesSpec(**_PLAIN, **options))["train"]


@pytest.fixture(scope="module")
def plain():
    return _scenes()


def _solid_digit(d):
    """Per scene, the mask pixels that hold the digit's colour exactly (alpha 1: the canvas under
    them does not show)."""
    out = torch.zeros(d["mask"].shape, dtype=torch.bool)
    for i in range(len(out)):
        m = d["mask"][i] > 0
        colours, counts = d["images"][i][:, m].T.unique(dim=0, return_counts=True)
        out[i] = m & (d["images"][i] == colours[counts.argmax()][:, None, None]).all(0)
    return out


def _far_background(mask):
    """Pixels at least 3 px from any masked pixel (outside the digits' anti-aliased edges)."""
    return F.max_pool2d((mask > 0).float()[:, None], 7, 1, 3)[:, 0] == 0


def _only_the_background_changed(d, plain):
    """The main digit and its mask are untouched by a background option: the same mask, and the
    digit's solid pixels differ at most by one level of rounding."""
    assert torch.equal(d["mask"], plain["mask"]) and torch.equal(d["digit"], plain["digit"])
    solid = _solid_digit(plain)
    assert solid.flatten(1).sum(1).min() >= 10
    diff = (d["images"].int() - plain["images"].int()).abs().amax(1)
    assert diff[solid].max() <= 1


def test_plain_scenes_have_a_uniform_background(plain):
    # what the option tests below compare with: without options or noise, one background colour
    far = _far_background(plain["mask"])
    for i in range(len(far)):
        assert far[i].sum() > 100 and plain["images"][i][:, far[i]].T.unique(dim=0).shape[0] == 1


def test_second_digit_adds_a_labelled_digit_under_the_main_one(plain):
    d = _scenes(second_digit=True)
    main, mask = plain["mask"], d["mask"]
    # the main digit is drawn on top: its mask is kept where it is ...
    assert torch.equal(mask[main > 0], main[main > 0])
    # ... and the second digit adds pixels labelled with a digit class (1..10), drawn in the image
    extra = (mask > 0) & (main == 0)
    n_extra = extra.flatten(1).sum(1)
    assert (n_extra >= 5).float().mean() > 0.8, n_extra.tolist()  # it may fall (partly) off the canvas
    assert int(mask[extra].min()) >= 1 and int(mask[extra].max()) <= 10
    assert (d["images"] != plain["images"]).any(1)[extra].float().mean() > 0.95
    # two digit labels in one mask (the classes differ 9 times in 10)
    labels = [set(m.unique().tolist()) - {0} for m in mask]
    assert all(int(y) + 1 in ls for ls, y in zip(labels, d["digit"]))
    assert sum(len(ls) == 2 for ls in labels) >= 0.7 * len(labels)


def test_clutter_strokes_change_the_background_only(plain):
    d = _scenes(clutter=2)
    _only_the_background_changed(d, plain)
    changed = (d["images"] != plain["images"]).any(1) & (plain["mask"] == 0)
    assert changed.flatten(1).any(1).all()  # every scene has strokes
    far = _far_background(plain["mask"])
    n_colours = [d["images"][i][:, far[i]].T.unique(dim=0).shape[0] for i in range(len(far))]
    assert min(n_colours) >= 2, n_colours  # the background is no longer one colour


def test_texture_is_a_plane_wave_on_the_background(plain):
    """The texture multiplies the background by 1 + 0.25 sin(k . r + phase), |k| in [0.3, 0.9]
    rad / px. Its ratio to the plain scene f (read where no channel clips and the background is
    bright enough for 8-bit levels to resolve it) spans [0.75, 1.25], and s = f - 1 satisfies the
    recurrence of a sinusoid along each axis, s(r + e) + s(r - e) = 2 cos(k . e) s(r), with one
    coefficient for the whole scene (least squares; residual ~0.5% from rounding, 20-80% for
    clutter strokes)."""
    d = _scenes(texture=True)
    _only_the_background_changed(d, plain)
    t, p = d["images"].double(), plain["images"].double()
    ok = _far_background(plain["mask"]) & (t.amax(1) < 255) & (p.sum(1) >= 150)
    s = t.sum(1) / p.sum(1).clamp_min(1) - 1
    checked = 0
    for i in range(len(s)):
        if ok[i].sum() < 200:  # a dark background or one that clips: 8 bits cannot resolve the wave
            continue
        checked += 1
        f = s[i][ok[i]] + 1
        assert f.min() > 0.74 and f.max() < 1.26 and f.max() - f.min() > 0.2, (i, f.min(), f.max())
        k = []
        for si, oki in ((s[i], ok[i]), (s[i].T, ok[i].T)):  # along x, then along y
            v = oki[:, 1:-1] & oki[:, 2:] & oki[:, :-2]
            mid, sides = si[:, 1:-1][v], (si[:, 2:] + si[:, :-2])[v]
            lam = (mid * sides).sum() / (mid * mid).sum()
            assert (sides - lam * mid).norm() < 0.05 * sides.norm(), i
            k.append(torch.acos((lam / 2).clamp(-1, 1)))
        assert 0.25 < torch.stack(k).norm() < 0.95, (i, k)
    assert checked >= 20, checked


def test_options_combine():
    spec = DigitScenesSpec(n_train=50, n_test=10, second_digit=True, clutter=2, texture=True)
    d = generate(spec)["train"]
    m = d["mask"].long()
    assert int(m.max()) <= 10 and all(int(y) + 1 in set(mi.unique().tolist()) for mi, y in zip(m, d["digit"]))
    assert sum(len(set(mi.unique().tolist()) - {0}) == 2 for mi in m) >= 0.7 * len(m)


def test_raw_pixels_do_not_solve_it():
    from sklearn.neighbors import KNeighborsClassifier

    train, test = digit_scenes(DigitScenesSpec())
    knn = KNeighborsClassifier(20).fit(train.images.flatten(1).float().numpy(), train.labels["digit"].numpy())
    acc = (knn.predict(test.images.flatten(1).float().numpy()) == test.labels["digit"].numpy()).mean()
    assert acc <= 0.40, acc


def test_long_tail_profile():
    labels = torch.arange(10).repeat_interleave(500)
    idx = long_tail_indices(labels, 100)
    counts = torch.bincount(labels[idx], minlength=10).tolist()
    assert counts == [int(500 * 0.01 ** (i / 9)) for i in range(10)]
    assert counts[0] == 500 and counts[-1] == 5
    cfg = load_config("simclr", ["data.long_tail_ratio=10", "data.n_train=2000", "data.n_test=100"])
    train, test = build_datasets(cfg.data)
    c = torch.bincount(train.labels["digit"], minlength=10)
    assert c[0] > 5 * c[9] and len(test) == 100 and train.masks.shape[0] == len(train)


def test_class_names_match_the_label_bins():
    """The rotation classes are named by their bins' centres (the angles the scenes are drawn at)."""
    from contrastlab.data.digits import DIGIT_CLASSES, N_COLORS, N_ROTATIONS, ROTATION_CENTRES

    assert DIGIT_CLASSES["rotation"] == ["-15", "-5", "+5", "+15"] == [f"{c:+g}" for c in ROTATION_CENTRES]
    assert len(DIGIT_CLASSES["rotation"]) == N_ROTATIONS and len(DIGIT_CLASSES["color"]) == N_COLORS
