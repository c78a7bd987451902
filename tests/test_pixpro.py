"""PixPro and PixContrast (Xie et al., CVPR 2021): the positive pixel pairs, the pixel propagation module and
the losses against plain float64 loops over their formulas, the cosine momentum schedule, one training step
of each method recomputed by hand, config errors, and both digits recipes end to end through the command line
(train, then kNN eval of the run)."""
import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

from contrastlab.cli import main
from contrastlab.config import load_config
from contrastlab.data.views import BatchedViews
from contrastlab.errors import ConfigError
from contrastlab.losses import pixel_consistency_loss, pixel_info_nce, pooled_cosine_loss, positive_pixel_mask
from contrastlab.methods import build_method
from contrastlab.nn import PixelPropagation, cosine_momentum


# ----------------------------------------------------------------------------- positive pixel pairs
def _centre(box, flip, r, c, h, w):
    x0, y0, x1, y1 = box
    bw, bh = (x1 - x0) / w, (y1 - y0) / h
    x = x1 - (c + 0.5) * bw if flip else x0 + (c + 0.5) * bw
    return x, y0 + (r + 0.5) * bh, math.hypot(bw, bh)


def _mask_loop(boxes1, flips1, boxes2, flips2, size, threshold):
    """[b][i][j] for every pair of pixels, one at a time."""
    h, w = size
    out = torch.zeros(len(boxes1), h * w, h * w, dtype=torch.bool)
    for b in range(len(boxes1)):
        for i in range(h * w):
            xi, yi, d1 = _centre(boxes1[b].tolist(), bool(flips1[b]), i // w, i % w, h, w)
            for j in range(h * w):
                xj, yj, d2 = _centre(boxes2[b].tolist(), bool(flips2[b]), j // w, j % w, h, w)
                out[b, i, j] = math.hypot(xi - xj, yi - yj) < threshold * max(d1, d2)
    return out


def _random_boxes(n, g, lo=0.2):
    """Random boxes in [0, 1] with sides of at least ``lo``."""
    wh = lo + (1 - lo) * torch.rand(n, 2, generator=g, dtype=torch.float64)
    xy = (1 - wh) * torch.rand(n, 2, generator=g, dtype=torch.float64)
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("size,threshold", [((2, 3), 0.7), ((3, 3), 0.7), ((4, 5), 1.3), ((5, 4), 0.4)])
def test_the_mask_matches_a_loop_over_pixel_pairs_with_flips(size, threshold):
    g = torch.Generator().manual_seed(size[0] * 10 + size[1])
    b = 12
    boxes1, boxes2 = _random_boxes(b, g), _random_boxes(b, g)
    flips1, flips2 = torch.rand(b, generator=g) < 0.5, torch.rand(b, generator=g) < 0.5
    got = positive_pixel_mask(boxes1, flips1, boxes2, flips2, size, threshold)
    want = _mask_loop(boxes1, flips1, boxes2, flips2, size, threshold)
    assert got.dtype == torch.bool and got.shape == (b, size[0] * size[1], size[0] * size[1])
    assert torch.equal(got, want)
    assert 0 < int(want.sum()) < want.numel()  # some pairs positive, some not
    assert flips1.any() and not flips1.all() and flips2.any() and not flips2.all()


def test_a_flipped_copy_of_the_same_crop_pairs_pixel_c_with_column_w_minus_1_minus_c():
    boxes = torch.tensor([[0.1, 0.2, 0.7, 0.9]], dtype=torch.float64)
    h, w = 3, 4
    got = positive_pixel_mask(boxes, torch.tensor([False]), boxes, torch.tensor([True]), (h, w), 0.1)
    want = torch.zeros(h * w, h * w, dtype=torch.bool)
    for r in range(h):
        for c in range(w):
            want[r * w + c, r * w + (w - 1 - c)] = True
    assert torch.equal(got[0], want)
    same = positive_pixel_mask(boxes, torch.tensor([True]), boxes, torch.tensor([True]), (h, w), 0.1)
    assert torch.equal(same[0], torch.eye(h * w, dtype=torch.bool))


def test_disjoint_crops_have_no_positive_pair():
    boxes1 = torch.tensor([[0.0, 0.0, 0.45, 1.0], [0.0, 0.0, 1.0, 0.3]], dtype=torch.float64)
    boxes2 = torch.tensor([[0.55, 0.0, 1.0, 1.0], [0.0, 0.7, 1.0, 1.0]], dtype=torch.float64)
    for f1 in (False, True):
        for f2 in (False, True):
            flips1, flips2 = torch.tensor([f1, f2]), torch.tensor([f2, f1])
            assert not positive_pixel_mask(boxes1, flips1, boxes2, flips2, (4, 4)).any()
            assert not _mask_loop(boxes1, flips1, boxes2, flips2, (4, 4), 0.7).any()


def test_the_threshold_boundary_and_the_larger_of_the_two_diagonals():
    """Two crops of the same size shifted by 0.699 bin diagonals: pixel 0 of view 1 and pixel 0 of view 2 are
    positive at threshold 0.7 and not at 0.698. A crop twice as large on view 2 doubles the larger diagonal:
    a pair 0.79 small-bin diagonals apart is positive (0.40 of the larger), though not under the smaller."""
    diag = math.hypot(0.2, 0.2)
    dx = 0.699 * diag
    boxes1 = torch.tensor([[0.1, 0.1, 0.5, 0.5]], dtype=torch.float64)
    boxes2 = boxes1 + torch.tensor([[dx, 0, dx, 0]], dtype=torch.float64)
    no = torch.tensor([False])
    for t, expected in ((0.7, True), (0.698, False)):
        got = positive_pixel_mask(boxes1, no, boxes2, no, (2, 2), t)
        assert bool(got[0, 0, 0]) is expected and bool(_mask_loop(boxes1, no, boxes2, no, (2, 2), t)[0, 0, 0]) is expected
    # an exact tie in binary floating point (bins 3/16 x 1/4, diagonal 5/16; shift 5/32 = 0.5 diagonals): "closer
    # than" is strict, so the pair is not positive at threshold 0.5 and is just above it
    tie1 = torch.tensor([[0.125, 0.25, 0.5, 0.75]], dtype=torch.float64)
    tie2 = tie1 + torch.tensor([[0.15625, 0, 0.15625, 0]], dtype=torch.float64)
    assert not bool(positive_pixel_mask(tie1, no, tie2, no, (2, 2), 0.5)[0, 0, 0])
    assert bool(positive_pixel_mask(tie1, no, tie2, no, (2, 2), 0.5 + 1e-9)[0, 0, 0])
    assert not bool(_mask_loop(tie1, no, tie2, no, (2, 2), 0.5)[0, 0, 0])
    # view 2 with bins of 0.4 x 0.4: its pixel 0 is centred at (0.2, 0.3), view 1's (bins 0.2 x 0.2) at (0.4, 0.2)
    small = torch.tensor([[0.3, 0.1, 0.7, 0.5]], dtype=torch.float64)
    big = torch.tensor([[0.0, 0.1, 0.8, 0.9]], dtype=torch.float64)
    dist = math.hypot(0.4 - 0.2, 0.2 - 0.3)
    assert dist / diag > 0.7 and dist / (2 * diag) < 0.7
    assert bool(positive_pixel_mask(small, no, big, no, (2, 2))[0, 0, 0])
    assert bool(positive_pixel_mask(big, no, small, no, (2, 2))[0, 0, 0])  # symmetric in the two views


def test_the_mask_refuses_bad_shapes_with_one_line():
    b = torch.rand(3, 4)
    f = torch.zeros(3, dtype=torch.bool)
    for args, match in [((torch.rand(3, 5), f, b, f, (2, 2)), "boxes1 and boxes2 of shape"),
                        ((b, torch.zeros(2, dtype=torch.bool), b, f, (2, 2)), "flips1 and flips2 of shape"),
                        ((b, f, b, f, (0, 2)), "size=")]:  # fmt: skip
        with pytest.raises(ValueError, match=match) as e:
            positive_pixel_mask(*args)
        assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- the PPM
def _ppm_loop(x, values, gamma):
    """y_i = sum_j max(cos(x_i, x_j), 0)^gamma v_j, one pixel at a time (x, values: (B, C, H, W) float64)."""
    b, c, h, w = x.shape
    xs, vs = x.flatten(2), values.flatten(2)
    y = torch.zeros(b, values.shape[1], h * w, dtype=torch.float64)
    for n in range(b):
        for i in range(h * w):
            for j in range(h * w):
                xi, xj = xs[n, :, i].tolist(), xs[n, :, j].tolist()
                cos = sum(p * q for p, q in zip(xi, xj)) / math.sqrt(sum(p * p for p in xi) * sum(q * q for q in xj))
                y[n, :, i] += max(cos, 0.0) ** gamma * vs[n, :, j]
    return y.view(b, -1, h, w)


@pytest.mark.parametrize("layers,gamma,normalize", [(0, 2.0, False), (1, 2.0, True), (1, 1.0, False), (2, 3.0, True)])
def test_the_ppm_matches_a_loop_over_pixels(layers, gamma, normalize):
    torch.manual_seed(layers)
    ppm = PixelPropagation(6, layers, gamma, normalize).double().eval()
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        if layers == 1:  # g is a 1x1 conv: W x_j + b at every pixel
            wgt, bias = ppm.transform.weight[:, :, 0, 0], ppm.transform.bias
            v = torch.einsum("oc,bchw->bohw", wgt, x) + bias[None, :, None, None]
        elif layers == 0:
            v = x
        else:
            v = ppm.transform(x)
        if normalize:
            v = v / v.norm(dim=1, keepdim=True)
        got = ppm(x)
    want = _ppm_loop(x, v, gamma)
    assert got.shape == x.shape
    assert torch.allclose(got, want, atol=1e-10), (got - want).abs().max()
    cos = F.normalize(x.flatten(2), dim=1)
    assert (torch.einsum("bci,bcj->bij", cos, cos) < -0.1).any()  # the clamp at 0 matters here


# ----------------------------------------------------------------------------- the losses
def _cos(u, v):
    return sum(p * q for p, q in zip(u, v)) / math.sqrt(sum(p * p for p in u) * sum(q * q for q in v))


def _consistency_loop(y, x, mask):
    b, n = mask.shape[0], mask.shape[1]
    ys, xs, mask = y.flatten(2).transpose(1, 2).tolist(), x.flatten(2).transpose(1, 2).tolist(), mask.tolist()
    total = 0.0
    for k in range(b):
        pairs = [(i, j) for i in range(n) for j in range(n) if mask[k][i][j]]
        if pairs:
            total += sum(_cos(ys[k][i], xs[k][j]) for i, j in pairs) / len(pairs)
    return -total / b


def _info_nce_loop(q, k, pos, neg, t):
    b, n = pos.shape[0], pos.shape[1]
    qs, ks = q.flatten(2).transpose(1, 2).tolist(), k.flatten(2).transpose(1, 2).tolist()
    pos, neg = pos.tolist(), None if neg is None else neg.tolist()
    terms = []
    for m in range(b):
        for i in range(n):
            ps = [j for j in range(n) if pos[m][i][j]]
            if not ps:
                continue
            ns = [j for j in range(n) if (neg[m][i][j] if neg is not None else not pos[m][i][j])]
            e = {j: math.exp(_cos(qs[m][i], ks[m][j]) / t) for j in set(ps) | set(ns)}
            terms.append(-math.log(sum(e[j] for j in ps) / sum(e.values())))
    return sum(terms) / len(terms) if terms else 0.0


def _maps_and_mask(seed, b=3, c=5, h=3, w=3):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    mask = torch.rand(b, h * w, h * w, generator=g) < 0.3
    mask[-1] = False  # an image without positive pairs
    mask[0, 0] = False  # a pixel without positives
    return y, x, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_consistency_loss_matches_a_loop_over_positive_pairs(seed):
    y, x, mask = _maps_and_mask(seed)
    got = pixel_consistency_loss(y, x, mask)
    assert math.isclose(float(got), _consistency_loop(y, x, mask), rel_tol=1e-5, abs_tol=1e-6)
    assert math.isclose(float(pixel_consistency_loss(y.flatten(2), x.flatten(2), mask)), float(got), rel_tol=1e-6)


@pytest.mark.parametrize("seed,t,with_neg", [(0, 0.3, False), (1, 0.1, True), (2, 1.0, False), (3, 0.5, True)])
def test_pixcontrast_matches_a_loop_over_the_formula(seed, t, with_neg):
    q, k, pos = _maps_and_mask(seed)
    neg = None
    if with_neg:  # a gap between positives and negatives: some pixels are neither
        g = torch.Generator().manual_seed(seed + 50)
        neg = (torch.rand(pos.shape, generator=g) < 0.6) & ~pos
    got = pixel_info_nce(q, k, pos, t, neg)
    assert math.isclose(float(got), _info_nce_loop(q, k, pos, neg, t), rel_tol=1e-5, abs_tol=1e-6)


def test_the_pixpro_loss_never_compares_two_images():
    """Why PixPro cannot tell the digits apart on one-digit scenes (issue 16, docs/pixpro.md): with the PPM's
    transform the identity, the loss sees the features only through cosines between pixels of the same image
    (its two views). Rotating each image's features by its own orthogonal matrix (online and momentum alike)
    leaves the loss unchanged, so nothing in it rewards features that differ between images, such as which
    digit a scene shows. The check: per-image rotations change every cross-image cosine but not the loss,
    which is recomputed here from the float64 loops of the PPM and the consistency loss."""
    g = torch.Generator().manual_seed(7)
    b, c, h, w = 3, 5, 3, 3
    p = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    k = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    mask = torch.rand(b, h * w, h * w, generator=g) < 0.4
    rot = torch.linalg.qr(torch.randn(b, c, c, generator=g, dtype=torch.float64)).Q  # one rotation per image
    p2, k2 = torch.einsum("bdc,bchw->bdhw", rot, p), torch.einsum("bdc,bchw->bdhw", rot, k)
    ppm = PixelPropagation(c, 0, 2.0, True).double()

    def loss(p, k):
        want = _consistency_loop(_ppm_loop(p, F.normalize(p, dim=1), 2.0), k, mask)
        got = float(pixel_consistency_loss(ppm(p), k, mask))
        assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)
        return got

    assert math.isclose(loss(p, k), loss(p2, k2), rel_tol=1e-6, abs_tol=1e-7)  # float32 inside the loss
    pooled, pooled2 = F.normalize(p.mean(dim=(2, 3)), dim=1), F.normalize(p2.mean(dim=(2, 3)), dim=1)
    assert (pooled @ pooled.T - pooled2 @ pooled2.T).abs().max() > 0.1  # the images' relations did change


def test_pixcontrast_without_any_positive_is_zero_with_a_gradient():
    q, k, _ = _maps_and_mask(0)
    q.requires_grad_(True)
    loss = pixel_info_nce(q, k, torch.zeros(3, 9, 9, dtype=torch.bool))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(q.grad).all()


def test_the_pooled_cosine_loss_and_shape_errors():
    g = torch.Generator().manual_seed(3)
    p, z = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    want = -sum(_cos(p[i].tolist(), z[i].tolist()) for i in range(4)) / 4
    assert math.isclose(float(pooled_cosine_loss(p, z)), want, rel_tol=1e-6)
    with pytest.raises(ValueError, match="pixel_consistency_loss expects") as e:
        pixel_consistency_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.ones(2, 3, 3, dtype=torch.bool))
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- the momentum schedule
def test_the_cosine_momentum_schedule():
    assert cosine_momentum(0.99, 0, 100) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 50, 100) == pytest.approx(0.995)
    assert cosine_momentum(0.99, 25, 100) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)
    assert cosine_momentum(0.99, 100, 100) == pytest.approx(1.0)
    assert cosine_momentum(0.99, 150, 100) == pytest.approx(1.0)
    assert cosine_momentum(0.99, 10, None) == 0.99
    vals = [cosine_momentum(0.9, s, 40) for s in range(41)]
    assert all(a < b for a, b in zip(vals, vals[1:]))


