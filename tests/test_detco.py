"""DetCo (Xie et al., ICCV 2021): the jigsaw cut against slicing by hand, the local views' patch order, each
level's three losses against a float64 loop over the InfoNCE formula with the queues, the level weights,
the two queues per level after two steps, the momentum copy, the stages the levels read, config errors,
and the recipe end to end through the command line (train, then kNN eval of the run)."""
import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

from contrastlab.cli import main
from contrastlab.config import load_config
from contrastlab.data.views import JigsawViews, ViewConfig, jigsaw_patches
from contrastlab.errors import ConfigError
from contrastlab.methods import build_method

LEVELS = ("stage0", "stage1", "stage2", "stage3")


@pytest.mark.parametrize("h,w,grid", [(32, 32, 3), (30, 30, 3), (33, 31, 3), (8, 12, 2), (5, 5, 1)])
def test_the_jigsaw_patch_k_is_row_k_div_grid_column_k_mod_grid_of_the_image(h, w, grid):
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h * w))
    got = jigsaw_patches(x, grid)
    ph, pw = h // grid, w // grid
    oy, ox = (h - grid * ph) // 2, (w - grid * pw) // 2  # the central region when the side is no multiple
    assert got.shape == (2, grid * grid, 3, ph, pw)
    for k in range(grid * grid):
        r, c = k // grid, k % grid
        want = x[:, :, oy + r * ph : oy + (r + 1) * ph, ox + c * pw : ox + (c + 1) * pw]
        assert torch.equal(got[:, k], want), k
    # a 32 px image in a 3 x 3 grid: 10 px patches from rows / columns 1..30
    if (h, w, grid) == (32, 32, 3):
        assert torch.equal(got[:, 0], x[:, :, 1:11, 1:11]) and torch.equal(got[:, 8], x[:, :, 21:31, 21:31])


def test_the_jigsaw_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        jigsaw_patches(torch.rand(1, 3, 2, 2), 3)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        jigsaw_patches(torch.rand(3, 9, 9), 3)


def test_the_local_view_keeps_the_patch_order_and_augments_each_patch_on_its_own():
    """With every augmentation an identity and views at the patch's own size, view k of an image is its patch
    k; with colour jitter on, the nine patches of one image get different colour draws."""
    images = (torch.rand(4, 3, 30, 30, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    identity = ViewConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    v = JigsawViews(identity, 10, 3)(images, torch.Generator().manual_seed(0))
    assert v.shape == (4, 9, 3, 10, 10)
    assert torch.allclose(v, jigsaw_patches(images.float() / 255, 3), atol=1e-5)
    cfg = ViewConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=1.0, brightness=0.0,
                     contrast=0.0, saturation=0.0, hue=0.0, grayscale_p=0.0, channel_perm_p=1.0)  # fmt: skip
    flat = torch.full((1, 3, 30, 30), 0.5)
    flat[:, 0], flat[:, 1] = 0.1, 0.9  # one colour: only the channel permutations tell patches apart
    v = JigsawViews(cfg, 10, 3)(flat, torch.Generator().manual_seed(3))
    assert v.shape == (1, 9, 3, 10, 10) and len({tuple(v[0, k, :, 0, 0].tolist()) for k in range(9)}) > 1


def _method(tiny, extra=()):
    return build_method(load_config("detco", tiny + ["method.queue_size=64", "method.momentum=0.5", *extra]))


def _batch(n=16, seed=0):
    images = (torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(99)) * 255).to(torch.uint8)
    return {"images": images, "generator": torch.Generator().manual_seed(seed)}


def _info_nce_loop(q, k, queue, t):
    """The InfoNCE formula per query, in float64 Python: -q.k/t + log(exp(q.k/t) + sum_j exp(q.n_j/t)), mean."""
    q, k, queue = (F.normalize(a.double(), dim=-1).tolist() for a in (q, k, queue))
    dot = lambda u, v: sum(x * y for x, y in zip(u, v))  # noqa: E731
    total = 0.0
    for qb, kb in zip(q, k):
        pos = dot(qb, kb) / t
        total += -pos + math.log(math.exp(pos) + sum(math.exp(dot(qb, n) / t) for n in queue))
    return total / len(q)


