"""contrastlab.attacks: PGD (l_inf, l_2) and FGSM against float64 loops over their formulas (the linear
model's known optimum sign(w) * eps and eps * w / ||w||), the eps ball and the [0, 1] box, monotone ascent on
convex toy losses, the attack context (BatchNorm running statistics untouched, train flags and requires_grad
restored, also on an error), and the one-line errors."""
import math

import pytest
import torch
import torch.nn as nn

from contrastlab.attacks import attacking, fgsm, pgd
from contrastlab.errors import ConfigError, UserError


def _images(b=3, shape=(2, 3, 4), seed=0, dtype=torch.float64, lo=0.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(b, *shape, generator=g, dtype=dtype)


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 12, 5))


def _ce_loss(net, y):
    return lambda x: nn.functional.cross_entropy(net(x), y, reduction="sum")


# ----------------------------------------------------------------------------- the ball and the box
@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("linf", 0.3), ("l2", 0.5), ("l2", 2.0)])
@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_stays_in_the_ball_and_the_box(norm, eps, random_start):
    net = _net().float()
    x = _images(8, dtype=torch.float32)
    x[0] = 0.0  # images on the faces of the box: the clamp must act
    x[1] = 1.0
    y = torch.arange(8) % 5
    torch.manual_seed(1)
    adv = pgd(_ce_loss(net, y), x, eps=eps, step_size=eps / 2, steps=7, norm=norm, random_start=random_start)
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    assert adv.min() >= 0 and adv.max() <= 1
    d = (adv - x).double()
    for i in range(8):  # the norm of each image's perturbation, one element at a time
        vals = d[i].flatten().tolist()
        size = max(abs(v) for v in vals) if norm == "linf" else math.sqrt(sum(v * v for v in vals))
        assert size <= eps * (1 + 1e-5) + 1e-7, (i, size, eps)
    assert (adv != x).any()  # it moved


def test_eps_zero_returns_the_input():
    x = _images()
    adv = pgd(lambda t: (t ** 2).sum(), x, eps=0.0, step_size=0.1, steps=3)
    assert torch.equal(adv, x)


# ----------------------------------------------------------------------------- the linear model's optimum
def test_linf_pgd_reaches_sign_of_the_gradient_times_eps_on_a_linear_model():
    """max_{|d|_inf <= eps} w.(x + d) is at d = eps * sign(w) (x inside the box by more than eps)."""
    x = _images(lo=0.3, hi=0.7)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    eps = 0.05
    adv = pgd(lambda t: (w * t).sum(), x, eps=eps, step_size=0.02, steps=5, norm="linf", random_start=True)
    expect = x.clone()
    flat_x, flat_w, flat_e = x.flatten(), w.flatten(), expect.view(-1)
    for k in range(flat_x.numel()):
        flat_e[k] = flat_x[k] + eps * (1.0 if flat_w[k] > 0 else -1.0 if flat_w[k] < 0 else 0.0)
    torch.testing.assert_close(adv, expect, rtol=0, atol=1e-12)


def test_l2_pgd_reaches_the_normalised_gradient_times_eps_on_a_linear_model():
    """max_{||d||_2 <= eps} w_i.(x_i + d_i) per image is at d_i = eps * w_i / ||w_i||."""
    x = _images(lo=0.3, hi=0.7)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    w[1] *= 50  # images of different gradient sizes: the step is per image
    eps = 0.1
    adv = pgd(lambda t: (w * t).sum(), x, eps=eps, step_size=0.03, steps=120, norm="l2", random_start=True)
    expect = torch.empty_like(x)
    for i in range(x.shape[0]):
        wi = w[i].flatten().tolist()
        n = math.sqrt(sum(v * v for v in wi))
        expect[i] = (x[i].flatten() + torch.tensor([eps * v / n for v in wi], dtype=torch.float64)).view(x[i].shape)
    torch.testing.assert_close(adv, expect, rtol=0, atol=1e-9)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_step_that_stays_inside_the_ball_is_not_projected(norm):
    """Two steps of s < eps / 2 from x on a linear model: x + 2 s sign(w) (l_inf) or x + 2 s w_i / ||w_i|| (l_2)."""
    x = _images(lo=0.3, hi=0.7)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    eps, s = 0.2, 0.03
    adv = pgd(lambda t: (w * t).sum(), x, eps=eps, step_size=s, steps=2, norm=norm, random_start=False)
    expect = torch.empty_like(x)
    for i in range(x.shape[0]):
        wi = w[i].flatten().tolist()
        n = math.sqrt(sum(v * v for v in wi))
        d = [2 * s * (1.0 if v > 0 else -1.0) if norm == "linf" else 2 * s * v / n for v in wi]
        expect[i] = (x[i].flatten() + torch.tensor(d, dtype=torch.float64)).view(x[i].shape)
    torch.testing.assert_close(adv, expect, rtol=0, atol=1e-12)