# ----------------------------------------------------------------------------- the method
def _method(tiny, name="pixpro", extra=()):
    return build_method(load_config(name, tiny + ["views.size=32", *extra]))  # 4 x 4 maps: quicker


def _batch(n=8, seed=0, step=0, total=None):
    images = (torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(99)) * 255).to(torch.uint8)
    return {"images": images, "generator": torch.Generator().manual_seed(seed), "step": step, "total_steps": total}


def _redraw(m, seed=0):
    """The step's two views with boxes and flips, drawn again from the same generator."""
    b = _batch(seed=seed)
    g = b["generator"]
    return m.views(b["images"], g, return_boxes=True), m.views(b["images"], g, return_boxes=True)


def _branches(m, x):
    with torch.no_grad():
        k = F.normalize(m.key_head(m.key_encoder.forward_features(x)), dim=1)
        f = m.encoder.forward_features(x)
        return f, m.head(f), k


@pytest.mark.parametrize("name", ["pixpro", "pixcontrast"])
def test_a_step_is_the_symmetric_loss_over_the_positive_pairs(tiny, name):
    """One step recomputed by hand from the same views and the weights after it (the momentum update comes
    first, the online weights do not move without an optimiser): view 1's online pixels against view 2's
    momentum pixels over the mask, plus view 2's against view 1's over the transposed mask (loop formulas)."""
    m = _method(tiny, name, ["method.instance_weight=0"])
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(0.05)  # the branches differ
    out = m(_batch())
    (x1, b1, f1), (x2, b2, f2) = _redraw(m)
    _, p1, k1 = _branches(m, x1)
    _, p2, k2 = _branches(m, x2)
    mask = _mask_loop(b1, f1, b2, f2, p1.shape[2:], m.cfg.threshold)
    assert not torch.equal(mask, mask.transpose(1, 2))  # the two directions differ
    with torch.no_grad():
        if name == "pixpro":
            want = _consistency_loop(m.ppm(p1), k2, mask) + _consistency_loop(m.ppm(p2), k1, mask.transpose(1, 2))
        else:
            t = m.cfg.temperature
            want = _info_nce_loop(p1, k2, mask, None, t) + _info_nce_loop(p2, k1, mask.transpose(1, 2), None, t)
    assert math.isclose(float(out["loss"].detach()), want, rel_tol=1e-4, abs_tol=1e-5), (float(out["loss"].detach()), want)
    assert float(out["pos_pixels"]) == pytest.approx(float(mask.any(dim=2).float().mean()))


