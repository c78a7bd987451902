"""LooC / LooC++ (Xiao et al., ICLR 2021): leave-one-out views, the per-space losses against a plain
float64 loop over the formula, one queue per space, the method's wiring, config errors, and both
recipes end to end through the command line (train, then kNN eval of the run)."""
import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

from contrastlab.cli import main
from contrastlab.config import load_config
from contrastlab.data.views import LeaveOneOutViews, ViewConfig
from contrastlab.errors import ConfigError
from contrastlab.losses import leave_one_out_info_nce
from contrastlab.methods import build_method

AUGS = ("rotation", "color", "crop")


def _flat(group: dict) -> torch.Tensor:
    return torch.cat([v.double().flatten() for _, v in sorted(group.items())])


def _same(a: dict, b: dict) -> bool:
    return torch.equal(_flat(a), _flat(b))


def _views(cfg=None, augs=AUGS, n=64, size=16, seed=0):
    cfg = cfg or ViewConfig(rotation=10.0, channel_perm_p=1.0, invert_p=0.5, blur_p=0.5)
    v = LeaveOneOutViews(cfg, size, augs)
    images = (torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed + 1)) * 255).to(torch.uint8)
    return v.views({"images": images, "generator": torch.Generator().manual_seed(seed)}, return_params=True), images


@pytest.mark.parametrize("augs", [AUGS, ("color", "rotation"), ("crop",), ("rotation", "color", "crop", "blur")])
def test_key_i_shares_exactly_augmentation_i_with_the_query(augs):
    """k_0 differs from q in every atomic augmentation; k_i has q's parameters of augmentation i and k_0's of
    the other atomic ones; non-atomic groups (common augmentations) are drawn afresh for every view."""
    (q, keys, params), _ = _views(augs=augs)
    assert len(keys) == len(augs) + 1 and all(k.shape == q.shape == (64, 3, 16, 16) for k in keys)
    p_q, p_0 = params[0], params[1]
    for a in augs:
        assert not _same(p_q[a], p_0[a]), a
    for i, aug in enumerate(augs, start=1):
        p_i = params[i + 1]
        for a in augs:
            assert _same(p_i[a], p_q[a]) == (a == aug), (aug, a)
            assert _same(p_i[a], p_0[a]) == (a != aug), (aug, a)
    common = [g for g in ("rotation", "color", "crop", "blur") if g not in augs and g != "rotation"]
    for g in common:
        for i in range(len(params)):
            for j in range(i + 1, len(params)):
                assert not _same(params[i][g], params[j][g]), (g, i, j)
    if "rotation" not in augs:  # no 90-degree turns unless rotation is an atomic augmentation
        assert all(int(p["rotation"]["quarter"].abs().sum()) == 0 for p in params)


def _quarter_label(view, image):
    """Which of the four 90-degree turns of ``image`` the view is (-1: none)."""
    errs = [(view - torch.rot90(image, r, dims=(1, 2))).abs().max() for r in range(4)]
    r = int(torch.argmin(torch.stack(errs)))
    return r if errs[r] < 1e-4 else -1


def test_with_only_rotation_left_out_query_and_k_rot_have_the_same_rotation_label():
    """On images, with the crop and colour made identities: each view is a 90-degree turn of its image, the
    turn is the sampled one, k_rot has the query's turn (and here equals the query), k_0 the other draw."""
    cfg = ViewConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    (q, keys, params), images = _views(cfg, augs=("rotation", "color"), n=32)
    x = images.float() / 255
    k0, k_rot = keys[0], keys[1]
    lq = [_quarter_label(q[b], x[b]) for b in range(32)]
    l0 = [_quarter_label(k0[b], x[b]) for b in range(32)]
    lrot = [_quarter_label(k_rot[b], x[b]) for b in range(32)]
    assert lq == params[0]["rotation"]["quarter"].tolist() and l0 == params[1]["rotation"]["quarter"].tolist()
    assert lrot == lq and lq != l0 and -1 not in lq + l0
    assert torch.allclose(k_rot, q, atol=1e-5)
    assert len({*lq}) == 4  # all four turns are drawn


