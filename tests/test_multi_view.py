"""The multi-positive debiased / hard NT-Xent over V views (RoCL with DCL / HCL) and MoCHi's pool over V views
(RoCL with MoCHi) against plain loops: values and gradients against a float64 loop over anchors, positives and
negatives (V = 2, 3, 4; tau_plus 0 / 0.1 / 0.9 with the floor active; beta 0 / 1; with and without extra
negatives), V = 2 against debiased_nt_xent, tau_plus = beta = 0 against the positives-out-of-the-denominator
form (and not multi_view_nt_xent), multi_view_nt_xent's extra negatives, the MoCHi pool that never holds the
anchor or its positives (with a negative control), and two gloo processes against one."""
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from contrastlab.losses import debiased_multi_view_nt_xent, debiased_nt_xent, mochi_negatives, multi_view_nt_xent
from contrastlab.methods.rocl import multi_view_mochi


# ----------------------------------------------------------------------------- loops over the formula
def _unit(x):
    """x / |x|, element by element (x: a 1-d float64 tensor; autograd flows through)."""
    return x / torch.sqrt(sum(x[c] * x[c] for c in range(x.shape[0])))


def _dot(a, b):
    return sum(a[c] * b[c] for c in range(a.shape[0]))


def debiased_loop(views, t, tau, beta, extra=None):
    """1 / (V b) sum over anchors i and their positives p of -log(pos_p / (pos_p + Ng(i))),

        Ng(i) = max((sum_k neg_k - tau N mean_p' pos_p') / (1 - tau), N exp(-1/t)),

    HCL's sum_k neg_k -> N sum_k(imp_k neg_k) / sum_k imp_k, imp_k = exp(beta s_k / t); one anchor, one
    positive and one negative at a time, on float64 scalars (so autograd gives the loop's gradient).
    Returns (loss, number of anchors whose Ng hit the floor)."""
    n_views, b = len(views), views[0].shape[0]
    z = [[_unit(views[v][j]) for j in range(b)] for v in range(n_views)]
    total, clamped = 0.0, 0
    for v in range(n_views):
        for i in range(b):
            a = z[v][i]
            pos = [torch.exp(_dot(a, z[w][i]) / t) for w in range(n_views) if w != v]
            sims = [_dot(a, z[u][k]) for u in range(n_views) for k in range(b) if k != i]  # every other image's view
            if extra is not None:
                sims += [_dot(a, _unit(h)) for h in extra[v * b + i]]
            n = len(sims)
            neg = [torch.exp(s / t) for s in sims]
            if beta > 0:
                imp = [torch.exp(beta * s / t) for s in sims]
                neg_sum = n * sum(w * x for w, x in zip(imp, neg)) / sum(imp)
            else:
                neg_sum = sum(neg)
            ng = (neg_sum - tau * n * sum(pos) / len(pos)) / (1 - tau)
            floor = n * math.exp(-1 / t)
            if ng < floor:
                ng, clamped = torch.tensor(floor, dtype=torch.float64), clamped + 1
            for p in pos:
                total = total - torch.log(p / (p + ng))
    return total / (n_views * b), clamped


def multi_view_loop(views, t, extra=None, positives_in_denominator=True):
    """RoCL's multi-view NT-Xent (every other embedding and the extra negatives in each term's denominator) or,
    with ``positives_in_denominator=False``, -log(pos_p / (pos_p + sum of the negatives)); float64 loop."""
    n_views, b = len(views), views[0].shape[0]
    z = [[_unit(views[v][j]) for j in range(b)] for v in range(n_views)]
    total = 0.0
    for v in range(n_views):
        for i in range(b):
            a = z[v][i]
            negs = [torch.exp(_dot(a, z[u][k]) / t) for u in range(n_views) for k in range(b) if k != i]
            if extra is not None:
                negs += [torch.exp(_dot(a, _unit(h)) / t) for h in extra[v * b + i]]
            pos = [torch.exp(_dot(a, z[w][i]) / t) for w in range(n_views) if w != v]
            for p in pos:
                denom = sum(negs) + (sum(pos) if positives_in_denominator else p)
                total = total - torch.log(p / denom)
    return total / (n_views * b)


