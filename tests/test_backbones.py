"""Backbones in timm's manner (issue 13, point 3): forward_features / forward / stage_dims /
forward_stages on SmallCNN, TorchvisionResNet, timm models and Encoder, checked against
independent computations; state-dict keys unchanged, so checkpoints written before still load."""
import sys

import pytest
import timm  # the `test` extra installs it: these tests never skip for want of it
import torch
import torch.nn as nn
import torchvision.models as tvm

from contrastlab.config import ConfigError, ModelConfig, build_dataclass
from contrastlab.errors import UserError
from contrastlab.methods.common import build_encoder
from contrastlab.nn.backbones import (Encoder, InputNorm, SmallCNN, TimmBackbone, TorchvisionResNet, build_backbone,
                                      stage_indices)  # fmt: skip

CASES = {"small_cnn_w16_d2": ("small_cnn", dict(width=16, depth=2)), "small_cnn_default": ("small_cnn", {}),
         "resnet18_cifar": ("resnet18", dict(cifar_stem=True))}  # fmt: skip

LEGACY_KEYS = {  # sorted state-dict keys and shapes, captured from the code before forward_features
    "small_cnn_w16_d2": """
features.0.0.weight 16,3,3,3
features.0.1.bias 16
features.0.1.num_batches_tracked
features.0.1.running_mean 16
features.0.1.running_var 16
features.0.1.weight 16
features.1.0.weight 16,16,3,3
features.1.1.bias 16
features.1.1.num_batches_tracked
features.1.1.running_mean 16
features.1.1.running_var 16
features.1.1.weight 16
features.10.0.weight 64,64,3,3
features.10.1.bias 64
features.10.1.num_batches_tracked
features.10.1.running_mean 64
features.10.1.running_var 64
features.10.1.weight 64
features.3.0.weight 32,16,3,3
features.3.1.bias 32
features.3.1.num_batches_tracked
features.3.1.running_mean 32
features.3.1.running_var 32
features.3.1.weight 32
features.4.0.weight 32,32,3,3
features.4.1.bias 32
features.4.1.num_batches_tracked
features.4.1.running_mean 32
features.4.1.running_var 32
features.4.1.weight 32
features.6.0.weight 64,32,3,3
features.6.1.bias 64
features.6.1.num_batches_tracked
features.6.1.running_mean 64
features.6.1.running_var 64
features.6.1.weight 64
features.7.0.weight 64,64,3,3
features.7.1.bias 64
features.7.1.num_batches_tracked
features.7.1.running_mean 64
features.7.1.running_var 64
features.7.1.weight 64
features.9.0.weight 64,64,3,3
features.9.1.bias 64
features.9.1.num_batches_tracked
features.9.1.running_mean 64
features.9.1.running_var 64
features.9.1.weight 64
""",
    "small_cnn_default": """
features.0.0.weight 32,3,3,3
features.0.1.bias 32
features.0.1.num_batches_tracked
features.0.1.running_mean 32
features.0.1.running_var 32
features.0.1.weight 32
features.2.0.weight 64,32,3,3
features.2.1.bias 64
features.2.1.num_batches_tracked
features.2.1.running_mean 64
features.2.1.running_var 64
features.2.1.weight 64
features.4.0.weight 128,64,3,3
features.4.1.bias 128
features.4.1.num_batches_tracked
features.4.1.running_mean 128
features.4.1.running_var 128
features.4.1.weight 128
features.6.0.weight 128,128,3,3
features.6.1.bias 128
features.6.1.num_batches_tracked
features.6.1.running_mean 128
features.6.1.running_var 128
features.6.1.weight 128
""",
    "resnet18_cifar": """
net.bn1.bias 64
net.bn1.num_batches_tracked
net.bn1.running_mean 64
net.bn1.running_var 64
net.bn1.weight 64
net.conv1.weight 64,3,3,3
net.layer1.0.bn1.bias 64
net.layer1.0.bn1.num_batches_tracked
net.layer1.0.bn1.running_mean 64
net.layer1.0.bn1.running_var 64
net.layer1.0.bn1.weight 64
net.layer1.0.bn2.bias 64
net.layer1.0.bn2.num_batches_tracked
net.layer1.0.bn2.running_mean 64
net.layer1.0.bn2.running_var 64
net.layer1.0.bn2.weight 64
net.layer1.0.conv1.weight 64,64,3,3
net.layer1.0.conv2.weight 64,64,3,3
net.layer1.1.bn1.bias 64
net.layer1.1.bn1.num_batches_tracked
net.layer1.1.bn1.running_mean 64
net.layer1.1.bn1.running_var 64
net.layer1.1.bn1.weight 64
net.layer1.1.bn2.bias 64
net.layer1.1.bn2.num_batches_tracked
net.layer1.1.bn2.running_mean 64
net.layer1.1.bn2.running_var 64
net.layer1.1.bn2.weight 64
net.layer1.1.conv1.weight 64,64,3,3
net.layer1.1.conv2.weight 64,64,3,3
net.layer2.0.bn1.bias 128
net.layer2.0.bn1.num_batches_tracked
net.layer2.0.bn1.running_mean 128
net.layer2.0.bn1.running_var 128
net.layer2.0.bn1.weight 128
net.layer2.0.bn2.bias 128
net.layer2.0.bn2.num_batches_tracked
net.layer2.0.bn2.running_mean 128
net.layer2.0.bn2.running_var 128
net.layer2.0.bn2.weight 128
net.layer2.0.conv1.weight 128,64,3,3
net.layer2.0.conv2.weight 128,128,3,3
net.layer2.0.downsample.0.weight 128,64,1,1
net.layer2.0.downsample.1.bias 128
net.layer2.0.downsample.1.num_batches_tracked
net.layer2.0.downsample.1.running_mean 128
net.layer2.0.downsample.1.running_var 128
net.layer2.0.downsample.1.weight 128
net.layer2.1.bn1.bias 128
net.layer2.1.bn1.num_batches_tracked
net.layer2.1.bn1.running_mean 128
net.layer2.1.bn1.running_var 128
net.layer2.1.bn1.weight 128
net.layer2.1.bn2.bias 128
net.layer2.1.bn2.num_batches_tracked
net.layer2.1.bn2.running_mean 128
net.layer2.1.bn2.running_var 128
net.layer2.1.bn2.weight 128
net.layer2.1.conv1.weight 128,128,3,3
net.layer2.1.conv2.weight 128,128,3,3
net.layer3.0.bn1.bias 256
net.layer3.0.bn1.num_batches_tracked
net.layer3.0.bn1.running_mean 256
net.layer3.0.bn1.running_var 256
net.layer3.0.bn1.weight 256
net.layer3.0.bn2.bias 256
net.layer3.0.bn2.num_batches_tracked
net.layer3.0.bn2.running_mean 256
net.layer3.0.bn2.running_var 256
net.layer3.0.bn2.weight 256
net.layer3.0.conv1.weight 256,128,3,3
net.layer3.0.conv2.weight 256,256,3,3
net.layer3.0.downsample.0.weight 256,128,1,1
net.layer3.0.downsample.1.bias 256
net.layer3.0.downsample.1.num_batches_tracked
net.layer3.0.downsample.1.running_mean 256
net.layer3.0.downsample.1.running_var 256
net.layer3.0.downsample.1.weight 256
net.layer3.1.bn1.bias 256
net.layer3.1.bn1.num_batches_tracked
net.layer3.1.bn1.running_mean 256
net.layer3.1.bn1.running_var 256
net.layer3.1.bn1.weight 256
net.layer3.1.bn2.bias 256
net.layer3.1.bn2.num_batches_tracked
net.layer3.1.bn2.running_mean 256
net.layer3.1.bn2.running_var 256
net.layer3.1.bn2.weight 256
net.layer3.1.conv1.weight 256,256,3,3
net.layer3.1.conv2.weight 256,256,3,3
net.layer4.0.bn1.bias 512
net.layer4.0.bn1.num_batches_tracked
net.layer4.0.bn1.running_mean 512
net.layer4.0.bn1.running_var 512
net.layer4.0.bn1.weight 512
net.layer4.0.bn2.bias 512
net.layer4.0.bn2.num_batches_tracked
net.layer4.0.bn2.running_mean 512
net.layer4.0.bn2.running_var 512
net.layer4.0.bn2.weight 512
net.layer4.0.conv1.weight 512,256,3,3
net.layer4.0.conv2.weight 512,512,3,3
net.layer4.0.downsample.0.weight 512,256,1,1
net.layer4.0.downsample.1.bias 512
net.layer4.0.downsample.1.num_batches_tracked
net.layer4.0.downsample.1.running_mean 512
net.layer4.0.downsample.1.running_var 512
net.layer4.0.downsample.1.weight 512
net.layer4.1.bn1.bias 512
net.layer4.1.bn1.num_batches_tracked
net.layer4.1.bn1.running_mean 512
net.layer4.1.bn1.running_var 512
net.layer4.1.bn1.weight 512
net.layer4.1.bn2.bias 512
net.layer4.1.bn2.num_batches_tracked
net.layer4.1.bn2.running_mean 512
net.layer4.1.bn2.running_var 512
net.layer4.1.bn2.weight 512
net.layer4.1.conv1.weight 512,512,3,3
net.layer4.1.conv2.weight 512,512,3,3
""",
}


