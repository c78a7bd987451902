"""RP-Net (issue 18): the context relation encoder's local correlation, masked average pooling,
cosine prototypes and Dice + CE against plain loops over the formulas (float64), the recurrent
refinement's step counts, and training via the real trainer."""
import math

import pytest
import torch

from contrastlab.config import from_dict
from contrastlab.losses import dice_ce_loss, soft_dice_loss
from contrastlab.methods import build_method
from contrastlab.nn import ContextRelationEncoder, cosine_logits, local_correlation, masked_average_pool


def loop_correlation(a, b, r):
    """corr[n, k, y, x] = sum_c a[n, c, y, x] b[n, c, y + dy, x + dx] / sqrt(C), 0 outside the map."""
    n, c, h, w = a.shape
    out = torch.zeros(n, (2 * r + 1) ** 2, h, w, dtype=torch.float64)
    for i in range(n):
        for y in range(h):
            for x in range(w):
                k = 0
                for dy in range(-r, r + 1):
                    for dx in range(-r, r + 1):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < h and 0 <= xx < w:
                            out[i, k, y, x] = sum(float(a[i, ch, y, x]) * float(b[i, ch, yy, xx]) for ch in range(c)) / math.sqrt(c)
                        k += 1
    return out


@pytest.mark.parametrize("r,h,w", [(1, 4, 5), (2, 3, 6), (0, 3, 3), (5, 6, 4)])
def test_local_correlation_matches_a_loop_over_pixels_and_offsets(r, h, w):
    g = torch.Generator().manual_seed(r + h)
    a = torch.randn(2, 3, h, w, dtype=torch.float64, generator=g)
    b = torch.randn(2, 3, h, w, dtype=torch.float64, generator=g)
    got = local_correlation(a, b, r)
    assert got.shape == (2, (2 * r + 1) ** 2, h, w)
    torch.testing.assert_close(got, loop_correlation(a, b, r))


def test_local_correlation_refuses_maps_of_two_shapes():
    with pytest.raises(ValueError, match="one shape"):
        local_correlation(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4), 1)


def test_cre_feeds_the_correlation_of_its_two_branches_and_the_foreground_branch_to_its_output():
    torch.manual_seed(0)
    cre = ContextRelationEncoder(4, radius=1, out_channels=5).double().eval()
    f = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    m = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    seen = {}
    cre.out.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0]))
    with torch.no_grad():
        y = cre(f, m)
        a, b = cre.fg(f * m), cre.bg(f * (1 - m))
    assert y.shape == (2, 5, 6, 6)
    torch.testing.assert_close(seen["x"], torch.cat([loop_correlation(a, b, 1), a], 1))


def test_masked_average_pooling_matches_a_loop():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(3, 4, 5, 6, dtype=torch.float64, generator=g)
    m = torch.rand(3, 5, 6, dtype=torch.float64, generator=g)
    m[2] = 0  # an empty mask: 0 / eps = 0
    got = masked_average_pool(f, m)
    for i in range(3):
        den = sum(float(m[i, y, x]) for y in range(5) for x in range(6)) + 1e-5
        for c in range(4):
            num = sum(float(f[i, c, y, x]) * float(m[i, y, x]) for y in range(5) for x in range(6))
            assert abs(float(got[i, c]) - num / den) < 1e-10


def test_cosine_logits_match_a_loop():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(2, 3, 2, 3, dtype=torch.float64, generator=g)
    p = torch.randn(2, 2, 3, dtype=torch.float64, generator=g)
    got = cosine_logits(f, p, 20.0)
    for i in range(2):
        for k in range(2):
            for y in range(2):
                for x in range(3):
                    v = [float(f[i, c, y, x]) for c in range(3)]
                    q = [float(p[i, k, c]) for c in range(3)]
                    cos = sum(s * t for s, t in zip(v, q)) / math.sqrt(sum(s * s for s in v) * sum(t * t for t in q))
                    assert abs(float(got[i, k, y, x]) - 20 * cos) < 1e-9


