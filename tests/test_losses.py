"""The public losses against plain loops over their formulas."""
import math

import pytest
import torch

from contrastlab.losses import info_nce, nt_xent


def nt_xent_loop(z1, z2, t):
    """SimCLR's loss written out: 2B anchors, positive = the other view, 2B-2 negatives."""
    z = [[x / math.sqrt(sum(y * y for y in v)) for x in v] for v in torch.cat([z1, z2]).double().tolist()]
    n = len(z) // 2
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        denom = sum(math.exp(dot(z[i], z[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(dot(z[i], z[pos]) / t) / denom)
    return total / (2 * n)


def info_nce_loop(q, k, queue, t):
    norm = lambda v: [x / math.sqrt(sum(y * y for y in v)) for x in v]  # noqa: E731
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    qs, ks, negs = [norm(v) for v in q.double().tolist()], [norm(v) for v in k.double().tolist()], [norm(v) for v in queue.double().tolist()]
    total = 0.0
    for qi, ki in zip(qs, ks):
        logits = [dot(qi, ki) / t] + [dot(qi, n) / t for n in negs]
        m = max(logits)
        total += -(logits[0] - m - math.log(sum(math.exp(l - m) for l in logits)))
    return total / len(qs)


@pytest.mark.parametrize("b,d", [(2, 3), (5, 8), (16, 32), (33, 7)])
@pytest.mark.parametrize("t", [0.05, 0.1, 0.5, 1.0])
def test_nt_xent_matches_loop(b, d, t):
    g = torch.Generator().manual_seed(b * 100 + d)
    z1, z2 = torch.randn(b, d, generator=g) * 3, torch.randn(b, d, generator=g)
    assert nt_xent(z1, z2, temperature=t).item() == pytest.approx(nt_xent_loop(z1, z2, t), abs=1e-5, rel=1e-5)


def test_nt_xent_default_temperature_and_symmetry():
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    assert nt_xent(z1, z2).item() == pytest.approx(nt_xent_loop(z1, z2, 0.5), abs=1e-5)
    assert nt_xent(z1, z2).item() == pytest.approx(nt_xent(z2, z1).item(), abs=1e-6)


def test_nt_xent_scale_invariant_and_gradients():
    z1 = torch.randn(8, 16, requires_grad=True)
    z2 = torch.randn(8, 16)
    a = nt_xent(z1, z2, 0.2)
    assert nt_xent(z1 * 7.0, z2 * 0.1, 0.2).item() == pytest.approx(a.item(), abs=1e-5)
    a.backward()
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


def test_nt_xent_perfect_alignment_is_low():
    z = torch.eye(8) * 10
    aligned = nt_xent(z, z.clone(), 0.1).item()
    shuffled = nt_xent(z, z[torch.randperm(8)].roll(1, 0), 0.1).item()
    assert aligned < 0.01 < shuffled


@pytest.mark.parametrize("b,d,kq", [(1, 3, 1), (4, 8, 10), (9, 16, 33)])
@pytest.mark.parametrize("t", [0.07, 0.2, 1.0])
def test_info_nce_matches_loop(b, d, kq, t):
    g = torch.Generator().manual_seed(b + d + kq)
    q, k, queue = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) * 2, torch.randn(kq, d, generator=g)
    assert info_nce(q, k, queue, temperature=t).item() == pytest.approx(info_nce_loop(q, k, queue, t), abs=1e-5, rel=1e-5)


def test_info_nce_normalisation_noop_and_default():
    q, k, queue = torch.randn(4, 6), torch.randn(4, 6), torch.randn(12, 6)
    nq, nk, nqueue = (torch.nn.functional.normalize(x, dim=1) for x in (q, k, queue))
    assert info_nce(q, k, queue).item() == pytest.approx(info_nce(nq, nk, nqueue).item(), abs=1e-6)
    assert info_nce(q, k, queue).item() == pytest.approx(info_nce_loop(q, k, queue, 0.2), abs=1e-5)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="queue"):
        info_nce(torch.randn(4, 3), torch.randn(4, 3), torch.randn(7, 4))