# ----------------------------------------------------------------------------- the code before the change
# Verbatim copies of SmallCNN and TorchvisionResNet as they were before forward_features existed
# (commit 8d51c98): the reference for state-dict keys and outputs.
def _legacy_conv_bn(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class LegacySmallCNN(nn.Module):
    def __init__(self, width: int = 32, depth: int = 1, widths: tuple | None = None):
        super().__init__()
        widths = widths or (width, 2 * width, 4 * width, 4 * width)
        layers, cin = [], 3
        for i, w in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            for _ in range(depth):
                layers.append(_legacy_conv_bn(cin, w))
                cin = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = cin

    def forward(self, x):
        return self.features(x)


class LegacyTorchvisionResNet(nn.Module):
    def __init__(self, depth: int = 18, cifar_stem: bool = False, zero_init_residual: bool = False):
        super().__init__()
        ctor = {18: tvm.resnet18, 34: tvm.resnet34, 50: tvm.resnet50}.get(depth)
        net = ctor(weights=None, zero_init_residual=zero_init_residual)
        if cifar_stem:
            net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        self.out_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x):
        return self.net(x)


def _legacy(name, **kw):
    if name == "small_cnn":
        return LegacySmallCNN(width=kw.get("width", 32), depth=kw.get("depth", 1))
    return LegacyTorchvisionResNet(int(name[6:]), cifar_stem=kw.get("cifar_stem", False))