def test_pixcontrast_negatives_beyond_neg_threshold(tiny):
    m = _method(tiny, "pixcontrast", ["method.neg_threshold=1.5"])
    out = m(_batch())
    (x1, b1, f1), (x2, b2, f2) = _redraw(m)
    _, p1, k1 = _branches(m, x1)
    _, p2, k2 = _branches(m, x2)
    size, t = p1.shape[2:], m.cfg.temperature
    pos, neg = _mask_loop(b1, f1, b2, f2, size, 0.7), ~_mask_loop(b1, f1, b2, f2, size, 1.5)
    assert (~pos & ~neg).any()  # pairs between 0.7 and 1.5 diagonals are left out
    want = _info_nce_loop(p1, k2, pos, neg, t) + _info_nce_loop(p2, k1, pos.transpose(1, 2), neg.transpose(1, 2), t)
    assert math.isclose(float(out["loss"].detach()), want, rel_tol=1e-4, abs_tol=1e-5)


def test_the_instance_branch_adds_its_weighted_byol_loss(tiny):
    m = _method(tiny, "pixpro", ["method.instance_weight=0.5"])
    out = m(_batch())
    (x1, *_), (x2, *_) = _redraw(m)
    with torch.no_grad():
        def pooled_target(x):
            return F.normalize(m.key_instance_head(m.key_encoder.forward_features(x)).mean(dim=(2, 3)), dim=1)

        def pooled_prediction(x):
            return m.predictor(m.instance_head(m.encoder.forward_features(x))).mean(dim=(2, 3))

        z1, z2, q1, q2 = pooled_target(x1), pooled_target(x2), pooled_prediction(x1), pooled_prediction(x2)
    inst = -sum(_cos(q1[i].tolist(), z2[i].tolist()) + _cos(q2[i].tolist(), z1[i].tolist()) for i in range(8)) / 8
    assert math.isclose(float(out["loss_instance"]), inst, rel_tol=1e-4, abs_tol=1e-5)
    assert float(out["loss"].detach()) == pytest.approx(float(out["loss_pixel"]) + 0.5 * inst, rel=1e-4, abs=1e-5)
    out["loss"].backward()
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert name.startswith("key_") and p.grad is None, name