def test_fgsm_is_one_signed_step_of_eps_clamped_into_the_box():
    x = _images(lo=0.0, hi=1.0)
    c = _images(seed=7)
    eps = 0.2
    adv = fgsm(lambda t: ((t - c) ** 2).sum(), x, eps)
    expect = x.clone().view(-1)
    for k, (xk, ck) in enumerate(zip(x.flatten().tolist(), c.flatten().tolist())):
        g = 2 * (xk - ck)
        expect[k] = min(1.0, max(0.0, xk + eps * (1.0 if g > 0 else -1.0 if g < 0 else 0.0)))
    torch.testing.assert_close(adv, expect.view(x.shape), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- monotone ascent on a convex loss
@pytest.mark.parametrize("norm,eps,lo,hi", [("linf", 0.3, 0.0, 1.0), ("l2", 0.2, 0.4, 0.6)])
def test_pgd_increases_a_convex_loss_monotonically(norm, eps, lo, hi):
    """For convex f, f(x + d) >= f(x) + grad . d, and every projected step has grad . d >= 0 (l_inf: the
    clamp keeps each coordinate's sign; l_2 with the box far away: a projection onto a convex set)."""
    x = _images(4, lo=lo, hi=hi)
    c = _images(4, seed=5)
    a = _images(4, seed=6, lo=0.5, hi=2.0)
    seen = []

    def f(t):
        v = (a * (t - c) ** 2).sum() + torch.logsumexp(t.flatten(), 0)
        seen.append(float(v.detach()))
        return v

    adv = pgd(f, x, eps=eps, step_size=eps / 5, steps=12, norm=norm, random_start=False)
    seen.append(float(f(adv)))
    assert all(b >= a_ - 1e-12 for a_, b in zip(seen, seen[1:])), seen
    assert seen[-1] > seen[0]


# ----------------------------------------------------------------------------- the attack context
def _snapshot(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_an_attack_in_the_context_leaves_batchnorm_statistics_flags_and_grads_as_they_were():
    net = _net().float().train()
    net[0].bias.requires_grad_(False)  # a frozen parameter must come back frozen
    before = _snapshot(net)
    grads_before = {n: p.requires_grad for n, p in net.named_parameters()}
    modes_before = {n: m.training for n, m in net.named_modules()}
    x = _images(6, dtype=torch.float32)
    y = torch.arange(6) % 5
    with attacking(net):
        assert not net[1].training and net[0].training  # BatchNorm in eval mode, the rest as it was
        assert not any(p.requires_grad for p in net.parameters())
        adv = pgd(_ce_loss(net, y), x, eps=8 / 255, step_size=2 / 255, steps=3)
    after = _snapshot(net)
    for k in before:  # running_mean, running_var, num_batches_tracked and the weights
        assert torch.equal(before[k], after[k]), k
    assert {n: p.requires_grad for n, p in net.named_parameters()} == grads_before
    assert {n: m.training for n, m in net.named_modules()} == modes_before
    assert all(p.grad is None for p in net.parameters())
    assert not torch.equal(adv, x)


def test_without_the_context_the_same_attack_moves_the_running_statistics():
    """Negative control: the test above would see a change."""
    net = _net().float().train()
    before = net[1].running_mean.clone()
    pgd(_ce_loss(net, torch.arange(6) % 5), _images(6, dtype=torch.float32), eps=8 / 255, step_size=2 / 255, steps=2)
    assert not torch.equal(before, net[1].running_mean)
    assert all(p.grad is None for p in net.parameters())  # pgd takes the gradient of the image only


def test_the_context_restores_flags_of_an_eval_model_and_after_an_error():
    net = _net().float().eval()
    with pytest.raises(RuntimeError, match="boom"):
        with attacking(net):
            raise RuntimeError("boom")
    assert not any(m.training for m in net.modules())
    assert all(p.requires_grad for p in net.parameters())
    net.train()
    with attacking(net, net[1]):  # nested / repeated modules are fine
        pass
    assert all(m.training for m in net.modules())


# ----------------------------------------------------------------------------- one-line errors
@pytest.mark.parametrize("kwargs,err,match", [
    (dict(eps=-0.1), ConfigError, "eps=-0.1: must be >= 0"),
    (dict(eps=float("nan")), ConfigError, "eps=nan"),
    (dict(steps=0), ConfigError, "steps=0: must be an integer >= 1"),
    (dict(steps=-2), ConfigError, "steps=-2"),
    (dict(steps=2.5), ConfigError, "steps=2.5"),
    (dict(step_size=-1.0), ConfigError, "step_size=-1.0"),
    (dict(norm="l1"), ConfigError, "norm='l1': unknown"),
])  # fmt: skip
def test_bad_attack_options_fail_with_one_line(kwargs, err, match):
    args = dict(eps=0.1, step_size=0.01, steps=3, norm="linf")
    args.update(kwargs)
    with pytest.raises(err, match=match) as e:
        pgd(lambda t: t.sum(), _images(), **args)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("lo,hi", [(-0.5, 0.5), (0.5, 1.5), (-2.0, 2.5)])
def test_inputs_outside_the_unit_box_fail_with_one_line(lo, hi):
    with pytest.raises(UserError, match=r"outside \[0, 1\]: attack the images before normalisation") as e:
        pgd(lambda t: t.sum(), _images(lo=lo, hi=hi), eps=0.1, step_size=0.01, steps=2)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="outside"):
        fgsm(lambda t: t.sum(), _images(lo=lo, hi=hi), eps=0.1)


def test_integer_images_and_a_non_scalar_loss_fail_with_one_line():
    with pytest.raises(UserError, match="divide uint8 images by 255"):
        pgd(lambda t: t.sum(), torch.zeros(2, 3, dtype=torch.uint8), eps=0.1, step_size=0.01, steps=1)
    with pytest.raises(ConfigError, match="must return a scalar"):
        pgd(lambda t: t.sum(dim=1), _images(), eps=0.1, step_size=0.01, steps=1)
