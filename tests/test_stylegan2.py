"""StyleGAN2 in plain PyTorch: the modulated convolution and the FIR resampling against loops over
their formulas (float64), the public checkpoint format (written here key by key as
rosinality/stylegan2-pytorch names it) loaded and written back, the one-line errors for a wrong
resolution / channel multiplier / key, the background branch, R1 against a hand computation, and
the stylegan2 recipe trained end to end through the CLI."""
import csv
import math

import pytest
import torch

from contrastlab.cli import main
from contrastlab.errors import UserError
from contrastlab.losses import r1_penalty
from contrastlab.nn.stylegan2 import (ModulatedConv2d, StyleGAN2Discriminator, StyleGAN2Generator, blur_kernel,
                                      load_stylegan2, modulated_conv2d, save_stylegan2, upfirdn2d)  # fmt: skip


# ----------------------------------------------------------------------------- modulated convolution


def _modconv_loop(x, weight, styles, demodulate, padding, upsample):
    """The paper's per-sample weights w'' = demod(s_i w_oikl), then a direct (or transposed) convolution, in loops."""
    b, cin, h, w = x.shape
    cout, _, k, _ = weight.shape
    outs = []
    for n in range(b):
        wn = [[[[styles[n, i].item() * weight[o, i, a, c].item() for c in range(k)] for a in range(k)] for i in range(cin)]
              for o in range(cout)]  # fmt: skip
        if demodulate:
            for o in range(cout):
                norm = math.sqrt(sum(wn[o][i][a][c] ** 2 for i in range(cin) for a in range(k) for c in range(k)) + 1e-8)
                wn[o] = [[[v / norm for v in row] for row in plane] for plane in wn[o]]
        if upsample:
            oh, ow = (h - 1) * 2 + k, (w - 1) * 2 + k
            out = [[[0.0] * ow for _ in range(oh)] for _ in range(cout)]
            for o in range(cout):
                for i in range(cin):
                    for y in range(h):
                        for xx in range(w):
                            v = x[n, i, y, xx].item()
                            for a in range(k):
                                for c in range(k):
                                    out[o][2 * y + a][2 * xx + c] += v * wn[o][i][a][c]
        else:
            oh, ow = h + 2 * padding - k + 1, w + 2 * padding - k + 1
            out = [[[0.0] * ow for _ in range(oh)] for _ in range(cout)]
            for o in range(cout):
                for y in range(oh):
                    for xx in range(ow):
                        s = 0.0
                        for i in range(cin):
                            for a in range(k):
                                for c in range(k):
                                    yy, xc = y + a - padding, xx + c - padding
                                    if 0 <= yy < h and 0 <= xc < w:
                                        s += x[n, i, yy, xc].item() * wn[o][i][a][c]
                        out[o][y][xx] = s
        outs.append(out)
    return torch.tensor(outs, dtype=torch.float64)


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("k,upsample", [(3, False), (1, False), (3, True)])
def test_the_modulated_convolution_matches_a_loop_over_modulated_and_demodulated_weights(demodulate, k, upsample):
    g = torch.Generator().manual_seed(k + 2 * upsample + 4 * demodulate)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    weight = torch.randn(4, 3, k, k, generator=g, dtype=torch.float64)
    styles = torch.randn(2, 3, generator=g, dtype=torch.float64) + 1
    got = modulated_conv2d(x, weight, styles, demodulate, padding=k // 2, upsample=upsample)
    ref = _modconv_loop(x, weight, styles, demodulate, k // 2, upsample)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_the_module_modulates_with_its_affine_style_and_equalised_scale():
    torch.manual_seed(0)
    conv = ModulatedConv2d(3, 2, 3, style_dim=5).double()
    w = torch.randn(2, 5, dtype=torch.float64)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    s = w @ (conv.affine.weight * conv.affine.scale).t() + conv.affine.bias  # affine: lr_mul 1, bias init 1
    assert torch.allclose(conv.affine.bias, torch.ones(3, dtype=torch.float64))
    ref = _modconv_loop(x, conv.weight[0] / math.sqrt(3 * 9), s, True, 1, False)
    torch.testing.assert_close(conv(x, w), ref, rtol=1e-10, atol=1e-10)


def _upfirdn_loop(x, kernel, up, down, p0, p1):
    b, c, h, w = x.shape
    kh, kw = kernel.shape
    uh, uw = h * up, w * up
    ph, pw = uh + p0 + p1, uw + p0 + p1

    def padded(n, ch, y, xx):  # the upsampled, padded image at (y, xx)
        yu, xu = y - p0, xx - p0
        if not (0 <= yu < uh and 0 <= xu < uw) or yu % up or xu % up:
            return 0.0
        return x[n, ch, yu // up, xu // up].item()

    oh, ow = ph - kh + 1, pw - kw + 1
    out = torch.zeros(b, c, oh, ow, dtype=torch.float64)
    for n in range(b):
        for ch in range(c):
            for y in range(oh):
                for xx in range(ow):  # a true convolution: the kernel flipped
                    out[n, ch, y, xx] = sum(padded(n, ch, y + a, xx + e) * kernel[kh - 1 - a, kw - 1 - e].item()
                                            for a in range(kh) for e in range(kw))  # fmt: skip
    return out[:, :, ::down, ::down]


@pytest.mark.parametrize("up,down,pad", [(2, 1, (2, 1)), (1, 2, (1, 1)), (1, 1, (1, 1)), (2, 1, (-1, 0))])
def test_upfirdn2d_matches_a_loop_with_an_asymmetric_kernel(up, down, pad):
    g = torch.Generator().manual_seed(up * 7 + down)
    x = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64)
    kernel = torch.rand(3, 4, generator=g, dtype=torch.float64)  # asymmetric: the flip matters
    torch.testing.assert_close(upfirdn2d(x, kernel, up, down, pad), _upfirdn_loop(x, kernel, up, down, *pad))


def test_the_blurred_upsampling_keeps_a_constant_image_constant_and_doubles_the_side():
    g = StyleGAN2Generator(8, 4, 1, 1, max_channels=4, channel_base=32)
    up = g.to_rgb[1].upsample
    y = up(torch.ones(1, 3, 4, 4))
    assert y.shape == (1, 3, 8, 8)
    torch.testing.assert_close(y[:, :, 2:-2, 2:-2], torch.ones(1, 3, 4, 4))


# ----------------------------------------------------------------------------- the public checkpoint format

def _public_generator_keys(size, style_dim, n_mlp, ch):
    """{key: shape} of a g_ema state dict as rosinality/stylegan2-pytorch model.py names it (written out here)."""
    keys = {}
    for i in range(1, n_mlp + 1):
        keys[f"style.{i}.weight"], keys[f"style.{i}.bias"] = (style_dim, style_dim), (style_dim,)
    keys["input.input"] = (1, ch(4), 4, 4)

    def styled(p, cin, cout, up):
        keys[f"{p}.conv.weight"] = (1, cout, cin, 3, 3)
        if up:
            keys[f"{p}.conv.blur.kernel"] = (4, 4)
        keys[f"{p}.conv.modulation.weight"], keys[f"{p}.conv.modulation.bias"] = (cin, style_dim), (cin,)
        keys[f"{p}.noise.weight"], keys[f"{p}.activate.bias"] = (1,), (cout,)

    def rgb(p, cin, up):
        keys[f"{p}.bias"] = (1, 3, 1, 1)
        if up:
            keys[f"{p}.upsample.kernel"] = (4, 4)
        keys[f"{p}.conv.weight"] = (1, 3, cin, 1, 1)
        keys[f"{p}.conv.modulation.weight"], keys[f"{p}.conv.modulation.bias"] = (cin, style_dim), (cin,)

    styled("conv1", ch(4), ch(4), False)
    rgb("to_rgb1", ch(4), False)
    log = int(math.log2(size))
    c, j = ch(4), 0
    for r in range(3, log + 1):
        styled(f"convs.{j}", c, ch(2**r), True)
        styled(f"convs.{j + 1}", ch(2**r), ch(2**r), False)
        rgb(f"to_rgbs.{r - 3}", ch(2**r), True)
        c, j = ch(2**r), j + 2
    for i in range((log - 2) * 2 + 1):
        res = 2 ** ((i + 5) // 2)
        keys[f"noises.noise_{i}"] = (1, 1, res, res)
    return keys


def _public_discriminator_keys(size, ch):
    keys = {"convs.0.0.weight": (ch(size), 3, 1, 1), "convs.0.1.bias": (ch(size),)}
    c, j = ch(size), 1
    for r in range(int(math.log2(size)), 2, -1):
        o = ch(2 ** (r - 1))
        keys.update({f"convs.{j}.conv1.0.weight": (c, c, 3, 3), f"convs.{j}.conv1.1.bias": (c,),
                     f"convs.{j}.conv2.0.kernel": (4, 4), f"convs.{j}.conv2.1.weight": (o, c, 3, 3),
                     f"convs.{j}.conv2.2.bias": (o,), f"convs.{j}.skip.0.kernel": (4, 4),
                     f"convs.{j}.skip.1.weight": (o, c, 1, 1)})  # fmt: skip
        c, j = o, j + 1
    keys.update({"final_conv.0.weight": (ch(4), c + 1, 3, 3), "final_conv.1.bias": (ch(4),),
                 "final_linear.0.weight": (ch(4), ch(4) * 16), "final_linear.0.bias": (ch(4),),
                 "final_linear.1.weight": (1, ch(4)), "final_linear.1.bias": (1,)})  # fmt: skip
    return keys


def _random_state(keys, seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in keys.items():
        if k.endswith("kernel"):
            gain = 4.0 if (k.endswith("upsample.kernel") or k.endswith("conv.blur.kernel")) else 1.0
            out[k] = blur_kernel() * gain  # the public code stores make_kernel([1, 3, 3, 1]) (times 4 when upsampling)
        else:
            out[k] = torch.randn(*shape, generator=g)
    return out


def _write_public(path, size, style_dim=8, n_mlp=2, cm=1, max_ch=16, base=256, with_d=True):
    def ch(r):
        return min(max_ch, base * cm // r)

    ckpt = {"g_ema": _random_state(_public_generator_keys(size, style_dim, n_mlp, ch), 1),
            "latent_avg": torch.randn(style_dim)}  # fmt: skip
    if with_d:
        ckpt["d"] = _random_state(_public_discriminator_keys(size, ch), 2)
    torch.save(ckpt, path)
    return ckpt


def test_the_loader_maps_every_public_key_and_round_trips_the_file(tmp_path):
    src = _write_public(tmp_path / "public.pt", 16)
    g = StyleGAN2Generator(16, 8, 2, 1, max_channels=16, channel_base=256)
    d = StyleGAN2Discriminator(16, 1, max_channels=16, channel_base=256)
    latent_avg = load_stylegan2(tmp_path / "public.pt", g, d)
    ge = src["g_ema"]
    # a few mappings spelled out
    assert torch.equal(g.const, ge["input.input"])
    assert torch.equal(g.mapping[1].weight, ge["style.2.weight"])
    assert torch.equal(g.layers[0].conv.affine.bias, ge["conv1.conv.modulation.bias"])
    assert torch.equal(g.layers[3].noise_strength, ge["convs.2.noise.weight"])
    assert torch.equal(g.layers[4].bias, ge["convs.3.activate.bias"])
    assert torch.equal(g.to_rgb[2].conv.weight, ge["to_rgbs.1.conv.weight"])
    assert torch.equal(d.blocks[1].skip.weight, src["d"]["convs.2.skip.1.weight"])
    assert torch.equal(d.fc1.weight, src["d"]["final_linear.0.weight"])
    torch.testing.assert_close(latent_avg, src["latent_avg"][None])
    # written back in the public format: the same keys and tensors
    save_stylegan2(tmp_path / "back.pt", g, d=d, latent_avg=latent_avg)
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    for part in ("g_ema", "d"):
        assert set(back[part]) == set(src[part])
        for k in src[part]:
            torch.testing.assert_close(back[part][k], src[part][k], msg=f"{part} {k}")
    # and the loaded generator runs
    assert g(torch.randn(4, 8)).shape == (4, 3, 16, 16) and d(torch.randn(4, 3, 16, 16)).shape == (4, 1)


def _one_line_error(fn, *needles):
    with pytest.raises(UserError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_a_wrong_resolution_is_one_line_naming_the_key_and_both_shapes(tmp_path):
    _write_public(tmp_path / "p32.pt", 32)
    g = StyleGAN2Generator(16, 8, 2, 1, max_channels=16, channel_base=256)
    _one_line_error(lambda: load_stylegan2(tmp_path / "p32.pt", g), "noises.noise_6", "(1, 1, 32, 32)", "(1, 1, 16, 16)",
                    "noises.noise_4", "size to 32")  # fmt: skip
    d = StyleGAN2Discriminator(16, 1, max_channels=16, channel_base=256)
    g32 = StyleGAN2Generator(32, 8, 2, 1, max_channels=16, channel_base=256)
    _one_line_error(lambda: load_stylegan2(tmp_path / "p32.pt", g32, d), "d key", "convs.3.skip.1.weight", "convs.2.skip.1.weight")


def test_a_wrong_channel_multiplier_is_one_line_naming_the_key_and_both_shapes(tmp_path):
    # as the public config F, the low resolutions are capped (here at 16 channels) and the multiplier
    # shows from the first resolution under the cap: 16 px has 16 channels with x2, 8 with x1
    _write_public(tmp_path / "cm2.pt", 16, cm=2, max_ch=16, base=128)
    g = StyleGAN2Generator(16, 8, 2, 1, max_channels=16, channel_base=128)
    _one_line_error(lambda: load_stylegan2(tmp_path / "cm2.pt", g), "channel multiplier", "'convs.2.conv.weight'",
                    "(1, 16, 16, 3, 3)", "(1, 8, 16, 3, 3)")  # fmt: skip
    d = StyleGAN2Discriminator(16, 1, max_channels=16, channel_base=128)
    _one_line_error(lambda: load_stylegan2(tmp_path / "cm2.pt", StyleGAN2Generator(16, 8, 2, 2, 16, 128), d),
                    "d key 'convs.0.0.weight'", "(16, 3, 1, 1)", "(8, 3, 1, 1)")  # fmt: skip


def test_missing_unexpected_and_non_public_files_are_one_line(tmp_path):
    ckpt = _write_public(tmp_path / "p.pt", 16)
    g = StyleGAN2Generator(16, 8, 2, 1, max_channels=16, channel_base=256)
    ckpt["g_ema"].pop("convs.1.noise.weight")
    ckpt["g_ema"]["extra.weight"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "bad.pt")
    _one_line_error(lambda: load_stylegan2(tmp_path / "bad.pt", g), "1 missing", "convs.1.noise.weight", "1 unexpected", "extra.weight")
    g3 = StyleGAN2Generator(16, 8, 3, 1, max_channels=16, channel_base=256)  # one more mapping layer than the file
    _one_line_error(lambda: load_stylegan2(tmp_path / "p.pt", g3), "style.3.weight")
    _one_line_error(lambda: load_stylegan2(tmp_path / "none.pt", g), "does not exist")
    torch.save({"state": {}}, tmp_path / "other.pt")
    _one_line_error(lambda: load_stylegan2(tmp_path / "other.pt", g), "g_ema")
    torch.save({"g_ema": {}, "args": object.__new__(_Namespace)}, tmp_path / "pickled.pt")
    _one_line_error(lambda: load_stylegan2(tmp_path / "pickled.pt", g), "tensors-only")
    del ckpt["d"]
    ckpt["g_ema"] = _random_state(_public_generator_keys(16, 8, 2, lambda r: min(16, 256 // r)), 1)
    torch.save(ckpt, tmp_path / "no_d.pt")
    _one_line_error(lambda: load_stylegan2(tmp_path / "no_d.pt", g, StyleGAN2Discriminator(16, 1, 16, 256)), "no 'd'")


class _Namespace:  # stands for the argparse.Namespace a training checkpoint holds (not loadable with weights_only)
    pass


# ----------------------------------------------------------------------------- generator behaviour

def test_the_background_branch_ignores_the_first_layer_and_features_have_the_stated_channels():
    torch.manual_seed(0)
    g = StyleGAN2Generator(16, 8, 2, 1, max_channels=16, channel_base=128)
    for p in g.parameters():
        if p.dim() == 1 and p.numel() == 1:
            p.data.fill_(0.3)  # noise strengths: non-zero, so the background has something to draw
    z = torch.randn(4, 8)
    bg = g(z, background=True, noise="fixed")
    with torch.no_grad():
        g.const.mul_(-3)
        g.layers[0].conv.weight.mul_(5)
    torch.testing.assert_close(g(z, background=True, noise="fixed"), bg)  # nothing of the first layer reaches it
    assert not torch.allclose(g(z, noise="fixed"), bg)
    img, feats = g(z, return_features=True, noise="fixed")
    assert [f.shape[1] for f in feats] == g.feature_channels() and [f.shape[-1] for f in feats] == [8, 8, 16, 16]
    with pytest.raises(ValueError, match="truncation_latent"):
        g(z, truncation=0.5)
    w_avg = g.mean_latent(256, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(g(w_avg.expand(4, -1), truncation=0.0, truncation_latent=w_avg, input_is_latent=True,
                                 noise="fixed"), g(torch.randn(4, 8), truncation=0.0, truncation_latent=w_avg, noise="fixed"))  # fmt: skip


def test_r1_matches_a_hand_computation():
    x = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    a = torch.randn(2, 2, 2, dtype=torch.float64)
    pred = (x * a).sum(dim=(1, 2, 3)) + (x**2).sum(dim=(1, 2, 3))  # d pred_n / d x_n = a + 2 x_n
    want = sum(((a + 2 * x[n].detach()) ** 2).sum().item() for n in range(3)) / 3
    r1 = r1_penalty(pred, x)
    assert abs(r1.item() - want) < 1e-9
    r1.backward()  # differentiable (create_graph): d r1 / d x = mean_n 2 (a + 2x) * 2
    torch.testing.assert_close(x.grad, 4 * (a + 2 * x.detach()) / 3)


# ----------------------------------------------------------------------------- the recipe end to end

TINY_GAN = ["data.n_train=64", "data.n_test=32", "data.image_size=16", "method.size=16", "method.style_dim=16",
            "method.n_mlp=2", "method.max_channels=16", "method.channel_base=128", "method.truncation_samples=64",
            "method.grid_images=8", "optim.batch_size=8", "trainer.progress=false", "trainer.accelerator=cpu",
            "trainer.threads=1", "trainer.log_every=1", "trainer.knn_every=0"]  # fmt: skip


def train_tiny_stylegan2(out, steps=3):
    assert main(["train", "stylegan2", *TINY_GAN, f"trainer.max_steps={steps}", f"trainer.out_dir={out}",
                 "method.d_reg_every=2"]) == 0  # fmt: skip
    return out / "stylegan2.pt"


def test_the_stylegan2_recipe_trains_end_to_end_and_writes_a_loadable_public_checkpoint(tmp_path, capsys):
    from contrastlab.checkpoint import load_checkpoint

    path = train_tiny_stylegan2(tmp_path / "run", steps=3)
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in rows if r.get("loss")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert any(r.get("r1") for r in rows)  # lazy R1 ran (steps 0 and 2)
    g = StyleGAN2Generator(16, 16, 2, 1, max_channels=16, channel_base=128)
    latent_avg = load_stylegan2(path, g, StyleGAN2Discriminator(16, 1, 16, 128))
    assert latent_avg.shape == (1, 16)
    trained = load_checkpoint(str(tmp_path / "run"))["model"]
    torch.testing.assert_close(g.const, trained["G_ema.const"])  # the public file holds G_ema
    # the weights changed: toRGB biases start at zero (ToRGB.__init__) and were trained
    assert trained["G.to_rgb.2.bias"].abs().sum() > 0 and trained["D.fc2.bias"].abs().sum() > 0
    assert (tmp_path / "run" / "samples" / "latest.png").is_file()
