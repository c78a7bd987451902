"""GAN discriminators and what feeds them: the 70x70 ``PatchDiscriminator`` (Isola et al., 2017)
and the ``ImagePool`` history of generated images (Shrivastava et al., 2017; CycleGAN)."""
from __future__ import annotations

import torch
import torch.nn as nn

from .blur import BlurDownsample
from .init import init_weights


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al., CVPR 2017), 70x70 receptive field for n_layers=3:
    conv4x4/2 (ndf) + LeakyReLU(0.2); n_layers-1 conv4x4/2 + IN + LeakyReLU, channels doubling
    up to 8*ndf; conv4x4/1 + IN + LeakyReLU; conv4x4/1 to one channel. Returns a (B, 1, h, w)
    map of real/fake scores, h = H // 2^n_layers - 2 (30x30 for 256 px, 2x2 for 32 px).

    ``antialias`` (CUT's and DCLGAN's default: ``NLayerDiscriminator`` with ``--no_antialias``
    off, models/networks.py): each stride-2 conv becomes a stride-1 conv followed (after its
    norm and LeakyReLU) by a :class:`~contrastlab.nn.blur.BlurDownsample`; for H divisible by
    2^n_layers the output map has the same size. ``init_type`` / ``init_gain``: see
    :func:`~contrastlab.nn.init.init_weights`."""

    def __init__(self, in_ch: int = 3, ndf: int = 64, n_layers: int = 3, antialias: bool = False,
                 init_type: str = "normal", init_gain: float = 0.02):  # fmt: skip
        super().__init__()
        if n_layers < 1 or ndf < 1:
            raise ValueError(f"PatchDiscriminator needs n_layers >= 1 and ndf >= 1, got n_layers={n_layers}, ndf={ndf}")
        self.n_layers = n_layers
        self.antialias = bool(antialias)
        stride = 1 if antialias else 2
        layers = [nn.Conv2d(in_ch, ndf, 4, stride=stride, padding=1), nn.LeakyReLU(0.2)]
        if antialias:
            layers.append(BlurDownsample(ndf))
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            down = n < n_layers
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2 if down and not antialias else 1, padding=1),
                       nn.InstanceNorm2d(ndf * mult), nn.LeakyReLU(0.2)]  # fmt: skip
            if down and antialias:
                layers.append(BlurDownsample(ndf * mult))
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        init_weights(self, init_gain, init_type)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        smallest = 3 * 2**self.n_layers
        if x.dim() != 4 or min(x.shape[-2:]) < smallest:
            raise ValueError(f"PatchDiscriminator(n_layers={self.n_layers}) needs (B, C, H, W) images of at least "
                             f"{smallest} px, got {tuple(x.shape)}; use bigger crops or fewer n_layers")  # fmt: skip
        return self.model(x)


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
