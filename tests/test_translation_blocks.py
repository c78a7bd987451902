"""Translation building blocks (PatchNCE, GAN losses, generator, discriminator, patch heads,
image pool) against plain loops and hand formulas."""
import io
import math

import pytest
import torch
import torch.nn.functional as F

from contrastlab.losses.gan import gan_loss
from contrastlab.losses.patch_nce import patch_nce
from contrastlab.nn.discriminators import ImagePool, PatchDiscriminator
from contrastlab.nn.generators import ResnetGenerator
from contrastlab.nn.init import init_weights
from contrastlab.nn.patch_heads import PatchSampleHeads


def patch_nce_loop(q, k, t):
    """CUT's PatchNCE written out: per image b and query i, positive k[b, i], negatives k[b, j != i]."""
    qs, ks = q.double().tolist(), k.double().tolist()
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    cos = lambda a, b: dot(a, b) / math.sqrt(dot(a, a) * dot(b, b))  # noqa: E731
    total, n = 0.0, 0
    for b in range(len(qs)):
        p = len(qs[b])
        for i in range(p):
            s = [cos(qs[b][i], ks[b][j]) / t for j in range(p)]
            m = max(s)
            total += -(s[i] - m - math.log(sum(math.exp(x - m) for x in s)))
            n += 1
    return total / n


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("p", [1, 5, 16])
@pytest.mark.parametrize("d", [4, 32])
@pytest.mark.parametrize("t", [0.07, 0.5])
def test_patch_nce_matches_loop(b, p, d, t):
    g = torch.Generator().manual_seed(1000 * b + 10 * p + d)
    q = torch.randn(b, p, d, generator=g) * 3 + 0.5  # unnormalised inputs
    k = torch.randn(b, p, d, generator=g) * 0.2
    assert patch_nce(q, k, temperature=t).item() == pytest.approx(patch_nce_loop(q, k, t), abs=1e-4, rel=1e-5)


def test_patch_nce_default_temperature_and_negatives_are_per_image():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 6, 8, generator=g), torch.randn(2, 6, 8, generator=g)
    assert patch_nce(q, k).item() == pytest.approx(patch_nce_loop(q, k, 0.07), abs=1e-4, rel=1e-5)
    # the loss of a batch is the mean of the per-image losses: image 1's keys are no negatives for image 0
    per_image = 0.5 * (patch_nce(q[:1], k[:1]) + patch_nce(q[1:], k[1:]))
    assert patch_nce(q, k).item() == pytest.approx(per_image.item(), abs=1e-5)


def test_patch_nce_gradient_reaches_queries_only():
    q = torch.randn(2, 7, 5, requires_grad=True)
    k = torch.randn(2, 7, 5, requires_grad=True)
    patch_nce(q, k, 0.1).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None or k.grad.abs().sum() == 0


def test_patch_nce_single_patch_is_zero_and_alignment_is_low():
    assert patch_nce(torch.randn(3, 1, 4), torch.randn(3, 1, 4)).item() == pytest.approx(0.0, abs=1e-7)
    z = torch.eye(8).expand(2, 8, 8)
    assert patch_nce(z, z.clone()).item() < 1e-3 < patch_nce(z, z.roll(1, dims=1)).item()


def test_patch_nce_shape_errors():
    with pytest.raises(ValueError, match=r"\(2, 3, 4\) and \(2, 4, 4\)"):
        patch_nce(torch.randn(2, 3, 4), torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match="same shape"):
        patch_nce(torch.randn(3, 4), torch.randn(3, 4))


def test_gan_loss_modes_against_hand_formulas():
    pred = torch.tensor([[[[-2.0, -0.5], [0.3, 1.7]]]])  # a (1, 1, 2, 2) PatchGAN map
    v = pred.flatten().tolist()
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = {
        ("lsgan", True, True): mean([(x - 1) ** 2 for x in v]),
        ("lsgan", False, True): mean([x**2 for x in v]),
        ("lsgan", True, False): mean([(x - 1) ** 2 for x in v]),
        ("hinge", True, True): mean([max(0.0, 1 - x) for x in v]),
        ("hinge", False, True): mean([max(0.0, 1 + x) for x in v]),
        # the official GANLoss('hinge') for G: -mean(min(D(G) - 1, 0)) (JunlinHan/DCLGAN models/networks.py)
        ("hinge", True, False): mean([max(0.0, 1 - x) for x in v]),
        ("nonsaturating", True, True): mean([sp(-x) for x in v]),
        ("nonsaturating", False, True): mean([sp(x) for x in v]),
        ("nonsaturating", True, False): mean([sp(-x) for x in v]),
        ("vanilla", True, True): mean([sp(-x) for x in v]),  # BCE with logits, target 1
        ("vanilla", False, True): mean([sp(x) for x in v]),  # target 0
        ("vanilla", True, False): mean([sp(-x) for x in v]),
    }
    for (mode, real, for_d), value in expected.items():
        assert gan_loss(pred, real, mode, for_d).item() == pytest.approx(value, abs=1e-6), (mode, real, for_d)


