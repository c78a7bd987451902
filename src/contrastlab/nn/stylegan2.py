"""StyleGAN2 (Karras et al., "Analyzing and improving the image quality of StyleGAN", CVPR 2020) in
plain PyTorch: no compiled extensions, so it runs on the CPU.

Generator: a mapping network (pixel norm, ``n_mlp`` equalised linear layers at lr multiplier 0.01,
leaky ReLU), a learned 4 x 4 constant, then per resolution 8 .. size two modulated 3 x 3
convolutions (the first upsamples: transposed convolution at stride 2 then a [1, 3, 3, 1] blur),
each followed by noise injection and a biased leaky ReLU scaled by sqrt(2); a toRGB (a modulated
1 x 1 convolution without demodulation) per resolution whose outputs are summed through blurred
upsampling (the skip architecture of config F). Channels per resolution r:
``min(max_channels, channel_base * channel_multiplier // r)`` (the public config F: 512 and 16384,
so 512 up to 32 px, then 256 * multiplier at 64 px, ...).

Modulated convolution (paper eq. 1 and 3): for style s (one value per input channel),
    w'_{oikl} = s_i w_{oikl},   w''_{oikl} = w'_{oikl} / sqrt(sum_{ikl} w'_{oikl}^2 + 1e-8)
(the second step, demodulation, only with ``demodulate``); weights are used at run time scale
1 / sqrt(fan_in) (equalised learning rate).

Discriminator: the residual architecture of config F (from-RGB 1 x 1, residual blocks with blurred
stride-2 downsampling, minibatch standard deviation over groups of 4, a 3 x 3 convolution and two
linear layers).

``background=True`` is the background branch of Labels4Free (Abdal et al., ICCV 2021): the first
layer's output (the 4 x 4 styled convolution) is zeroed, so the image comes from the noise inputs
and the biases of the later layers only (model_new.py of RameenAbdal/Labels4Free, Generator.forward,
lines 516-524; that code zeroes the constant input instead for 512 px generators: ``background="input"``).

:func:`load_stylegan2` reads the widely used checkpoint format of rosinality/stylegan2-pytorch
(a dict with ``g_ema``, optionally ``g``, ``d``, ``latent_avg``): every key of its state dicts is
mapped explicitly onto these modules (:func:`generator_key_map`, :func:`discriminator_key_map`); a
missing or unexpected key or a wrong shape is a one-line error. :func:`save_stylegan2` writes the
same format.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError

BLUR = (1.0, 3.0, 3.0, 1.0)


def blur_kernel(k=BLUR) -> torch.Tensor:
    """The 2-D blur filter: outer product of ``k`` with itself, divided by its sum."""
    k = torch.tensor(k, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad=(0, 0)) -> torch.Tensor:
    """Upsample by inserting ``up - 1`` zeros after every pixel, pad ``pad = (before, after)`` on
    both axes (negative: crop), convolve (a true convolution, the kernel flipped) with ``kernel``
    on every channel, keep every ``down``-th pixel. (B, C, H, W) -> (B, C, H', W')."""
    b, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(b, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    p0, p1 = pad
    x = F.pad(x, (max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)))
    if p0 < 0 or p1 < 0:
        x = x[:, :, max(-p0, 0) : x.shape[2] - max(-p1, 0), max(-p0, 0) : x.shape[3] - max(-p1, 0)]
    kh, kw = kernel.shape
    weight = torch.flip(kernel, [0, 1]).to(x.dtype).expand(c, 1, kh, kw)
    x = F.conv2d(x, weight, groups=c)
    return x[:, :, ::down, ::down] if down > 1 else x


class Blur(nn.Module):
    """``upfirdn2d`` with a fixed blur kernel (times ``gain``); the kernel is a non-persistent buffer."""

    def __init__(self, pad, gain: float = 1.0, up: int = 1):
        super().__init__()
        self.pad, self.up = tuple(pad), up
        self.register_buffer("kernel", blur_kernel() * gain, persistent=False)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=self.up, pad=self.pad)


def scaled_lrelu(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """leaky_relu(x + bias, 0.2) * sqrt(2) (the bias per channel, dimension 1)."""
    if bias is not None:
        x = x + bias.to(x.dtype).view(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, 0.2) * math.sqrt(2.0)


class ScaledLinear(nn.Module):
    """Equalised linear layer: weight ~ N(0, 1) / lr_mul used as weight * lr_mul / sqrt(in),
    bias * lr_mul; with ``activate`` the bias goes into ``scaled_lrelu``."""

    def __init__(self, in_dim, out_dim, bias_init=0.0, lr_mul=1.0, activate=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale, self.lr_mul, self.activate = lr_mul / math.sqrt(in_dim), lr_mul, activate

    def forward(self, x):
        w, b = self.weight * self.scale, self.bias * self.lr_mul
        if self.activate:
            return scaled_lrelu(F.linear(x, w), b)
        return F.linear(x, w, b)


class ScaledConv2d(nn.Module):
    """Equalised convolution (weight / sqrt(fan_in)), optionally after a blurred stride-2 downsampling,
    optionally followed by ``scaled_lrelu`` (then ``bias`` is the activation's bias)."""

    def __init__(self, in_ch, out_ch, k, downsample=False, bias=True, activate=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, k, k))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale, self.activate, self.downsample = 1 / math.sqrt(in_ch * k * k), activate, downsample
        if downsample:
            p = (len(BLUR) - 2) + (k - 1)
            self.blur = Blur(((p + 1) // 2, p // 2))
            self.stride, self.padding = 2, 0
        else:
            self.stride, self.padding = 1, k // 2

    def forward(self, x):
        if self.downsample:
            x = self.blur(x)
        out = F.conv2d(x, self.weight * self.scale, stride=self.stride, padding=self.padding)
        if self.activate:
            return scaled_lrelu(out, self.bias)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     padding: int = 0, upsample: bool = False) -> torch.Tensor:  # fmt: skip
    """Modulated (and demodulated) convolution.

    x (B, I, H, W); weight (O, I, k, k) already scaled; styles (B, I). The paper's per-sample weights
        w'_{b,o,i,k,l} = s_{b,i} w_{o,i,k,l},   w''_{b,o,...} = w'_{b,o,...} / sqrt(sum_{i,k,l} w'_{b,o,i,k,l}^2 + 1e-8)
    applied as the equivalent scaling of the input channels by s and of the output channels by
    the demodulation coefficient (one ordinary convolution for the whole batch, fast on the CPU):
        out_b = conv(x_b * s_b, w) * d_b,   d_{b,o} = 1 / sqrt(sum_i s_{b,i}^2 sum_{k,l} w_{o,i,k,l}^2 + 1e-8).
    ``upsample``: a transposed convolution at stride 2 (no padding) instead of the convolution."""
    x = x * styles[:, :, None, None].to(x.dtype)
    if upsample:
        out = F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=2, padding=0)
    else:
        out = F.conv2d(x, weight.to(x.dtype), padding=padding)
    if demodulate:
        dt = torch.promote_types(styles.dtype, torch.float32)  # at least float32 (bf16 autocast)
        d = torch.rsqrt(styles.to(dt).pow(2) @ weight.to(dt).pow(2).sum(dim=(2, 3)).t() + 1e-8)  # (B, O)
        out = out * d[:, :, None, None].to(out.dtype)
    return out


