"""Adversarial self-supervised pre-training and adversarial fine-tuning (Chen et al., CVPR 2020):
the pretext tasks and the losses against plain float64 loops, the method's step against a hand
composition, the attack's side effects, partial fine-tuning and end-to-end training of each recipe."""
from __future__ import annotations

import csv
import itertools
import math

import pytest
import torch

import contrastlab.methods.adv_pretext as adv
from contrastlab.checkpoint import load_checkpoint
from contrastlab.cli import main
from contrastlab.config import load_config
from contrastlab.data.pretext import (hamming_distances, jigsaw_permutations, jigsaw_task, rotate_quarters,
                                      rotation_task, shuffle_patches)
from contrastlab.errors import ConfigError, UserError
from contrastlab.losses.adversarial import clean_adversarial_ce, gradient_diversity
from contrastlab.methods import build_method


QUICK = ["optim.warmup_steps=0", "method.attack_steps=2"]


# ----------------------------------------------------------------------------- rotation
def _rot_loop(img, k):
    """k counter-clockwise quarter turns, pixel by pixel: one turn maps out[i][j] = in[j][S - 1 - i]."""
    c, s, _ = img.shape
    cur = img.tolist()
    for _ in range(k):
        cur = [[[cur[ch][j][s - 1 - i] for j in range(s)] for i in range(s)] for ch in range(c)]
    return torch.tensor(cur, dtype=img.dtype)


def test_rotation_matches_a_pixel_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 5, 5, generator=g, dtype=torch.float64)
    k = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    out = rotate_quarters(x, k)
    for i in range(8):
        assert torch.equal(out[i], _rot_loop(x[i], int(k[i])))


