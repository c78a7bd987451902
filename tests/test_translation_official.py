"""The official CUT / DCLGAN / SimDCL behaviour (issue 14, point 3): GAN loss formulas, the
anti-aliased networks and their layer numbering, the blur filters, SimDCL's loss weighting and
similarity networks, the heads' own optimiser, and the full-scale recipes that set them.

Official code read: JunlinHan/DCLGAN (models/dcl_model.py, models/simdcl_model.py,
models/networks.py, options/*.py) and taesungp/contrastive-unpaired-translation
(models/cut_model.py, models/networks.py, options/*.py)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from contrastlab.config import ConfigError, load_config
from contrastlab.engine.optim import build_scheduler
from contrastlab.losses.gan import gan_loss
from contrastlab.methods import build_method
from contrastlab.nn.blur import BlurDownsample, BlurUpsample, binomial_filter
from contrastlab.nn.discriminators import PatchDiscriminator
from contrastlab.nn.generators import ResnetBlock, ResnetGenerator
from contrastlab.nn.init import init_weights
from contrastlab.nn.patch_heads import PatchStackHead


# ----------------------------------------------------------------------------- GAN losses
PRED = torch.tensor([[[[-2.0, -0.5], [0.3, 1.7]]]])  # a (1, 1, 2, 2) PatchGAN map


@pytest.mark.parametrize("mode,target_real,for_d,value", [
    # hinge (networks.py GANLoss 'hinge': -mean(min(x - 1, 0)) for "real", -mean(min(-x - 1, 0)) for "fake";
    # the generator calls it with "real")
    ("hinge", True, True, (3.0 + 1.5 + 0.7 + 0.0) / 4),  # relu(1 - x): 3, 1.5, 0.7, 0 -> 1.3
    ("hinge", False, True, (0.0 + 0.5 + 1.3 + 2.7) / 4),  # relu(1 + x): 0, 0.5, 1.3, 2.7 -> 1.125
    ("hinge", True, False, 1.3),  # G: relu(1 - D(G)), not -mean(D(G)) = 0.125
    # lsgan (MSELoss to 1 / 0)
    ("lsgan", True, True, (9.0 + 2.25 + 0.49 + 0.49) / 4),  # (x - 1)^2 -> 3.0575
    ("lsgan", False, True, (4.0 + 0.25 + 0.09 + 2.89) / 4),  # x^2 -> 1.8075
    ("lsgan", True, False, 3.0575),
    # non-saturating / vanilla (BCE with logits): log(1 + e^-x) = 2.126928, 0.974077, 0.554355, 0.167786
    ("nonsaturating", True, True, (2.126928 + 0.974077 + 0.554355 + 0.167786) / 4),  # 0.955787
    ("nonsaturating", False, True, 0.955787 - 0.125),  # log(1 + e^x) = log(1 + e^-x) + x; mean(x) = -0.125
    ("nonsaturating", True, False, 0.955787),
    ("vanilla", True, True, 0.955787),
    ("vanilla", False, True, 0.830787),
    ("vanilla", True, False, 0.955787),
])  # fmt: skip
def test_gan_losses_against_hand_computed_values(mode, target_real, for_d, value):
    assert gan_loss(PRED, target_real, mode, for_d).item() == pytest.approx(value, abs=2e-6)


def test_hinge_generator_loss_stops_at_margin_and_has_the_official_gradient():
    pred = torch.tensor([-1.0, 0.5, 1.0, 3.0], requires_grad=True)
    loss = gan_loss(pred, True, "hinge", False)
    loss.backward()
    assert loss.item() == pytest.approx((2.0 + 0.5 + 0.0 + 0.0) / 4)
    # d/dx mean(relu(1 - x)) = -1/4 where x < 1, 0 where x > 1
    assert pred.grad.tolist() == [-0.25, -0.25, 0.0, 0.0]


# ----------------------------------------------------------------------------- blur filters
def test_binomial_filters_by_hand():
    k3 = binomial_filter(3)
    torch.testing.assert_close(k3, torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16)
    k4 = binomial_filter(4)
    assert k4.shape == (4, 4) and k4[0, 0].item() == pytest.approx(1 / 64) and k4[1, 1].item() == pytest.approx(9 / 64)
    assert k4[0, 1].item() == pytest.approx(3 / 64) and k4.sum().item() == pytest.approx(1.0)


def test_blur_downsample_hand_computed():
    """Per axis (separable): reflect-pad [x0..x3] to [x1, x0, x1, x2, x3, x2], filter [1, 2, 1] / 4
    at stride 2: y0 = (x0 + x1) / 2, y1 = x1 / 4 + x2 / 2 + x3 / 4. For X = arange(16) as 4x4
    (rows 4i + [0, 1, 2, 3]): along rows [4i + 0.5, 4i + 2]; then along columns a + 2 and
    a + 1 + 4 + 3 = a + 8 -> [[2.5, 4], [8.5, 10]]."""
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = BlurDownsample(1)(x)
    torch.testing.assert_close(y, torch.tensor([[[[2.5, 4.0], [8.5, 10.0]]]]))
    # a 5 px side becomes 3 (ceil), channels are filtered separately, a constant stays constant
    z = torch.stack([torch.full((5, 5), 3.0), torch.full((5, 5), -1.0)])[None]
    torch.testing.assert_close(BlurDownsample(2)(z), torch.stack([torch.full((3, 3), 3.0), torch.full((3, 3), -1.0)])[None])


def test_blur_upsample_hand_computed():
    """Per axis a row [a, b] becomes [a, (3a + b) / 4, (a + 3b) / 4, b] (replicate padding, the
    [1, 3, 3, 1] filter times the stride): [[0, 4], [8, 12]] -> rows [0, 1, 3, 4] and
    [8, 9, 11, 12], then per column [0, 2, 6, 8] + the row's offset."""
    x = torch.tensor([[[[0.0, 4.0], [8.0, 12.0]]]])
    want = torch.tensor([[0.0, 1, 3, 4], [2, 3, 5, 6], [6, 7, 9, 10], [8, 9, 11, 12]])
    torch.testing.assert_close(BlurUpsample(1)(x), want[None, None])
    z = torch.full((2, 3, 5, 3), 0.7)
    torch.testing.assert_close(BlurUpsample(3)(z), torch.full((2, 3, 10, 6), 0.7))


