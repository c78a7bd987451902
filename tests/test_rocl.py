"""RoCL (Kim et al., NeurIPS 2020): the three-view NT-Xent against a float64 loop over its formula (and the
two-view case against nt_xent), the instance-wise attack (in the ball and the box, raises the instance loss,
leaves BatchNorm statistics, train flags and requires_grad as they were), one training step recomputed by
hand, the plug-ins of the core (the pruned branch; DCL / HCL and MoCHi: a step recomputed by hand from loops
over their formulas, the attack on the debiased loss, each trained end to end), config errors (RoCL's own MoCHi
pool bound), and the digits recipe end to end through the command line (loss finite, weights changed, kNN eval
of the run). The multi-positive debiased loss and the V-view MoCHi pool: tests/test_multi_view.py."""
import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

from contrastlab.checkpoint import load_checkpoint
from contrastlab.cli import main
from contrastlab.config import load_config
from contrastlab.errors import ConfigError
from contrastlab.losses import debiased_nt_xent, mochi_negatives, multi_view_nt_xent, nt_xent
from contrastlab.methods import build_method
from test_multi_view import debiased_loop, multi_view_loop


# ----------------------------------------------------------------------------- the three-view loss
def _multi_view_loop(views, t):
    """(1 / V B) sum over anchors (v, i) and their positives (w != v, i) of
    -log(exp(s / t) / sum_{(u, k) != (v, i)} exp(s / t)), one pair at a time, float64."""
    vs = [[[float(a) for a in row] for row in v.double()] for v in views]
    n_views, b = len(vs), len(vs[0])

    def cos(p, q):
        return sum(x * y for x, y in zip(p, q)) / math.sqrt(sum(x * x for x in p) * sum(y * y for y in q))

    total = 0.0
    for v in range(n_views):
        for i in range(b):
            denom = sum(math.exp(cos(vs[v][i], vs[u][k]) / t) for u in range(n_views) for k in range(b)
                        if (u, k) != (v, i))  # fmt: skip
            for w in range(n_views):
                if w != v:
                    total -= math.log(math.exp(cos(vs[v][i], vs[w][i]) / t) / denom)
    return total / (n_views * b)


@pytest.mark.parametrize("n_views,b,d,t", [(2, 4, 5, 0.5), (3, 5, 4, 0.5), (3, 3, 6, 0.2), (4, 2, 3, 1.0)])
def test_multi_view_nt_xent_matches_a_loop_over_the_formula(n_views, b, d, t):
    g = torch.Generator().manual_seed(n_views * 10 + b)
    views = [torch.randn(b, d, generator=g, dtype=torch.float64) for _ in range(n_views)]
    got = multi_view_nt_xent([v.float() for v in views], temperature=t)
    assert got.item() == pytest.approx(_multi_view_loop(views, t), rel=1e-5)


def test_two_views_are_nt_xent():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    torch.testing.assert_close(multi_view_nt_xent([z1, z2], 0.5), nt_xent(z1, z2, 0.5), rtol=1e-6, atol=1e-6)


def test_multi_view_nt_xent_refuses_bad_shapes():
    with pytest.raises(ValueError, match="at least 2 views"):
        multi_view_nt_xent([torch.randn(3, 4)])
    with pytest.raises(ValueError, match="of one shape"):
        multi_view_nt_xent([torch.randn(3, 4), torch.randn(2, 4)])


# ----------------------------------------------------------------------------- the method
TINY_M = ["model.width=4", "model.depth=1", "model.proj_hidden=16", "model.proj_dim=8", "optim.batch_size=8",
          "optim.warmup_steps=0"]  # fmt: skip


def _method(extra=()):
    torch.manual_seed(0)
    return build_method(load_config("rocl", TINY_M + list(extra))).train()


def _pair(b=8, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g), torch.rand(b, 3, size, size, generator=g)


def test_the_attack_stays_in_the_ball_raises_the_instance_loss_and_has_no_side_effects():
    m = _method(["method.attack_steps=5", "method.attack_eps=0.3", "method.attack_step=0.1"])
    next(m.projector.parameters()).requires_grad_(False)  # a frozen parameter must come back frozen
    x1, x2 = _pair()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    modes = {n: mod.training for n, mod in m.named_modules()}
    torch.manual_seed(1)
    adv = m.attack(x1, x2)
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())  # BN running stats and weights
    assert {n: p.requires_grad for n, p in m.named_parameters()} == flags
    assert {n: mod.training for n, mod in m.named_modules()} == modes
    assert all(p.grad is None for p in m.parameters())
    eps = m.cfg.attack_eps
    assert (adv - x1).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    m.eval()
    with torch.no_grad():
        target = m.projector(m.encoder(x2))
        clean = nt_xent(m.projector(m.encoder(x1)), target, 0.5, gather=False)
        attacked = nt_xent(m.projector(m.encoder(adv)), target, 0.5, gather=False)
    assert attacked > clean + 1e-3, (float(clean), float(attacked))