def test_the_rotation_task_is_balanced_and_labels_its_turns():
    x = torch.rand(10, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    out, y = rotation_task(x, torch.Generator().manual_seed(3))
    counts = torch.bincount(y, minlength=4)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 10
    for i in range(10):
        assert torch.equal(out[i], _rot_loop(x[i], int(y[i])))


# ----------------------------------------------------------------------------- jigsaw
def _shuffle_loop(img, perm, grid):
    """Output patch j (row-major) is input patch perm[j], copied pixel by pixel; borders kept."""
    c, h, w = img.shape
    ph, pw = h // grid, w // grid
    oy, ox = (h - grid * ph) // 2, (w - grid * pw) // 2
    out = img.clone()
    for j in range(grid * grid):
        src = int(perm[j])
        rj, cj, rs, cs = j // grid, j % grid, src // grid, src % grid
        for ch in range(c):
            for dy in range(ph):
                for dx in range(pw):
                    out[ch, oy + rj * ph + dy, ox + cj * pw + dx] = img[ch, oy + rs * ph + dy, ox + cs * pw + dx]
    return out


@pytest.mark.parametrize("grid,size,n_classes", [(2, 8, 24), (3, 9, 10), (4, 16, 31), (2, 7, 5)])
def test_each_class_permutation_is_applied_patch_by_patch(grid, size, n_classes):
    perms = jigsaw_permutations(n_classes, grid, seed=0)
    x = torch.rand(n_classes, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    labels = torch.arange(n_classes)  # every class once
    out = shuffle_patches(x, perms, labels, grid)
    for i in range(n_classes):
        assert torch.equal(out[i], _shuffle_loop(x[i], perms[i], grid))
    assert torch.equal(out[0], x[0])  # class 0: the identity


def _greedy_loop(cands, n_classes):
    """Max-min Hamming selection in plain Python: identity first, then the first candidate whose
    smallest distance to the chosen set is largest."""
    n = len(cands[0])
    chosen = [list(range(n))]
    used = set()
    for _ in range(n_classes - 1):
        best, best_d = None, -1
        for i, c in enumerate(cands):
            if i in used:
                continue
            d = min(sum(a != b for a, b in zip(c, s)) for s in chosen)
            if d > best_d:
                best, best_d = i, d
        used.add(best)
        chosen.append(cands[best])
    return chosen


def _min_hamming_loop(perms):
    p = perms.tolist()
    return min(sum(a != b for a, b in zip(p[i], p[j])) for i in range(len(p)) for j in range(i + 1, len(p)))


def test_the_permutation_set_is_the_greedy_max_min_hamming_choice():
    # grid 2: all 24 orders are candidates
    cands = [list(p) for p in itertools.permutations(range(4))]
    assert jigsaw_permutations(8, 2).tolist() == _greedy_loop(cands, 8)
    # grid 4: a seeded pool of random candidates, as the function draws them
    g = torch.Generator().manual_seed(5)
    pool = [torch.randperm(16, generator=g).tolist() for _ in range(300)]
    perms = jigsaw_permutations(31, 4, seed=5, pool=300)
    assert perms.tolist() == _greedy_loop(pool, 31)


def test_the_permutation_set_is_distinct_deterministic_and_far_apart():
    perms = jigsaw_permutations(31, 4, seed=0)
    assert perms.shape == (31, 16) and torch.equal(perms[0], torch.arange(16))
    assert all(sorted(p) == list(range(16)) for p in perms.tolist())
    assert torch.equal(perms, jigsaw_permutations(31, 4, seed=0))
    assert not torch.equal(perms, jigsaw_permutations(31, 4, seed=1))
    d = _min_hamming_loop(perms)
    assert d == int((hamming_distances(perms) + 99 * torch.eye(31, dtype=torch.long)).min())
    # far above what random sets of 31 reach (random pairs of 16-permutations differ in ~15 places,
    # but their closest pair usually much less)
    g = torch.Generator().manual_seed(0)
    random_min = max(_min_hamming_loop(torch.stack([torch.randperm(16, generator=g) for _ in range(31)]))
                     for _ in range(5))  # fmt: skip
    assert d >= 13 and d > random_min
    # grid 2, 4 classes: the largest possible min distance (4: every position differs)
    assert _min_hamming_loop(jigsaw_permutations(4, 2)) == 4


def test_the_jigsaw_task_labels_what_it_shuffles():
    perms = jigsaw_permutations(10, 2)
    x = torch.rand(400, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    out, y = jigsaw_task(x, perms, 2, identity_p=0.2, generator=torch.Generator().manual_seed(1))
    for i in range(400):
        assert torch.equal(out[i], _shuffle_loop(x[i], perms[y[i]], 2))
    # 20% set to the identity, plus its 1/10 share of the rest: 0.28 expected (std 0.022 over 400 images)
    assert 0.2 < (y == 0).float().mean() < 0.36
    assert len(set(y.tolist())) == 10


@pytest.mark.parametrize("n,grid", [(1, 4), (40000, 2)])
def test_bad_permutation_sets_fail_with_one_line(n, grid):
    with pytest.raises(ConfigError, match="jigsaw n_classes") as e:
        jigsaw_permutations(n, grid)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- losses
def _ce_loop(logits, y):
    total = 0.0
    for row, t in zip(logits.tolist(), y.tolist()):
        m = max(row)
        total += -(row[t] - m - math.log(sum(math.exp(v - m) for v in row)))
    return total / len(y)


@pytest.mark.parametrize("w", [0.5, 0.0, 1.0, 0.3])
def test_the_clean_adversarial_loss_is_the_weighted_sum(w):
    g = torch.Generator().manual_seed(0)
    zc, za = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=g)
    want = w * _ce_loop(za, y) + (1 - w) * _ce_loop(zc, y)
    assert float(clean_adversarial_ce(zc, za, y, w)) == pytest.approx(want, rel=1e-6)


def _det_loop(m):
    """Determinant by cofactor expansion along the first row."""
    if len(m) == 1:
        return m[0][0]
    return sum((-1) ** j * m[0][j] * _det_loop([row[:j] + row[j + 1:] for row in m[1:]]) for j in range(len(m)))


def _diversity_loop(grads, jitter=1e-5, eps=1e-10):
    t, b = len(grads), grads[0].shape[0]
    total = 0.0
    for i in range(b):
        cols = []
        for g in grads:
            v = g[i].flatten().tolist()
            n = math.sqrt(sum(a * a for a in v)) + eps
            cols.append([a / n for a in v])
        gram = [[sum(a * c for a, c in zip(cols[p], cols[q])) + (jitter if p == q else 0.0) for q in range(t)]
                for p in range(t)]  # fmt: skip
        total += math.log(_det_loop(gram))
    return total / b


@pytest.mark.parametrize("tasks", [2, 3])
def test_the_gradient_diversity_matches_a_loop(tasks):
    g = torch.Generator().manual_seed(tasks)
    grads = [torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64) for _ in range(tasks)]
    assert float(gradient_diversity(grads)) == pytest.approx(_diversity_loop(grads), rel=1e-6)
    # parallel gradients span no volume: log det is at the jitter's floor; orthogonal ones: log 1 = 0
    par = gradient_diversity([grads[0], 2 * grads[0]])
    assert float(par) < math.log(1e-4)
    e1, e2 = torch.zeros(1, 4, dtype=torch.float64), torch.zeros(1, 4, dtype=torch.float64)
    e1[0, 0], e2[0, 1] = 3.0, 0.5
    assert float(gradient_diversity([e1, e2])) == pytest.approx(2 * math.log(1 + 1e-5), abs=1e-9)


# ----------------------------------------------------------------------------- the method's step
def _batch(n=8, seed=0):
    images = (torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(99)) * 255).to(torch.uint8)
    return {"images": images, "generator": torch.Generator().manual_seed(seed), "index": torch.arange(n)}