def test_blur_filters_are_no_parameters_and_not_in_checkpoints():
    d, u = BlurDownsample(4), BlurUpsample(4)
    assert not list(d.parameters()) and not list(u.parameters())
    assert d.state_dict() == {} and u.state_dict() == {}


# ----------------------------------------------------------------------------- anti-aliased networks
def test_antialiased_generator_layers_4_8_12_16_at_256_px():
    """The official resnet_9blocks with --no_antialias and --no_antialias_up off (networks.py
    ResnetGenerator): model = [ReflectionPad2d(3), conv7x7 (ngf), IN, ReLU] (0..3); per
    downsampling i = 0, 1: [conv3x3 stride 1 (ngf 2^(i+1)), IN, ReLU, Downsample] (4..7, 8..11);
    9 ResnetBlocks (12..20); per upsampling [Upsample, conv3x3, IN, ReLU] (21..28); [pad, conv7x7,
    Tanh] (29..31). So at 256 px with ngf 64: layer 4 is the first stride-1 conv at full size
    (128, 256, 256); layer 8 the second, after one blur-pool (256, 128, 128); layers 12 and 16
    residual blocks 0 and 4 after two (256, 64, 64)."""
    torch.manual_seed(0)
    g = ResnetGenerator(3, 3, 64, 9, 2, antialias=True, antialias_up=True)
    m = g.model
    assert len(m) == 32 and ResnetGenerator.layout(2, 9, True, True) == (32, 20)
    assert isinstance(m[4], torch.nn.Conv2d) and m[4].stride == (1, 1) and isinstance(m[7], BlurDownsample)
    assert isinstance(m[8], torch.nn.Conv2d) and m[8].stride == (1, 1) and isinstance(m[11], BlurDownsample)
    assert isinstance(m[12], ResnetBlock) and isinstance(m[16], ResnetBlock) and isinstance(m[20], ResnetBlock)
    assert isinstance(m[21], BlurUpsample) and isinstance(m[25], BlurUpsample) and isinstance(m[31], torch.nn.Tanh)
    with torch.no_grad():
        feats = g.encode(torch.rand(1, 3, 256, 256) * 2 - 1, [4, 8, 12, 16])
    assert [tuple(f.shape) for f in feats] == [(1, 128, 256, 256), (1, 256, 128, 128), (1, 256, 64, 64), (1, 256, 64, 64)]
    assert g.feature_channels([4, 8, 12, 16]) == [128, 256, 256, 256]
    assert ResnetGenerator.spatial_sizes(256, 2, 9, True, True)[4:17:4] == [256, 128, 64, 64]