def loop_dice_ce(logits, target, ignore=255, eps=1e-7):
    n, k, h, w = logits.shape
    inter, card = [0.0] * k, [0.0] * k
    ce, count = 0.0, 0
    for i in range(n):
        for y in range(h):
            for x in range(w):
                t = int(target[i, y, x])
                if t == ignore:
                    continue
                z = [float(logits[i, j, y, x]) for j in range(k)]
                zmax = max(z)
                s = sum(math.exp(v - zmax) for v in z)
                p = [math.exp(v - zmax) / s for v in z]
                for j in range(k):
                    inter[j] += p[j] * (j == t)
                    card[j] += p[j] + (j == t)
                ce += -math.log(p[t])
                count += 1
    dice = 1 - sum(2 * inter[j] / (card[j] + eps) for j in range(k)) / k
    return dice, dice + ce / count


@pytest.mark.parametrize("k", [2, 3])
def test_soft_dice_and_dice_ce_match_a_hand_computation(k):
    g = torch.Generator().manual_seed(k)
    logits = torch.randn(2, k, 4, 5, dtype=torch.float64, generator=g)
    target = torch.randint(0, k, (2, 4, 5), generator=g)
    target[0, 0, :3] = 255
    target[1, 2, 2] = 255
    dice, total = loop_dice_ce(logits, target)
    assert abs(float(soft_dice_loss(logits, target)) - dice) < 1e-10
    assert abs(float(dice_ce_loss(logits, target)) - total) < 1e-10


def test_a_perfect_prediction_has_zero_dice_loss():
    target = torch.tensor([[[0, 1], [1, 255]]])
    logits = torch.stack([(target == 0).double(), (target == 1).double()], 1) * 200
    assert float(soft_dice_loss(logits, target)) < 1e-6


# --------------------------------------------------------------------------- the method
def tiny_cfg(**method):
    m = {"name": "rpnet", "widths": [4, 4, 8, 8, 8], "radius": 1, "cre_channels": 6, "t_train": 3, "t_test": 7} | method
    return from_dict({"method": m, "data": {"name": "digits"}, "trainer": {"max_steps": 2}})


def episode_batch(e=2, k=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(e, k, size, size, generator=g) > 0.6).long()
    masks[:, :, 0, :2] = 255
    return {"support_images": torch.rand(e, k, 3, size, size, generator=g), "support_masks": masks,
            "query_image": torch.rand(e, 3, size, size, generator=g),
            "query_mask": (torch.rand(e, size, size, generator=g) > 0.6).long()}  # fmt: skip


def count_cre_calls(method):
    calls = []
    method.cre.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    return calls


@pytest.mark.parametrize("init", ["prototype", "support"])
def test_refinement_runs_t_train_steps_in_training_and_t_test_at_evaluation(init):
    torch.manual_seed(0)
    m = build_method(tiny_cfg(init_mask=init))
    calls = count_cre_calls(m)
    b = episode_batch()
    out = m(b)
    assert calls == [4] + [2] * 3  # the supports (E K = 4) once, then the query (E = 2) t_train = 3 times
    assert torch.isfinite(out["loss"]) and {"loss_seg", "loss_align"} <= set(out)
    calls.clear()
    m.eval()
    with torch.no_grad():
        logits = m.segment_episode(b["support_images"], b["support_masks"], b["query_image"])
    assert calls == [4] + [2] * 7 and logits.shape == (2, 2, 16, 16)
    calls.clear()
    m.cfg.t_test = 1
    with torch.no_grad():
        m.segment_episode(b["support_images"], b["support_masks"], b["query_image"])
    assert calls == [4, 2]


def test_each_step_starts_from_the_previous_steps_thresholded_mask():
    torch.manual_seed(0)
    m = build_method(tiny_cfg()).eval()
    masks_in = []
    m.cre.register_forward_hook(lambda mod, inp, out: masks_in.append(inp[1]))
    b = episode_batch(k=1)
    with torch.no_grad():
        out = m.episode(b["support_images"], b["support_masks"], b["query_image"], 3)
    for t in range(2):  # the query mask of step t + 1 is step t's prediction (> 0.5), pooled to 1/4
        pred = (out["steps"][t].softmax(1)[:, 1] > 0.5).float()
        torch.testing.assert_close(masks_in[2 + t], torch.nn.functional.avg_pool2d(pred.unsqueeze(1), 4))
    assert torch.equal(out["logits"], out["steps"][-1])


def test_bad_options_fail_with_one_line():
    from contrastlab.errors import ConfigError

    for key, val, match in [("t_test", 0, "t_test"), ("widths", [4, 4], "five"), ("init_mask", "registration", "init_mask")]:
        with pytest.raises(ConfigError, match=match) as e:
            tiny_cfg(**{key: val})
        assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- the real trainer