def _fixed_attack(model_loss, x, eps, step_size, steps, norm="linf", random_start=True):
    """A stand-in for PGD in the composition test: a fixed perturbation in the ball and the box."""
    d = torch.rand(x.shape, generator=torch.Generator().manual_seed(7)) * 2 - 1
    return (x + eps * d).clamp(0, 1).detach()


@pytest.mark.parametrize("recipe", ["adv_rotation", "adv_jigsaw", "adv_ensemble"])
def test_a_step_is_the_mean_of_half_clean_half_adversarial_losses_plus_the_diversity(tiny, recipe, monkeypatch):
    monkeypatch.setattr(adv, "pgd", _fixed_attack)
    torch.manual_seed(0)
    lam = 1000.0  # large enough to see: the tasks' input gradients are nearly orthogonal (log det near -1e-4)
    m = build_method(load_config(recipe, tiny + QUICK + [f"method.diversity_weight={lam}"]))
    out = m(_batch())
    # the same draws again: the view, then each task's input and labels
    g = torch.Generator().manual_seed(0)
    x = m.views(_batch()["images"], g)
    inputs, labels = m.pretext(x, g)
    x_adv = _fixed_attack(None, torch.stack(inputs), m.cfg.eps, 0, 0)
    losses, grads = [], []
    for t, xi, xa, y in zip(m.tasks, inputs, x_adv, labels):
        xa = xa.clone().requires_grad_(True)
        with torch.no_grad():
            zc = m.heads[t](m.encoder(xi)).double()
        za = m.heads[t](m.encoder(xa))
        la = torch.nn.functional.cross_entropy(za.float(), y)
        grads.append(torch.autograd.grad(la, xa)[0].double())
        losses.append(0.5 * _ce_loop(za.detach().double(), y) + 0.5 * _ce_loop(zc, y))
    want = sum(losses) / len(losses)
    if len(m.tasks) > 1:
        want += lam * _diversity_loop(grads)
        assert abs(lam * _diversity_loop(grads)) > 0.01
        assert float(out["diversity"]) == pytest.approx(_diversity_loop(grads), rel=1e-3, abs=1e-4)
    # float32 log det near 0 (det about 1 - cos^2) is good to ~1e-7, times lambda
    assert float(out["loss"].detach()) == pytest.approx(want, rel=1e-4, abs=5e-4)


