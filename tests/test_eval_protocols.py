"""The papers' evaluation protocols (issue 14, point 5): the SGD / Adam probe on augmented crops
with its presets (eval linear_sgd), few-shot label fractions, long-tail groups from class counts
and the std of the group means, and kNN with the run's training temperature. Each is checked
against plain loops or hand computations."""
import dataclasses
import json
import math
import re
import statistics
import warnings

import pytest
import torch

from contrastlab.cli import main
from contrastlab.data import TensorImageSet
from contrastlab.eval import linear_sgd as ls
from contrastlab.eval.labels import fraction_quotas, fraction_subset, holdout_split, read_class_counts
from contrastlab.eval.linear import long_tail_groups
from contrastlab.errors import UserError

# A tiny SimCLR run on the digit scenes that learns the scenes' colours in 40 steps (no input
# standardisation, no colour augmentation: colour is what identifies an instance), so a probe of
# the ``color`` label (6 classes, chance 1/6) has something to find.
COLOUR_RUN = ["model.norm=none", "views.channel_perm_p=0", "views.invert_p=0", "views.jitter_p=0",
              "views.grayscale_p=0", "method.temperature=0.3", "trainer.max_steps=40"]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import TINY

    out = tmp_path_factory.mktemp("protocols") / "run"
    assert main(["train", "simclr", *TINY, *COLOUR_RUN, f"trainer.out_dir={out}"]) == 0
    return out


def _last_json(capsys):
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.strip()]
    return json.loads(lines[-1]), captured.err


def _images(n, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


class _Tiny(torch.nn.Module):
    """A conv + BatchNorm encoder (its BN statistics are what the probe must leave alone)."""

    def __init__(self, out_dim=6):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, out_dim, 3, padding=1), torch.nn.BatchNorm2d(out_dim),
                                       torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())  # fmt: skip
        self.out_dim = out_dim

    def forward(self, x):
        return self.net(x)


class _Recorder(torch.nn.Module):
    """Wraps an encoder and keeps a copy of every batch it is given."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.out_dim, self.seen = inner, inner.out_dim, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.inner(x)


# ----------------------------------------------------------------------------- schedule
def test_moco_preset_lr_per_epoch_matches_main_lincls():
    """MoCo's adjust_learning_rate: lr = 30 * 0.1 ** (number of milestones <= epoch), epochs from 0;
    the probe's optimiser runs each epoch at that lr (recorded from its param group)."""
    p = ls.PRESETS["moco"]
    assert (p.optimizer, p.lr, p.momentum, p.weight_decay, p.epochs, p.milestones, p.batch_size) == (
        "sgd", 30.0, 0.9, 0.0, 100, (60, 80), 256)  # fmt: skip
    expected = []
    for epoch in range(100):  # main_lincls.adjust_learning_rate, as a loop
        lr = 30.0
        for milestone in (60, 80):
            lr *= 0.1 if epoch >= milestone else 1.0
        expected.append(lr)
    assert [ls.lr_at_epoch(30.0, (60, 80), e) for e in range(100)] == expected
    assert expected[59] == 30.0 and expected[60] == pytest.approx(3.0) and expected[80] == pytest.approx(0.3)
    ds = TensorImageSet(_images(6), {"y": torch.tensor([0, 1, 2, 0, 1, 2])})
    fast = dataclasses.replace(p, augment="none")  # the schedule does not depend on the views; 100 epochs stay quick
    r = ls.train_linear_on_crops(_Tiny(), ds, torch.arange(6), torch.tensor([0, 1, 2, 0, 1, 2]), 3, fast, device="cpu")
    assert r["history"]["lr"] == expected and r["best_epoch"] == 99


def test_sdclr_milestones_reproduce_train_cifar_multisteplr():
    """train_cifar.py steps MultiStepLR(milestones=[10, 20]) before each epoch counted from 1; its
    lr per epoch is the preset's schedule (9 epochs at 30, 10 at 3, 11 at 0.3)."""
    for name, official in (("sdclr", [10, 20]), ("sdclr_fewshot", [40, 60])):
        p = ls.PRESETS[name]
        w = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([w], lr=30.0, momentum=0.9)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=official, gamma=0.1)
        lrs = []
        for _ in range(1, p.epochs + 1):
            with warnings.catch_warnings():  # stepping the scheduler before the optimiser, as train_cifar.py
                warnings.simplefilter("ignore")
                sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        assert [ls.lr_at_epoch(p.lr, p.milestones, e) for e in range(p.epochs)] == pytest.approx(lrs)
    assert ls.PRESETS["sdclr"].epochs == 30 and ls.PRESETS["sdclr_fewshot"].label_fraction == 0.01