def test_the_momentum_branch_follows_the_cosine_schedule(tiny):
    """At step 50 of 100 the momentum is 0.995 (base 0.99): key <- m key + (1 - m) online, every weight."""
    m = _method(tiny, "pixpro", ["method.momentum=0.99"])
    with torch.no_grad():
        for p in [*m.encoder.parameters(), *m.head.parameters()]:
            p.add_(0.1)
    online = [*m.encoder.parameters(), *m.head.parameters()]
    key = [*m.key_encoder.parameters(), *m.key_head.parameters()]
    before = [p.clone() for p in key]
    out = m(_batch(step=50, total=100))
    assert float(out["momentum"]) == pytest.approx(0.995)
    for kb, k, o in zip(before, key, online):
        assert torch.allclose(k, 0.995 * kb + 0.005 * o, atol=1e-6)
    const = _method(tiny, "pixpro", ["method.momentum_schedule=constant"])
    assert const.momentum_at(50, 100) == 0.99 and m.momentum_at(100, 100) == pytest.approx(1.0)


def test_pixpro_evaluates_the_backbone(tiny):
    m = _method(tiny).eval()
    x = torch.rand(3, 3, 32, 32)
    assert m.encoder(x).shape == (3, m.encoder.out_dim)
    assert m.ppm is not None and _method(tiny, "pixcontrast").ppm is None