def _loop_reference(q, k, queues, t):
    """Per space s, per sample b: logits of q against its positive(s) and negatives, cross-entropy."""
    n_spaces, b_size = q.shape[0], q.shape[1]
    q, k, queues = (F.normalize(a.double(), dim=-1).tolist() for a in (q, k, queues))
    dot = lambda u, v: sum(x * y for x, y in zip(u, v))  # noqa: E731
    out = []
    for s in range(n_spaces):
        total = 0.0
        for b in range(b_size):
            negs = [dot(q[s][b], n) / t for n in queues[s]]
            if s == 0:  # every key a positive, one term each, the queue as negatives
                terms = []
                for j in range(n_spaces):
                    pos = dot(q[0][b], k[0][j][b]) / t
                    terms.append(-pos + math.log(math.exp(pos) + sum(math.exp(x) for x in negs)))
                total += sum(terms) / len(terms)
            else:  # k_s positive; the other keys of the image and the queue negatives
                logits = [dot(q[s][b], k[s][j][b]) / t for j in range(n_spaces)] + negs
                total += -logits[s] + math.log(sum(math.exp(x) for x in logits))
        out.append(total / b_size)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("n_augs,b,kq,d,t", [(1, 3, 5, 4, 0.2), (3, 4, 7, 6, 0.5), (2, 5, 3, 8, 0.07)])
def test_each_spaces_loss_matches_a_loop_over_the_formula(n_augs, b, kq, d, t):
    g = torch.Generator().manual_seed(n_augs * 100 + b)
    s = n_augs + 1
    q = torch.randn(s, b, d, generator=g, dtype=torch.float64)
    k = torch.randn(s, s, b, d, generator=g, dtype=torch.float64)
    k[:, 0] = k[:, 0] + 0.5 * q  # some keys close to their query
    queues = torch.randn(s, kq, d, generator=g, dtype=torch.float64)
    got = leave_one_out_info_nce(q, k, queues, t).double()
    want = _loop_reference(q, k, queues, t)
    assert got.shape == (s,)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (got, want)


def test_the_loss_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="leave_one_out_info_nce expects"):
        leave_one_out_info_nce(torch.randn(3, 2, 4), torch.randn(2, 3, 2, 4), torch.randn(3, 5, 4))


def _method(tiny, name="looc", extra=()):
    return build_method(load_config(name, tiny + ["method.queue_size=64", "method.momentum=0.5", *extra]))


def _batch(n=16, seed=0):
    images = (torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(99)) * 255).to(torch.uint8)
    return {"images": images, "generator": torch.Generator().manual_seed(seed)}


def test_a_step_is_the_per_space_loss_and_each_space_enqueues_its_k0_keys(tiny):
    """One step: the loss is the mean of the per-space losses of the query's embeddings against the keys
    (k[s, j] = key j embedded by key head s) and the queues as they were before; then queue s holds the
    k_0 keys embedded in space s at its next B slots, and nothing else moved."""
    m = _method(tiny, extra=["method.shuffle_groups=1"])  # shuffled sub-batches: the test below
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(0.05)  # the online and key branches differ
    queues_before = torch.stack([qu.keys.clone() for qu in m.queues])
    out = m(_batch())
    assert len(m.queues) == 4 and len({id(qu) for qu in m.queues}) == 4
    # redraw the same views and recompute everything from the weights after the step
    q, keys = m.views.views(_batch())
    with torch.no_grad():
        f = m.key_backbone(torch.cat(keys))
        k = torch.stack([h(f) for h in m.key_heads]).view(4, 4, 16, -1)  # (space, key, B, d)
        zq = torch.stack([h(m.backbone(q)) for h in m.heads])
        want = _loop_reference(zq, k, queues_before, m.cfg.temperature)
    assert torch.allclose(torch.as_tensor(out["loss"]).double(), want.mean(), rtol=1e-4, atol=1e-5)
    for s, name in enumerate(["all", *m.cfg.augmentations]):
        assert torch.allclose(torch.as_tensor(out[f"loss_{name}"]).double(), want[s], rtol=1e-4, atol=1e-5), name
    for s, qu in enumerate(m.queues):
        assert int(qu.ptr) == 16
        assert torch.allclose(qu.keys[:16], F.normalize(k[s, 0], dim=1), atol=1e-5), s
        assert torch.equal(qu.keys[16:], queues_before[s, 16:])