@pytest.mark.parametrize("antialias,antialias_up", [(False, False), (True, True), (True, False), (False, True)])
@pytest.mark.parametrize("n_down,n_blocks", [(2, 3), (1, 2), (3, 1)])
def test_generator_layout_and_sizes_match_the_modules(antialias, antialias_up, n_down, n_blocks):
    """layout() and spatial_sizes() (used by the config checks) against a built generator's modules
    and the side of every feature map it encodes from a 24 px input."""
    g = ResnetGenerator(3, 3, 4, n_blocks, n_down, antialias=antialias, antialias_up=antialias_up)
    n_modules, encoder_end = ResnetGenerator.layout(n_down, n_blocks, antialias, antialias_up)
    assert n_modules == len(g.model) and (n_blocks == 0 or isinstance(g.model[encoder_end], ResnetBlock))
    assert not isinstance(g.model[encoder_end + 1], ResnetBlock)
    with torch.no_grad():
        feats = g.encode(torch.randn(1, 3, 24, 24), range(n_modules))
    assert ResnetGenerator.spatial_sizes(24, n_down, n_blocks, antialias, antialias_up) == [f.shape[-1] for f in feats]
    assert g.feature_channels(range(n_modules)) == [f.shape[1] for f in feats]


def test_antialiased_generator_and_discriminator_run_and_keep_sizes():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    g = ResnetGenerator(3, 3, 8, 2, 2, antialias=True, antialias_up=True)
    y = g(x)
    assert y.shape == x.shape and y.abs().max() <= 1
    mixed = ResnetGenerator(3, 3, 8, 2, 2, antialias=True, antialias_up=False)
    assert len(mixed.model) == 4 + 8 + 2 + 6 + 3 and mixed(x).shape == x.shape
    for n_layers in (1, 2, 3):
        plain, aa = PatchDiscriminator(3, 8, n_layers), PatchDiscriminator(3, 8, n_layers, antialias=True)
        assert aa(x).shape == plain(x).shape  # the same score map
        blurs = [mod for mod in aa.model if isinstance(mod, BlurDownsample)]
        strides = [mod.stride for mod in aa.model if isinstance(mod, torch.nn.Conv2d)]
        assert len(blurs) == n_layers and set(strides) == {(1, 1)}


def test_xavier_init_gain():
    """xavier_normal_(gain 0.02): std = 0.02 sqrt(2 / (fan_in + fan_out)); Conv2d(16, 64, 3):
    fan_in 144, fan_out 576 -> 0.02 sqrt(2 / 720) = 0.001054; Linear(64, 512): 0.02 sqrt(2 / 576)."""
    torch.manual_seed(0)
    net = init_weights(torch.nn.Sequential(torch.nn.Conv2d(16, 64, 3), torch.nn.Linear(64, 512)), 0.02, "xavier")
    assert net[0].weight.std().item() == pytest.approx(0.02 * math.sqrt(2 / 720), rel=0.05)
    assert net[1].weight.std().item() == pytest.approx(0.02 * math.sqrt(2 / 576), rel=0.05)
    assert net[0].bias.abs().sum() == 0 and net[1].bias.abs().sum() == 0
    g = ResnetGenerator(3, 3, 8, 1, 2, init_type="xavier", init_gain=0.02)
    conv = g.model[1]  # 3 -> 8, 7x7: fan_in 147, fan_out 392
    assert conv.weight.std().item() == pytest.approx(0.02 * math.sqrt(2 / (147 + 392)), rel=0.1)
    with pytest.raises(ValueError, match="normal, xavier, kaiming, orthogonal"):
        init_weights(torch.nn.Linear(2, 2), 0.02, "uniform")


