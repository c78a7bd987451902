"""Networks for unpaired image-to-image translation (CycleGAN / CUT / DCLGAN).

``ResnetGenerator`` (Johnson et al., 2016; as in CycleGAN and CUT) with an ``encode`` that
returns intermediate features for PatchNCE, the 70x70 ``PatchDiscriminator`` (Isola et al.,
2017), ``PatchSampleHeads`` (CUT's patch sampler with one MLP per layer), the discriminator's
``ImagePool`` history buffer (Shrivastava et al., 2017; CycleGAN) and ``init_weights``.
Images are in [-1, 1].
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def init_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """CycleGAN's 'normal' init: conv, transposed conv and linear weights ~ N(0, gain), biases 0;
    affine norm layers (if any) weight ~ N(1, gain), bias 0. In place; returns ``module``.
    The networks of this file call it with gain 0.02 at construction (CUT and DCLGAN always
    initialise their networks; we pick 'normal' rather than CUT's default 'xavier')."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module


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
    """ResNet generator of CycleGAN / CUT: c7s1-ngf, n_down stride-2 convs, n_blocks residual
    blocks, n_down stride-2 transposed convs, c7s1-out_ch, tanh. Instance norm without affine
    parameters, ReLU (never in place, so features returned by ``encode`` stay intact).
    Inputs and outputs in [-1, 1]; H and W must be divisible by 2**n_down.

    All layers sit in one flat ``nn.Sequential`` ``self.model``; ``encode(x, layers)`` returns
    the output of module ``self.model[i]`` for each listed i (as CUT's ``nce_layers``). With
    D = n_down and N = n_blocks the indices are:

        0              ReflectionPad2d(3): the padded input image (in_ch, H+6, W+6)
        1, 2, 3        conv7x7 (ngf), InstanceNorm, ReLU
        4+3i, 5+3i, 6+3i  downsampling i = 0..D-1: stride-2 conv3x3 (ngf*2^(i+1)), IN, ReLU
        4+3D+j         residual block j = 0..N-1 (ngf*2^D channels, H/2^D)
        4+3D+N+3i ..   upsampling i = 0..D-1: ConvTranspose2d, IN, ReLU
        last 3         ReflectionPad2d(3), conv7x7 (out_ch), Tanh

    For the defaults (D=2, N=9; 28 modules) CUT's layers 0, 4, 8, 12, 16 are: the padded
    input, the first stride-2 conv's output (before its norm), the second downsampling's
    InstanceNorm output, residual blocks 2 and 6. (CUT's default anti-aliased generator has
    four modules per downsampling, so there the same indices name slightly different features.)
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 3, ngf: int = 64, n_blocks: int = 9, n_down: int = 2):
        super().__init__()
        if min(in_ch, out_ch, ngf) < 1 or n_blocks < 0 or n_down < 0:
            got = f"in_ch={in_ch}, out_ch={out_ch}, ngf={ngf}, n_blocks={n_blocks}, n_down={n_down}"
            raise ValueError(f"ResnetGenerator needs positive channels and n_blocks, n_down >= 0, got {got}")
        self.n_down = n_down
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU()]
        channels = [in_ch, ngf, ngf, ngf]
        ch = ngf
        for _ in range(n_down):
            layers += [nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * ch), nn.ReLU()]
            ch *= 2
            channels += [ch] * 3
        layers += [ResnetBlock(ch) for _ in range(n_blocks)]
        channels += [ch] * n_blocks
        for _ in range(n_down):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(ch // 2), nn.ReLU()]  # fmt: skip
            ch //= 2
            channels += [ch] * 3
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, out_ch, 7), nn.Tanh()]
        channels += [ch, out_ch, out_ch]
        self.model = nn.Sequential(*layers)
        self._channels = channels
        init_weights(self)

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


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al., CVPR 2017), 70x70 receptive field for n_layers=3:
    conv4x4/2 (ndf) + LeakyReLU(0.2); n_layers-1 conv4x4/2 + IN + LeakyReLU, channels doubling
    up to 8*ndf; conv4x4/1 + IN + LeakyReLU; conv4x4/1 to one channel. Returns a (B, 1, h, w)
    map of real/fake scores, h = H // 2^n_layers - 2 (30x30 for 256 px, 2x2 for 32 px)."""

    def __init__(self, in_ch: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        if n_layers < 1 or ndf < 1:
            raise ValueError(f"PatchDiscriminator needs n_layers >= 1 and ndf >= 1, got n_layers={n_layers}, ndf={ndf}")
        self.n_layers = n_layers
        layers = [nn.Conv2d(in_ch, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1),
                       nn.InstanceNorm2d(ndf * mult), nn.LeakyReLU(0.2)]  # fmt: skip
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        smallest = 3 * 2**self.n_layers
        if x.dim() != 4 or min(x.shape[-2:]) < smallest:
            raise ValueError(f"PatchDiscriminator(n_layers={self.n_layers}) needs (B, C, H, W) images of at least "
                             f"{smallest} px, got {tuple(x.shape)}; use bigger crops or fewer n_layers")  # fmt: skip
        return self.model(x)


class PatchSampleHeads(nn.Module):
    """CUT's patch sampler and projection (Park et al., ECCV 2020): for each encoder layer, take
    the features at P spatial positions and map them with that layer's 2-layer MLP
    (Linear-ReLU-Linear, ``dim`` wide; created here, not lazily) to L2-normalised embeddings.
    ``use_mlp=False``: no MLP, the normalised features themselves (``dim`` = the layer's C).

    ``forward(feats, num_patches, patch_ids, generator)``: feats is a list of (B, C_l, H_l, W_l).
    Without ``patch_ids`` it draws, per layer, P = num_patches distinct positions (the same
    positions for every image of the batch, as in CUT; with ``generator`` when given); P = 0
    or P >= H*W takes all H*W positions in raster order. With ``patch_ids`` (the list a
    previous call returned) it takes exactly those positions, so that queries and keys come
    from the same locations. Returns (list of (B, P, dim) embeddings, list of (P,) id tensors).
    """

    def __init__(self, in_channels: list[int], dim: int = 256, use_mlp: bool = True):
        super().__init__()
        self.in_channels = [int(c) for c in in_channels]
        self.use_mlp = use_mlp
        if use_mlp:
            mlp = lambda c: nn.Sequential(nn.Linear(c, dim), nn.ReLU(), nn.Linear(dim, dim))  # noqa: E731
            self.mlps = nn.ModuleList(mlp(c) for c in self.in_channels)
        else:
            self.mlps = nn.ModuleList(nn.Identity() for _ in self.in_channels)
        self.out_dims = [dim if use_mlp else c for c in self.in_channels]
        init_weights(self)

    @staticmethod
    def _draw_ids(n: int, num_patches: int, generator: torch.Generator | None, device) -> torch.Tensor:
        if num_patches <= 0 or num_patches >= n:
            return torch.arange(n, device=device)
        dev = generator.device if generator is not None else "cpu"
        return torch.randperm(n, generator=generator, device=dev)[:num_patches].to(device)

    def forward(self, feats: list[torch.Tensor], num_patches: int = 256, patch_ids: list[torch.Tensor] | None = None,
                generator: torch.Generator | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:  # fmt: skip
        if len(feats) != len(self.mlps):
            raise ValueError(f"PatchSampleHeads was built for {len(self.mlps)} layers, got {len(feats)} feature maps")
        if patch_ids is not None and len(patch_ids) != len(feats):
            raise ValueError(f"patch_ids has {len(patch_ids)} entries for {len(feats)} feature maps; "
                             "pass the list that a previous call returned")  # fmt: skip
        out, ids_out = [], []
        for li, (feat, mlp) in enumerate(zip(feats, self.mlps)):
            if feat.dim() != 4 or feat.shape[1] != self.in_channels[li]:
                raise ValueError(f"PatchSampleHeads layer {li} expects (B, {self.in_channels[li]}, H, W) features, "
                                 f"got {tuple(feat.shape)}")  # fmt: skip
            b, c, h, w = feat.shape
            flat = feat.permute(0, 2, 3, 1).reshape(b, h * w, c)
            if patch_ids is None:
                ids = self._draw_ids(h * w, num_patches, generator, feat.device)
            else:
                ids = patch_ids[li].to(feat.device)
                if ids.dim() != 1:
                    raise ValueError(f"patch_ids[{li}] must be a 1-D tensor of positions, got shape {tuple(ids.shape)}")
            out.append(F.normalize(mlp(flat[:, ids, :]), dim=2))
            ids_out.append(ids)
        return out, ids_out


class ImagePool(nn.Module):
    """History of generated images for the discriminator (Shrivastava et al., 2017; CycleGAN, CUT).

    ``query(images)``: while the pool holds fewer than ``size`` images, each incoming image is
    stored and returned unchanged; once full, each image is, with probability 1/2, returned
    unchanged, and otherwise swapped with a uniformly chosen stored image (returned) which the
    new image replaces. ``size=0`` passes the batch through. Stored and returned images are
    detached. Random draws use ``generator`` when given, else torch's global RNG.

    The pool is a module with two buffers, ``images`` (count, C, H, W) and ``count`` (a long
    scalar), so it moves with ``.to(device)`` and its ``state_dict()`` / ``load_state_dict()``
    (also as part of a parent module's) hold plain tensors: a resumed run continues exactly.
    """

    def __init__(self, size: int = 50):
        super().__init__()
        if size < 0:
            raise ValueError(f"ImagePool size must be >= 0, got {size}")
        self.size = int(size)
        self.register_buffer("images", torch.empty(0))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @staticmethod
    def _rand(generator: torch.Generator | None) -> float:
        dev = generator.device if generator is not None else "cpu"
        return torch.rand((), generator=generator, device=dev).item()

    @staticmethod
    def _randint(n: int, generator: torch.Generator | None) -> int:
        dev = generator.device if generator is not None else "cpu"
        return int(torch.randint(n, (), generator=generator, device=dev).item())

    @torch.no_grad()
    def query(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        images = images.detach()
        if self.size == 0:
            return images
        if self.count.item() > 0 and (self.images.shape[1:] != images.shape[1:]):
            held = tuple(self.images.shape[1:])
            raise ValueError(f"ImagePool holds images of shape {held}, got a batch {tuple(images.shape)}")
        if self.count.item() == 0:
            self.images = images.new_empty((0, *images.shape[1:]))
        self.images = self.images.to(device=images.device, dtype=images.dtype)
        out = []
        for img in images:
            n = int(self.count)
            if n < self.size:
                self.images = torch.cat([self.images, img[None]])
                self.count += 1
                out.append(img)
            elif self._rand(generator) > 0.5:
                j = self._randint(self.size, generator)
                out.append(self.images[j].clone())
                self.images[j] = img
            else:
                out.append(img)
        return torch.stack(out)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, error_msgs):
        stored = state_dict.get(prefix + "images")
        if stored is not None:  # the stored images' shape is only known at load time
            self.images = torch.empty_like(stored, device=self.images.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, error_msgs)
        n = int(self.count)
        if stored is not None and (n > self.size or (stored.shape[0] != n if n else stored.numel() > 0)):
            error_msgs.append(f"ImagePool(size={self.size}) state holds count={n} and images {tuple(stored.shape)}; "
                              "they must agree, with count <= size")  # fmt: skip

    def extra_repr(self):
        return f"size={self.size}"