def test_options_override_the_preset():
    opts = ls.LinearSgdOptions(preset="sdclr", epochs=2, milestones=(), lr=0.5)
    p = ls.resolve(opts)
    assert (p.epochs, p.milestones, p.lr, p.batch_size, p.augment, p.val_fraction) == (2, (), 0.5, 128,
                                                                                         "pad_crop_flip", 0.1)
    assert ls.resolve(ls.LinearSgdOptions(preset="dcl")) == ls.PRESETS["dcl"]
    assert ls.resolve(ls.LinearSgdOptions(preset="dcl", optimizer="sgd")).optimizer == "sgd"


# ----------------------------------------------------------------------------- frozen encoder
def test_bn_running_stats_and_weights_do_not_change_during_the_probe():
    enc = _Tiny()
    enc.train()
    with torch.no_grad():  # running statistics away from their initial values
        enc(torch.rand(16, 3, 8, 8) * 3 + 1)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    modes = []
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.register_forward_pre_hook(lambda mod, inp: modes.append(mod.training))
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    ds = TensorImageSet(_images(8), {"y": labels})
    p = ls.resolve(ls.LinearSgdOptions(preset="moco", epochs=2, batch_size=3, lr=0.1))
    ls.train_linear_on_crops(enc, ds, torch.arange(8), labels, 2, p, device="cpu")
    after = enc.state_dict()
    assert set(before) == set(after)
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert modes and not any(modes)  # every BN forward ran in eval mode
    assert enc.training  # the caller's mode is restored
    assert all(p.grad is None for p in enc.parameters())


# ----------------------------------------------------------------------------- crops
def test_crops_differ_between_epochs_and_are_seeded():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    ds = TensorImageSet(_images(8, size=12), {"y": labels})
    p = ls.resolve(ls.LinearSgdOptions(preset="moco", epochs=2, batch_size=8, lr=0.1))

    def probe(seed):
        torch.manual_seed(0)  # one encoder for every probe
        rec = _Recorder(_Tiny())
        r = ls.train_linear_on_crops(rec, ds, torch.arange(8), labels, 3, p, seed=seed, device="cpu")
        return rec.seen, r

    seen, r = probe(0)
    assert len(seen) == 2  # one batch per epoch
    plain = ds.images.float() / 255
    # an epoch's batch holds every image once (in its shuffled order): compare order-free sums
    e1, e2 = seen[0].sum(0), seen[1].sum(0)
    assert not torch.allclose(e1, e2, atol=1e-3)  # new crops every epoch
    assert not torch.allclose(e1, plain.sum(0), atol=1e-3)  # crops, not the plain images
    again, r2 = probe(0)
    assert all(torch.equal(a, b) for a, b in zip(seen, again))  # same seed, same crops
    assert torch.equal(r["weight"], r2["weight"]) and torch.equal(r["bias"], r2["bias"])
    other, _ = probe(1)
    assert not torch.allclose(other[0].sum(0), e1, atol=1e-3)
    # one image eight times: the batch order cannot matter, so epoch 2's batch differs from
    # epoch 1's only if the crops are drawn anew (one generator stream, not reseeded per epoch)
    ds = TensorImageSet(_images(1, size=12).expand(8, -1, -1, -1).contiguous(), {"y": labels})
    seen, _ = probe(0)
    assert not torch.allclose(seen[0], seen[1], atol=1e-3)


def test_image_files_give_the_probe_of_the_same_images_in_memory(tmp_path):
    """The file path (a DataLoader over decoded files) trains the same layer as the tensor path."""
    from PIL import Image

    from contrastlab.data.files import FileImageSet

    images, labels = _images(6, size=8, seed=4), torch.tensor([0, 1, 0, 1, 0, 1])
    paths = []
    for i, im in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(paths[-1])
    files = FileImageSet(paths, {"y": labels}, {"y": ["a", "b"]}, image_size=8)
    tensors = TensorImageSet(torch.stack([files[i][0] for i in range(6)]), {"y": labels})
    assert torch.equal(tensors.images, images)  # PNG is lossless, 8 px stays 8 px
    p = ls.resolve(ls.LinearSgdOptions(preset="dcl", epochs=2, batch_size=4))
    out = []
    for ds in (files, tensors):
        torch.manual_seed(0)
        enc = _Tiny()
        r = ls.train_linear_on_crops(enc, ds, torch.arange(6), labels, 2, p, seed=3, device="cpu")
        out.append((r["weight"], ls.view_features(enc, ds, torch.arange(6), 0.75, device="cpu")))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


