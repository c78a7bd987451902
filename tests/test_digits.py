"""The embedded digit scenes."""
import torch

from contrastlab.data import build_datasets, digit_scenes
from contrastlab.data.digits import DigitScenesSpec, generate, long_tail_indices
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


def test_options_add_distractors():
    spec = DigitScenesSpec(n_train=50, n_test=10, second_digit=True, clutter=2, texture=True)
    d = generate(spec)["train"]
    assert (d["mask"].long().flatten(1).unique(dim=1).shape[1]) >= 1
    assert not torch.equal(d["images"], generate(DigitScenesSpec(n_train=50, n_test=10))["train"]["images"])


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
