"""DCL / HCL losses, MoCHi's synthetic negatives and SDCLR's pruning masks against plain loops."""
import math
from fractions import Fraction

import pytest
import torch
from torch import nn

from contrastlab.losses import debiased_info_nce, debiased_nt_xent, info_nce, mochi_negatives, nt_xent
from contrastlab.nn import magnitude_masks
from contrastlab.nn.pruning import mask_sparsity

SHAPES = [(2, 2), (3, 4), (5, 16), (8, 4)]
TEMPS = [0.07, 0.1, 0.2, 0.5, 1.0]
TAUS = [0.0, 0.05, 0.1, 0.3]
BETAS = [0.0, 0.5, 1.0]


def _norm(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _anchor_loss(pos_sim, neg_sims, t, tau, beta):
    """-log(pos / (pos + Ng)) for one anchor, straight from the DCL / HCL formulas.

    Returns (loss, clamped)."""
    n = len(neg_sims)
    pos = math.exp(pos_sim / t)
    neg = [math.exp(s / t) for s in neg_sims]
    if beta > 0:
        imp = [x**beta for x in neg]
        total = sum(i * x for i, x in zip(imp, neg)) / (sum(imp) / n)
    else:
        total = sum(neg)
    ng = (-tau * n * pos + total) / (1 - tau)
    floor = n * math.exp(-1 / t)
    return -math.log(pos / (pos + max(ng, floor))), ng < floor


def dcl_loop(z1, z2, t, tau, beta):
    z = [_norm(v) for v in torch.cat([z1, z2]).double().tolist()]
    m = len(z) // 2
    losses, clamped = [], False
    for i in range(2 * m):
        p = (i + m) % (2 * m)
        negs = [_dot(z[i], z[k]) for k in range(2 * m) if k not in (i, p)]
        loss, c = _anchor_loss(_dot(z[i], z[p]), negs, t, tau, beta)
        losses.append(loss)
        clamped |= c
    return sum(losses) / len(losses), clamped


def dcl_queue_loop(q, k, queue, t, tau, beta):
    qs, ks = [_norm(v) for v in q.double().tolist()], [_norm(v) for v in k.double().tolist()]
    negs = [_norm(v) for v in queue.double().tolist()]
    losses, clamped = [], False
    for qi, ki in zip(qs, ks):
        loss, c = _anchor_loss(_dot(qi, ki), [_dot(qi, n) for n in negs], t, tau, beta)
        losses.append(loss)
        clamped |= c
    return sum(losses) / len(losses), clamped


# ---------------------------------------------------------------- DCL / HCL


@pytest.mark.parametrize("t", TEMPS)
@pytest.mark.parametrize("tau", TAUS)
def test_debiased_nt_xent_matches_loop(t, tau):
    for b, d in SHAPES:
        g = torch.Generator().manual_seed(b * 100 + d)
        z1, z2 = torch.randn(b, d, generator=g) * 2, torch.randn(b, d, generator=g) + 0.5
        for beta in BETAS:
            want, _ = dcl_loop(z1, z2, t, tau, beta)
            got = debiased_nt_xent(z1, z2, temperature=t, tau_plus=tau, beta=beta).item()
            assert got == pytest.approx(want, abs=1e-5, rel=1e-5), (b, d, beta)


@pytest.mark.parametrize("t", TEMPS)
@pytest.mark.parametrize("tau", TAUS)
def test_debiased_info_nce_matches_loop(t, tau):
    for b, d, kq in [(2, 2, 3), (3, 4, 7), (5, 16, 20), (8, 4, 1)]:
        g = torch.Generator().manual_seed(b + 10 * d + kq)
        q, k = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) + torch.linspace(-1, 1, d)
        queue = torch.randn(kq, d, generator=g) * 3
        for beta in BETAS:
            want, _ = dcl_queue_loop(q, k, queue, t, tau, beta)
            got = debiased_info_nce(q, k, queue, temperature=t, tau_plus=tau, beta=beta).item()
            assert got == pytest.approx(want, abs=1e-5, rel=1e-5), (b, d, kq, beta)


def test_defaults_match_loop():
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    assert debiased_nt_xent(z1, z2).item() == pytest.approx(dcl_loop(z1, z2, 0.5, 0.1, 0.0)[0], abs=1e-5)
    q, k, queue = torch.randn(4, 5), torch.randn(4, 5), torch.randn(9, 5)
    want = dcl_queue_loop(q, k, queue, 0.2, 0.1, 0.0)[0]
    assert debiased_info_nce(q, k, queue).item() == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("b,d", SHAPES + [(1, 3), (16, 32)])
@pytest.mark.parametrize("t", [0.05, 0.2, 1.0])
def test_tau_zero_beta_zero_is_nt_xent_and_info_nce(b, d, t):
    g = torch.Generator().manual_seed(b + d)
    z1, z2 = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    want = nt_xent(z1, z2, temperature=t)
    assert torch.allclose(debiased_nt_xent(z1, z2, temperature=t, tau_plus=0.0, beta=0.0), want, rtol=1e-6, atol=1e-6)
    queue = torch.randn(11, d, generator=g)
    want = info_nce(z1, z2, queue, temperature=t)
    got = debiased_info_nce(z1, z2, queue, temperature=t, tau_plus=0.0, beta=0.0)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)