def _keys(module):
    return sorted((k, tuple(v.shape)) for k, v in module.state_dict().items())


def _parse(text):
    out = []
    for line in text.strip().splitlines():
        key, _, shape = line.partition(" ")
        out.append((key, tuple(int(s) for s in shape.split(",")) if shape else ()))
    return out


def _trained_like(module, seed=0):
    """Random BatchNorm statistics, so that eval-mode outputs depend on every buffer."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return module.eval()


@pytest.mark.parametrize("case", sorted(LEGACY_KEYS))
def test_state_dict_keys_and_shapes_unchanged(case):
    name, kw = CASES[case]
    assert _keys(build_backbone(name, **kw)) == _parse(LEGACY_KEYS[case])
    assert _keys(_legacy(name, **kw)) == _parse(LEGACY_KEYS[case])  # the captured list is the old code's


@pytest.mark.parametrize("name,kw", [("small_cnn", dict(width=16, depth=2)), ("small_cnn", {}), ("small_cnn", dict(width=8)),
                                     ("resnet18", dict(cifar_stem=True)), ("resnet18", {})])  # fmt: skip
def test_old_weights_load_strictly_and_give_the_same_outputs(name, kw):
    torch.manual_seed(3)
    old = _trained_like(_legacy(name, **kw))
    torch.manual_seed(3)
    new = build_backbone(name, **kw).eval()
    assert _keys(new) == _keys(old)
    for (ka, a), (kb, b) in zip(sorted(old.state_dict().items()), sorted(new.state_dict().items())):
        assert ka == kb and (ka.endswith(("running_mean", "running_var", "weight", "bias")) or torch.equal(a, b))
    new.load_state_dict(old.state_dict(), strict=True)  # a checkpoint written before loads
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(new(x), old(x))
        # same seed, same init: the parameters are drawn in the same order as before
        torch.manual_seed(3)
        fresh = build_backbone(name, **kw)
        torch.manual_seed(3)
        fresh_old = _legacy(name, **kw)
        for (ka, a), (kb, b) in zip(sorted(fresh_old.state_dict().items()), sorted(fresh.state_dict().items())):
            assert ka == kb and torch.equal(a, b), ka


# ----------------------------------------------------------------------------- the interface, independently checked
NATIVE = {"small_cnn": lambda: SmallCNN(8, 1), "small_cnn_d2": lambda: SmallCNN(8, 2),
          "resnet18_cifar": lambda: TorchvisionResNet(18, True), "resnet50": lambda: TorchvisionResNet(50)}  # fmt: skip


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_forward_is_the_mean_of_forward_features(name):
    torch.manual_seed(0)
    b = _trained_like(NATIVE[name]())
    x = torch.rand(3, 3, 48, 48)
    with torch.no_grad():
        fmap = b.forward_features(x)
        assert fmap.ndim == 4 and fmap.shape[:2] == (3, b.out_dim) and b.feature_dim == b.out_dim
        assert b.stage_dims == {"small_cnn": (8, 16, 32, 32), "small_cnn_d2": (8, 16, 32, 32),
                                "resnet18_cifar": (64, 128, 256, 512), "resnet50": (256, 512, 1024, 2048)}[name]
        torch.testing.assert_close(b(x), fmap.double().mean(dim=(2, 3)).float(), rtol=1e-5, atol=1e-6)
        stages = b.forward_stages(x)
        assert [s.shape[1] for s in stages] == list(b.stage_dims)
        assert torch.equal(stages[-1], fmap)


@pytest.mark.parametrize("size", [32, 48])
def test_small_cnn_stages_halve_the_side(size):
    torch.manual_seed(0)
    b = SmallCNN(width=8, depth=2).eval()
    x = torch.rand(2, 3, size, size)
    stages = b.forward_stages(x)
    assert b.stage_dims == (8, 16, 32, 32)
    assert [tuple(s.shape) for s in stages] == [(2, c, size // f, size // f) for c, f in zip(b.stage_dims, (1, 2, 4, 8))]
    # by hand over the Sequential: convs at indices 0-1, pool 2, convs 3-4, pool 5, convs 6-7, pool 8, convs 9-10
    f, h, ref = b.features, x, []
    for lo, hi in ((0, 2), (2, 5), (5, 8), (8, 11)):
        for i in range(lo, hi):
            h = f[i](h)
        ref.append(h)
    for got, want in zip(stages, ref):
        assert torch.equal(got, want)
    assert torch.equal(b.forward_features(x), ref[-1])
    assert [s.shape[-1] for s in SmallCNN(8).forward_stages(torch.rand(1, 3, 32, 32))] == [32, 16, 8, 4]


@pytest.mark.parametrize("cifar_stem,size,sides", [(True, 32, [32, 16, 8, 4]), (False, 64, [16, 8, 4, 2])])
def test_resnet_stages_equal_torchvision_layers_by_hand(cifar_stem, size, sides):
    torch.manual_seed(1)
    b = _trained_like(TorchvisionResNet(18, cifar_stem=cifar_stem))
    ref_net = tvm.resnet18(weights=None)  # an independent torchvision model with the same weights
    if cifar_stem:
        ref_net.conv1, ref_net.maxpool = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
    ref_net.fc = nn.Identity()
    ref_net.load_state_dict({k[4:]: v for k, v in b.state_dict().items()}, strict=True)
    ref_net.eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        h = ref_net.maxpool(ref_net.relu(ref_net.bn1(ref_net.conv1(x))))
        ref = []
        for layer in (ref_net.layer1, ref_net.layer2, ref_net.layer3, ref_net.layer4):
            h = layer(h)
            ref.append(h)
        stages = b.forward_stages(x)
        assert b.stage_dims == (64, 128, 256, 512)
        assert [s.shape[-1] for s in stages] == sides
        for got, want in zip(stages, ref):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        torch.testing.assert_close(b.forward_features(x), ref[-1], rtol=0, atol=0)
        torch.testing.assert_close(b(x), ref_net(x), rtol=0, atol=0)  # torchvision's own forward


def test_stage_indices_select_like_timm():
    assert stage_indices(None, 4) == [0, 1, 2, 3]
    assert stage_indices(2, 4) == [2, 3]
    assert stage_indices([3, 0], 4) == [0, 3]
    assert stage_indices((-1, 1, 1), 4) == [1, 3]
    for bad in (0, 5, [4], [-5], []):
        with pytest.raises(ValueError, match="stage"):
            stage_indices(bad, 4)
    with pytest.raises(TypeError):
        stage_indices("0", 4)
    torch.manual_seed(0)
    for b in (SmallCNN(8).eval(), TorchvisionResNet(18).eval()):
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad():
            full = b.forward_stages(x)
            for idx in (None, 1, 3, [0, 2], [-1], (1, -3)):
                want = [full[i] for i in stage_indices(idx, 4)]
                got = b.forward_stages(x, idx)
                assert len(got) == len(want) and all(torch.equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("norm", ["per_image", "cifar"])
def test_encoder_applies_norm_and_channels_last(norm):
    torch.manual_seed(0)
    enc = Encoder(_trained_like(SmallCNN(8)), norm=norm).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        xn = InputNorm(norm)(x)
        fmap = enc.forward_features(x)
        assert torch.equal(fmap, enc.backbone.forward_features(xn))
        assert torch.equal(enc(x), enc.backbone(xn))
        torch.testing.assert_close(enc(x), fmap.mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
        stages = enc.forward_stages(x, [0, 3])
        assert [s.shape[-1] for s in stages] == [32, 4] and torch.equal(stages[1], fmap)
        assert enc.stage_dims == (8, 16, 32, 32) and enc.feature_dim == enc.out_dim == 32
        cl = Encoder(SmallCNN(8), norm=norm)
        cl.load_state_dict(enc.state_dict())
        cl = cl.eval().to_channels_last()
        seen = []  # what the first conv receives on each path: the normalised input, in NHWC
        cl.backbone.features[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        fcl = cl.forward_features(x)
        assert fcl.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(fcl, fmap, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(cl.forward_stages(x)[0], enc.forward_stages(x)[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(cl(x), enc(x), rtol=1e-4, atol=1e-5)
        assert len(seen) == 3 and all(t.is_contiguous(memory_format=torch.channels_last) for t in seen)
        assert all(torch.allclose(t, xn) for t in seen)


# ----------------------------------------------------------------------------- timm models
def _vit(**kw):
    return build_backbone("timm:vit_tiny_patch16_224", timm_kwargs=dict(img_size=32, patch_size=8, depth=2, **kw))


def test_timm_resnet_through_the_interface_with_backward():
    torch.manual_seed(0)
    enc = Encoder(build_backbone("timm:resnet18"), norm="imagenet")
    b = enc.backbone
    assert isinstance(b, TimmBackbone) and not any(k.startswith("net.fc.") for k in b.state_dict())
    assert enc.out_dim == enc.feature_dim == 512 and enc.stage_dims == (64, 64, 128, 256, 512)
    x = torch.rand(2, 3, 64, 64)
    z, fmap, stages = enc(x), enc.forward_features(x), enc.forward_stages(x)
    assert z.shape == (2, 512) and fmap.shape == (2, 512, 2, 2)
    assert [tuple(s.shape[1:]) for s in stages] == [(64, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    torch.testing.assert_close(z, fmap.mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)  # train mode: same batch statistics
    # timm's stages are its layers, by hand (stage 0 is the stem's activation)
    n, xn = b.net, InputNorm("imagenet")(x)
    h = n.act1(n.bn1(n.conv1(xn)))
    ref = [h]
    h = n.maxpool(h)
    for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
        h = layer(h)
        ref.append(h)
    for got, want in zip(stages, ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert [s.shape[-1] for s in enc.forward_stages(x, 2)] == [4, 2]
    (z.square().mean() + fmap.mean() + sum(s.mean() for s in stages)).backward()
    grads = [p.grad for p in enc.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and grads[0].abs().sum() > 0


def test_timm_vit_dense_interface_from_tokens_with_backward():
    torch.manual_seed(0)
    enc = Encoder(_vit(), norm="imagenet")
    b = enc.backbone
    assert enc.out_dim == enc.feature_dim == 192 and enc.stage_dims == (192, 192)
    x = torch.rand(2, 3, 32, 32)
    z = enc(x)
    fmap = enc.forward_features(x)
    assert z.shape == (2, 192) and fmap.shape == (2, 192, 4, 4)
    # independently: timm's tokens (B, 1 + 16, C) after the final norm, the patch tokens on the 4x4 grid
    tokens = b.net.forward_features(InputNorm("imagenet")(x))
    assert tokens.shape == (2, 17, 192)
    torch.testing.assert_close(fmap, tokens[:, 1:].transpose(1, 2).reshape(2, 192, 4, 4), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z, tokens[:, 0], rtol=1e-5, atol=1e-5)  # forward: timm's pooling (the class token)
    torch.testing.assert_close(enc.forward_features(x), fmap, rtol=1e-5, atol=1e-5)  # the cached path: same map
    stages = enc.forward_stages(x)
    assert [tuple(s.shape) for s in stages] == [(2, 192, 4, 4)] * 2
    (z.square().mean() + fmap.mean() + stages[0].mean()).backward()
    pe = b.net.patch_embed.proj.weight.grad
    assert pe is not None and torch.isfinite(pe).all() and pe.abs().sum() > 0


def test_timm_nhwc_model_gives_nchw_maps():
    torch.manual_seed(0)  # Swin: timm's forward_features is NHWC (B, h, w, C)
    b = build_backbone("timm:swin_tiny_patch4_window7_224", timm_kwargs=dict(
        img_size=64, window_size=2, embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))).eval()  # fmt: skip
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        nhwc = b.net.forward_features(x)
        fmap = b.forward_features(x)
        assert nhwc.shape == (2, 2, 2, 192) and fmap.shape == (2, 192, 2, 2) and b.feature_dim == b.out_dim == 192
        assert torch.equal(fmap, nhwc.permute(0, 3, 1, 2))
        torch.testing.assert_close(b(x), fmap.mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)
        assert b.stage_dims == (24, 48, 96, 192)
        assert [tuple(s.shape[1:]) for s in b.forward_stages(x)] == [(24, 16, 16), (48, 8, 8), (96, 4, 4), (192, 2, 2)]


class _TokensOnly(nn.Module):
    """A token model without forward_intermediates."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 4)

    def forward_features(self, x):
        return self.proj(x.flatten(2).transpose(1, 2))