def _redraw(m, seed):
    """The step's four views drawn again (same generator seed, same order) and embedded with the weights after
    the step (the key branch as the step used it): global / local queries and keys, each (B, L, d)."""
    b = _batch(seed=seed)
    g = b["generator"]
    xg_q, xg_k = m.views(b["images"], g), m.views(b["images"], g)
    xl_q, xl_k = m.local_views(b["images"], g), m.local_views(b["images"], g)
    with torch.no_grad():
        qg = m.embed(m.encoder, m.global_heads, xg_q, False)
        ql = m.embed(m.encoder, m.local_heads, xl_q, True)
        kg = m.embed(m.key_encoder, m.key_global_heads, xg_k, False)
        kl = m.embed(m.key_encoder, m.key_local_heads, xl_k, True)
    return qg, ql, kg, kl


def test_each_levels_three_losses_match_a_loop_over_the_formula_with_the_queues(tiny):
    """One step: per level, L_gg (global q, global k, global queue), L_ll (local q, local k, local queue) and
    L_lg (local q, global k, global queue) against a float64 loop over the queues as they were before the
    step; the loss is sum_l w_l (L_gg + L_ll + L_lg) with w = (0.1, 0.4, 0.7, 1.0)."""
    m = _method(tiny, ["method.shuffle_groups=1"])  # shuffled sub-batches: test_shuffled_keys_...
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(0.05)  # the online and key branches differ
    gq_before = [q.keys.clone() for q in m.global_queues]
    lq_before = [q.keys.clone() for q in m.local_queues]
    out = m(_batch())
    qg, ql, kg, kl = _redraw(m, 0)
    t, total = m.cfg.temperature, 0.0
    assert m.level_weights == (0.1, 0.4, 0.7, 1.0) and m.level_names == LEVELS
    for lv, name in enumerate(LEVELS):
        want = {"gg": _info_nce_loop(qg[:, lv], kg[:, lv], gq_before[lv], t),
                "ll": _info_nce_loop(ql[:, lv], kl[:, lv], lq_before[lv], t),
                "lg": _info_nce_loop(ql[:, lv], kg[:, lv], gq_before[lv], t)}  # fmt: skip
        for kind, v in want.items():
            assert math.isclose(float(out[f"loss_{kind}_{name}"]), v, rel_tol=1e-4, abs_tol=1e-5), (name, kind)
        total += m.level_weights[lv] * sum(want.values())
    assert math.isclose(float(out["loss"].detach()), total, rel_tol=1e-4, abs_tol=1e-5)


@pytest.mark.parametrize("extra,weights", [
    ([], (0.1, 0.4, 0.7, 1.0)),
    (["method.n_levels=2"], (0.7, 1.0)),
    (["method.n_levels=1"], (1.0,)),
    (["method.level_weights=[0,0,2,0]"], (0.0, 0.0, 2.0, 0.0)),
])  # fmt: skip
def test_the_level_weights_scale_each_levels_sum_of_three(tiny, extra, weights):
    m = _method(tiny, extra)
    assert m.level_weights == weights and len(m.global_heads) == len(m.local_queues) == len(weights)
    out = m(_batch())
    names = LEVELS[-len(weights):]
    assert m.level_names == names
    want = sum(w * sum(float(out[f"loss_{k}_{n}"]) for k in ("gg", "ll", "lg")) for w, n in zip(weights, names))
    assert math.isclose(float(out["loss"].detach()), want, rel_tol=1e-5, abs_tol=1e-6)


def test_each_level_has_a_global_and_a_local_queue_that_take_their_keys_over_two_steps(tiny):
    """After step 1, level l's global queue holds that step's normalised global keys at slots 0..B-1 and its
    local queue the local keys; step 2 fills B..2B-1 and leaves step 1's keys; the other slots never move."""
    m = _method(tiny, ["method.shuffle_groups=1"])
    b = 16
    queues = [*m.global_queues, *m.local_queues]
    assert len({id(q) for q in queues}) == 8
    before = [q.keys.clone() for q in queues]
    m(_batch(seed=0))
    _, _, kg1, kl1 = _redraw(m, 0)
    m(_batch(seed=1))
    _, _, kg2, kl2 = _redraw(m, 1)
    for lv in range(4):
        for q, k1, k2, q0 in ((m.global_queues[lv], kg1, kg2, before[lv]), (m.local_queues[lv], kl1, kl2, before[4 + lv])):
            assert int(q.ptr) == 2 * b
            assert torch.allclose(q.keys[:b], F.normalize(k1[:, lv], dim=1), atol=1e-5), lv
            assert torch.allclose(q.keys[b : 2 * b], F.normalize(k2[:, lv], dim=1), atol=1e-5), lv
            assert torch.equal(q.keys[2 * b :], q0[2 * b :])
    assert not torch.allclose(m.global_queues[3].keys[:b], m.local_queues[3].keys[:b])


