"""Image-to-image generators. ``ResnetGenerator`` (Johnson et al., 2016; as in CycleGAN and CUT)
with an ``encode`` that returns intermediate features (for PatchNCE). Images are in [-1, 1]."""
from __future__ import annotations

import torch
import torch.nn as nn

from .blur import BlurDownsample, BlurUpsample
from .init import init_weights


class ResnetBlock(nn.Module):
    """x + [reflect pad 1, conv3x3, IN, ReLU, reflect pad 1, conv3x3, IN](x)."""

    def __init__(self, ch: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch),
        )  # fmt: skip

    def forward(self, x):
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """ResNet generator of CycleGAN / CUT / DCLGAN: c7s1-ngf, n_down downsamplings, n_blocks
    residual blocks, n_down upsamplings, c7s1-out_ch, tanh. Instance norm without affine
    parameters, ReLU (never in place, so features returned by ``encode`` stay intact).
    Inputs and outputs in [-1, 1]; H and W must be divisible by 2**n_down.

    Downsampling i (to ngf*2^(i+1) channels): a stride-2 conv3x3, IN, ReLU; or, with
    ``antialias`` (CUT's and DCLGAN's default, ``--no_antialias`` off), a stride-1 conv3x3, IN,
    ReLU and a :class:`~contrastlab.nn.blur.BlurDownsample` (3x3 binomial blur, reflect padding,
    stride 2). Upsampling: ConvTranspose2d(3, stride 2), IN, ReLU; or, with ``antialias_up``
    (their default, ``--no_antialias_up`` off), a :class:`~contrastlab.nn.blur.BlurUpsample`
    (4x4 binomial filter), a stride-1 conv3x3, IN, ReLU (``ResnetGenerator`` in
    models/networks.py of taesungp/contrastive-unpaired-translation and JunlinHan/DCLGAN).

    All layers sit in one flat ``nn.Sequential`` ``self.model``; ``encode(x, layers)`` returns
    the output of module ``self.model[i]`` for each listed i (as CUT's ``nce_layers``, which
    count the same modules). With D = n_down, N = n_blocks, d = 3 per downsampling (4 with
    antialias) and u = 3 per upsampling (4 with antialias_up), the indices are:

        0              ReflectionPad2d(3): the padded input image (in_ch, H+6, W+6)
        1, 2, 3        conv7x7 (ngf), InstanceNorm, ReLU
        4+d*i ..       downsampling i = 0..D-1: conv3x3 (ngf*2^(i+1)), IN, ReLU [, BlurDownsample]
        4+d*D+j        residual block j = 0..N-1 (ngf*2^D channels, H/2^D)
        4+d*D+N+u*i .. upsampling i = 0..D-1: [BlurUpsample,] conv (ngf*2^(D-i-1)), IN, ReLU
        last 3         ReflectionPad2d(3), conv7x7 (out_ch), Tanh

    For D=2, N=9 without anti-aliasing (28 modules) CUT's layers 0, 4, 8, 12, 16 are: the
    padded input, the first stride-2 conv's output (before its norm), the second
    downsampling's InstanceNorm output, residual blocks 2 and 6. With antialias (32 modules,
    the official networks) they are: the padded input (3, H+6, W+6); the first stride-1 conv
    (2 ngf, H, W); the second stride-1 conv (4 ngf, H/2, W/2); residual blocks 0 and 4
    (4 ngf, H/4, W/4) -- DCLGAN's 4, 8, 12, 16. (The official networks use in-place ReLUs:
    without anti-aliasing their layer 8, an InstanceNorm output, is overwritten by the ReLU after
    it, so there it is ReLU(IN); here it stays the IN output. With anti-aliasing none of the
    official layers is affected.)

    ``init_type`` / ``init_gain``: :func:`~contrastlab.nn.init.init_weights` at construction.
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 3, ngf: int = 64, n_blocks: int = 9, n_down: int = 2,
                 antialias: bool = False, antialias_up: bool = False, init_type: str = "normal",
                 init_gain: float = 0.02):  # fmt: skip
        super().__init__()
        if min(in_ch, out_ch, ngf) < 1 or n_blocks < 0 or n_down < 0:
            got = f"in_ch={in_ch}, out_ch={out_ch}, ngf={ngf}, n_blocks={n_blocks}, n_down={n_down}"
            raise ValueError(f"ResnetGenerator needs positive channels and n_blocks, n_down >= 0, got {got}")
        self.n_down = n_down
        self.antialias, self.antialias_up = bool(antialias), bool(antialias_up)
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU()]
        channels = [in_ch, ngf, ngf, ngf]
        ch = ngf
        for _ in range(n_down):
            if antialias:
                layers += [nn.Conv2d(ch, 2 * ch, 3, padding=1), nn.InstanceNorm2d(2 * ch), nn.ReLU(),
                           BlurDownsample(2 * ch)]  # fmt: skip
            else:
                layers += [nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * ch), nn.ReLU()]
            ch *= 2
            channels += [ch] * (4 if antialias else 3)
        layers += [ResnetBlock(ch) for _ in range(n_blocks)]
        channels += [ch] * n_blocks
        for _ in range(n_down):
            if antialias_up:
                layers += [BlurUpsample(ch), nn.Conv2d(ch, ch // 2, 3, padding=1), nn.InstanceNorm2d(ch // 2), nn.ReLU()]
                channels += [ch] + [ch // 2] * 3
            else:
                layers += [nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1),
                           nn.InstanceNorm2d(ch // 2), nn.ReLU()]  # fmt: skip
                channels += [ch // 2] * 3
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, out_ch, 7), nn.Tanh()]
        channels += [ch, out_ch, out_ch]
        self.model = nn.Sequential(*layers)
        self._channels = channels
        init_weights(self, init_gain, init_type)

    @staticmethod
    def layout(n_down: int, n_blocks: int, antialias: bool = False, antialias_up: bool = False) -> tuple[int, int]:
        """(number of modules of ``self.model``, index of the last residual block) of the
        generator these options build, without building it."""
        d, u = (4 if antialias else 3), (4 if antialias_up else 3)
        return 4 + d * n_down + n_blocks + u * n_down + 3, 3 + d * n_down + n_blocks

    @staticmethod
    def spatial_sizes(size: int, n_down: int, n_blocks: int, antialias: bool = False, antialias_up: bool = False) -> list[int]:
        """The side of the output of each module of ``self.model`` for a ``size`` x ``size``
        input (a stride-2 conv and a blur downsampling both take s to ceil(s / 2))."""
        out, s = [size + 6, size, size, size], size
        for _ in range(n_down):
            out += [s] * 3 + [-(-s // 2)] if antialias else [-(-s // 2)] * 3
            s = -(-s // 2)
        out += [s] * n_blocks
        for _ in range(n_down):
            s *= 2
            out += [s] * (4 if antialias_up else 3)
        return out + [s + 6, s, s]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = 2**self.n_down
        if x.dim() != 4 or x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(f"ResnetGenerator needs (B, C, H, W) images with H and W divisible by {f}, "
                             f"got {tuple(x.shape)}; crop or resize the images")  # fmt: skip
        return self.model(x)

    def _check_layers(self, layers) -> list[int]:
        layers = [int(i) for i in layers]
        n = len(self.model)
        bad = [i for i in layers if not 0 <= i < n]
        if bad:
            raise ValueError(f"ResnetGenerator layer indices must be in 0..{n - 1}, got {bad}")
        return layers

    def encode(self, x: torch.Tensor, layers) -> list[torch.Tensor]:
        """Outputs of ``self.model[i]`` for each i of ``layers`` (in the order given), computed in
        one pass that stops after the deepest requested layer (the decoder is not run)."""
        layers = self._check_layers(layers)
        if not layers:
            return []
        wanted = set(layers)
        feats = {}
        for i, layer in enumerate(self.model[: max(layers) + 1]):
            x = layer(x)
            if i in wanted:
                feats[i] = x
        return [feats[i] for i in layers]

    def feature_channels(self, layers) -> list[int]:
        """Channels of the features that ``encode(x, layers)`` returns."""
        return [self._channels[i] for i in self._check_layers(layers)]


def to_signed(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] (or uint8) images -> [-1, 1] floats."""
    if x.dtype == torch.uint8:
        x = x.float() / 255
    return x * 2 - 1


def to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


@torch.no_grad()
def translate(generator_net, images: torch.Tensor, batch_size: int = 64, device=None) -> torch.Tensor:
    """[0, 1] images -> [0, 1] translations, in chunks, in eval mode (caller restores the mode)."""
    device = device or next(generator_net.parameters()).device
    generator_net.eval()
    out = [to_unit(generator_net(to_signed(x.to(device)))).cpu() for x in images.split(batch_size)]
    return torch.cat(out)