def test_gan_loss_errors():
    with pytest.raises(ValueError, match="lsgan, hinge, nonsaturating, vanilla"):
        gan_loss(torch.zeros(1, 1, 2, 2), True, "wgan", True)
    with pytest.raises(ValueError, match="target_real=True"):
        gan_loss(torch.zeros(1, 1, 2, 2), False, "hinge", False)


def tiny_generator(**kw):
    torch.manual_seed(0)
    return ResnetGenerator(ngf=8, n_blocks=2, **kw)


def test_generator_shapes_and_range():
    gen = tiny_generator()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = gen(x)
    assert y.shape == x.shape
    assert y.abs().max() <= 1.0
    other = ResnetGenerator(in_ch=1, out_ch=3, ngf=4, n_blocks=1, n_down=3)
    assert other(torch.randn(1, 1, 24, 16)).shape == (1, 3, 24, 16)
    with pytest.raises(ValueError, match="divisible by 4"):
        gen(torch.randn(1, 3, 30, 32))


def test_generator_layout_matches_documented_indices():
    gen = tiny_generator()
    m = gen.model
    assert len(m) == 4 + 3 * 2 + 2 + 3 * 2 + 3
    assert isinstance(m[0], torch.nn.ReflectionPad2d)
    assert isinstance(m[4], torch.nn.Conv2d) and m[4].stride == (2, 2)
    assert isinstance(m[7], torch.nn.Conv2d) and isinstance(m[8], torch.nn.InstanceNorm2d)
    assert type(m[10]).__name__ == type(m[11]).__name__ == "ResnetBlock" and isinstance(m[12], torch.nn.ConvTranspose2d)
    assert isinstance(m[15], torch.nn.ConvTranspose2d) and isinstance(m[-1], torch.nn.Tanh)


def test_generator_encode_equals_step_by_step_run():
    gen = tiny_generator()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    steps, h = [], x
    for layer in gen.model:
        h = layer(h)
        steps.append(h)
    layers = [0, 4, 8, 10, 11, 3]
    feats = gen.encode(x, layers)
    assert len(feats) == len(layers)
    for i, f in zip(layers, feats):
        torch.testing.assert_close(f, steps[i], rtol=0, atol=0)
    assert gen.feature_channels(layers) == [steps[i].shape[1] for i in layers] == [3, 16, 32, 32, 32, 8]
    assert gen.feature_channels(range(len(gen.model))) == [s.shape[1] for s in steps]
    assert feats[0].shape == (2, 3, 38, 38)  # layer 0: the reflection-padded input
    with pytest.raises(ValueError, match=r"0\.\.20"):
        gen.encode(x, [0, 21])


def test_generator_encode_stops_after_the_last_needed_layer():
    gen = tiny_generator()
    ran = []
    hooks = [layer.register_forward_hook(lambda mod, inp, out, i=i: ran.append(i)) for i, layer in enumerate(gen.model)]
    gen.encode(torch.randn(1, 3, 32, 32), [8, 4])
    for hk in hooks:
        hk.remove()
    assert ran == list(range(9))


def test_init_weights_normal():
    torch.manual_seed(0)
    net = init_weights(torch.nn.Sequential(torch.nn.Conv2d(16, 64, 3), torch.nn.Linear(64, 512)), gain=0.02)
    for m in net:
        assert m.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert m.bias.abs().sum() == 0