def test_the_key_branch_is_a_momentum_copy_and_every_online_weight_gets_a_gradient(tiny, momentum_step_check):
    m = _method(tiny)
    online = [*m.encoder.parameters(), *m.global_heads.parameters(), *m.local_heads.parameters()]
    key = [*m.key_encoder.parameters(), *m.key_global_heads.parameters(), *m.key_local_heads.parameters()]
    momentum_step_check(m, online, key, _batch())


def test_the_levels_read_the_backbones_last_stages_and_evaluation_sees_the_pooled_final_feature(tiny):
    """forward_stages of the small CNN (widths 8, 16, 32, 32 here) at the global view's 32 px and the patches'
    12 px; each level's heads take that stage's channels (the local head nine times them); the encoder the
    protocols evaluate is the backbone's pooled final feature."""
    m = _method(tiny)
    x = torch.rand(3, 3, 32, 32)
    shapes = [tuple(f.shape) for f in m.encoder.forward_stages(x, 4)]
    assert shapes == [(3, 8, 32, 32), (3, 16, 16, 16), (3, 32, 8, 8), (3, 32, 4, 4)]
    patches = [tuple(f.shape) for f in m.encoder.forward_stages(torch.rand(3, 3, 12, 12), 2)]
    assert patches == [(3, 32, 3, 3), (3, 32, 1, 1)]
    assert [h.net[0].in_features for h in m.global_heads] == [8, 16, 32, 32]
    assert [h.net[0].in_features for h in m.local_heads] == [72, 144, 288, 288]
    m.eval()
    with torch.no_grad():
        assert torch.allclose(m.encoder(x), m.encoder.forward_features(x).mean(dim=(2, 3)), atol=1e-6)
        xl = torch.rand(3, 9, 3, 12, 12)
        got_l, got_g = m.embed(m.encoder, m.local_heads, xl, True), m.embed(m.encoder, m.global_heads, x, False)
        assert got_l.shape == got_g.shape == (3, 4, 16)
        # by hand: each patch encoded alone (eval-mode BN), its stage maps pooled, the 9 concatenated in order
        for b in range(3):
            per_patch = [m.encoder.forward_stages(xl[b, k : k + 1], 4) for k in range(9)]
            whole = m.encoder.forward_stages(x[b : b + 1], 4)
            for lv in range(4):
                cat = torch.cat([per_patch[k][lv].mean(dim=(2, 3)) for k in range(9)], dim=1)
                assert torch.allclose(got_l[b, lv], m.local_heads[lv](cat)[0], atol=1e-5), (b, lv)
                assert torch.allclose(got_g[b, lv], m.global_heads[lv](whole[lv].mean(dim=(2, 3)))[0], atol=1e-5)


def test_a_resnet_backbone_gives_res2_to_res5_levels():
    cfg = load_config("detco", ["model.backbone=resnet18", "model.proj_hidden=16", "model.proj_dim=8",
                                "method.queue_size=16", "method.local_size=32"])  # fmt: skip
    m = build_method(cfg)
    assert m.stages == [0, 1, 2, 3] and m.encoder.stage_dims == (64, 128, 256, 512)
    assert [h.net[0].in_features for h in m.local_heads] == [576, 1152, 2304, 4608]
    shapes = [tuple(f.shape) for f in m.encoder.forward_stages(torch.rand(2, 3, 64, 64), 4)]
    assert shapes == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4), (2, 512, 2, 2)]  # strides 4, 8, 16, 32