def test_pad_crop_flip_is_a_padded_crop_and_mirror():
    """SDCLR's RandomCrop(S, padding=S/8) + flip, against loops over pixels with the same draws."""
    x = _images(5, size=16, seed=3)
    out = ls.crop_views(x, "pad_crop_flip", torch.Generator().manual_seed(7), flip_p=0.5)
    g = torch.Generator().manual_seed(7)  # the draws, in the documented order: dy, dx, flip
    dy = torch.randint(0, 5, (5,), generator=g)
    dx = torch.randint(0, 5, (5,), generator=g)
    flip = torch.rand(5, generator=g) < 0.5
    xf = x.float() / 255
    for n in range(5):
        for c in range(3):
            for i in range(16):
                for j in range(16):
                    jj = 15 - j if flip[n] else j
                    r, s = int(dy[n]) + i - 2, int(dx[n]) + jj - 2  # padding 2 = 16 / 8
                    want = float(xf[n, c, r, s]) if 0 <= r < 16 and 0 <= s < 16 else 0.0
                    assert float(out[n, c, i, j]) == want
    assert flip.any() and (~flip).any()


def test_crop_views_kinds_and_centre_view():
    x = _images(4, size=16)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    for kind in ("resized_crop_flip", "pad_crop_flip", "simclr"):
        a, b = ls.crop_views(x, kind, g()), ls.crop_views(x, kind, g())
        assert a.shape == (4, 3, 16, 16) and a.dtype == torch.float32 and torch.equal(a, b)
        assert not torch.allclose(a, x.float() / 255)
    assert torch.equal(ls.crop_views(x, "none", g()), x.float() / 255)
    assert torch.equal(ls.centre_view(x, 1.0), x.float() / 255)
    # the centre half, as MoCo's Resize then CenterCrop: the image resized to twice its side
    # (bilinear), its central 16 x 16
    want = torch.nn.functional.interpolate(x.float() / 255, size=32, mode="bilinear", align_corners=False)
    want = want[:, :, 8:24, 8:24]
    torch.testing.assert_close(ls.centre_view(x, 0.5), want, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- label fractions
def _quotas_loop(counts, fraction_num, fraction_den):
    """Largest remainder in integers (fraction = num / den), then at least one per class."""
    n = sum(counts)
    target = (2 * fraction_num * n + fraction_den) // (2 * fraction_den)  # round half up
    base = [fraction_num * c // fraction_den for c in counts]
    rem = [fraction_num * c - fraction_den * b for c, b in zip(counts, base)]  # remainder x den
    need = target - sum(base)
    ranked = sorted(range(len(counts)), key=lambda k: (-rem[k], k))
    for k in ranked[:need]:
        base[k] += 1
    return [max(1, b) if c else 0 for b, c in zip(base, counts)]


@pytest.mark.parametrize("counts,fraction,num,den", [
    ([4500] * 10, 0.01, 1, 100),  # SDCLR's 1%: 45 per class of CIFAR-10's 45,000
    ([100] * 10, 0.01, 1, 100),
    ([50, 30, 10, 5, 2], 0.1, 1, 10),
    ([500, 299, 179, 107, 64, 38, 23, 13, 8, 5], 0.01, 1, 100),  # long-tailed: the tail gets 1 each
    ([7, 3, 9, 1, 12, 5], 0.35, 7, 20),
    ([3, 3, 3], 1.0, 1, 1),
])  # fmt: skip
def test_fraction_subset_is_stratified_exact_and_seeded(counts, fraction, num, den):
    assert fraction_quotas(counts, fraction) == _quotas_loop(counts, num, den)
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    labels = torch.cat([labels, torch.tensor([-1, -1])])  # unlabelled rows are never chosen
    sub = fraction_subset(labels, fraction, seed=5, n_classes=len(counts))
    want = _quotas_loop(counts, num, den)
    got = [0] * len(counts)
    for i in sub.tolist():
        assert labels[i] >= 0
        got[int(labels[i])] += 1
    assert got == want and len(sub) == sum(want) and min(got) >= 1
    assert len(set(sub.tolist())) == len(sub) and sub.tolist() == sorted(sub.tolist())
    assert torch.equal(sub, fraction_subset(labels, fraction, seed=5, n_classes=len(counts)))
    if sum(want) < sum(counts):
        assert not torch.equal(sub, fraction_subset(labels, fraction, seed=6, n_classes=len(counts)))
        bigger = fraction_subset(labels, min(1.0, fraction * 2), seed=5, n_classes=len(counts))
        assert set(sub.tolist()) <= set(bigger.tolist())  # nested across fractions at one seed


def test_hand_computed_quotas_and_holdout():
    # 0.1 x [50, 30, 10, 5, 2] = 5, 3, 1, 0.5, 0.2: target round(9.7) = 10, the 10th row to the
    # largest remainder (0.5), then the last class raised to one: 11 rows
    assert fraction_quotas([50, 30, 10, 5, 2], 0.1) == [5, 3, 1, 1, 1]
    rows = torch.arange(100, 150)
    fit, val = holdout_split(rows, 0.1, seed=3)
    assert len(val) == 5 and len(fit) == 45 and set(fit.tolist()) | set(val.tolist()) == set(rows.tolist())
    assert not set(fit.tolist()) & set(val.tolist())
    assert torch.equal(val, holdout_split(rows, 0.1, seed=3)[1]) and not torch.equal(val, holdout_split(rows, 0.1, 4)[1])
    assert len(holdout_split(rows, 0.0)[1]) == 0
    with pytest.raises(UserError, match="leaving none to train on"):
        holdout_split(torch.arange(3), 0.9)


# ----------------------------------------------------------------------------- groups
def test_group_std_is_the_std_of_the_three_group_means():
    acc = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    counts = [5, 500, 50, 400, 10, 300, 20, 200, 1, 100]
    out = long_tail_groups(acc, counts)
    means = [(0.8 + 0.6 + 0.4 + 0.2) / 4, (0.0 + 0.7 + 0.3) / 3, (0.5 + 0.9 + 0.1) / 3]
    assert out["group_std"] == pytest.approx(statistics.pstdev(means))
    assert out["std"] == pytest.approx(statistics.pstdev(acc))
    assert math.isnan(long_tail_groups([1.0, 0.5], [200, 150], scheme="imagenet")["group_std"])


def test_read_class_counts(tmp_path):
    f = tmp_path / "counts.txt"
    f.write_text("# CIFAR-10-LT\n5000\n2997, 1796\n1077 645\n")
    assert read_class_counts(str(f), 5) == [5000, 2997, 1796, 1077, 645]
    (tmp_path / "c.json").write_text("[3, 2, 1]")
    assert read_class_counts(str(tmp_path / "c.json"), 3) == [3, 2, 1]
    for text, needle in (("1 2", "2 counts for the 3 classes"), ("1 x 3", re.escape("entry 1 ('x')")), ("1 -2 3", "entry 1")):
        f.write_text(text)
        with pytest.raises(UserError, match=needle):
            read_class_counts(str(f), 3)
    with pytest.raises(UserError, match="cannot read"):
        read_class_counts(str(tmp_path / "missing.txt"), 3)


def _hand_groups(per_class, counts):
    """Thirds by hand: classes sorted by count, most first (ties by index), 4 / 3 / 3 of 10."""
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    many, medium, few = order[:4], order[4:7], order[7:]
    mean = lambda ix: sum(per_class[i] for i in ix) / len(ix)  # noqa: E731
    means = [mean(many), mean(medium), mean(few)]
    return means, statistics.pstdev(means)


def test_linear_groups_from_a_count_list_and_from_the_training_set(run_dir, tmp_path, capsys):
    counts = [900, 10, 500, 40, 300, 70, 200, 100, 150, 5]
    f = tmp_path / "counts.txt"
    f.write_text("\n".join(map(str, counts)))
    capsys.readouterr()
    assert main(["eval", "linear", str(run_dir), "epochs=10", f"class_counts={f}"]) == 0
    r, _ = _last_json(capsys)
    assert r["class_counts"] == counts and r["class_counts_from"] == str(f)
    (many, medium, few), gstd = _hand_groups(r["per_class_acc"], counts)  # per_class_acc: 4 decimals
    assert (r["many"], r["medium"], r["few"]) == pytest.approx((many, medium, few), abs=1e-4)
    assert r["group_std"] == pytest.approx(gstd, abs=1e-4)
    assert main(["eval", "linear", str(run_dir), "epochs=10", "class_counts=train"]) == 0
    r, _ = _last_json(capsys)
    from contrastlab.data import build_datasets
    from contrastlab.eval.run import load_run

    cfg, _, _ = load_run(str(run_dir), [])
    train, _ = build_datasets(cfg.data)
    loop = [0] * 10
    for y in train.labels["digit"].tolist():
        loop[y] += 1
    assert r["class_counts"] == loop and r["class_counts_from"] == "train" and {"many", "group_std"} <= set(r)
    f.write_text("1 2 3")
    assert main(["eval", "linear", str(run_dir), f"class_counts={f}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "3 counts for the 10 classes" in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------- runs
def test_linear_sgd_on_the_digit_scenes_far_above_chance_progress_on_and_off(run_dir, capsys):
    argv = ["eval", "linear_sgd", str(run_dir), "label=color", "preset=sdclr", "epochs=3", "batch_size=32", "lr=0.3"]
    capsys.readouterr()
    assert main([*argv, "progress=false"]) == 0
    r, err = _last_json(capsys)
    assert "linear_sgd" not in err
    assert r["protocol"] == "linear_sgd" and r["preset"] == "sdclr" and r["settings"]["epochs"] == 3
    assert r["top1"] >= 2 * (1 / 6)  # chance: 1/6 (6 colours)
    assert r["n_val"] == 26 and r["n_probe"] == 230 and r["n_test"] == 128  # 10% of 256 held out
    val = r["history"]["val_top1"]
    assert r["best_epoch"] == val.index(max(val)) and r["val_top1"] == pytest.approx(max(val), abs=1e-6)
    assert main([*argv, "progress=true"]) == 0
    r2, err = _last_json(capsys)
    assert "linear_sgd" in err  # the bar, on stderr
    assert r2["top1"] == r["top1"] and r2["history"] == r["history"]
    assert "linear_sgd/color/model/sdclr" in json.loads((run_dir / "eval.json").read_text())


def test_label_fraction_in_both_probes(run_dir, capsys):
    from contrastlab.data import build_datasets
    from contrastlab.eval.run import load_run

    cfg, _, _ = load_run(str(run_dir), [])
    train, _ = build_datasets(cfg.data)
    y = train.labels["digit"]
    capsys.readouterr()
    assert main(["eval", "linear", str(run_dir), "epochs=5", "label_fraction=0.05", "subset_seed=2"]) == 0
    r, _ = _last_json(capsys)
    counts = [int((y == c).sum()) for c in range(10)]
    assert r["n_probe"] == sum(_quotas_loop(counts, 1, 20)) and r["variant"] == "fraction0.05"
    # the probe is the one trained on exactly those rows (L-BFGS is deterministic)
    from contrastlab.eval.linear import linear_probe
    from contrastlab.eval.run import probe_features

    _, method, _ = load_run(str(run_dir), [])
    opts = type("O", (), {"label": None, "features": "model", "device": "cpu", "batch_size": 512})()
    _, _, _, ftr, fte, ytr, yte, n = probe_features(cfg, method, opts)
    sub = fraction_subset(ytr, 0.05, seed=2, n_classes=10)
    direct = linear_probe(ftr[sub], ytr[sub], fte, yte, n, epochs=5, device="cpu")
    assert (r["top1"], r["train_top1"]) == (direct["top1"], direct["train_top1"])
    assert main(["eval", "linear_sgd", str(run_dir), "preset=sdclr_fewshot", "epochs=2", "label_fraction=0.05",
                 "lr=0.3", "val_every=1"]) == 0  # fmt: skip
    r, _ = _last_json(capsys)
    fit, _ = holdout_split(torch.nonzero(y >= 0).flatten(), 0.1, seed=0)
    counts = [int((y[fit] == c).sum()) for c in range(10)]
    assert r["n_probe"] == sum(_quotas_loop(counts, 1, 20)) and r["settings"]["label_fraction"] == 0.05


def test_knn_temperature_train_reads_the_runs_temperature(run_dir, capsys):
    from contrastlab.eval.knn import knn_eval, train_temperature
    from contrastlab.eval.run import load_run, probe_features

    capsys.readouterr()
    assert main(["eval", "knn", str(run_dir), "k=200", "temperature=train"]) == 0
    r, _ = _last_json(capsys)
    assert r["temperature"] == 0.3 and r["temperature_from"] == "method.temperature" and r["k"] == 200
    cfg, method, _ = load_run(str(run_dir), [])
    assert cfg.method["temperature"] == 0.3
    opts = type("O", (), {"label": None, "features": "model", "device": "cpu", "batch_size": 512})()
    _, _, _, ftr, fte, ytr, yte, n = probe_features(cfg, method, opts)
    assert r["top1"] == knn_eval(ftr, ytr, fte, yte, n, k=200, temperature=0.3)["top1"]
    assert main(["eval", "knn", str(run_dir), "k=200", "temperature=0.3"]) == 0
    assert _last_json(capsys)[0]["top1"] == r["top1"]
    assert main(["eval", "knn", str(run_dir), "temperature=warm"]) == 2
    err = capsys.readouterr().err.strip()
    assert "temperature='warm': must be a number > 0 or 'train'" in err and len(err.splitlines()) == 1
    no_t = type("C", (), {"method": {"name": "other"}})()
    with pytest.raises(UserError, match="has no training temperature"):
        train_temperature(no_t, "train")
    assert train_temperature(no_t, 0.07) == (0.07, {})


@pytest.mark.parametrize("option,needle", [
    ("milestones=[80,60]", "milestones=(80, 60): must be a list of increasing epochs"),
    ("preset=simclr", "preset: expected one of 'moco', 'sdclr', 'sdclr_fewshot', 'dcl'"),
    ("augment=cutout", "augment: expected one of"),
    ("val_fraction=1", "val_fraction=1.0: must be in [0, 1)"),
    ("label_fraction=0", "label_fraction=0.0: must be in (0, 1]"),
])  # fmt: skip
def test_linear_sgd_bad_options_are_one_line(option, needle, capsys):
    assert main(["eval", "linear_sgd", "/nonexistent", option]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_quarter_turned_sets_turn_each_image_by_its_label(tmp_path):
    """label=quarter_turn's sets: image i is the original turned by rot90 label_i times (checked image by
    image), for an in-memory set and a file set read through; the turns are uniform and fixed by the seed."""
    from PIL import Image

    from contrastlab.data.files import FileImageSet
    from contrastlab.eval.labels import quarter_turned

    images = _images(400, size=6, seed=1)
    mem = TensorImageSet(images, {"y": torch.zeros(400, dtype=torch.long)})
    turned = quarter_turned(mem, seed=0)
    k = turned.labels["quarter_turn"]
    assert list(turned.labels) == ["quarter_turn"] and turned.default_label == "quarter_turn"
    assert turned.classes["quarter_turn"] == ["0", "90", "180", "270"]
    for i in range(len(images)):
        assert torch.equal(turned.images[i], torch.rot90(images[i], int(k[i]), dims=(1, 2))), i
    assert all(70 < int((k == c).sum()) < 130 for c in range(4))
    assert torch.equal(quarter_turned(mem, seed=0).labels["quarter_turn"], k)
    assert not torch.equal(quarter_turned(mem, seed=1).labels["quarter_turn"], k)
    paths = []
    for i in range(8):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(paths[-1])
    files = quarter_turned(FileImageSet(paths, {"y": torch.zeros(8, dtype=torch.long)}, {}, image_size=6), seed=0)
    for i in range(8):
        x, j = files[i]
        assert j == i and torch.equal(x, torch.rot90(images[i], int(files.labels["quarter_turn"][i]), dims=(1, 2)))


def test_quarter_turn_probe_on_any_run_and_the_label_list(run_dir, capsys):
    """eval linear label=quarter_turn on any run probes 4 classes over all the turned train and test
    scenes; an unknown label names quarter_turn among those available."""
    assert main(["eval", "linear", str(run_dir), "label=quarter_turn", "features=pixels"]) == 0
    r, _ = _last_json(capsys)
    assert r["label"] == "quarter_turn" and len(r["per_class_acc"]) == 4
    assert (r["n_train"], r["n_test"]) == (256, 128) and 0 <= r["top1"] <= 1
    assert main(["eval", "knn", str(run_dir), "label=nope"]) != 0
    err = capsys.readouterr().err
    assert "quarter_turn" in err and "digit" in err