@pytest.mark.parametrize("attack_to", ["other", "self"])
def test_one_attack_step_is_the_signed_gradient_of_nt_xent_to_its_target(attack_to):
    """attack_steps=1, no random start: x1_adv = clamp(x1 + step * sign(grad_x NT-Xent(z(x), z(target)))), the
    gradient taken here with the networks in eval mode and the target's projection fixed."""
    step = 2 / 255
    m = _method([f"method.attack_to={attack_to}", "method.attack_steps=1", "method.attack_random_start=false",
                 f"method.attack_step={step}"])  # fmt: skip
    x1, x2 = _pair()
    adv = m.attack(x1, x2)
    m.eval()
    with torch.no_grad():
        target = m.projector(m.encoder(x2 if attack_to == "other" else x1))
    x = x1.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(nt_xent(m.projector(m.encoder(x)), target, 0.5, gather=False), x)
    torch.testing.assert_close(adv, (x1 + step * g.sign()).clamp(0, 1), rtol=0, atol=1e-6)


def test_one_step_is_the_three_view_loss_plus_the_weighted_adversarial_pair():
    """forward() recomputed by hand from the same attack (same random start) and the same views."""
    m = _method(["method.adv_weight=0.5"])
    x1, x2 = _pair()
    batch = {"views": [x1, x2], "step": 0, "epoch": 0}
    state = {k: v.clone() for k, v in m.state_dict().items()}
    torch.manual_seed(3)
    out = m(batch)
    out["loss"].backward()
    assert all(p.grad is not None for p in m.encoder.parameters())
    m.load_state_dict(state)  # the step moved the running statistics that the attack (eval-mode BN) reads
    torch.manual_seed(3)
    adv = m.attack(x1, x2)
    z = m.projector(m.encoder(torch.cat([x1, x2, adv]))).double()
    z1, z2, za = z.chunk(3)
    three = _multi_view_loop([z1.detach(), z2.detach(), za.detach()], 0.5)
    pair = _multi_view_loop([za.detach(), z2.detach()], 0.5)  # two views: NT-Xent(t1_adv, t2)
    assert out["loss_rocl"].item() == pytest.approx(three, rel=1e-4)
    assert out["loss_adv"].item() == pytest.approx(pair, rel=1e-4)
    assert out["loss"].item() == pytest.approx(three + 0.5 * pair, rel=1e-4)


def test_attack_to_self_targets_the_attacked_view():
    m = _method(["method.attack_to=self", "method.attack_random_start=false"])
    x1, x2 = _pair()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    out = m({"views": [x1, x2], "step": 0, "epoch": 0})
    m.load_state_dict(state)
    adv = m.attack(x1, x2)  # no random start: the same attack
    z1, z2, za = m.projector(m.encoder(torch.cat([x1, x2, adv]))).chunk(3)
    assert out["loss_adv"].item() == pytest.approx(nt_xent(za, z1, 0.5).item(), rel=1e-4)


def test_the_pruned_branch_plug_in_trains_a_step():
    m = _method(["method.pruned_branch=true", "method.prune_fraction=0.5"])
    x1, x2 = _pair()
    out = m({"views": [x1, x2], "step": 0, "epoch": 0})
    assert math.isfinite(out["loss"].item())
    out["loss"].backward()


