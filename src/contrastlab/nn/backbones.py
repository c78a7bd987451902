"""Backbones: a small CNN for CPU runs and torchvision ResNets with an optional CIFAR stem.

Every backbone maps float images in [0, 1] to a feature vector and exposes ``out_dim``.
:class:`Encoder` puts :class:`InputNorm` in front of the backbone, so the input
standardisation is part of the saved model and evaluation cannot forget it.
"""
from __future__ import annotations

import torch
import torch.nn as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
NORMS = ("per_image", "imagenet", "cifar", "none")


class InputNorm(nn.Module):
    """Input standardisation.

    ``per_image``: subtract each image's per-channel mean and divide by its per-channel std.
    On the digit scenes a colour pair identifies an instance, so without this SimCLR can
    match views by colour alone and learns nothing else. ``imagenet`` / ``cifar``: the usual
    fixed data-set statistics. ``none``: identity.
    """

    def __init__(self, mode: str = "per_image", eps: float = 1e-3):
        super().__init__()
        if mode not in NORMS:
            raise ValueError(f"unknown input norm {mode!r}; expected one of {', '.join(NORMS)}")
        self.mode = mode
        self.eps = eps
        mean, std = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "cifar": (CIFAR_MEAN, CIFAR_STD)}.get(
            mode, ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        )
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        if self.mode == "per_image":
            mean = x.mean(dim=(2, 3), keepdim=True)
            std = x.std(dim=(2, 3), keepdim=True)
            return (x - mean) / (std + self.eps)
        if self.mode == "none":
            return x
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self):
        return self.mode


def _conv_bn(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """A four-stage CNN for CPU runs: conv3x3-BN-ReLU stages at 32, 16, 8 and 4 px (max-pool
    between stages), global average pool. ``widths`` per stage; ``depth`` convs per stage.
    Defaults (32, 64, 128, 128), depth 1: 0.24M parameters, ~13M multiply-adds per 32 px image.
    """

    def __init__(self, width: int = 32, depth: int = 1, widths: tuple | None = None):
        super().__init__()
        widths = widths or (width, 2 * width, 4 * width, 4 * width)
        layers, cin = [], 3
        for i, w in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            for _ in range(depth):
                layers.append(_conv_bn(cin, w))
                cin = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = cin

    def forward(self, x):
        return self.features(x)


class TorchvisionResNet(nn.Module):
    """torchvision ResNet-18/34/50 without its classifier; ``cifar_stem`` swaps the 7x7/2 conv and
    max-pool for a 3x3/1 conv (the standard for 32 px inputs)."""

    def __init__(self, depth: int = 18, cifar_stem: bool = False, zero_init_residual: bool = False):
        super().__init__()
        import torchvision.models as tvm

        ctor = {18: tvm.resnet18, 34: tvm.resnet34, 50: tvm.resnet50}.get(depth)
        if ctor is None:
            raise ValueError(f"unsupported ResNet depth {depth}; expected 18, 34 or 50")
        net = ctor(weights=None, zero_init_residual=zero_init_residual)
        if cifar_stem:
            net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        self.out_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x):
        return self.net(x)


def build_backbone(name: str, **kw) -> nn.Module:
    name = name.lower()
    if name == "small_cnn":
        return SmallCNN(width=kw.get("width", 32), depth=kw.get("depth", 1))
    if name in ("resnet18", "resnet34", "resnet50"):
        return TorchvisionResNet(int(name[6:]), cifar_stem=kw.get("cifar_stem", False))
    raise ValueError(f"unknown backbone {name!r}; expected one of small_cnn, resnet18, resnet34, resnet50")


class Encoder(nn.Module):
    """InputNorm followed by a backbone: float [0, 1] images -> features (B, out_dim)."""

    def __init__(self, backbone: nn.Module, norm: str = "per_image"):
        super().__init__()
        self.norm = InputNorm(norm)
        self.backbone = backbone
        self.out_dim = backbone.out_dim
        self.channels_last = False

    def to_channels_last(self) -> "Encoder":
        """NHWC weights and inputs: faster convolutions on CPUs (oneDNN) and tensor cores."""
        self.channels_last = True
        return self.to(memory_format=torch.channels_last)

    def forward(self, x):
        x = self.norm(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)