def test_timm_token_model_without_intermediates_fails_clearly():
    b = build_backbone("timm:resnet18")
    b.net, b.stage_dims = _TokensOnly(), (4,)
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="no forward_intermediates.*dense"):
        b.forward_features(x)
    with pytest.raises(ValueError, match="no forward_intermediates.*stages"):
        b.forward_stages(x)


def test_timm_options_and_errors():
    assert build_dataclass(ModelConfig, {"backbone": "timm:resnet18"}, "model").backbone == "timm:resnet18"
    assert build_dataclass(ModelConfig, {"backbone": "resnet34"}, "model").backbone == "resnet34"
    with pytest.raises(ConfigError, match=r"model.backbone='timm:resnet81'.*did you mean resnet18"):
        build_dataclass(ModelConfig, {"backbone": "timm:resnet81"}, "model")
    with pytest.raises(ConfigError, match=r"model.backbone='resnet19': must be one of small_cnn, .*timm:NAME"):
        build_dataclass(ModelConfig, {"backbone": "resnet19"}, "model")
    with pytest.raises(ConfigError, match="cifar_stem"):
        build_backbone("timm:resnet18", cifar_stem=True)
    with pytest.raises(ConfigError, match="timm has no model"):
        build_backbone("timm:resnet81")
    # the method builder's path: small_cnn-only options are ignored for a timm model
    enc = build_encoder(build_dataclass(ModelConfig, {"backbone": "timm:resnet18", "width": 8}, "model"))
    assert isinstance(enc.backbone, TimmBackbone) and enc.out_dim == 512