def test_the_key_branch_is_a_momentum_copy_and_every_online_weight_gets_a_gradient(tiny, momentum_step_check):
    m = _method(tiny)
    online = [*m.backbone.parameters(), *m.heads.parameters()]
    key = [*m.key_backbone.parameters(), *m.key_heads.parameters()]
    momentum_step_check(m, online, key, _batch())


def test_looc_evaluates_the_backbone_and_looc_pp_the_concatenated_spaces(tiny):
    x = torch.rand(5, 3, 32, 32)
    looc, pp = _method(tiny, "looc"), _method(tiny, "looc_pp")
    pp.load_state_dict(looc.state_dict())  # the same weights: the two differ only in what they evaluate
    looc.eval(), pp.eval()
    assert looc.encoder is looc.backbone and looc.encoder(x).shape == (5, looc.backbone.out_dim)
    feats = pp.encoder(x)
    assert feats.shape == (5, 4 * 16) and pp.encoder.out_dim == 64
    with torch.no_grad():
        f = looc.backbone(x)
        want = torch.cat([F.normalize(h(f), dim=1) for h in looc.heads], dim=1)
    assert torch.allclose(feats, want, atol=1e-6)
    assert not any(k.startswith("encoder") for k in pp.state_dict())  # the property adds no weights


@pytest.mark.parametrize("override,match", [
    ("method.augmentations=[rotation,colour]", "method.augmentations=.*must be a non-empty list of distinct names"),
    ("method.augmentations=[]", "method.augmentations=.*must be a non-empty list"),
    ("method.augmentations=[color,color]", "must be a non-empty list of distinct names"),
    ("method.augmentations=[rotation,blur]", "views.blur_p=0"),
    ("views.backend=torchvision", "views.backend=torchvision: looc draws its leave-one-out views"),
    ("method.queue_size=0", "method.queue_size=0"),
])  # fmt: skip
def test_bad_options_fail_with_one_line(override, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config("looc", [override])
    assert "\n" not in str(e.value)


def test_the_view_generator_refuses_unknown_names_and_per_image_batches():
    with pytest.raises(ConfigError, match="texture"):
        LeaveOneOutViews(ViewConfig(), 16, ("rotation", "texture"))
    v = LeaveOneOutViews(ViewConfig(), 16)
    with pytest.raises(ConfigError, match="views.backend=batched"):
        v.views({"views": [torch.rand(2, 3, 16, 16)] * 2})


@pytest.mark.parametrize("recipe,dim", [("looc", None), ("looc_pp", 64)])
def test_recipe_trains_end_to_end_and_its_features_evaluate(recipe, dim, tiny, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", recipe, *tiny, "trainer.max_steps=4", "trainer.log_every=2", "trainer.threads=1",
            "method.queue_size=64", f"trainer.out_dir={out}"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in rows if r["loss"]]  # the last row is the final kNN
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert {"loss_all", "loss_rotation", "loss_color", "loss_crop"} <= set(rows[0])
    capsys.readouterr()
    assert main(["eval", "knn", str(out), "k=5"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    r = json.loads(lines[-1])
    assert 0 <= r["top1"] <= 1 and r["n_train"] == 256 and r["n_test"] == 128
    if dim:
        cfg = load_config(recipe, tiny)
        assert build_method(cfg).encoder.out_dim == dim


@pytest.mark.distributed
def test_two_processes_hold_the_same_weights_and_queues_with_both_ranks_keys(tmp_path, queue_steps):
    """Two LooC steps on two gloo processes (torchrun): every rank holds the same weights, key branch and
    queues after each step, and each space's queue takes the k_0 keys of rank 0 then rank 1 in that space."""
    r = queue_steps("looc", tmp_path)
    for t in range(2):
        s0, s1 = r[0]["steps"][t], r[1]["steps"][t]
        (k0,), (k1,) = s0["calls"], s1["calls"]  # (S spaces, S keys, B, d) of each rank
        assert k0.shape[:2] == (4, 4) and s0["ptrs"] == s1["ptrs"]
        for s in range(4):
            rows = (torch.arange(2 * k0.shape[2]) + s0["ptrs"][s]) % 64
            want = F.normalize(torch.cat([k0[s, 0], k1[s, 0]]), dim=1)
            assert torch.allclose(s0["state"][f"queues.{s}.keys"][rows], want, atol=1e-5), (t, s)


def test_shuffled_key_sub_batches_come_back_in_order(tiny):
    """Shuffle-BN in one process (shuffle_groups > 1) encodes the (n + 1) B keys in shuffled sub-batches; with
    BatchNorm on running statistics (eval mode) the keys must equal the plain encoding, key by key."""
    m = _method(tiny, extra=["method.shuffle_groups=4"]).eval()
    q, keys = m.views.views(_batch())
    with torch.no_grad():
        got = m.keys(keys, torch.Generator().manual_seed(5))
        f = m.key_backbone(torch.cat(keys))
        want = torch.stack([h(f) for h in m.key_heads]).view(4, 4, 16, -1)
    assert torch.allclose(got, want, atol=1e-5)


def test_quarter_turns_are_a_common_augmentation_when_rotation_is_not_left_out():
    """views.quarter_turns with rotation not atomic: every view draws its own quarter turn (common to all
    views, as any augmentation that is not left out); rotation atomic: k_rotation keeps the query's."""
    cfg = ViewConfig(quarter_turns=True)
    batch = {"images": torch.rand(300, 3, 8, 8), "generator": torch.Generator().manual_seed(0)}
    _, _, params = LeaveOneOutViews(cfg, 8, ("color", "crop")).views(batch, return_params=True)
    turns = torch.stack([p["rotation"]["quarter"] for p in params])  # (views, B)
    assert set(turns.unique().tolist()) == {0, 1, 2, 3}
    for a in range(len(params)):
        for b in range(a + 1, len(params)):
            assert 0.15 < (turns[a] == turns[b]).float().mean() < 0.35  # independent: 1 in 4 agree
    batch["generator"] = torch.Generator().manual_seed(0)
    _, _, params = LeaveOneOutViews(ViewConfig(), 8, ("rotation", "color")).views(batch, return_params=True)
    assert torch.equal(params[2]["rotation"]["quarter"], params[0]["rotation"]["quarter"])  # k_rotation = q's
    assert torch.equal(params[3]["rotation"]["quarter"], params[1]["rotation"]["quarter"])  # k_color = k_0's


def test_a_looc_run_evaluates_as_looc_pp_by_name_and_keeps_both_results(tiny, tmp_path, capsys):
    """eval ... method.name=looc_pp sees the concatenated spaces of a looc run's weights (a linear probe on
    (n + 1) x proj_dim features), the result is kept beside the backbone's in eval.json, and a name of
    another method is refused with one line."""
    out = tmp_path / "run"
    args = ["train", "looc", *tiny, "trainer.max_steps=2", "trainer.threads=1", "method.queue_size=64",
            "model.proj_dim=16", f"trainer.out_dir={out}"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    capsys.readouterr()
    from contrastlab.eval.run import load_run

    _, m_pp, _ = load_run(str(out), ["method.name=looc_pp"])
    _, m, _ = load_run(str(out), [])
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        m.eval(), m_pp.eval()
        spaces = [F.normalize(h(m.backbone(x)), dim=1) for h in m.heads]
        assert torch.allclose(m_pp.encoder(x), torch.cat(spaces, dim=1), atol=1e-5)
        assert torch.allclose(m_pp.backbone(x), m.backbone(x))
    assert main(["eval", "linear", str(out), "label=color", "method.name=looc_pp"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["method"] == "looc_pp" and r["label"] == "color"
    assert main(["eval", "linear", str(out), "label=color"]) == 0
    keys = set(json.loads((out / "eval.json").read_text()))
    assert {"linear/color/model", "linear/color/model/looc_pp"} <= keys
    capsys.readouterr()
    assert main(["eval", "knn", str(out), "method.name=moco"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "looc run" in err[0] and "looc_pp" in err[0]