@pytest.mark.parametrize("recipe,extra", [("rpnet", ["data.n_train=200", "data.n_test=100"]), ("rpnet/organs", [])])
def test_trains_via_the_trainer_and_evaluates_with_eval_fewshot(recipe, extra, tmp_path, capsys):
    import csv
    import json

    from contrastlab.checkpoint import load_checkpoint
    from contrastlab.cli import main
    from contrastlab.config import load_config

    out = tmp_path / "run"
    args = [*extra, "method.widths=[4,4,8,8,8]", "method.radius=1", "method.cre_channels=8", "method.t_train=2",
            "optim.batch_size=2", "trainer.max_steps=3", "trainer.log_every=1", "trainer.threads=1",
            "trainer.knn_every=0", f"trainer.out_dir={out}"]  # fmt: skip
    assert main(["train", recipe, *args]) == 0, capsys.readouterr().err[-2000:]
    with open(out / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["loss"]]
    assert len(rows) == 3 and all(math.isfinite(float(r["loss"])) for r in rows)
    assert {"loss_seg", "loss_align"} <= set(rows[0])
    torch.manual_seed(0)
    init = build_method(load_config(recipe, args)).state_dict()
    trained = load_checkpoint(out)["model"]
    assert any(not torch.equal(init[k], trained[k]) for k in trained if k.startswith("cre."))
    assert any(not torch.equal(init[k], trained[k]) for k in trained if k.startswith("unet."))
    capsys.readouterr()
    assert main(["eval", "fewshot", str(out), "episodes=4", "batch_size=2", "n_examples=0"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["segmenter"] == "rpnet" and 0 <= r["miou"] <= 1
    if recipe == "rpnet/organs":
        assert 0 <= r["dice"] <= 1 and r["novel_classes"] == ["liver"]
        return
    # T at test from the command line (an option that does not change training), the same as through the API
    from contrastlab.eval.fewshot import FewShotOptions, run

    assert main(["eval", "fewshot", str(out), "episodes=4", "batch_size=2", "n_examples=0", "method.t_test=1"]) == 0
    cli = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    api = run(str(out), FewShotOptions(episodes=4, batch_size=2, n_examples=0), ["method.t_test=1"])
    assert cli["miou"] == api["miou"] and (cli["miou"], cli["fb_iou"]) != (r["miou"], r["fb_iou"])
    # an option that changes training is refused in one line, naming the ones that may be set
    assert main(["eval", "fewshot", str(out), "episodes=4", "method.t_train=5"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method.t_train" in err[0] and "method.t_test" in err[0]


def test_align_loss_matches_an_episode_by_episode_recomputation():
    """PANet's alignment: prototypes of the last Q under the predicted query mask (argmax at Q's size), 20 x cosine
    on each support's S, CE against the support masks, over the episodes whose prediction has foreground."""
    import torch.nn.functional as F

    torch.manual_seed(1)
    m = build_method(tiny_cfg()).double().eval()
    b = episode_batch(e=3, k=2)
    b = {k: (v.double() if v.is_floating_point() else v) for k, v in b.items()}
    with torch.no_grad():
        out = m.episode(b["support_images"], b["support_masks"], b["query_image"], 2)
        got = m.align_loss(out, b["support_masks"])
    q, s = out["query"], out["support"].view(3, 2, *out["support"].shape[1:])
    pred = F.interpolate(out["logits"], q.shape[-2:], mode="bilinear").argmax(1)
    num, den = 0.0, 0
    for e in range(3):
        if not (pred[e] == 1).any():
            continue
        protos = []
        for j in (0, 1):
            w = (pred[e] == j).double()
            protos.append((q[e] * w).sum((1, 2)) / (w.sum() + 1e-5))
        for k in range(2):
            up = F.interpolate(torch.stack([20 * F.cosine_similarity(s[e, k], p[:, None, None], dim=0) for p in protos])[None],
                               (16, 16), mode="bilinear")[0]
            for y in range(16):
                for x in range(16):
                    t = int(b["support_masks"][e, k, y, x])
                    if t == 255:
                        continue
                    num += float(torch.logsumexp(up[:, y, x], 0) - up[t, y, x])
                    den += 1
    assert den > 0 and abs(float(got) - num / den) < 1e-6