def _views(n_views, b, d, seed, spread=1.0):
    """V views of b images: a shared base plus ``spread`` x noise per view (float64)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(b, d, generator=g, dtype=torch.float64)
    return [base + spread * torch.randn(b, d, generator=g, dtype=torch.float64) for _ in range(n_views)]


# ----------------------------------------------------------------------------- the debiased / hard loss
CASES = [(v, tau, beta, m) for v in (2, 3, 4) for tau in (0.0, 0.1) for beta in (0.0, 1.0) for m in (0, 3)]


@pytest.mark.parametrize("n_views,tau,beta,m", CASES)
def test_debiased_multi_view_matches_the_loop_values_and_gradients(n_views, tau, beta, m):
    b, d, t = 3, 4, 0.5
    views = [v.requires_grad_(True) for v in _views(n_views, b, d, seed=10 * n_views + m)]
    g = torch.Generator().manual_seed(m)
    extra = torch.randn(n_views * b, m, d, generator=g, dtype=torch.float64, requires_grad=True) if m else None
    inputs = views + ([extra] if m else [])
    got = debiased_multi_view_nt_xent(views, t, tau, beta, extra_negatives=extra)
    grads = torch.autograd.grad(got, inputs)
    want, clamped = debiased_loop(views, t, tau, beta, extra)
    assert clamped == 0  # the smooth branch here; the floor has its own test
    want_grads = torch.autograd.grad(want, inputs)
    assert got.dtype == torch.float64 and got.item() == pytest.approx(want.item(), rel=1e-10, abs=1e-12)
    for a, w in zip(grads, want_grads):
        torch.testing.assert_close(a, w, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("n_views", [2, 3, 4])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_the_floor_binds_when_tau_plus_is_large(n_views, beta):
    """Views close to each other (positives near cosine 1) and tau_plus 0.9: Ng falls below N exp(-1/t) for
    every anchor and the floor sets it; values and gradients still those of the loop (the floor's branch)."""
    b, d, t, tau = 3, 4, 0.5, 0.9
    views = [v.requires_grad_(True) for v in _views(n_views, b, d, seed=n_views, spread=0.05)]
    got = debiased_multi_view_nt_xent(views, t, tau, beta)
    want, clamped = debiased_loop(views, t, tau, beta)
    assert clamped == n_views * b
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    for a, w in zip(torch.autograd.grad(got, views), torch.autograd.grad(want, views)):
        torch.testing.assert_close(a, w, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("tau,beta", [(0.1, 0.0), (0.3, 0.5), (0.1, 1.0)])
def test_gradcheck_float64(tau, beta):
    views = [v.requires_grad_(True) for v in _views(3, 3, 4, seed=7, spread=2.0)]
    extra = torch.randn(9, 2, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64, requires_grad=True)
    assert debiased_loop([v.detach() for v in views], 0.5, tau, beta, extra.detach())[1] == 0  # smooth
    assert torch.autograd.gradcheck(lambda a, b, c, e: debiased_multi_view_nt_xent([a, b, c], 0.5, tau, beta,
                                                                                   extra_negatives=e), (*views, extra))  # fmt: skip


@pytest.mark.parametrize("tau,beta", [(0.0, 0.0), (0.1, 0.0), (0.1, 1.0), (0.9, 0.0), (0.3, 0.5)])
@pytest.mark.parametrize("m", [0, 2])
def test_two_views_are_debiased_nt_xent(tau, beta, m):
    g = torch.Generator().manual_seed(int(10 * tau) + m)
    z1, z2 = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    extra = torch.randn(10, m, 6, generator=g) if m else None
    got = debiased_multi_view_nt_xent([z1, z2], 0.2, tau, beta, extra_negatives=extra)
    want = debiased_nt_xent(z1, z2, 0.2, tau, beta, extra_negatives=extra)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_tau_zero_beta_zero_takes_the_other_positives_out_of_the_denominator():
    """For V >= 3 the debiased form at tau_plus = beta = 0 is -log(pos_p / (pos_p + sum neg)), lower than RoCL's
    multi_view_nt_xent, whose denominators hold the other positives too (so RoCL keeps the latter then)."""
    views = _views(3, 4, 5, seed=1)
    got = debiased_multi_view_nt_xent(views, 0.5, 0.0, 0.0)
    assert got.item() == pytest.approx(multi_view_loop(views, 0.5, positives_in_denominator=False).item(), rel=1e-10)
    assert got.item() < multi_view_nt_xent(views, 0.5).item() - 1e-3


@pytest.mark.parametrize("t", [0.05, 0.02, 0.01])
def test_small_temperatures_do_not_overflow_in_float32(t):
    views = _views(3, 4, 5, seed=2, spread=0.01)  # positives near cosine 1: exp(1/t) overflows float32 at t=0.01
    for tau, beta in [(0.1, 0.0), (0.1, 1.0)]:
        got = debiased_multi_view_nt_xent([v.float() for v in views], t, tau, beta)
        want, _ = debiased_loop(views, t, tau, beta)
        assert torch.isfinite(got) and got.item() == pytest.approx(want.item(), rel=1e-4, abs=1e-4)


def test_bad_arguments_raise():
    z = [torch.randn(3, 4) for _ in range(3)]
    with pytest.raises(ValueError, match="at least 2 views"):
        debiased_multi_view_nt_xent(z[:1])
    with pytest.raises(ValueError, match="of one shape"):
        debiased_multi_view_nt_xent([z[0], torch.randn(2, 4)])
    with pytest.raises(ValueError, match="tau_plus must be in"):
        debiased_multi_view_nt_xent(z, tau_plus=1.0)
    with pytest.raises(ValueError, match="extra_negatives must be"):
        debiased_multi_view_nt_xent(z, extra_negatives=torch.randn(6, 2, 4))
    with pytest.raises(ValueError, match="extra_negatives must be"):
        multi_view_nt_xent(z, extra_negatives=torch.randn(9, 2, 5))


# ----------------------------------------------------------------------------- multi_view_nt_xent's extra negatives
@pytest.mark.parametrize("n_views,m", [(2, 2), (3, 1), (3, 4), (4, 2)])
def test_multi_view_nt_xent_with_extra_negatives_matches_the_loop(n_views, m):
    views = [v.requires_grad_(True) for v in _views(n_views, 3, 4, seed=n_views + m)]
    extra = torch.randn(3 * n_views, m, 4, generator=torch.Generator().manual_seed(m), dtype=torch.float64,
                        requires_grad=True)  # fmt: skip
    got = multi_view_nt_xent(views, 0.5, extra_negatives=extra)
    want = multi_view_loop(views, 0.5, extra)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    for a, w in zip(torch.autograd.grad(got, views + [extra]), torch.autograd.grad(want, views + [extra])):
        torch.testing.assert_close(a, w, rtol=1e-8, atol=1e-10)


# ----------------------------------------------------------------------------- MoCHi's pool over V views
@pytest.mark.parametrize("n_views", [2, 3, 4])
@pytest.mark.parametrize("n_hard", [1, 3, 100])
def test_the_mochi_pool_never_holds_the_anchor_or_its_positives(n_views, n_hard):
    """Every view of an image is the same vector, so the anchor's positives are its most similar rows (cosine
    1): a synthetic negative mixed from any of them (or from the anchor with its positive) would have cosine 1
    to the positives. None has; the negative control, the pool that excludes only the anchor and one positive
    (SimCLR's batch_mochi on V > 2 views), does make such mixes."""
    b, d, s, sp = 4, 8, 40, 40
    base = torch.randn(b, d, generator=torch.Generator().manual_seed(n_views))
    views = [base.clone() for _ in range(n_views)]
    h = multi_view_mochi(views, n_hard, s, sp, generator=torch.Generator().manual_seed(1))
    assert h.shape == (n_views * b, s + sp, d) and not h.requires_grad
    unit = F.normalize(base, dim=1)
    for r in range(n_views * b):
        assert (h[r] @ unit[r % b]).max().item() < 0.999, r  # the anchor and its positives are one vector
        assert (h[r].norm(dim=1) - 1).abs().max() < 1e-5
    if n_views > 2 and n_hard < 100:  # negative control: V - 2 positives left in the pool are its hardest rows
        anchors = torch.cat(views)
        i = torch.arange(n_views * b)
        two = torch.stack([i, (i + b) % (n_views * b)], dim=1)
        bad = mochi_negatives(anchors, anchors, n_hard, s, sp, generator=torch.Generator().manual_seed(1), exclude=two)
        hits = [(bad[r] @ unit[r % b]).max().item() > 0.9999 for r in range(n_views * b)]
        assert all(hits), hits


def test_the_mochi_pool_with_n_hard_at_the_bound_is_every_other_image():
    """n_hard = V B - V: the hard set is exactly the other images' V (B - 1) rows; with s' mixes only
    (b q + (1 - b) n_j, b < 1/2), each mix's n_j is recovered and is never the anchor's image."""
    n_views, b, d, sp = 3, 3, 16, 60
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(b, d, generator=g) for _ in range(n_views)]
    rows = F.normalize(torch.cat(views), dim=1).double()
    h = multi_view_mochi(views, n_views * b - n_views, 0, sp, generator=torch.Generator().manual_seed(2)).double()
    for r in range(n_views * b):
        used = set()
        for x in h[r]:
            # x is proportional to beta q + (1 - beta) n_j: the n_j whose plane with q holds x
            res = []
            for j in range(n_views * b):
                basis = torch.stack([rows[r], rows[j]], dim=1)
                coef = torch.linalg.lstsq(basis, x[:, None]).solution
                res.append((basis @ coef - x[:, None]).norm().item() if j != r else float("inf"))
            j = min(range(len(res)), key=res.__getitem__)
            assert res[j] < 1e-5
            used.add(j)
        mine = {u * b + r % b for u in range(n_views)}
        assert not used & mine, (r, used)
        assert used == set(range(n_views * b)) - mine, (r, sorted(used))  # every allowed row drawn at 60 draws


# ----------------------------------------------------------------------------- two processes
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, views, extra, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n = views[0].shape[0]
        b = n // world
        mine = [v[rank * b : (rank + 1) * b].clone().requires_grad_(True) for v in views]
        ex = torch.cat([extra[u * n + rank * b : u * n + (rank + 1) * b] for u in range(len(views))])
        res = {}
        for name, fn in [("plain", lambda z: multi_view_nt_xent(z, 0.5, extra_negatives=ex)),
                         ("debiased", lambda z: debiased_multi_view_nt_xent(z, 0.5, 0.1, 1.0, extra_negatives=ex))]:  # fmt: skip
            loss = fn(mine)
            res[name] = (loss.detach(), [g.clone() for g in torch.autograd.grad(loss, mine)])
        out[rank] = res
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_processes_equal_one_on_the_concatenated_batch():
    import torch.multiprocessing as mp

    world, n, d, n_views = 2, 6, 5, 3
    views = [v.float() for v in _views(n_views, n, d, seed=3)]
    extra = torch.randn(n_views * n, 2, d, generator=torch.Generator().manual_seed(4))
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(world, _free_port(), views, extra, out), nprocs=world, join=True)
    b = n // world
    for name, fn in [("plain", lambda z: multi_view_nt_xent(z, 0.5, gather=False, extra_negatives=extra)),
                     ("debiased", lambda z: debiased_multi_view_nt_xent(z, 0.5, 0.1, 1.0, gather=False,
                                                                        extra_negatives=extra))]:  # fmt: skip
        ref_views = [v.clone().requires_grad_(True) for v in views]
        ref = fn(ref_views)
        ref_grads = torch.autograd.grad(ref, ref_views)
        # each rank averages over its own V b anchors; the mean over ranks is the global loss
        assert sum(out[r][name][0].item() for r in range(world)) / world == pytest.approx(ref.item(), abs=1e-5)
        for rank in range(world):
            for g, rg in zip(out[rank][name][1], ref_grads):  # gather's backward sums ranks; DDP divides by world
                torch.testing.assert_close(g / world, rg[rank * b : (rank + 1) * b], rtol=1e-5, atol=1e-6)