# ----------------------------------------------------------------------------- SimDCL
def stack_head_by_hand(head: PatchStackHead, embeddings):
    """MappingF written out for one image: conv3x3 / stride 2 / no padding by loops over
    positions, channels and taps; ReLU; mean over positions; the two linear layers by sums;
    x / (|x| + 1e-7)."""
    w, b = head.conv.weight.double().tolist(), head.conv.bias.double().tolist()
    l1, l2 = head.mlp[0], head.mlp[2]
    out = []
    for img in range(embeddings[0].shape[0]):
        x = [e[img].double().tolist() for e in embeddings]  # L x P x d
        p, d = len(x[0]), len(x[0][0])
        rows, cols = range(0, p - 2, 2), range(0, d - 2, 2)
        pooled = []
        for o in range(head.dim):
            acc = 0.0
            for r in rows:
                for c in cols:
                    s = b[o] + sum(w[o][ch][i][j] * x[ch][r + i][c + j] for ch in range(len(x)) for i in range(3) for j in range(3))
                    acc += max(0.0, s)
            pooled.append(acc / (len(rows) * len(cols)))
        h = [max(0.0, l1.bias[k].item() + sum(l1.weight[k, i].item() * pooled[i] for i in range(head.dim))) for k in range(head.dim)]
        z = [l2.bias[k].item() + sum(l2.weight[k, i].item() * h[i] for i in range(head.dim)) for k in range(head.dim)]
        n = math.sqrt(sum(v * v for v in z))
        out.append([v / (n + 1e-7) for v in z])
    return torch.tensor(out, dtype=torch.float64)