def test_timm_kwargs_from_a_recipe_build_a_vit_for_32px_and_train_a_step():
    """model.timm_kwargs reaches timm.create_model: a ViT built for 32 px images with 8 px patches
    (its default is 224 px, which a 32 px batch would not fit), from command-line overrides."""
    from contrastlab.config import load_config
    from contrastlab.methods import build_method

    cfg = load_config("simclr", ["model.backbone=timm:vit_tiny_patch16_224", "optim.batch_size=4",
                                 "model.timm_kwargs={img_size: 32, patch_size: 8, depth: 2}"])
    assert cfg.model.timm_kwargs == {"img_size": 32, "patch_size": 8, "depth": 2}
    method = build_method(cfg)
    net = method.encoder.backbone.net
    assert net.patch_embed.img_size == (32, 32) and net.patch_embed.patch_size == (8, 8) and len(net.blocks) == 2
    assert method.encoder.forward_features(torch.rand(2, 3, 32, 32)).shape == (2, 192, 4, 4)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    out = method({"images": images, "index": torch.arange(4), "step": 0, "epoch": 0, "generator": g})
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and net.patch_embed.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("overrides,needle", [
    (["model.timm_kwargs={img_size: 32}"], "model.timm_kwargs applies to timm:NAME backbones"),
    (["model.backbone=timm:resnet18", "model.timm_kwargs={pretrained: true}"], "other than pretrained"),
    (["model.backbone=timm:resnet18", "model.timm_kwargs=[1, 2]"], "expected a mapping"),
    (["model.backbone=timm:resnet18", "model.timm_kwargs={a: {b: 1}}"], "not 'a'"),
])
def test_timm_kwargs_errors_at_load(overrides, needle):
    from contrastlab.config import load_config

    with pytest.raises(ConfigError, match=needle) as e:
        load_config("simclr", overrides)
    assert "\n" not in str(e.value)


def test_timm_kwargs_a_model_refuses_is_one_line():
    with pytest.raises(ConfigError, match=r"timm model 'resnet18' refused them") as e:
        build_backbone("timm:resnet18", timm_kwargs={"no_such_option": 1})
    assert "\n" not in str(e.value)


def test_missing_timm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(UserError, match=r"pip install 'contrastlab\[timm\]'") as e:
        build_backbone("timm:resnet18")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"pip install 'contrastlab\[timm\]'"):
        build_dataclass(ModelConfig, {"backbone": "timm:resnet18"}, "model")
    assert isinstance(build_backbone("small_cnn", width=4), SmallCNN)  # the others need no timm