def _bn_state(module):
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("recipe", ["adv_rotation", "adv_ensemble", "adv_finetune"])
def test_the_attack_inside_training_leaves_batchnorm_statistics_and_flags_untouched(tiny, recipe, monkeypatch):
    real, seen = adv.pgd, []

    def watched(model_loss, x, *a, **k):
        before, flags = _bn_state(m), [p.requires_grad for p in m.parameters()]
        bn_modes = [mod.training for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
        x_adv = real(model_loss, x, *a, **k)
        after = _bn_state(m)
        seen.append(all(torch.equal(before[key], after[key]) for key in before))
        assert not any(bn_modes) and not any(p.requires_grad for p in m.parameters())  # during the attack
        assert flags == [False] * len(flags)
        return x_adv

    monkeypatch.setattr(adv, "pgd", watched)
    torch.manual_seed(0)
    m = build_method(load_config(recipe, tiny + QUICK))
    m.train()
    if recipe == "adv_finetune":
        m.labels = torch.randint(0, 10, (8,))
    grads_before = [p.requires_grad for p in m.parameters()]
    before = _bn_state(m)
    m(_batch())
    assert seen == [True]
    assert [p.requires_grad for p in m.parameters()] == grads_before  # restored
    assert all(mod.training for mod in m.modules())  # train mode restored
    # the step's clean / adversarial passes (train mode) do update the statistics
    assert any(not torch.equal(before[k], v) for k, v in _bn_state(m).items())


def test_the_attack_raises_the_pretext_loss(tiny):
    torch.manual_seed(0)
    m = build_method(load_config("adv_rotation", tiny + ["method.attack_steps=5"]))
    m.eval()
    inputs, labels = m.pretext(m.views(_batch()["images"], torch.Generator().manual_seed(0)),
                               torch.Generator().manual_seed(1))  # fmt: skip
    x = torch.stack(inputs)
    loss = m.attack_loss(labels)
    x_adv = adv.pgd(loss, x, 8 / 255, 2 / 255, 5)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert float(loss(x_adv)) > float(loss(x))


# ----------------------------------------------------------------------------- fine-tuning
def _train(recipe, tiny, out, *extra, steps=4):
    args = ["train", recipe, *tiny, *QUICK, f"trainer.max_steps={steps}", "trainer.log_every=2", "trainer.threads=1",
            "method.eval_images=64" if recipe == "adv_finetune" else "trainer.knn_every=0", f"trainer.out_dir={out}"]
    rc = main(args + list(extra))
    return rc


def test_partial_finetuning_trains_only_the_named_layers(tiny, tmp_path, capsys):
    pre = tmp_path / "pre"
    assert _train("adv_rotation", tiny, pre) == 0, capsys.readouterr().err[-2000:]
    ft = tmp_path / "ft"
    named = ["classifier", "encoder.backbone.features.10"]
    assert _train("adv_finetune", tiny, ft, f"method.init_from={pre}", f"method.trainable=[{','.join(named)}]") == 0, \
        capsys.readouterr().err[-2000:]  # fmt: skip
    start = {k[len("encoder."):]: v for k, v in load_checkpoint(pre)["model"].items() if k.startswith("encoder.")}
    end = load_checkpoint(ft)["model"]
    changed, kept = [], []
    for k, v in start.items():
        (changed if not torch.equal(v, end["encoder." + k]) else kept).append(k)
    trained = [k for k in start if k.startswith("backbone.features.10.")]
    assert set(changed) == set(trained)  # weights, BN affine and running statistics of the named stage
    assert kept and all(not k.startswith("backbone.features.10.") for k in kept)  # frozen: bit-identical, BN too


def test_full_finetuning_from_a_run_starts_from_its_encoder(tiny, tmp_path, capsys):
    pre = tmp_path / "pre"
    assert _train("adv_rotation", tiny, pre) == 0
    torch.manual_seed(0)
    cfg = load_config("adv_finetune", tiny + [f"method.init_from={pre}"])
    m = build_method(cfg)
    from contrastlab.data import build_datasets

    m.setup_data(build_datasets(cfg.data)[0])
    theirs = load_checkpoint(pre)["model"]
    assert all(torch.equal(v, theirs["encoder." + k]) for k, v in m.encoder.state_dict().items())
    logits = m.classify(torch.rand(3, 3, 32, 32))
    assert logits.shape == (3, 10)


@pytest.mark.parametrize("override,match", [
    ("method.trainable=[classifer]", "method.trainable: 'classifer' names no parameters"),
    ("method.init_from=/nonexistent/run", "method.init_from=/nonexistent/run: checkpoint"),
    ("method.eps=-0.1", "method.eps"),
    ("method.attack_steps=0", "method.attack_steps"),
])
def test_bad_finetuning_options_fail_with_one_line(tiny, tmp_path, capsys, override, match):
    rc = _train("adv_finetune", tiny, tmp_path / "x", override, steps=2)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and match in err[-1] and "Traceback" not in "\n".join(err)


def test_finetuning_from_another_model_fails_with_one_line(tiny, tmp_path, capsys):
    pre = tmp_path / "pre"
    assert _train("adv_rotation", tiny, pre, steps=2) == 0
    capsys.readouterr()
    rc = _train("adv_finetune", tiny, tmp_path / "ft", f"method.init_from={pre}", "model.width=4", steps=2)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and "another model (model.width=8 here 4)" in err[-1]


# ----------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("recipe", ["adv_rotation", "adv_jigsaw", "adv_ensemble", "adv_finetune"])
def test_recipe_trains_end_to_end(recipe, tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(recipe, tiny, out) == 0, capsys.readouterr().err[-2000:]
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in rows if r["loss"]]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    cfg = load_config(recipe, tiny + QUICK)
    torch.manual_seed(cfg.seed)  # the set-up's initial weights
    start = build_method(cfg).state_dict()
    end = load_checkpoint(out)["model"]
    weights = [k for k in start if k.endswith("weight")]
    assert all(not torch.equal(start[k], end[k]) for k in weights)
    if recipe == "adv_finetune":
        final = rows[-1]
        assert 0 <= float(final["clean_acc"]) <= 1 and 0 <= float(final["pgd20_acc"]) <= float(final["clean_acc"]) + 0.05


def test_the_ensemble_attack_ascends_the_losses_plus_the_diversity(tiny):
    """diversity_in_attack (the official PGD_attack_3module): the attack's objective is the sum of the tasks'
    losses + lambda * div of their input gradients; PGD on it runs (double backward) inside the ball."""
    torch.manual_seed(0)
    # a large lambda: the two tasks' input gradients are nearly orthogonal at init (log det about -1e-4)
    m = build_method(load_config("adv_ensemble", tiny + ["method.diversity_in_attack=true", "method.diversity_weight=1000"]))
    inputs, labels = m.pretext(m.views(_batch()["images"], torch.Generator().manual_seed(0)),
                               torch.Generator().manual_seed(1))  # fmt: skip
    xs = torch.stack(inputs).requires_grad_(True)
    got = float(m.attack_loss(labels)(xs).detach())
    ces, grads = [], []
    for t, xi, y in zip(m.tasks, inputs, labels):
        xi = xi.clone().requires_grad_(True)
        z = m.heads[t](m.encoder(xi))
        ce = torch.nn.functional.cross_entropy(z, y)
        grads.append(torch.autograd.grad(ce, xi)[0].double())
        ces.append(_ce_loop(z.detach().double(), y))
    div = _diversity_loop(grads)
    assert abs(1000 * div) > 0.01
    assert got == pytest.approx(sum(ces) + 1000 * div, rel=1e-4)
    with adv.attacking(m):
        x_adv = adv.pgd(m.attack_loss(labels), xs.detach(), 8 / 255, 2 / 255, 2)
    assert (x_adv - xs.detach()).abs().max() <= 8 / 255 + 1e-6
    assert all(p.grad is None for p in m.parameters())