def test_tau_plus_changes_the_loss_and_hcl_upweights_hard_negatives():
    g = torch.Generator().manual_seed(4)
    z1 = torch.randn(8, 6, generator=g)
    z2 = z1 + 0.5 * torch.randn(8, 6, generator=g)  # positives closer than negatives: debiasing lowers Ng
    base = debiased_nt_xent(z1, z2, 0.5, 0.0).item()
    assert debiased_nt_xent(z1, z2, 0.5, 0.1).item() < base - 1e-3
    # HCL's reweighted sum is a weighted mean of neg with weights increasing in neg: >= the plain sum.
    assert debiased_nt_xent(z1, z2, 0.5, 0.0, beta=1.0).item() > base


def test_clamp_is_active_and_finite():
    # Positive = the anchor itself (cosine 1): with tau_plus near 1, Ng goes negative and the clamp sets it.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 8, generator=g)
    for t in (0.05, 0.2, 0.5):
        want, clamped = dcl_loop(z, z, t, 0.95, 0.0)
        assert clamped
        got = debiased_nt_xent(z, z, temperature=t, tau_plus=0.95)
        assert torch.isfinite(got) and got.item() == pytest.approx(want, abs=1e-5, rel=1e-5)
        n = 2 * 4 - 2  # every anchor clamped: loss = -log(pos / (pos + N exp(-1/t))) with pos = exp(1/t)
        assert got.item() == pytest.approx(math.log1p(n * math.exp(-2 / t)), abs=1e-6)
        q_want, q_clamped = dcl_queue_loop(z, z, z, t, 0.95, 0.0)
        assert q_clamped
        assert debiased_info_nce(z, z, z, temperature=t, tau_plus=0.95).item() == pytest.approx(q_want, abs=1e-5)


def test_small_temperatures_do_not_overflow():
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(5, 4, generator=g)
    z2 = z1 + 0.01 * torch.randn(5, 4, generator=g)  # positives near cosine 1: exp(1/t) overflows float32 at t=0.01
    for t in (0.05, 0.02, 0.01):
        for tau, beta in [(0.0, 0.0), (0.1, 0.0), (0.1, 1.0)]:
            want, _ = dcl_loop(z1, z2, t, tau, beta)
            got = debiased_nt_xent(z1, z2, temperature=t, tau_plus=tau, beta=beta)
            assert torch.isfinite(got) and got.item() == pytest.approx(want, abs=1e-4, rel=1e-4)
            want, _ = dcl_queue_loop(z1, z2, -z1, t, tau, beta)
            assert debiased_info_nce(z1, z2, -z1, temperature=t, tau_plus=tau, beta=beta).item() == pytest.approx(
                want, abs=1e-4, rel=1e-4
            )


def test_gradients_flow():
    z1 = torch.randn(6, 8, requires_grad=True)
    z2 = torch.randn(6, 8, requires_grad=True)
    debiased_nt_xent(z1, z2, 0.2, 0.1, 1.0).backward()
    for z in (z1, z2):
        assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    q, k, queue = (torch.randn(n, 8, requires_grad=True) for n in (4, 4, 10))
    debiased_info_nce(q, k, queue, 0.2, 0.1, 0.5).backward()
    for x in (q, k, queue):
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("tau,beta", [(0.1, 0.0), (0.3, 0.5), (0.1, 1.0)])
def test_gradcheck_float64(tau, beta):
    # Also catches a detached pos inside Ng or detached HCL weights (their gradients would differ).
    g = torch.Generator().manual_seed(3)
    z1, z2 = (torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert not dcl_loop(z1.detach(), z2.detach(), 0.5, tau, beta)[1]  # clamp inactive: smooth
    assert torch.autograd.gradcheck(lambda a, b: debiased_nt_xent(a, b, 0.5, tau, beta), (z1, z2))
    queue = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert not dcl_queue_loop(z1.detach(), z2.detach(), queue.detach(), 0.5, tau, beta)[1]
    assert torch.autograd.gradcheck(lambda a, b, c: debiased_info_nce(a, b, c, 0.5, tau, beta), (z1, z2, queue))


def test_bad_arguments_raise():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="same shape"):
        debiased_nt_xent(z, torch.randn(5, 3))
    with pytest.raises(ValueError, match="queue"):
        debiased_info_nce(z, z, torch.randn(7, 4))
    for kwargs in [dict(tau_plus=1.0), dict(tau_plus=-0.1), dict(beta=-1.0), dict(temperature=0.0)]:
        (key,) = kwargs
        with pytest.raises(ValueError, match=f"{key} must be"):
            debiased_nt_xent(z, z, **kwargs)
        with pytest.raises(ValueError, match=f"{key} must be"):
            debiased_info_nce(z, z, z, **kwargs)


# ---------------------------------------------------------------- MoCHi


def hard_sets(q, queue, n_hard):
    """Per query, the indices of its n_hard most similar queue entries (plain Python sort)."""
    qs, negs = [_norm(v) for v in q.double().tolist()], [_norm(v) for v in queue.double().tolist()]
    return [sorted(range(len(negs)), key=lambda j: -_dot(qi, negs[j]))[:n_hard] for qi in qs]