@pytest.mark.parametrize("override,match", [
    ("method.mochi_n_hard=4", "method.mochi_n_hard=4 but method.mochi_s=0"),
    ("method.tau_plus=1.0", "tau_plus"),
    ("method.attack_steps=0", "attack_steps"),
    ("method.attack_eps=-0.1", "attack_eps"),
    ("method.attack_norm=l1", "attack_norm"),
])  # fmt: skip
def test_config_errors_are_one_line(override, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config("rocl", TINY_M + [override])
    assert "\n" not in str(e.value)


def test_mochi_n_hard_is_bounded_by_rocls_pool_of_3b_minus_3():
    """Batch 8: SimCLR's bound 2B - 2 = 14 does not apply (RoCL's pool is the three views less the anchor's image:
    3B - 3 = 21); 21 loads, 22 is refused in one line naming the key, the bound and the fix."""
    cfg = load_config("rocl", TINY_M + ["method.mochi_n_hard=21", "method.mochi_s=2"])
    assert cfg.method["mochi_n_hard"] == 21
    with pytest.raises(ConfigError, match=r"method.mochi_n_hard=22: more than the 21 negatives .*\(3 x 8 - 3\)") as e:
        load_config("rocl", TINY_M + ["method.mochi_n_hard=22", "method.mochi_s=2"])
    assert "\n" not in str(e.value) and "raise optim.batch_size" in str(e.value)
    with pytest.raises(ConfigError, match="at least 2 images") as e:
        load_config("rocl", TINY_M + ["optim.batch_size=1", "model.proj_bn=false"])
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- DCL / HCL and MoCHi on RoCL
MOCHI = ["method.mochi_n_hard=6", "method.mochi_s=3", "method.mochi_s_prime=2"]
PLUG_INS = [["method.tau_plus=0.1"], ["method.beta=1.0"], ["method.tau_plus=0.2", "method.beta=0.5"], MOCHI,
            MOCHI + ["method.tau_plus=0.1", "method.beta=1.0"], MOCHI + ["method.attack_to=self"],
            ["method.tau_plus=0.1", "method.attack_to=self"]]  # fmt: skip


@pytest.mark.parametrize("plug", PLUG_INS, ids=lambda p: ",".join(x.split(".")[1] for x in p))
def test_one_step_with_the_plug_ins_is_recomputed_by_hand(plug):
    """forward() with DCL / HCL and / or MoCHi against float64 loops over the formulas: the three-view term is
    the multi-positive debiased loss when tau_plus or beta > 0 (else RoCL's multi-view NT-Xent), the pair term the
    two-view one (DCL / HCL aware), and with MoCHi each anchor of [z1; z2; za] gets the synthetic negatives of a
    pool built here by a loop (every other image's three views), the pair term's anchors [za; target] the same
    rows."""
    m = _method(plug + ["method.adv_weight=0.5"])
    c = m.cfg
    x1, x2 = _pair()
    batch = {"views": [x1, x2], "step": 0, "epoch": 0, "generator": torch.Generator().manual_seed(5)}
    state = {k: v.clone() for k, v in m.state_dict().items()}
    torch.manual_seed(3)
    out = m(batch)
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.encoder.parameters())
    m.load_state_dict(state)
    torch.manual_seed(3)
    adv = m.attack(x1, x2)
    with torch.no_grad():
        z1, z2, za = m.projector(m.encoder(torch.cat([x1, x2, adv]))).chunk(3)
    b, t, tgt = x1.shape[0], c.temperature, 1 if c.attack_to == "other" else 0
    extra = pair_extra = None
    if c.mochi_n_hard:
        anchors = F.normalize(torch.cat([z1, z2, za]), dim=1)
        exclude = torch.tensor([[u * b + r % b for u in range(3)] for r in range(3 * b)])
        extra = mochi_negatives(anchors, anchors, c.mochi_n_hard, c.mochi_s, c.mochi_s_prime,
                                generator=torch.Generator().manual_seed(5), exclude=exclude).double()  # fmt: skip
        pair_extra = torch.cat([extra[2 * b :], extra[tgt * b : (tgt + 1) * b]])
    views = [z.double() for z in (z1, z2, za)]
    pair_views = [views[2], views[tgt]]
    if c.tau_plus or c.beta:
        three = debiased_loop(views, t, c.tau_plus, c.beta, extra)[0].item()
        pair = debiased_loop(pair_views, t, c.tau_plus, c.beta, pair_extra)[0].item()
    else:
        three, pair = multi_view_loop(views, t, extra).item(), multi_view_loop(pair_views, t, pair_extra).item()
    assert out["loss_rocl"].item() == pytest.approx(three, rel=1e-4)
    assert out["loss_adv"].item() == pytest.approx(pair, rel=1e-4)
    assert out["loss"].item() == pytest.approx(three + 0.5 * pair, rel=1e-4)
    plain = multi_view_loop(views, t).item()
    assert abs(three - plain) > 1e-3  # the plug-in changed the loss


def test_mochi_waits_for_its_warm_up():
    m = _method(MOCHI + ["method.mochi_warmup_steps=5", "method.attack_random_start=false"])
    x1, x2 = _pair()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    before = m({"views": [x1, x2], "step": 4, "epoch": 0, "generator": torch.Generator().manual_seed(5)})
    m.load_state_dict(state)
    after = m({"views": [x1, x2], "step": 5, "epoch": 0, "generator": torch.Generator().manual_seed(5)})
    m.load_state_dict(state)
    adv = m.attack(x1, x2)
    with torch.no_grad():
        views = [z.double() for z in m.projector(m.encoder(torch.cat([x1, x2, adv]))).chunk(3)]
    assert before["loss_rocl"].item() == pytest.approx(multi_view_loop(views, 0.5).item(), rel=1e-4)
    assert after["loss_rocl"].item() > before["loss_rocl"].item() + 1e-3  # extra negatives in the denominators