class ModulatedConv2d(nn.Module):
    """A convolution whose weights each sample's style modulates (``affine``: w -> s, bias init 1)."""

    def __init__(self, in_ch, out_ch, k, style_dim, demodulate=True, upsample=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, k, k))  # the public layout (leading 1)
        self.affine = ScaledLinear(style_dim, in_ch, bias_init=1.0)
        self.scale, self.demodulate, self.upsample, self.k = 1 / math.sqrt(in_ch * k * k), demodulate, upsample, k
        if upsample:
            p = (len(BLUR) - 2) - (k - 1)
            self.blur = Blur(((p + 1) // 2 + 1, p // 2 + 1), gain=4.0)

    def forward(self, x, w):
        out = modulated_conv2d(x, self.weight[0] * self.scale, self.affine(w), self.demodulate,
                               padding=0 if self.upsample else self.k // 2, upsample=self.upsample)  # fmt: skip
        return self.blur(out) if self.upsample else out


class StyledLayer(nn.Module):
    """Modulated 3 x 3 convolution, noise (per-pixel N(0, 1) times a learned strength), biased scaled leaky ReLU."""

    def __init__(self, in_ch, out_ch, style_dim, upsample=False):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample)
        self.noise_strength = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x, w, noise=None):
        out = self.conv(x, w)
        if noise is None:
            noise = out.new_empty(out.shape[0], 1, *out.shape[-2:]).normal_()
        return scaled_lrelu(out + self.noise_strength * noise, self.bias)


class ToRGB(nn.Module):
    """Modulated 1 x 1 convolution to RGB (no demodulation) plus a bias, added to the upsampled skip."""

    def __init__(self, in_ch, style_dim, upsample=True):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        if upsample:
            p = len(BLUR) - 2
            self.upsample = Blur(((p + 1) // 2 + 1, p // 2), gain=4.0, up=2)

    def forward(self, x, w, skip=None):
        out = self.conv(x, w) + self.bias
        return out if skip is None else out + self.upsample(skip)


def channels_at(res: int, channel_multiplier: int = 2, max_channels: int = 512, channel_base: int = 16384) -> int:
    """Channels of the layers at resolution ``res`` (the public config F: 512 up to 32 px, 256 * multiplier at 64 ...)."""
    return min(max_channels, channel_base * channel_multiplier // res)


def _check_size(size):
    if size < 8 or size & (size - 1):
        raise ValueError(f"StyleGAN2 size must be a power of two >= 8, got {size}")


class StyleGAN2Generator(nn.Module):
    def __init__(self, size: int = 256, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 max_channels: int = 512, channel_base: int = 16384, lr_mlp: float = 0.01):  # fmt: skip
        super().__init__()
        _check_size(size)
        self.size, self.style_dim, self.n_mlp = size, style_dim, n_mlp
        self.channel_multiplier, self.max_channels, self.channel_base = channel_multiplier, max_channels, channel_base
        self.log_size = int(math.log2(size))
        ch = {2**r: channels_at(2**r, channel_multiplier, max_channels, channel_base) for r in range(2, self.log_size + 1)}
        self.channels = ch
        self.mapping = nn.Sequential(*[ScaledLinear(style_dim, style_dim, lr_mul=lr_mlp, activate=True) for _ in range(n_mlp)])
        self.const = nn.Parameter(torch.randn(1, ch[4], 4, 4))
        layers, to_rgb = [StyledLayer(ch[4], ch[4], style_dim)], [ToRGB(ch[4], style_dim, upsample=False)]
        c = ch[4]
        for r in range(3, self.log_size + 1):
            layers += [StyledLayer(c, ch[2**r], style_dim, upsample=True), StyledLayer(ch[2**r], ch[2**r], style_dim)]
            to_rgb.append(ToRGB(ch[2**r], style_dim))
            c = ch[2**r]
        self.layers, self.to_rgb = nn.ModuleList(layers), nn.ModuleList(to_rgb)
        self.num_layers = len(layers)
        self.n_latent = self.log_size * 2 - 2  # w vectors used: one per layer plus the last toRGB
        self.fixed_noise = nn.Module()  # the public format keeps one fixed noise map per layer
        for i in range(self.num_layers):
            r = (i + 5) // 2
            self.fixed_noise.register_buffer(f"n{i}", torch.randn(1, 1, 2**r, 2**r))

    def feature_channels(self) -> list[int]:
        """Channels of the feature maps ``forward(..., return_features=True)`` returns (layers 1 ..)."""
        return [self.channels[2 ** ((i + 5) // 2)] for i in range(1, self.num_layers)]

    def map(self, z: torch.Tensor) -> torch.Tensor:
        """w = mapping(z / rms(z)) (pixel norm, then the MLP)."""
        z = z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)
        return self.mapping(z)

    @torch.no_grad()
    def mean_latent(self, n: int, generator=None) -> torch.Tensor:
        """The mean w of ``n`` random z (the truncation centre), (1, style_dim)."""
        z = torch.randn(n, self.style_dim, generator=generator, device=self.const.device)
        return self.map(z).mean(0, keepdim=True)

    def forward(self, z: torch.Tensor, truncation: float = 1.0, truncation_latent: torch.Tensor | None = None,
                background: bool | str = False, return_features: bool = False, noise=None, input_is_latent: bool = False,
                mix: tuple | None = None):  # fmt: skip
        """Images (B, 3, size, size) in about [-1, 1] for z (B, style_dim) (or w with ``input_is_latent``).

        ``truncation`` psi < 1: w = w_avg + psi (w - w_avg). ``background``: True / "first_layer" zeroes
        the first layer's output (Labels4Free's background branch), "input" the constant. ``noise``: a
        list of per-layer maps, "fixed" for the stored ones, None to draw them. ``mix = (z2, k)``:
        style mixing, w of z2 from layer k on. With ``return_features``: (images, [feature maps of
        layers 1 .. num_layers-1])."""
        w = z if input_is_latent else self.map(z)
        if truncation < 1:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent (mean_latent or the checkpoint's latent_avg)")
            w = truncation_latent + truncation * (w - truncation_latent)
        ws = [w] * self.n_latent
        if mix is not None:
            z2, k = mix
            w2 = self.map(z2)
            ws = [w] * k + [w2] * (self.n_latent - k)
        if noise == "fixed":
            noise = [getattr(self.fixed_noise, f"n{i}") for i in range(self.num_layers)]
        elif noise is None:
            noise = [None] * self.num_layers
        x = self.const.expand(z.shape[0], -1, -1, -1)
        if background == "input":
            x = x * 0
        x = self.layers[0](x, ws[0], noise[0])
        if background is True or background == "first_layer":
            x = x * 0
        elif background not in (False, "input"):
            raise ValueError(f"background must be False, True, 'first_layer' or 'input', got {background!r}")
        skip = self.to_rgb[0](x, ws[1])
        feats = []
        for j in range(1, self.log_size - 1):
            a, b = 2 * j - 1, 2 * j
            x = self.layers[a](x, ws[a], noise[a])
            feats.append(x)
            x = self.layers[b](x, ws[b], noise[b])
            feats.append(x)
            skip = self.to_rgb[j](x, ws[b + 1], skip)
        return (skip, feats) if return_features else skip


class ResidualBlock(nn.Module):
    """3 x 3 conv, blurred stride-2 3 x 3 conv; skip: blurred stride-2 1 x 1 conv; (out + skip) / sqrt(2)."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv1 = ScaledConv2d(in_ch, in_ch, 3)
        self.conv2 = ScaledConv2d(in_ch, out_ch, 3, downsample=True)
        self.skip = ScaledConv2d(in_ch, out_ch, 1, downsample=True, bias=False, activate=False)

    def forward(self, x):
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2.0)


class StyleGAN2Discriminator(nn.Module):
    def __init__(self, size: int = 256, channel_multiplier: int = 2, max_channels: int = 512, channel_base: int = 16384):
        super().__init__()
        _check_size(size)
        self.size, self.channel_multiplier = size, channel_multiplier
        ch = {2**r: channels_at(2**r, channel_multiplier, max_channels, channel_base) for r in range(2, int(math.log2(size)) + 1)}
        self.from_rgb = ScaledConv2d(3, ch[size], 1)
        blocks, c = [], ch[size]
        for r in range(int(math.log2(size)), 2, -1):
            blocks.append(ResidualBlock(c, ch[2 ** (r - 1)]))
            c = ch[2 ** (r - 1)]
        self.blocks = nn.Sequential(*blocks)
        self.stddev_group = 4
        self.final_conv = ScaledConv2d(c + 1, ch[4], 3)
        self.fc1 = ScaledLinear(ch[4] * 16, ch[4], activate=True)
        self.fc2 = ScaledLinear(ch[4], 1)

    def forward(self, x):
        out = self.blocks(self.from_rgb(x))
        b, c, h, w = out.shape
        group = min(b, self.stddev_group)
        if b % group:
            raise ValueError(f"the discriminator's minibatch-stddev groups need a batch divisible by {group}, got {b}")
        s = out.view(group, -1, 1, c, h, w)
        s = torch.sqrt(s.var(0, unbiased=False) + 1e-8).mean(dim=(2, 3, 4), keepdim=True).squeeze(2)
        out = torch.cat([out, s.repeat(group, 1, h, w)], 1)
        out = self.final_conv(out)
        return self.fc2(self.fc1(out.flatten(1)))


# ---- the public checkpoint format (rosinality/stylegan2-pytorch model.py state dict keys) ----

def generator_key_map(g: StyleGAN2Generator) -> dict:
    """{public key: this module's key} for every entry of a public ``g_ema`` / ``g`` state dict; the
    blur kernels (public buffers, fixed here) map to None."""
    m = {}
    for i in range(g.n_mlp):
        m[f"style.{i + 1}.weight"], m[f"style.{i + 1}.bias"] = f"mapping.{i}.weight", f"mapping.{i}.bias"
    m["input.input"] = "const"

    def styled(pub, mine, up):
        m.update({f"{pub}.conv.weight": f"{mine}.conv.weight", f"{pub}.conv.modulation.weight": f"{mine}.conv.affine.weight",
                  f"{pub}.conv.modulation.bias": f"{mine}.conv.affine.bias", f"{pub}.noise.weight": f"{mine}.noise_strength",
                  f"{pub}.activate.bias": f"{mine}.bias"})  # fmt: skip
        if up:
            m[f"{pub}.conv.blur.kernel"] = None

    def rgb(pub, mine, up):
        m.update({f"{pub}.bias": f"{mine}.bias", f"{pub}.conv.weight": f"{mine}.conv.weight",
                  f"{pub}.conv.modulation.weight": f"{mine}.conv.affine.weight", f"{pub}.conv.modulation.bias": f"{mine}.conv.affine.bias"})  # fmt: skip
        if up:
            m[f"{pub}.upsample.kernel"] = None

    styled("conv1", "layers.0", False)
    rgb("to_rgb1", "to_rgb.0", False)
    for i in range(g.num_layers - 1):
        styled(f"convs.{i}", f"layers.{i + 1}", i % 2 == 0)
    for i in range(len(g.to_rgb) - 1):
        rgb(f"to_rgbs.{i}", f"to_rgb.{i + 1}", True)
    for i in range(g.num_layers):
        m[f"noises.noise_{i}"] = f"fixed_noise.n{i}"
    return m


def discriminator_key_map(d: StyleGAN2Discriminator) -> dict:
    """{public key: this module's key} for a public ``d`` state dict (blur kernels -> None)."""
    m = {"convs.0.0.weight": "from_rgb.weight", "convs.0.1.bias": "from_rgb.bias"}
    for i in range(len(d.blocks)):
        p, q = f"convs.{i + 1}", f"blocks.{i}"
        m.update({f"{p}.conv1.0.weight": f"{q}.conv1.weight", f"{p}.conv1.1.bias": f"{q}.conv1.bias",
                  f"{p}.conv2.0.kernel": None, f"{p}.conv2.1.weight": f"{q}.conv2.weight", f"{p}.conv2.2.bias": f"{q}.conv2.bias",
                  f"{p}.skip.0.kernel": None, f"{p}.skip.1.weight": f"{q}.skip.weight"})  # fmt: skip
    m.update({"final_conv.0.weight": "final_conv.weight", "final_conv.1.bias": "final_conv.bias",
              "final_linear.0.weight": "fc1.weight", "final_linear.0.bias": "fc1.bias",
              "final_linear.1.weight": "fc2.weight", "final_linear.1.bias": "fc2.bias"})  # fmt: skip
    return m


def _shape(t):
    return tuple(t.shape)


def _last_layer_key(keys, what: str) -> str | None:
    """The key of a public state dict's highest-resolution layer (its last noise map for a generator,
    its first residual block's skip for a discriminator), which tells the resolution it was written for."""
    if what in ("g_ema", "g"):
        idx = [int(mm.group(1)) for k in keys if (mm := re.fullmatch(r"noises\.noise_(\d+)", k))]
        return f"noises.noise_{max(idx)}" if idx else None
    idx = [int(mm.group(1)) for k in keys if (mm := re.fullmatch(r"convs\.(\d+)\.skip\.1\.weight", k))]
    return f"convs.{max(idx)}.skip.1.weight" if idx else None


def _resolution(key: str, what: str) -> int:
    n = int(re.findall(r"\d+", key)[0])
    return 2 ** ((n + 5) // 2) if what in ("g_ema", "g") else 2 ** (n + 2)


def load_public_state(module: nn.Module, state: dict, key_map: dict, what: str, source: str) -> None:
    """Copies a public state dict into ``module`` through ``key_map``; one-line UserErrors for a
    wrong resolution, missing / unexpected keys and wrong shapes (naming the key and both shapes)."""
    mine = module.state_dict()
    theirs, ours = _last_layer_key(state.keys(), what), _last_layer_key(key_map.keys(), what)
    if theirs is not None and ours is not None and theirs != ours:
        got, size = _resolution(theirs, what), _resolution(ours, what)
        raise UserError(f"{source}: {what} key {theirs!r} has shape {_shape(state[theirs])}: a {got} px network, where "
                        f"the configured {size} px one ends at {ours!r} with shape {_shape(mine[key_map[ours]])}; "
                        f"set the network size to {got}")  # fmt: skip
    missing = [k for k in key_map if k not in state]
    unexpected = [k for k in state if k not in key_map]
    if missing or unexpected:
        raise UserError(f"{source}: {what} does not match the configured network: {len(missing)} missing key(s) "
                        f"{missing[:3]}, {len(unexpected)} unexpected key(s) {unexpected[:3]}; check n_mlp / size "
                        f"against the checkpoint")  # fmt: skip
    new = {}
    for pub, own in key_map.items():
        t = state[pub]
        if not torch.is_tensor(t):
            raise UserError(f"{source}: {what} key {pub!r} is not a tensor")
        if own is None:  # a blur kernel: fixed here, it must be the [1, 3, 3, 1] one (times its gain)
            ref = blur_kernel()
            if _shape(t) != (4, 4) or not torch.allclose(t.float() / t.float().sum(), ref, atol=1e-6):
                raise UserError(f"{source}: {what} key {pub!r} is not the [1, 3, 3, 1] blur kernel these networks use")
            continue
        want = mine[own]
        if _shape(t) != _shape(want):
            raise UserError(f"{source}: {what} key {pub!r} has shape {_shape(t)} where the configured network has "
                            f"{_shape(want)}; the checkpoint has another channel multiplier / channel count or "
                            f"style_dim: set them to the checkpoint's")  # fmt: skip
        new[own] = t.to(want.dtype)
    module.load_state_dict(new, strict=True)


def public_state(module: nn.Module, key_map: dict) -> dict:
    """``module``'s state dict under the public keys (blur kernels written as the public code stores them)."""
    mine = module.state_dict()
    out = {}
    for pub, own in key_map.items():
        if own is None:
            gain = 4.0 if (pub.endswith("upsample.kernel") or pub.endswith("conv.blur.kernel")) else 1.0
            out[pub] = blur_kernel() * gain
        else:
            out[pub] = mine[own].detach().clone()
    return out


def save_stylegan2(path, g_ema: StyleGAN2Generator, g: StyleGAN2Generator | None = None,
                   d: StyleGAN2Discriminator | None = None, latent_avg: torch.Tensor | None = None) -> None:  # fmt: skip
    """Writes ``{"g_ema", ["g"], ["d"], ["latent_avg"]}`` in the public format (tensors only)."""
    ckpt = {"g_ema": public_state(g_ema, generator_key_map(g_ema))}
    if g is not None:
        ckpt["g"] = public_state(g, generator_key_map(g))
    if d is not None:
        ckpt["d"] = public_state(d, discriminator_key_map(d))
    if latent_avg is not None:
        ckpt["latent_avg"] = latent_avg.detach().reshape(-1).clone()
    torch.save(ckpt, str(path))


def read_stylegan2_file(path) -> dict:
    """The dict of a public checkpoint file (``weights_only``: nothing in it executes)."""
    import os

    if not os.path.isfile(str(path)):
        raise UserError(f"StyleGAN2 checkpoint {path} does not exist; train one (contrastlab train stylegan2) or "
                        f"point the recipe's generator_checkpoint at a public .pt file")  # fmt: skip
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: not a tensors-only StyleGAN2 checkpoint ({type(e).__name__}); a training "
                        f"checkpoint holding 'args' can be re-saved with only its g_ema / d / latent_avg entries") from None  # fmt: skip
    if not isinstance(ckpt, dict) or "g_ema" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"{path}: a StyleGAN2 checkpoint holds a 'g_ema' state dict; this one has {keys}")
    return ckpt


def load_stylegan2(path, generator: StyleGAN2Generator, discriminator: StyleGAN2Discriminator | None = None,
                   which: str = "g_ema") -> torch.Tensor | None:  # fmt: skip
    """Loads a public checkpoint into ``generator`` (its ``which`` state dict) and, when given,
    ``discriminator`` (its ``d``); returns its ``latent_avg`` (1, style_dim) or None."""
    ckpt = read_stylegan2_file(path)
    if which not in ckpt:
        raise UserError(f"{path}: no {which!r} state dict in this checkpoint (it has {sorted(ckpt)})")
    load_public_state(generator, ckpt[which], generator_key_map(generator), which, str(path))
    if discriminator is not None:
        if "d" not in ckpt:
            raise UserError(f"{path}: no 'd' state dict for the discriminator; start it from scratch instead "
                            f"(use_pretrained_d=false)")  # fmt: skip
        load_public_state(discriminator, ckpt["d"], discriminator_key_map(discriminator), "d", str(path))
    la = ckpt.get("latent_avg")
    return None if la is None else la.float().reshape(1, -1)