def _lstsq(basis, h):
    """Coefficients and residual norm of h (d,) on the columns basis (d, m), float64."""
    coef = torch.linalg.lstsq(basis, h[:, None]).solution[:, 0]
    return coef, (basis @ coef - h).norm().item()


def _pair_fit(h, u, v):
    """(residual, coefficients) of h on span{u, v}."""
    coef, r = _lstsq(torch.stack([u, v], dim=1), h)
    return r, coef


def test_mochi_shape_norms_no_grad_and_zero_counts():
    q = torch.randn(5, 8, requires_grad=True)
    queue = torch.randn(30, 8)
    h = mochi_negatives(q, queue, n_hard=6, s=4, s_prime=3)
    assert h.shape == (5, 7, 8) and not h.requires_grad and h.grad_fn is None
    assert torch.allclose(h.norm(dim=2), torch.ones(5, 7), atol=1e-5)
    assert mochi_negatives(q, queue, 6, 0, 3).shape == (5, 3, 8)
    assert mochi_negatives(q, queue, 6, 4, 0).shape == (5, 4, 8)
    assert mochi_negatives(q, queue, 6, 0, 0).shape == (5, 0, 8)
    assert mochi_negatives(q, queue[:3], 100, 2, 2).shape == (5, 4, 8)  # n_hard clamped to K


def test_mochi_mixes_each_querys_own_hard_negatives():
    g = torch.Generator().manual_seed(0)
    b, d, k, n_hard, s = 4, 16, 40, 3, 6
    q, queue = torch.randn(b, d, generator=g), torch.randn(k, d, generator=g) * 2
    h = mochi_negatives(q, queue, n_hard, s, 0, generator=torch.Generator().manual_seed(1)).double()
    negs = torch.nn.functional.normalize(queue.double(), dim=1)
    sets = hard_sets(q, queue, n_hard)
    for i in range(b):
        own = negs[sets[i]]  # (n_hard, d)
        for p in range(s):
            # in the span of the query's hard set ...
            _, r = _lstsq(own.T, h[i, p])
            assert r < 1e-5
            # ... and of two of its entries, as a non-negative mix a n_i + (1-a) n_j
            pairs = [(x, y) for x in range(n_hard) for y in range(x, n_hard)]
            best = min((_pair_fit(h[i, p], own[x], own[y]) for x, y in pairs), key=lambda f: f[0])
            assert best[0] < 1e-5 and (best[1] > -1e-6).all()


def test_mochi_hard_sets_are_per_query_not_the_first_rows():
    # Orthonormal queue; query 0's hard set is {e0, e1, e2}, query 1's is {e5, e6, e7}: disjoint and orthogonal.
    d = 16
    queue = torch.eye(d)
    q = torch.zeros(2, d)
    q[0, :3] = torch.tensor([3.0, 2.0, 1.0])
    q[1, 5:8] = torch.tensor([3.0, 2.0, 1.0])
    h = mochi_negatives(q, queue, n_hard=3, s=20, s_prime=20, generator=torch.Generator().manual_seed(0)).double()
    sets = hard_sets(q, queue, 3)
    assert sets == [[0, 1, 2], [5, 6, 7]]
    basis = torch.eye(d, dtype=torch.float64)
    for i, other in [(0, 1), (1, 0)]:
        own_q = torch.nn.functional.normalize(q[i].double(), dim=0)
        for p in range(20):
            assert _lstsq(basis[:, sets[i]], h[i, p])[1] < 1e-6
            assert _lstsq(basis[:, sets[other]], h[i, p])[1] > 0.5
        for p in range(20, 40):
            span = torch.cat([own_q[:, None], basis[:, sets[i]]], dim=1)
            assert _lstsq(span, h[i, p])[1] < 1e-6
            assert _lstsq(basis[:, sets[other]], h[i, p])[1] > 0.5


def test_mochi_query_mixes_have_query_share_below_half():
    g = torch.Generator().manual_seed(2)
    b, d, k, n_hard, sp = 3, 12, 25, 4, 200
    q, queue = torch.randn(b, d, generator=g), torch.randn(k, d, generator=g)
    h = mochi_negatives(q, queue, n_hard, 0, sp, generator=torch.Generator().manual_seed(5)).double()
    qn = torch.nn.functional.normalize(q.double(), dim=1)
    negs = torch.nn.functional.normalize(queue.double(), dim=1)
    sets = hard_sets(q, queue, n_hard)
    for i in range(b):
        shares, used = [], set()
        for p in range(sp):
            fits = [(*_pair_fit(h[i, p], qn[i], negs[j]), j) for j in sets[i]]
            r, coef, j = min(fits, key=lambda f: f[0])
            assert r < 1e-5 and (coef > -1e-6).all()
            share = (coef[0] / coef.sum()).item()  # = b, as normalisation scales both coefficients alike
            assert 0.0 <= share < 0.5
            shares.append(share)
            used.add(j)
        assert used == set(sets[i])  # every hard negative is drawn, no other
        assert 0.2 < sum(shares) / sp < 0.3  # b ~ U(0, 0.5): mean 0.25