@pytest.mark.parametrize("attack_to", ["other", "self"])
def test_the_attack_maximises_the_debiased_loss_when_it_is_trained(attack_to, monkeypatch):
    """tau_plus, beta > 0: the loss PGD maximises is the two-view debiased / hard NT-Xent of the attacked view to
    its target (this process's batch), not the plain NT-Xent (its value at the clean view, read from the loss the
    attack hands to pgd), and one step without random start is that loss's signed gradient."""
    import contrastlab.methods.rocl as rocl

    seen = []

    def spy(model_loss, x, *args, **kwargs):
        seen.append(float(model_loss(x)))
        return pgd(model_loss, x, *args, **kwargs)

    pgd = rocl.pgd
    monkeypatch.setattr(rocl, "pgd", spy)
    step = 2 / 255
    m = _method(["method.tau_plus=0.3", "method.beta=1.0", f"method.attack_to={attack_to}", "method.attack_steps=1",
                 "method.attack_random_start=false", f"method.attack_step={step}"])  # fmt: skip
    x1, x2 = _pair()
    # BatchNorm's running statistics set to these images' (at init the eval-mode embeddings of random images all
    # but coincide, and every loss is then log(2B - 1)): the losses, and their attacks, differ
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.momentum = None
            mod.reset_running_stats()
    with torch.no_grad():
        m.projector(m.encoder(torch.cat([x1, x2])))
    adv = m.attack(x1, x2)
    m.eval()
    with torch.no_grad():
        target = m.projector(m.encoder(x2 if attack_to == "other" else x1))
        z = m.projector(m.encoder(x1))
    want = debiased_loop([z.double(), target.double()], 0.5, 0.3, 1.0)[0].item()
    assert seen == [pytest.approx(want, rel=1e-5)]
    assert abs(want - nt_xent(z, target, 0.5).item()) > 1e-2
    x = x1.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(debiased_nt_xent(m.projector(m.encoder(x)), target, 0.5, 0.3, 1.0, gather=False), x)
    torch.testing.assert_close(adv, (x1 + step * g.sign()).clamp(0, 1), rtol=0, atol=1e-6)
    (g0,) = torch.autograd.grad(nt_xent(m.projector(m.encoder(x)), target, 0.5, gather=False), x)
    assert (g.sign() != g0.sign()).any()  # an attack on the plain NT-Xent would differ


@pytest.mark.parametrize("plug", [["method.tau_plus=0.1"], ["method.beta=1.0"],
                                  ["method.mochi_n_hard=40", "method.mochi_s=8", "method.mochi_s_prime=4"]],
                         ids=["dcl", "hcl", "mochi"])  # fmt: skip
def test_the_plug_ins_train_end_to_end_through_the_cli(plug, tiny, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "rocl", *tiny, *plug, "method.attack_steps=1", "trainer.max_steps=2", "trainer.log_every=1",
            "trainer.threads=1", f"trainer.out_dir={out}"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    with open(out / "metrics.csv", newline="") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f) if r["loss"]]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    cfg = load_config("rocl", [*tiny, *plug])
    torch.manual_seed(cfg.seed)
    init = build_method(cfg).state_dict()
    trained = load_checkpoint(out)["model"]
    changed = [k for k, v in init.items() if v.is_floating_point() and not torch.equal(v, trained[k].to(v.dtype))]
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("projector.") for k in changed)


# ----------------------------------------------------------------------------- end to end
def test_the_digits_recipe_trains_end_to_end_through_the_cli(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "rocl", *tiny, "trainer.max_steps=4", "trainer.log_every=2", "trainer.threads=1",
            f"trainer.out_dir={out}"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in rows if r["loss"]]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert {"loss_rocl", "loss_adv"} <= set(rows[0])
    cfg = load_config("rocl", tiny)
    torch.manual_seed(cfg.seed)  # the trainer's initial weights
    init = build_method(cfg).state_dict()
    trained = load_checkpoint(out)["model"]
    changed = [k for k, v in init.items() if v.is_floating_point() and not torch.equal(v, trained[k].to(v.dtype))]
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("projector.") for k in changed)
    capsys.readouterr()
    assert main(["eval", "knn", str(out), "k=5"]) == 0
    r = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert 0 <= r["top1"] <= 1