def test_patch_stack_head_against_a_plain_computation():
    torch.manual_seed(0)
    head = PatchStackHead(n_layers=3, dim=5, init_type="normal", init_gain=0.5)
    emb = [torch.randn(2, 7, 6) for _ in range(3)]  # 2 images, 3 layers, 7 patches of 6 dims
    got = head(emb)
    assert got.shape == (2, 5)
    torch.testing.assert_close(got.double(), stack_head_by_hand(head, emb), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one shape"):
        head([torch.randn(2, 7, 6), torch.randn(2, 5, 6), torch.randn(2, 7, 6)])


# the official SimDCL recipe, shrunk: 4 NCE layers 4, 8, 12, 16 need 5 residual blocks
TINY_OFFICIAL = ["data.name=digit_domains", "data.image_size=16", "data.load_size=null", "data.n_train=16",
                 "data.n_test=8", "method.ngf=4", "method.n_blocks=5", "method.ndf=4", "method.n_layers_d=1",
                 "method.num_patches=8", "method.head_dim=8", "method.monitor_images=8",
                 "trainer.accelerator=cpu", "trainer.max_steps=1", "optim.batch_size=2"]  # fmt: skip
TINY_SIM = TINY_OFFICIAL + ["method.sim_dim=6"]


class Recorder:
    """batch["optim"] that records each step's loss and changes nothing."""

    def __init__(self):
        self.losses = {}

    def step(self, name, loss):
        self.losses[name] = loss.detach()


def patch_nce_by_hand(q, k, t):
    """-log softmax of the diagonal of cos(q_i, k_j) / t, per image, averaged."""
    qn, kn = F.normalize(q.double(), dim=2), F.normalize(k.double(), dim=2)
    total, count = 0.0, 0
    for b in range(q.shape[0]):
        for i in range(q.shape[1]):
            s = [(qn[b, i] @ kn[b, j]).item() / t for j in range(q.shape[1])]
            total += -(s[i] - math.log(sum(math.exp(v) for v in s)))
            count += 1
    return total / count


def test_simdcl_official_loss_weighting_and_similarity_against_a_plain_computation():
    """The recipe's SimDCL (simdcl_model.py compute_G_loss): L_G = 0.5 (GAN_A + GAN_B)
    + 0.5 (NCE1 + NCE2) + 0.5 (IDT_A + IDT_B) + 10 [L1(F3(real_A), F6(fake_A)) + L1(F4(fake_B), F5(real_B))],
    every term recomputed here from the networks (hinge for G, NCE by loops, L1 means)."""
    cfg = load_config("simdcl/horse2zebra", TINY_SIM)
    assert cfg.method["lambda_nce"] == 1.0 and cfg.method["lambda_sim"] == 10.0 and cfg.method["sim_net"] == "patches"
    torch.manual_seed(0)
    m = build_method(cfg)
    g = torch.Generator().manual_seed(4)
    a, b = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    rec = Recorder()
    out = m({"a": a, "b": b, "optim": rec, "generator": torch.Generator().manual_seed(11)})
    real_a, real_b = a * 2 - 1, b * 2 - 1
    L, n, t = [4, 8, 12, 16], 8, 0.07
    with torch.no_grad():
        fake_b, fake_a = m.G_A(real_a), m.G_B(real_b)
        gan = [F.relu(1 - m.D_A(fake_b)).mean().item(), F.relu(1 - m.D_B(fake_a)).mean().item()]
        idt = [(m.G_B(real_a) - real_a).abs().mean().item(), (m.G_A(real_b) - real_b).abs().mean().item()]
        draws = torch.Generator().manual_seed(11)  # the same draws in the same order: keys A, fresh B, keys B, fresh A
        keys_a, ids_a = m.F1(m.G_A.encode(real_a, L), n, generator=draws)
        q1, _ = m.F2(m.G_B.encode(fake_b, L), n, patch_ids=ids_a)
        fresh_b, _ = m.F2(m.G_B.encode(fake_b, L), n, generator=draws)
        keys_b, ids_b = m.F2(m.G_B.encode(real_b, L), n, generator=draws)
        q2, _ = m.F1(m.G_A.encode(fake_a, L), n, patch_ids=ids_b)
        fresh_a, _ = m.F1(m.G_A.encode(fake_a, L), n, generator=draws)
        nce1 = sum(patch_nce_by_hand(q, k, t) for q, k in zip(q1, keys_a)) / 4
        nce2 = sum(patch_nce_by_hand(q, k, t) for q, k in zip(q2, keys_b)) / 4
        l1 = lambda u, v: (u - v).abs().mean().item()  # noqa: E731
        sim = l1(m.H_real_A(keys_a), m.H_fake_A(fresh_a)) + l1(m.H_fake_B(fresh_b), m.H_real_B(keys_b))
    want = 0.5 * sum(gan) + 0.5 * (nce1 + nce2) + 0.5 * sum(idt) + 10 * sim
    assert rec.losses["G"].item() == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert out["loss_sim"].item() == pytest.approx(sim, rel=1e-4, abs=1e-6) and sim > 0
    assert out["loss_nce"].item() == pytest.approx(0.5 * (nce1 + nce2), rel=1e-4)
    # the DCLGAN weighting on the same terms: 0.5 * 2 (NCE1 + NCE2); SimDCL's is half of that
    assert m.generator_loss(0.0, 0.0, torch.tensor(nce1), torch.tensor(nce2), 0.0, 0.0).item() == pytest.approx(
        0.5 * (nce1 + nce2), rel=1e-6)  # fmt: skip
    dcl = build_method(load_config("dclgan/horse2zebra", TINY_OFFICIAL))
    assert dcl.generator_loss(0.0, 0.0, torch.tensor(nce1), torch.tensor(nce2), 0.0, 0.0).item() == pytest.approx(
        nce1 + nce2, rel=1e-6)  # fmt: skip


def test_simdcl_similarity_reaches_the_keys_encoder():
    """The official keys of real_A / real_B keep their gradient for the similarity loss (PatchNCE
    alone detaches them): with only lambda_sim, G_A's encoder gets a gradient through real_A."""
    cfg = load_config("simdcl/horse2zebra", TINY_SIM + ["method.lambda_gan=0", "method.lambda_idt=0",
                                                              "method.lambda_nce=0"])  # fmt: skip
    torch.manual_seed(0)
    m = build_method(cfg)
    real_a = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_(True)
    real_b = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_(True)
    with torch.no_grad():
        fake_a, fake_b = m.G_B(real_b), m.G_A(real_a)  # no path back to the real images through the translations
    _, _, sim = m.nce_and_patch_sim(real_a, real_b, fake_a, fake_b, torch.Generator().manual_seed(0))
    sim.backward()
    # real_A and real_B are reached only through the key embeddings F1(G_A.enc(real_A)), F2(G_B.enc(real_B))
    assert real_a.grad is not None and real_a.grad.abs().sum() > 0
    assert real_b.grad is not None and real_b.grad.abs().sum() > 0
    assert m.G_A.model[4].weight.grad is not None and m.G_A.model[4].weight.grad.abs().sum() > 0
    assert all(h.conv.weight.grad is not None for h in (m.H_real_A, m.H_fake_A, m.H_real_B, m.H_fake_B))


def test_simdcl_patches_config_checks():
    with pytest.raises(ConfigError, match=r"needs num_patches=64 positions at every NCE layer.*layers \[12, 16\]"):
        load_config("simdcl/horse2zebra", TINY_SIM + ["method.num_patches=64"])
    with pytest.raises(ConfigError, match="num_patches >= 3"):
        load_config("simdcl/horse2zebra", TINY_SIM + ["method.num_patches=2"])
    with pytest.raises(ConfigError, match=r"modules 0..31 .*antialias=true.*encoder ends at 20"):
        load_config("dclgan/horse2zebra", ["method.nce_layers=[4, 32]"])


# ----------------------------------------------------------------------------- heads' optimiser
def _first_step_sizes(m, opt, nets):
    """Adam's first step moves each parameter by about lr (m_hat / sqrt(v_hat) = sign(grad))."""
    before = {name: [p.detach().clone() for p in getattr(m, name).parameters()] for name in nets}
    opt.step()
    return {name: max((p.detach() - b).abs().max().item() for p, b in zip(getattr(m, name).parameters(), before[name]))
            for name in nets}  # fmt: skip


def test_dclgan_heads_have_their_own_official_lr_and_betas():
    """dcl_model.py: optimizer_F = Adam(chain(F1, F2)) with torch's defaults, lr 0.001, betas
    (0.9, 0.999); G (and D) at 2e-4, (0.5, 0.999); every optimiser on the same linear schedule."""
    cfg = load_config("dclgan/horse2zebra", TINY_OFFICIAL)
    torch.manual_seed(0)
    m = build_method(cfg)
    opts = m.configure_optimizers(cfg.optim)
    g_groups = opts["G"].param_groups
    assert len(g_groups) == 2
    assert g_groups[0]["lr"] == 0.0002 and tuple(g_groups[0]["betas"]) == (0.5, 0.999)
    assert g_groups[1]["lr"] == 0.001 and tuple(g_groups[1]["betas"]) == (0.9, 0.999)
    ids = lambda *nets: {id(p) for n in nets for p in n.parameters()}  # noqa: E731
    assert {id(p) for p in g_groups[0]["params"]} == ids(m.G_A, m.G_B)
    assert {id(p) for p in g_groups[1]["params"]} == ids(m.F1, m.F2)
    d_groups = opts["D"].param_groups
    assert len(d_groups) == 1 and d_groups[0]["lr"] == 0.0002 and tuple(d_groups[0]["betas"]) == (0.5, 0.999)
    # a real step: heads move by ~1e-3, generators by ~2e-4
    real_a, real_b = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    nce1, nce2 = m.nce_losses(real_a, real_b, m.G_B(real_b), m.G_A(real_a), torch.Generator().manual_seed(0))
    opts["G"].zero_grad()
    (nce1 + nce2).backward()
    moved = _first_step_sizes(m, opts["G"], ["F1", "F2", "G_A", "G_B"])
    assert moved["F1"] == pytest.approx(0.001, rel=0.02) and moved["F2"] == pytest.approx(0.001, rel=0.02)
    assert moved["G_A"] == pytest.approx(0.0002, rel=0.02) and moved["G_B"] == pytest.approx(0.0002, rel=0.02)
    # the schedule scales both groups alike (linear: constant for half the steps, then to 0)
    sched = build_scheduler(opts["G"], cfg.optim, total_steps=10)
    for _ in range(8):
        opts["G"].step()  # no gradients: a no-op (the schedule steps after the optimiser)
        sched.step()
    assert g_groups[0]["lr"] == pytest.approx(0.0002 * 0.4) and g_groups[1]["lr"] == pytest.approx(0.001 * 0.4)


@pytest.mark.parametrize("recipe", ["cut/horse2zebra", "simdcl/horse2zebra", "dclgan"])
def test_heads_share_the_generators_adam_where_the_official_code_uses_the_same_values(recipe):
    """CUT (cut_model.py) and SimDCL (simdcl_model.py) give the heads their own Adam at G's lr
    and betas: the same updates as one Adam (it is per parameter); the digits preset keeps them in G's."""
    tiny = TINY_SIM if recipe.startswith("simdcl") else TINY_OFFICIAL
    cfg = load_config(recipe, tiny if "horse" in recipe else ["method.ngf=4", "method.n_blocks=1",
                                                                         "method.ndf=4", "method.nce_layers=[0,4]"])  # fmt: skip
    m = build_method(cfg)
    groups = m.configure_optimizers(cfg.optim)["G"].param_groups
    assert len(groups) == 1 and groups[0]["lr"] == cfg.optim.lr and tuple(groups[0]["betas"]) == (0.5, 0.999)
    heads = [m.F] if recipe.startswith("cut") else [m.F1, m.F2, *m.sim_nets()]
    assert {id(p) for h in heads for p in h.parameters()} <= {id(p) for p in groups[0]["params"]}


# ----------------------------------------------------------------------------- recipes
def test_full_scale_recipes_set_the_official_values():
    common = {"antialias": True, "antialias_up": True, "init_type": "xavier", "init_gain": 0.02, "pool_size": 0,
              "num_patches": 256, "head_dim": 256, "nce_t": 0.07, "ngf": 64, "n_blocks": 9, "ndf": 64, "n_layers_d": 3}
    want = {
        "dclgan/horse2zebra": {**common, "gan_mode": "hinge", "nce_layers": (4, 8, 12, 16), "lambda_nce": 2.0,
                               "lambda_idt": 1.0, "lambda_gan": 1.0, "head_lr": 0.001, "head_betas": (0.9, 0.999)},
        "simdcl/horse2zebra": {**common, "gan_mode": "hinge", "nce_layers": (4, 8, 12, 16), "lambda_nce": 1.0,
                               "lambda_idt": 1.0, "lambda_sim": 10.0, "sim_net": "patches", "sim_dim": 64, "head_lr": None},
        "cut/horse2zebra": {**common, "gan_mode": "lsgan", "nce_layers": (0, 4, 8, 12, 16), "lambda_nce": 1.0,
                            "nce_idt": True, "head_lr": None},
    }  # fmt: skip
    for recipe, values in want.items():
        cfg = load_config(recipe)
        got = {k: cfg.method[k] for k in values}
        assert got == values, recipe
        assert cfg.optim.lr == 0.0002 and cfg.optim.betas == (0.5, 0.999) and cfg.optim.batch_size == 1
        assert cfg.data.image_size == 256 and cfg.data.load_size == 286 and cfg.trainer.max_epochs == 400