def test_mochi_two_negative_mixes_cover_the_unit_interval():
    # With an orthonormal queue the coefficients of h on (e_x, e_y) give a / (1 - a) directly.
    queue = torch.eye(8)
    q = torch.zeros(1, 8)
    q[0, :2] = torch.tensor([2.0, 1.0])
    h = mochi_negatives(q, queue, 2, 2000, 0, generator=torch.Generator().manual_seed(0))[0]
    assert torch.allclose(h[:, 2:], torch.zeros(2000, 6))
    a = h[:, 0] / (h[:, 0] + h[:, 1])  # share of e0: a when (i, j) = (0, 1), 1 - a for (1, 0), 1 or 0 for i = j
    same = torch.isclose(a, torch.zeros(())) | torch.isclose(a, torch.ones(()))
    assert 0.35 < same.float().mean() < 0.65  # i = j with probability 1/2 for two hard negatives
    assert 0.45 < a[~same].mean() < 0.55 and a[~same].min() < 0.05 and a[~same].max() > 0.95


def test_mochi_seeded_generator_is_deterministic():
    q, queue = torch.randn(4, 8), torch.randn(20, 8)
    a = mochi_negatives(q, queue, 5, 3, 2, generator=torch.Generator().manual_seed(7))
    b = mochi_negatives(q, queue, 5, 3, 2, generator=torch.Generator().manual_seed(7))
    c = mochi_negatives(q, queue, 5, 3, 2, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_mochi_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"expects q \(B, d\) and a non-empty queue \(K, d\), got \(4, 8\), \(10, 7\)"):
        mochi_negatives(torch.randn(4, 8), torch.randn(10, 7), 3, 1, 1)
    with pytest.raises(ValueError, match="needs n_hard >= 1 and s, s_prime >= 0, got 0, 1, 1"):
        mochi_negatives(torch.randn(4, 8), torch.randn(10, 8), 0, 1, 1)
    with pytest.raises(ValueError, match="needs n_hard >= 1 and s, s_prime >= 0, got 3, -1, 1"):
        mochi_negatives(torch.randn(4, 8), torch.randn(10, 8), 3, -1, 1)


# ---------------------------------------------------------------- SDCLR pruning


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.Flatten(), nn.Linear(20, 3))


def conv_abs(model):
    return [model[0].weight.detach().abs(), model[2].weight.detach().abs()]


def expected_pruned(p, n):
    return min(n, math.ceil(Fraction(str(p)) * n))


def test_masks_only_for_conv_weights():
    model = small_model()
    masks = magnitude_masks(model, 0.5)
    assert set(masks) == {"0.weight", "2.weight"}
    params = dict(model.named_parameters())
    for name, m in masks.items():
        assert m.shape == params[name].shape and m.dtype == params[name].dtype and m.device == params[name].device
        assert not m.requires_grad and set(m.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9, 0.99])
def test_pruned_count_and_global_threshold(p):
    model = small_model()
    with torch.no_grad():
        model[4].weight.zero_()  # a Linear layer must not enter the pooled magnitudes
    masks = magnitude_masks(model, p)
    n = sum(w.numel() for w in conv_abs(model))  # 108 + 180
    pruned = sum(int((m == 0).sum()) for m in masks.values())
    assert pruned == expected_pruned(p, n)
    assert mask_sparsity(masks) == pytest.approx(expected_pruned(p, n) / n)
    ws = conv_abs(model)
    kept = torch.cat([w[m.bool()] for w, m in zip(ws, masks.values())])
    gone = torch.cat([w[~m.bool()] for w, m in zip(ws, masks.values())])
    assert gone.max() <= kept.min()  # global across layers
    # threshold = sorted(|w|)[ceil(pN)], written out
    flat = sorted(torch.cat([w.flatten() for w in ws]).tolist())
    assert kept.min().item() == flat[expected_pruned(p, n)]


def test_pruning_is_global_not_per_layer():
    model = small_model()
    with torch.no_grad():
        model[0].weight.uniform_(1.0, 2.0)  # 108 large weights
        model[2].weight.uniform_(0.0, 0.5)  # 180 small ones
    masks = magnitude_masks(model, 0.5)  # prunes 144: all from the second conv
    assert masks["0.weight"].sum() == 108
    assert masks["2.weight"].sum() == 180 - 144


def test_random_fraction_prunes_share_of_remaining():
    model = small_model()
    n = 288
    base = magnitude_masks(model, 0.5)
    masks = magnitude_masks(model, 0.5, random_fraction=0.2, generator=torch.Generator().manual_seed(0))
    remaining = n - expected_pruned(0.5, n)
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == remaining - expected_pruned(0.2, remaining)  # 144 - ceil(28.8)
    for name in masks:
        assert (masks[name] <= base[name]).all()  # magnitude-pruned weights stay pruned
    # the extra pruning ignores magnitude: some weight larger than a kept one is pruned
    ws = conv_abs(model)
    kept_w = torch.cat([w[m.bool()] for w, m in zip(ws, masks.values())])
    gone_w = torch.cat([w[~m.bool()] for w, m in zip(ws, masks.values())])
    assert gone_w.max() > kept_w.min()
    again = magnitude_masks(model, 0.5, random_fraction=0.2, generator=torch.Generator().manual_seed(0))
    other = magnitude_masks(model, 0.5, random_fraction=0.2, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(masks[k], again[k]) for k in masks)
    assert not all(torch.equal(masks[k], other[k]) for k in masks)