def test_shuffled_key_sub_batches_come_back_in_order(tiny):
    """Shuffle-BN in one process encodes the keys in shuffled sub-batches (a local view's nine patches move
    together); with BatchNorm on running statistics (eval mode) the keys equal the plain encoding."""
    m = _method(tiny, ["method.shuffle_groups=4"]).eval()
    b = _batch()
    xg, xl = m.views(b["images"], b["generator"]), m.local_views(b["images"], b["generator"])
    with torch.no_grad():
        for x, local, heads in ((xg, False, m.key_global_heads), (xl, True, m.key_local_heads)):
            got = m.keys(x, local, torch.Generator().manual_seed(5))
            assert torch.allclose(got, m.embed(m.key_encoder, heads, x, local), atol=1e-5)


@pytest.mark.parametrize("override,match", [
    ("method.level_weights=[0.5,1.0]", r"method.level_weights=\[0.5, 1.0\]: 2 weights for method.n_levels=4"),
    ("method.n_levels=5", "method.n_levels=5: the default weights cover 4 levels"),
    ("method.n_levels=0", "method.n_levels=0"),
    ("method.level_weights=[0.1,-1,1,1]", r"method.level_weights=.*must be null or a non-empty list of numbers >= 0"),
    ("method.level_weights=[]", "method.level_weights=.*must be null or a non-empty list"),
    ("views.backend=torchvision", "views.backend=torchvision: detco cuts its jigsaw views"),
    ("method.queue_size=0", "method.queue_size=0"),
    ("method.local_crop_scale=[0,1]", "method.local_crop_scale"),
])  # fmt: skip
def test_bad_options_fail_with_one_line(override, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config("detco", [override])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("extra,match", [
    (["method.n_levels=5", "method.level_weights=[1,1,1,1,1]"], "method.n_levels=5: backbone small_cnn has 4 stages"),
    (["method.local_size=4"], "method.local_size=4: a patch this small does not pass the backbone's stages"),
])  # fmt: skip
def test_options_the_backbone_cannot_serve_fail_with_one_line_when_built(tiny, extra, match):
    with pytest.raises(ConfigError, match=match) as e:
        _method(tiny, extra)
    assert "\n" not in str(e.value)


def test_per_image_views_are_refused(tiny):
    with pytest.raises(ConfigError, match="views.backend=batched"):
        _method(tiny)({"views": [torch.rand(2, 3, 32, 32)] * 2})


def test_recipe_trains_end_to_end_and_its_features_evaluate(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "detco", *tiny, "trainer.max_steps=4", "trainer.log_every=2", "trainer.threads=1",
            "method.queue_size=64", f"trainer.out_dir={out}"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in rows if r["loss"]]  # the last row is the final kNN
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert {f"loss_{k}_{n}" for k in ("gg", "ll", "lg") for n in LEVELS} <= set(rows[0])
    capsys.readouterr()
    assert main(["eval", "knn", str(out), "k=5"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    r = json.loads(lines[-1])
    assert 0 <= r["top1"] <= 1 and r["n_train"] == 256 and r["n_test"] == 128


@pytest.mark.distributed
def test_two_processes_hold_the_same_weights_and_every_levels_queues_take_both_ranks_keys(tmp_path, queue_steps):
    """Two DetCo steps on two gloo processes (torchrun): every rank holds the same weights, key branch and
    queues after each step, and each level's global (local) queue takes the global (local) keys of rank 0
    then rank 1 at that level."""
    r = queue_steps("detco", tmp_path)
    for t in range(2):
        s0, s1 = r[0]["steps"][t], r[1]["steps"][t]
        assert s0["loss"] != s1["loss"]  # each rank its own images and draws
        assert s0["ptrs"] == s1["ptrs"]
        assert len(s0["calls"]) == 2  # the global keys, then the local ones
        levels = s0["calls"][0].shape[1]
        assert levels == 4 and s0["calls"][0].shape[0] == 8
        for i, (kind, off) in enumerate((("global", 0), ("local", levels))):
            k0, k1 = s0["calls"][i], s1["calls"][i]  # (B, L, d) of each rank
            assert not torch.allclose(k0, k1)
            for lv in range(levels):
                rows = (torch.arange(2 * k0.shape[0]) + s0["ptrs"][off + lv]) % 64
                want = F.normalize(torch.cat([k0[:, lv], k1[:, lv]]), dim=1)
                got = s0["state"][f"{kind}_queues.{lv}.keys"][rows]
                assert torch.allclose(got, want, atol=1e-5), (t, kind, lv)