@pytest.mark.parametrize("px,out", [(32, 2), (64, 6)])
def test_discriminator_output_map(px, out):
    torch.manual_seed(0)
    d = PatchDiscriminator(ndf=8, n_layers=3)
    assert d(torch.randn(2, 3, px, px)).shape == (2, 1, out, out)
    assert PatchDiscriminator(ndf=4, n_layers=1)(torch.randn(1, 3, px, px)).shape == (1, 1, px // 2 - 2, px // 2 - 2)


def test_discriminator_channels_capped_and_small_input_error():
    d = PatchDiscriminator(ndf=2, n_layers=5)
    convs = [m for m in d.model if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [2, 4, 8, 16, 16, 16, 1]
    with pytest.raises(ValueError, match="at least 24 px"):
        PatchDiscriminator(ndf=4)(torch.randn(1, 3, 16, 16))


def test_patch_heads_sampling_normalised_and_reusable():
    torch.manual_seed(0)
    heads = PatchSampleHeads([3, 16], dim=12)
    assert all(isinstance(m[0], torch.nn.Linear) for m in heads.mlps)  # created eagerly
    feats = [torch.randn(2, 3, 8, 8), torch.randn(2, 16, 4, 4)]
    g = torch.Generator().manual_seed(5)
    out, ids = heads(feats, num_patches=10, generator=g)
    assert [o.shape for o in out] == [(2, 10, 12), (2, 10, 12)]
    assert [i.shape for i in ids] == [(10,), (10,)]
    for o in out:
        torch.testing.assert_close(o.norm(dim=2), torch.ones(2, 10))
    assert len(set(ids[0].tolist())) == 10  # distinct positions
    # the same ids give identical rows; rows are the MLP of the feature at that position
    out2, ids2 = heads(feats, patch_ids=ids)
    for a, b in zip(out, out2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(ids, ids2))
    b_, pos = 1, int(ids[1][3])
    row = heads.mlps[1](feats[1][b_, :, pos // 4, pos % 4])
    torch.testing.assert_close(out[1][b_, 3], F.normalize(row, dim=0))


def test_patch_heads_deterministic_and_all_positions():
    heads = PatchSampleHeads([4], dim=6)
    feats = [torch.randn(3, 4, 5, 5)]
    a = heads(feats, num_patches=7, generator=torch.Generator().manual_seed(1))[1][0]
    b = heads(feats, num_patches=7, generator=torch.Generator().manual_seed(1))[1][0]
    c = heads(feats, num_patches=7, generator=torch.Generator().manual_seed(2))[1][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    for n in (0, 25, 100):
        out, ids = heads(feats, num_patches=n)
        assert out[0].shape == (3, 25, 6) and torch.equal(ids[0], torch.arange(25))
    plain, _ = PatchSampleHeads([4], use_mlp=False)(feats, num_patches=0)
    torch.testing.assert_close(plain[0], F.normalize(feats[0].flatten(2).transpose(1, 2), dim=2))
    with pytest.raises(ValueError, match="1 layers, got 2"):
        heads(feats * 2)
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        heads([torch.randn(3, 5, 5, 5)])


def test_image_pool_passthrough_and_fill_phase():
    x = torch.randn(3, 3, 4, 4, requires_grad=True)
    y = ImagePool(0).query(x)
    assert torch.equal(y, x) and not y.requires_grad
    pool = ImagePool(5)
    first = torch.randn(5, 3, 4, 4)
    assert torch.equal(pool.query(first[:2]), first[:2])
    assert torch.equal(pool.query(first[2:]), first[2:])
    assert int(pool.count) == 5 and torch.equal(pool.images, first)


def pool_reference(stored, batch, u, idx):
    """CycleGAN's rule on a full pool with given draws: swap when u > 0.5."""
    stored, out, it = [s.clone() for s in stored], [], iter(idx)
    for img, ui in zip(batch, u):
        if ui > 0.5:
            j = next(it)
            out.append(stored[j])
            stored[j] = img
        else:
            out.append(img)
    return torch.stack(out), torch.stack(stored)


def test_image_pool_full_phase_follows_the_rule():
    pool = ImagePool(4)
    first = torch.randn(4, 2, 3, 3)
    pool.query(first)
    batch = torch.randn(20, 2, 3, 3)
    g = torch.Generator().manual_seed(3)
    out = pool.query(batch, generator=g)
    # replay the same draws: one uniform per image, then an index when it swaps
    g2, u, idx = torch.Generator().manual_seed(3), [], []
    for _ in range(20):
        u.append(torch.rand((), generator=g2).item())
        if u[-1] > 0.5:
            idx.append(int(torch.randint(4, (), generator=g2)))
    ref_out, ref_stored = pool_reference(first, batch, u, idx)
    assert 0 < len(idx) < 20
    assert torch.equal(out, ref_out) and torch.equal(pool.images, ref_stored)


def test_image_pool_state_dict_round_trip_continues_exactly():
    torch.manual_seed(0)
    pool = ImagePool(3)
    g = torch.Generator().manual_seed(7)
    for _ in range(4):
        pool.query(torch.randn(2, 3, 4, 4), generator=g)
    buf = io.BytesIO()
    torch.save(pool.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert set(state) == {"images", "count"} and int(state["count"]) == 3 and state["images"].shape == (3, 3, 4, 4)
    resumed = ImagePool(3)
    resumed.load_state_dict(state)
    g_resumed = torch.Generator()
    g_resumed.set_state(g.get_state())
    for _ in range(5):
        x = torch.randn(2, 3, 4, 4)
        assert torch.equal(pool.query(x, generator=g), resumed.query(x, generator=g_resumed))
    assert torch.equal(pool.images, resumed.images)
    # inside a parent module's state dict too (strict load)
    parent, parent2 = torch.nn.Module(), torch.nn.Module()
    parent.pool, parent2.pool = pool, ImagePool(3)
    parent2.load_state_dict(parent.state_dict())
    assert torch.equal(parent2.pool.images, pool.images) and int(parent2.pool.count) == 3
    with pytest.raises(RuntimeError, match="count"):
        ImagePool(2).load_state_dict(state)


def test_image_pool_empty_state_and_shape_error():
    fresh = ImagePool(2)
    fresh.load_state_dict(ImagePool(2).state_dict())
    assert int(fresh.count) == 0
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(fresh.query(x), x)
    with pytest.raises(ValueError, match="shape"):
        fresh.query(torch.randn(1, 3, 8, 8))