def test_fraction_zero_keeps_everything_and_ties_are_kept():
    model = small_model()
    masks = magnitude_masks(model, 0.0)
    assert all(bool(m.all()) for m in masks.values()) and mask_sparsity(masks) == 0.0
    with torch.no_grad():
        for w in (model[0].weight, model[2].weight):
            w.fill_(0.3)
    assert mask_sparsity(magnitude_masks(model, 0.5)) == 0.0  # all tied at the threshold: |w| >= threshold


def _ranked_conv():
    """One conv of 20 weights whose magnitudes are 1..20 (mixed signs), in a scrambled order."""
    conv = nn.Conv2d(1, 2, (2, 5), bias=False)
    mags = torch.tensor([7, 3, 15, 1, 20, 12, 9, 5, 18, 2, 11, 16, 4, 8, 19, 6, 14, 10, 13, 17], dtype=torch.float)
    signs = torch.tensor([1, -1] * 10, dtype=torch.float)
    with torch.no_grad():
        conv.weight.copy_((mags * signs).view(2, 1, 2, 5))
    return nn.Sequential(conv)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_part_as_a_share_of_the_total_matches_a_hand_count(seed):
    """The official SDCLR semantics (prune/prune_simCLR.py: prune_percent - random_prune_percent by
    magnitude, random_prune_percent at random; p is the total): 20 weights, p = 0.5, r = 0.2 prune
    ceil(0.3 * 20) = 6 by magnitude (|w| = 1..6) and ceil(0.2 * 20) = 4 of the 14 others at random,
    10 in all; the library's default prunes 10 by magnitude, then ceil(0.2 * 10) = 2 of the rest."""
    model = _ranked_conv()
    g = torch.Generator().manual_seed(seed)
    total = magnitude_masks(model, 0.5, 0.2, generator=g, random_of="total")["0.weight"].flatten()
    mags = model[0].weight.detach().abs().flatten()
    pruned_small = pruned_large = 0
    for m, w in zip(total.tolist(), mags.tolist()):
        if w <= 6:
            assert m == 0.0, f"|w| = {w} is among the 6 smallest: pruned by magnitude"
            pruned_small += 1
        elif m == 0.0:
            pruned_large += 1
    assert (pruned_small, pruned_large) == (6, 4)
    survivors = magnitude_masks(model, 0.5, 0.2, generator=torch.Generator().manual_seed(seed))["0.weight"].flatten()
    by_magnitude = [w for m, w in zip(survivors.tolist(), mags.tolist()) if m == 0.0 and w <= 10]
    assert len(by_magnitude) == 10 and int((survivors == 0).sum()) == 12
    assert (survivors.view_as(model[0].weight) == magnitude_masks(model, 0.5, 0.2, generator=torch.Generator()
            .manual_seed(seed), random_of="survivors")["0.weight"]).all()  # the default is "survivors"  # fmt: skip


@pytest.mark.parametrize("p,r", [(0.5, 0.2), (0.9, 0.1), (0.3, 0.3), (0.7, 0.0)])
def test_total_mode_prunes_the_total_share_of_all_conv_weights(p, r):
    model = small_model()
    n = 288
    masks = magnitude_masks(model, p, r, generator=torch.Generator().manual_seed(0), random_of="total")
    pruned = sum(int((m == 0).sum()) for m in masks.values())
    by_magnitude = math.ceil((Fraction(str(p)) - Fraction(str(r))) * n)  # sort(|w|)[k] with k = ceil((p - r) N)
    assert pruned == by_magnitude + math.ceil(Fraction(str(r)) * n)
    flat = sorted(torch.cat([w.flatten() for w in conv_abs(model)]).tolist())
    for w, m in zip(conv_abs(model), masks.values()):  # every weight below the magnitude threshold is pruned
        assert (m[w < flat[by_magnitude]] == 0).all()


def test_total_mode_refuses_a_random_part_above_the_total():
    with pytest.raises(ValueError, match=r"random_fraction=0.4 is a share of the total prune_fraction=0.3"):
        magnitude_masks(small_model(), 0.3, 0.4, random_of="total")
    with pytest.raises(ValueError, match="random_of must be 'survivors' or 'total'"):
        magnitude_masks(small_model(), 0.3, 0.1, random_of="all")


def test_prune_random_mode_reaches_the_branch_and_is_checked_at_load(tiny):
    from contrastlab.config import ConfigError, load_config
    from contrastlab.methods import build_method

    cfg = load_config("sdclr", [*tiny, "method.prune_random_fraction=0.2", "method.prune_random_mode=total"])
    method = build_method(cfg)
    method.pruned.refresh(method.encoder, 0)
    masks = method.pruned.encoder_twin.masks()
    n = sum(m.numel() for m in masks.values())
    pruned = sum(int((m == 0).sum()) for m in masks.values())
    assert pruned == expected_pruned(0.5, n) + expected_pruned(0.2, n)  # 0.7 - 0.2 by magnitude, 0.2 at random
    assert load_config("sdclr").method["prune_random_mode"] == "survivors"  # today's meaning by default
    with pytest.raises(ConfigError) as e:
        load_config("sdclr", ["method.prune_random_fraction=0.8", "method.prune_random_mode=total"])
    assert "method.prune_random_fraction=0.8 exceeds method.prune_fraction=0.7" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs", [dict(prune_fraction=1.0), dict(prune_fraction=-0.1), dict(prune_fraction=1.5),
                                    dict(prune_fraction=0.5, random_fraction=1.0),
                                    dict(prune_fraction=0.5, random_fraction=-0.2)])