def test_a_batch_of_the_digits_preset_has_positive_pairs():
    """The presets' views (48 px crops of 50-100% of the scene, a 6 x 6 map): most pixels have a positive."""
    cfg = load_config("pixpro")
    views = BatchedViews(cfg.views, cfg.views.size)
    images = (torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    g = torch.Generator().manual_seed(2)
    (_, b1, f1), (_, b2, f2) = views(images, g, return_boxes=True), views(images, g, return_boxes=True)
    mask = positive_pixel_mask(b1, f1, b2, f2, (cfg.views.size // 8,) * 2, cfg.method["threshold"])
    assert mask.any(dim=(1, 2)).all()  # every image
    assert mask.any(dim=2).float().mean() > 0.8


def test_the_views_cells_lie_where_the_positive_pairs_assume(tiny):
    """Issue 16: the drawn views and the pixel pairs agree on where each map cell comes from. On scenes whose
    red and green channels hold each pixel's own x and y (no colour changes), every 8 x 8 block of a 48 px
    view (a cell of the 6 x 6 map) averages to the centre that the positive pairs assume, flipped or not."""
    from contrastlab.losses.dense import _pixel_centres

    cfg = load_config("pixpro", [*tiny, "views.channel_perm_p=0", "views.invert_p=0", "views.jitter_p=0",
                                 "views.grayscale_p=0", "views.flip_p=0.5", "views.crop_scale=[0.2,1.0]"])  # fmt: skip
    side, n = 32, 64
    ramp = (torch.arange(side, dtype=torch.float32) + 0.5) / side
    images = torch.zeros(n, 3, side, side)
    images[:, 0], images[:, 1] = ramp[None, None, :], ramp[None, :, None]
    x, boxes, flips = BatchedViews(cfg.views, 48)(images, torch.Generator().manual_seed(0), return_boxes=True)
    assert flips.any() and not flips.all()
    cx, cy, _ = _pixel_centres(boxes, flips, 6, 6)
    cells = F.avg_pool2d(x, 8)  # (n, 3, 6, 6): each cell's mean x and y
    assert (cells[:, 0].flatten(1) - cx).abs().max() < 0.01
    assert (cells[:, 1].flatten(1) - cy).abs().max() < 0.01

@pytest.mark.parametrize("override,match", [
    ("views.backend=torchvision", "views.backend=torchvision: pixpro needs each view's crop box"),
    ("views.rotation=10", "views.rotation=10.0: pixpro matches pixels through the crop boxes"),
    ("method.neg_threshold=0.5", "method.neg_threshold=0.5 is below method.threshold=0.7"),
    ("method.transform_layers=3", "method.transform_layers=3"),
    ("method.gamma=0", "method.gamma=0"),
    ("method.threshold=0", "method.threshold=0"),
    ("method.momentum=1.0", "method.momentum=1.0"),
    ("method.momentum_schedule=linear", "method.momentum_schedule"),
    ("method.queue_size=10", "method.'queue_size'"),
])  # fmt: skip
def test_bad_options_fail_with_one_line(override, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config("pixpro", [override])
    assert "\n" not in str(e.value)


def test_the_per_image_path_is_refused_with_one_line(tiny):
    with pytest.raises(ConfigError, match="views.backend=batched") as e:
        _method(tiny)({"views": [torch.rand(2, 3, 32, 32)] * 2})
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("recipe", ["pixpro", "pixcontrast"])
def test_recipe_trains_end_to_end_and_its_features_evaluate(recipe, tiny, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", recipe, *tiny, "trainer.max_steps=4", "trainer.log_every=2", "trainer.threads=1",
            f"trainer.out_dir={out}"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in rows if r["loss"]]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert {"loss_pixel", "momentum", "pos_pixels"} <= set(rows[0])
    assert float(rows[0]["pos_pixels"]) > 0.5
    capsys.readouterr()
    assert main(["eval", "knn", str(out), "k=5"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    r = json.loads(lines[-1])
    assert 0 <= r["top1"] <= 1 and r["n_train"] == 256 and r["n_test"] == 128


def test_the_diagnostic_script_against_loops(tiny, tmp_path, capsys):
    """scripts/pixpro_diagnose.py (issue 16) on a tiny run: its within-scene and between-scene cosines of the
    projector's pixels and the between-scene cosine of the pooled features against float64 loops."""
    import importlib.util
    from pathlib import Path

    from contrastlab.data import build_datasets
    from contrastlab.eval.run import load_run

    out = tmp_path / "run"
    assert main(["train", "pixpro", *tiny, "views.size=32", "trainer.max_steps=2", "trainer.threads=1",
                 f"trainer.out_dir={out}"]) == 0, capsys.readouterr().err[-2000:]  # fmt: skip
    path = Path(__file__).resolve().parents[1] / "scripts" / "pixpro_diagnose.py"
    spec = importlib.util.spec_from_file_location("pixpro_diagnose", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    n = 6
    r = mod.features(str(out), n=n)
    cfg, method, _ = load_run(str(out), [])
    method.eval()
    x = build_datasets(cfg.data)[1].images[:n].float().div(255)
    with torch.no_grad():
        z = method.head(method.encoder.forward_features(x)).double().flatten(2)  # (n, d, pixels)
        pooled = method.encoder(x).double()
    px = [[z[b, :, i].tolist() for i in range(z.shape[2])] for b in range(n)]
    within = [_cos(u, v) for b in range(n) for u in px[b] for v in px[b]]
    unit = [[[c / math.sqrt(sum(q * q for q in u)) for c in u] for u in px[b]] for b in range(n)]
    means = [[sum(u[c] for u in unit[b]) / len(unit[b]) for c in range(z.shape[1])] for b in range(n)]
    between = [_cos(means[a], means[b]) for a in range(n) for b in range(n) if a != b]
    pooled_between = [_cos(pooled[a].tolist(), pooled[b].tolist()) for a in range(n) for b in range(n) if a != b]
    assert r["proj_cos_within_scene"] == pytest.approx(sum(within) / len(within), abs=1e-5)
    assert r["proj_cos_between_scenes"] == pytest.approx(sum(between) / len(between), abs=1e-5)
    assert r["pooled_cos_between_scenes"] == pytest.approx(sum(pooled_between) / len(pooled_between), abs=1e-5)
    assert r["map"] == [4, 4] and 0 <= r["pooled_nearest_class_mean_acc"] <= 1