def test_bad_fractions_raise(kwargs):
    key = "random_fraction" if "random_fraction" in kwargs else "prune_fraction"
    with pytest.raises(ValueError, match=f"{key} must be in"):
        magnitude_masks(small_model(), **kwargs)


# --- extra (per-anchor) negatives, as MoCHi feeds them to the losses ---------------------------


def _loop_nt_xent_extra(z1, z2, extra, t):
    """Plain loops: anchors [z1; z2]; the denominator runs over the other 2B - 1 embeddings and
    the anchor's own extra negatives."""
    norm = lambda v: [x / math.sqrt(sum(y * y for y in v)) for x in v]  # noqa: E731
    z = [norm(v) for v in torch.cat([z1, z2]).double().tolist()]
    e = [[norm(v) for v in row] for row in extra.double().tolist()]
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    n2, b = len(z), len(z) // 2
    total = 0.0
    for i in range(n2):
        p = (i + b) % n2
        den = sum(math.exp(dot(z[i], z[k]) / t) for k in range(n2) if k != i)
        den += sum(math.exp(dot(z[i], x) / t) for x in e[i])
        total += -(dot(z[i], z[p]) / t - math.log(den))
    return total / n2


def _loop_info_nce_extra(q, k, queue, extra, t):
    norm = lambda v: [x / math.sqrt(sum(y * y for y in v)) for x in v]  # noqa: E731
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    total = 0.0
    for i in range(q.shape[0]):
        qi, ki = norm(q[i].double().tolist()), norm(k[i].double().tolist())
        negs = [norm(v) for v in queue.double().tolist()] + [norm(v) for v in extra[i].double().tolist()]
        den = math.exp(dot(qi, ki) / t) + sum(math.exp(dot(qi, v) / t) for v in negs)
        total += -(dot(qi, ki) / t - math.log(den))
    return total / q.shape[0]


@pytest.mark.parametrize("b,d,m,t", [(2, 3, 1, 0.1), (4, 5, 3, 0.5), (3, 8, 2, 0.2)])
def test_nt_xent_and_info_nce_with_extra_negatives_match_loops(b, d, m, t):
    from contrastlab.losses import info_nce, nt_xent

    g = torch.Generator().manual_seed(b * 100 + d)
    z1, z2 = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    extra = torch.randn(2 * b, m, d, generator=g)
    assert nt_xent(z1, z2, t, extra_negatives=extra).item() == pytest.approx(_loop_nt_xent_extra(z1, z2, extra, t), abs=1e-5)
    q, k, queue = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g), torch.randn(7, d, generator=g)
    ex = torch.randn(b, m, d, generator=g)
    assert info_nce(q, k, queue, t, extra_negatives=ex).item() == pytest.approx(_loop_info_nce_extra(q, k, queue, ex, t), abs=1e-5)
    # tau_plus = 0: the debiased forms take the same extra negatives
    assert debiased_nt_xent(z1, z2, t, 0.0, 0.0, extra_negatives=extra).item() == pytest.approx(
        nt_xent(z1, z2, t, extra_negatives=extra).item(), abs=1e-5)  # fmt: skip
    assert debiased_info_nce(q, k, queue, t, 0.0, 0.0, extra_negatives=ex).item() == pytest.approx(
        info_nce(q, k, queue, t, extra_negatives=ex).item(), abs=1e-5)  # fmt: skip


def test_debiased_with_extra_negatives_counts_them_in_n():
    """N = K + M in the queue form: the loop over the formula with the extra points as negatives."""
    g = torch.Generator().manual_seed(5)
    q, k, queue, ex = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g), torch.randn(6, 4, generator=g), torch.randn(3, 2, 4, generator=g)
    t, tp = 0.5, 0.1
    norm = lambda v: [x / math.sqrt(sum(y * y for y in v)) for x in v]  # noqa: E731
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    total = 0.0
    for i in range(3):
        qi, ki = norm(q[i].tolist()), norm(k[i].tolist())
        negs = [norm(v) for v in queue.tolist()] + [norm(v) for v in ex[i].tolist()]
        n = len(negs)
        pos = math.exp(dot(qi, ki) / t)
        ng = max((sum(math.exp(dot(qi, v) / t) for v in negs) - tp * n * pos) / (1 - tp), n * math.exp(-1 / t))
        total += -math.log(pos / (pos + ng))
    assert debiased_info_nce(q, k, queue, t, tp, extra_negatives=ex).item() == pytest.approx(total / 3, abs=1e-5)


def test_mochi_exclude_keeps_rows_out_of_the_hard_set():
    import torch.nn.functional as F

    """With n_hard = 1 every synthetic point is the single hardest allowed row; excluding each
    query's hardest row makes it the second hardest."""
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(4, 6, generator=g), dim=1)
    queue = F.normalize(torch.randn(10, 6, generator=g), dim=1)
    order = (q @ queue.T).argsort(dim=1, descending=True)
    out = mochi_negatives(q, queue, 1, 2, 0, generator=g)
    assert torch.allclose(out, queue[order[:, 0]][:, None].expand(4, 2, 6), atol=1e-6)
    out = mochi_negatives(q, queue, 1, 2, 0, generator=g, exclude=order[:, :1])
    assert torch.allclose(out, queue[order[:, 1]][:, None].expand(4, 2, 6), atol=1e-6)


def _best_pairs(h, u, v):
    """For each row of h (m, d), the best non-negative fit on span{u_k, v_k} over the P pairs
    u, v (P, d): (residual (m,), coefficients (m, 2), index of the pair (m,)), float64."""
    basis = torch.stack([u, v], dim=2)  # (P, d, 2)
    m, p = h.shape[0], basis.shape[0]
    coef = torch.linalg.lstsq(basis.expand(m, *basis.shape), h[:, None, :, None].expand(m, p, -1, 1)).solution
    res = (basis @ coef - h[:, None, :, None]).norm(dim=(2, 3))  # (m, P)
    best = res.argmin(dim=1)
    return res[torch.arange(m), best], coef[torch.arange(m), best, :, 0], best


@pytest.mark.parametrize("n_hard", [3, 6, 7, 50])  # B = 4: 2B - 2 = 6 true negatives per anchor
def test_mochi_batch_pool_hard_negatives_never_include_the_anchor_or_its_positive(n_hard):
    """The batch as the pool (SimCLR): anchors [z1; z2], each excluding itself and its positive.
    With n_hard at or above the 2B - 2 true negatives, the hard set is all of them and nothing
    else (never the excluded pair, whose -inf similarity would otherwise be picked). Checked
    against a float64 loop that picks the hard set among the allowed rows only: every synthetic
    point is a non-negative mix of two rows of that set (or of the anchor, share < 1/2, and one
    row of it), every row of it is used, and no mix lies on the positive (cosine 1)."""
    import torch.nn.functional as F

    b, d, s, sp = 4, 16, 120, 120  # d > 2B: rows in general position, so spans identify the rows mixed
    g = torch.Generator().manual_seed(3)
    anchors = F.normalize(torch.randn(2 * b, d, generator=g), dim=1)
    i = torch.arange(2 * b)
    exclude = torch.stack([i, (i + b) % (2 * b)], dim=1)  # as methods.simclr.batch_mochi
    h = mochi_negatives(anchors, anchors, n_hard, s, sp, generator=torch.Generator().manual_seed(4), exclude=exclude)
    h = h.double()
    rows = F.normalize(anchors.double(), dim=1)
    pos_cos = []
    for a in range(2 * b):
        qa = _norm(rows[a].tolist())
        allowed = [j for j in range(2 * b) if j not in (a, (a + b) % (2 * b))]
        hard = sorted(allowed, key=lambda j: -_dot(qa, _norm(rows[j].tolist())))[: min(n_hard, len(allowed))]
        # a n_i + (1 - a) n_j, n_i and n_j from the hard set
        pairs = [(x, y) for x in hard for y in hard if x <= y]
        r, coef, best = _best_pairs(h[a, :s], rows[[x for x, _ in pairs]], rows[[y for _, y in pairs]])
        assert (r < 1e-5).all() and (coef > -1e-6).all(), (a, r.max().item())
        used = {j for k in best.tolist() for j in pairs[k]}
        # b q + (1 - b) n_j, b < 1/2, n_j from the hard set
        r, coef, best = _best_pairs(h[a, s:], rows[[a] * len(hard)], rows[hard])
        assert (r < 1e-5).all() and (coef > -1e-6).all() and (coef[:, 0] / coef.sum(1) < 0.5).all(), (a, r.max().item())
        used |= {hard[k] for k in best.tolist()}
        assert used == set(hard), (a, sorted(used), sorted(hard))
        pos_cos.append((h[a] @ rows[(a + b) % (2 * b)]).max().item())
    assert max(pos_cos) < 0.999, pos_cos  # no synthetic negative is the anchor's own positive

# --- SDCLR's pruned twin -------------------------------------------------------------------------


def _small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1),
                         nn.BatchNorm2d(5), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3), nn.BatchNorm1d(3))  # fmt: skip


def test_pruned_twin_is_the_masked_network_with_its_own_batchnorm():
    import copy

    from contrastlab.nn.pruning import PrunedTwin

    net = _small_net().train()
    twin = PrunedTwin(net)
    masks = magnitude_masks(net, 0.6)
    twin.set_masks(masks)
    with torch.no_grad():  # the twin's BN differs from the dense one's
        for bn in twin.norms:
            bn.weight.mul_(2.0)
            bn.running_mean.add_(1.0)
    x = torch.randn(6, 3, 8, 8)
    dense_stats = [m.running_mean.clone() for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    # independent computation: a copy of the net with masked conv weights and the twin's BN layers
    ref = copy.deepcopy(net)
    twin_bn = [copy.deepcopy(b) for b in twin.norms]
    out = twin(net, x)
    with torch.no_grad():
        for name, m in masks.items():
            ref.get_parameter(name).mul_(m)
    for i, b in zip([1, 4, 8], twin_bn):
        ref[i].load_state_dict(b.state_dict())
    expected = ref(x)
    assert torch.allclose(out, expected, atol=1e-5)
    # running statistics: the twin's moved like the reference copy's, the dense ones did not move
    assert torch.allclose(twin.norms[0].running_mean, ref[1].running_mean, atol=1e-6)
    after = [m.running_mean for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(torch.equal(a, b) for a, b in zip(dense_stats, after))


def test_pruned_twin_gradients_reach_the_shared_weights_through_the_mask():
    from contrastlab.nn.pruning import PrunedTwin

    net = _small_net().train()
    twin = PrunedTwin(net)
    masks = magnitude_masks(net, 0.5)
    twin.set_masks(masks)
    x = torch.randn(6, 3, 8, 8)
    twin(net, x).pow(2).sum().backward()
    w = net[0].weight
    m = masks["0.weight"]
    assert w.grad is not None and (w.grad[m == 0] == 0).all() and (w.grad[m == 1] != 0).any()
    assert net[7].weight.grad is not None  # the linear layer is shared, never pruned
    assert twin.norms[0].weight.grad is not None and net[1].weight.grad is None  # the twin's own BN
    net.zero_grad()
    (net(x).pow(2).sum() + twin(net, x).pow(2).sum()).backward()  # dense + pruned: both contribute
    g_both = w.grad.clone()
    net.zero_grad()
    net(x).pow(2).sum().backward()
    assert not torch.allclose(g_both, w.grad)


# --- SDCLR's official projection head (models/resnet_prune_multibn.py proj_head) ------------------


def _official_head_config(tiny, *extra):
    from contrastlab.config import load_config

    return load_config("sdclr", [*tiny, "model.proj_layers=3", "model.proj_hidden=24", "model.proj_dim=12",
                                 "model.proj_bn_last=true", *extra])  # fmt: skip


def test_official_head_has_batchnorm_after_every_linear_layer(tiny):
    """fc1 -> bn1 -> ReLU -> fc2 -> bn2 -> ReLU -> fc3 -> bn3 (affine), no ReLU at the end; the
    output of a plain re-computation from the head's own weights, layer by layer."""
    from contrastlab.methods import build_method

    head = build_method(_official_head_config(tiny)).projector.train()
    kinds = [type(m).__name__ for m in head.net]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    linears = [m for m in head.net if isinstance(m, nn.Linear)]
    norms = [m for m in head.net if isinstance(m, nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features) for m in linears][1:] == [(24, 24), (24, 12)]
    assert all(m.bias is None for m in linears) and all(b.affine for b in norms)
    with torch.no_grad():
        for b in norms:
            b.weight.uniform_(0.5, 1.5)
            b.bias.uniform_(-0.5, 0.5)
    x = torch.randn(16, linears[0].in_features)
    h = x
    for i, (lin, bn) in enumerate(zip(linears, norms)):  # plain batch statistics, biased variance
        h = h @ lin.weight.T
        mean, var = h.mean(0), ((h - h.mean(0)) ** 2).mean(0)
        h = (h - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias
        if i < 2:
            h = h.clamp_min(0)
    assert torch.allclose(head(x), h, atol=1e-5)
    assert (head(x) < 0).any()  # no ReLU after the last BatchNorm


def test_the_default_head_is_unchanged(tiny):
    from contrastlab.config import load_config
    from contrastlab.methods import build_method

    head = build_method(load_config("sdclr", tiny)).projector
    kinds = [type(m).__name__ for m in head.net]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"] and head.net[-1].bias is not None


def test_pruned_branch_has_its_own_copy_of_the_last_batchnorm(tiny):
    """Dual BN covers the new output BatchNorm: the pruned branch normalises with its own layer
    (parameters and running statistics), and leaves the dense head's statistics untouched."""
    from contrastlab.methods import build_method

    method = build_method(_official_head_config(tiny)).train()
    twin = method.pruned.projector_twin
    dense_norms = [m for m in method.projector.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(twin.norms) == len(dense_norms) == 3
    assert twin._bn_names[-1] == "net.7" and twin.norms[-1] is not dense_norms[-1]
    with torch.no_grad():
        twin.norms[-1].weight.fill_(3.0)
        twin.norms[-1].bias.fill_(-2.0)
    x = torch.rand(8, 3, 32, 32)
    before = [b.running_mean.clone() for b in dense_norms]
    z = method.pruned(method.encoder, method.projector, x, epoch=0)
    assert torch.allclose(z.mean(0), torch.full((12,), -2.0), atol=1e-4)  # the twin's bias, not the dense 0
    assert torch.allclose(z.std(0, unbiased=False), torch.full((12,), 3.0), atol=1e-2)
    assert all(torch.equal(a, b.running_mean) for a, b in zip(before, dense_norms))
    assert not torch.equal(twin.norms[-1].running_mean, torch.zeros(12))
    z.sum().backward()
    assert twin.norms[-1].weight.grad is not None and dense_norms[-1].weight.grad is None


def test_proj_bn_last_needs_two_images_per_batch():
    from contrastlab.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"optim.batch_size=1: the projector's BatchNorm \(model.proj_bn_last=true\)"):
        load_config("moco", ["optim.batch_size=1", "model.proj_bn=false", "model.proj_bn_last=true"])
    assert load_config("moco", ["optim.batch_size=1", "model.proj_bn=false"]).model.proj_bn_last is False
