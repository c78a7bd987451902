"""Backbones: a small CNN for CPU runs, torchvision ResNets with an optional CIFAR stem, and any
timm model (``timm:NAME``, the optional extra ``contrastlab[timm]``).

Every backbone maps float images to features through the same interface, in timm's manner:

- ``forward_features(x)``: the final feature map (B, C, h, w), before pooling (C = ``feature_dim``);
- ``forward(x)``: the pooled feature vector (B, ``out_dim``); for the CNNs here the global
  average of ``forward_features`` over h and w, flattened;
- ``stage_dims``: the channels of each stage; ``forward_stages(x, indices=None)``: the list of
  per-stage feature maps (B, stage_dims[i], h_i, w_i), in stage order. ``indices``: None for
  all stages, an int n for the last n, or a sequence of stage indices (negative ones count
  from the end), as timm's ``forward_intermediates``.

:class:`Encoder` puts :class:`InputNorm` in front of the backbone, so the input
standardisation is part of the saved model and evaluation cannot forget it; it exposes the same
three calls, each applying the norm (and channels_last) as its ``forward`` does.
"""
from __future__ import annotations

import difflib
import itertools
from collections.abc import Sequence
from typing import Union

import torch
import torch.nn as nn

from ..errors import ConfigError, UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
NORMS = ("per_image", "imagenet", "cifar", "none")
BACKBONES = ("small_cnn", "resnet18", "resnet34", "resnet50")  # and timm:NAME
TIMM_PREFIX = "timm:"
TIMM_MISSING = "timm is not installed; pip install 'contrastlab[timm]' (or pip install timm) to use timm:NAME backbones"

Indices = Union[None, int, Sequence[int]]


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


def stage_indices(indices: Indices, n: int) -> list[int]:
    """The absolute stage indices, ascending, that ``indices`` selects out of ``n`` stages: None
    -> all, an int k -> the last k, a sequence -> those (negative ones count from the end)."""
    if indices is None:
        return list(range(n))
    if isinstance(indices, bool) or not isinstance(indices, (int, Sequence)) or isinstance(indices, str):
        raise TypeError(f"stage indices: expected None, an int or a sequence of ints, got {indices!r}")
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"stage indices: last-{indices} is out of range for {n} stages (1 to {n})")
        return list(range(n - indices, n))
    take = set()
    for i in indices:
        if not -n <= int(i) < n:
            raise ValueError(f"stage index {i} is out of range for {n} stages ({-n} to {n - 1})")
        take.add(int(i) % n)
    if not take:
        raise ValueError("stage indices: an empty sequence selects no stage")
    return sorted(take)


def _conv_bn(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """A four-stage CNN for CPU runs: conv3x3-BN-ReLU stages at 32, 16, 8 and 4 px (max-pool
    between stages), global average pool. ``widths`` per stage; ``depth`` convs per stage.
    Defaults (32, 64, 128, 128), depth 1: 0.24M parameters, ~13M multiply-adds per 32 px image.

    ``self.features`` keeps its layout (and so the state-dict keys of older checkpoints):
    [stage 0 convs, max-pool, stage 1 convs, ..., stage 3 convs, AdaptiveAvgPool2d, Flatten].
    Stage i (i > 0) starts with its max-pool.
    """

    def __init__(self, width: int = 32, depth: int = 1, widths: tuple | None = None):
        super().__init__()
        widths = widths or (width, 2 * width, 4 * width, 4 * width)
        layers, cin, ends = [], 3, []
        for i, w in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            for _ in range(depth):
                layers.append(_conv_bn(cin, w))
                cin = w
            ends.append(len(layers))
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self._stage_ends = tuple(ends)  # stage i is features[ends[i - 1]:ends[i]]
        self.stage_dims = tuple(widths)
        self.out_dim = self.feature_dim = cin

    def forward_features(self, x):
        """(B, 3, H, W) -> the last stage's map (B, out_dim, H / 8, W / 8), before pooling."""
        for layer in itertools.islice(self.features, self._stage_ends[-1]):
            x = layer(x)
        return x

    def forward(self, x):
        x = self.forward_features(x)
        for layer in itertools.islice(self.features, self._stage_ends[-1], None):  # pool, flatten
            x = layer(x)
        return x

    def forward_stages(self, x, indices: Indices = None) -> list[torch.Tensor]:
        """The maps after each selected stage (H, H / 2, H / 4, H / 8 px), in stage order."""
        take = stage_indices(indices, len(self._stage_ends))
        out, start = [], 0
        for i, end in enumerate(self._stage_ends[: take[-1] + 1]):
            for layer in itertools.islice(self.features, start, end):
                x = layer(x)
            if i in take:
                out.append(x)
            start = end
        return out


class TorchvisionResNet(nn.Module):
    """torchvision ResNet-18/34/50 without its classifier; ``cifar_stem`` swaps the 7x7/2 conv and
    max-pool for a 3x3/1 conv (the standard for 32 px inputs). Stages: layer1..layer4 (strides
    4, 8, 16, 32 with the ImageNet stem; 1, 2, 4, 8 with the CIFAR stem).

    ``deep_stem``: the stem of PSPNet's "deep base" ResNet (ResNet-v1c), as in hszhao/semseg
    model/resnet.py, which RePRI and CWT copy (mboudiaf/RePRI-for-Few-Shot-Segmentation
    src/model/resnet.py:105-114): conv3x3(3 -> 64, stride 2), conv3x3(64 -> 64), conv3x3(64 -> 128),
    each with BatchNorm and ReLU, then max-pool 3x3/2; layer1 takes 128 channels (its first block's
    1x1 conv and its shortcut conv read 128 channels). Modules ``conv1, bn1, conv2, bn2, conv3, bn3``:
    the official checkpoint's key names.

    ``output_stride`` 16 or 8 (None or 32: the plain network): the strides of layer4 (16) or of
    layer3 and layer4 (8) are set to 1 and every 3x3 conv of those stages is dilated 2 (layer3) and
    4 (layer4, 2 at stride 16), in every block, the first one included, as PSPNet's dilated ResNet
    (zhiheLu/CWT-for-FSS src/model/pspnet.py:94-103: ``conv2`` dilation = padding = 2 / 4, stride 1, and the
    shortcut's ``downsample.0`` stride 1). (torchvision's own ``replace_stride_with_dilation`` keeps the
    previous dilation in each stage's first block, so it is not used.) A BasicBlock (ResNet-18/34)
    dilates both its 3x3 convs. The weights' shapes are those of the plain network, so ImageNet
    weights load unchanged."""

    def __init__(self, depth: int = 18, cifar_stem: bool = False, zero_init_residual: bool = False,
                 output_stride: int | None = None, deep_stem: bool = False):  # fmt: skip
        super().__init__()
        import torchvision.models as tvm

        ctor = {18: tvm.resnet18, 34: tvm.resnet34, 50: tvm.resnet50}.get(depth)
        if ctor is None:
            raise ValueError(f"unsupported ResNet depth {depth}; expected 18, 34 or 50")
        if output_stride not in (None, 8, 16, 32):
            raise ValueError(f"output_stride={output_stride}: expected 8, 16 or 32 (or None)")
        if cifar_stem and (deep_stem or output_stride not in (None, 32)):
            raise ValueError("cifar_stem excludes deep_stem and output_stride 8 / 16 (choose one stem)")
        net = ctor(weights=None, zero_init_residual=zero_init_residual)
        if cifar_stem:
            net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        self.deep_stem = bool(deep_stem)
        if deep_stem:
            _make_deep_stem(net)
        self.output_stride = output_stride or 32
        if self.output_stride < 32:
            _dilate(net.layer4, 4 if self.output_stride == 8 else 2)
            if self.output_stride == 8:
                _dilate(net.layer3, 2)
        self.out_dim = self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net
        expansion = type(net.layer1[0]).expansion
        self.stage_dims = tuple(expansion * w for w in (64, 128, 256, 512))

    def _stem(self, x):
        n = self.net
        x = n.relu(n.bn1(n.conv1(x)))
        if self.deep_stem:
            x = n.relu(n.bn3(n.conv3(n.relu(n.bn2(n.conv2(x))))))
        return n.maxpool(x)

    def _stages(self):
        return (self.net.layer1, self.net.layer2, self.net.layer3, self.net.layer4)

    def forward_features(self, x):
        """(B, 3, H, W) -> layer4's map (B, out_dim, H / 32, W / 32; H / 8 with the CIFAR stem)."""
        x = self._stem(x)
        for layer in self._stages():
            x = layer(x)
        return x

    def forward(self, x):
        return torch.flatten(self.net.avgpool(self.forward_features(x)), 1)  # as torchvision's forward

    def forward_stages(self, x, indices: Indices = None) -> list[torch.Tensor]:
        """The maps after layer1..layer4 (those selected), in stage order."""
        take = stage_indices(indices, 4)
        x, out = self._stem(x), []
        for i, layer in enumerate(self._stages()[: take[-1] + 1]):
            x = layer(x)
            if i in take:
                out.append(x)
        return out


def _kaiming(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # torchvision's (and semseg's) init
    return conv


def _make_deep_stem(net: nn.Module) -> None:
    """Replaces a torchvision ResNet's 7x7 stem by the deep stem (see :class:`TorchvisionResNet`) and
    widens layer1's input to 128 channels."""
    net.conv1, net.bn1 = _kaiming(nn.Conv2d(3, 64, 3, 2, 1, bias=False)), nn.BatchNorm2d(64)
    net.conv2, net.bn2 = _kaiming(nn.Conv2d(64, 64, 3, 1, 1, bias=False)), nn.BatchNorm2d(64)
    net.conv3, net.bn3 = _kaiming(nn.Conv2d(64, 128, 3, 1, 1, bias=False)), nn.BatchNorm2d(128)
    net.maxpool = nn.MaxPool2d(3, 2, 1)
    block = net.layer1[0]
    block.conv1 = _kaiming(nn.Conv2d(128, block.conv1.out_channels, block.conv1.kernel_size, block.conv1.stride,
                                     block.conv1.padding, bias=False))  # fmt: skip
    out = block.conv3.out_channels if hasattr(block, "conv3") else block.conv2.out_channels
    # the shortcut reads 128 channels: a 1x1 conv + BN (semseg's _make_layer adds one whenever inplanes differs)
    block.downsample = nn.Sequential(_kaiming(nn.Conv2d(128, out, 1, 1, bias=False)), nn.BatchNorm2d(out))


def _dilate(layer: nn.Sequential, d: int) -> None:
    """Stride 1 and dilation ``d`` in every block of a ResNet stage (see :class:`TorchvisionResNet`)."""
    for block in layer:
        convs = [block.conv2] if hasattr(block, "conv3") else [block.conv1, block.conv2]  # Bottleneck | BasicBlock
        for conv in convs:
            conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)
        block.stride = 1


def _import_timm():
    try:
        import timm
    except ImportError:
        raise UserError(TIMM_MISSING) from None
    return timm


def timm_name_problem(name: str) -> str | None:
    """None when ``name`` is a timm model architecture, else a one-line reason (with the
    closest names, or how to install timm)."""
    timm = _import_timm()
    if not name:
        return "timm:NAME needs a model name, e.g. timm:resnet18 (timm.list_models() lists them)"
    if timm.is_model(name):
        return None
    near = difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    return f"timm has no model {name!r}{hint}; timm.list_models() lists them"


def backbone_problem(name) -> str | None:
    """For config validation: None when ``name`` names a backbone, else what is allowed."""
    allowed = f"one of {', '.join(BACKBONES)} or timm:NAME"
    if not isinstance(name, str):
        return allowed
    if name.startswith(TIMM_PREFIX):
        try:
            problem = timm_name_problem(name[len(TIMM_PREFIX):])
        except UserError as e:
            return f"a backbone whose library is installed: {e}"
        return problem and f"timm:NAME with NAME a timm model: {problem}"
    return None if name in BACKBONES else allowed


class TimmBackbone(nn.Module):
    """Any timm model as a backbone, built with ``num_classes=0`` and never with pretrained
    weights (nothing downloads; load weights into ``self.net`` yourself). ``kwargs`` go to
    ``timm.create_model`` (e.g. ``img_size=32, patch_size=8`` for a ViT).

    - ``forward(x)``: timm's own pooled features (B, out_dim): its ``global_pool`` and head
      pre-logits, so a ViT gives its class token, not the mean of ``forward_features``.
    - ``forward_features(x)``: (B, C, h, w) with C = ``feature_dim`` (timm's ``num_features``).
      A CNN's map as timm returns it (NHWC models such as Swin are permuted to NCHW). A token
      model (ViT: timm's forward_features gives tokens (B, N, C)) gives its patch tokens after
      the final norm, laid out on the patch grid, through ``forward_intermediates(...,
      output_fmt='NCHW', norm=True)``; a token model without it raises a ValueError.
    - ``stage_dims`` / ``forward_stages``: timm's ``feature_info`` and ``forward_intermediates``
      (NCHW, without the final norm). These are timm's stages: for a timm ResNet the stem
      (act1) is stage 0 and layer1..layer4 are stages 1..4; for a ViT every block is a stage.
    """

    def __init__(self, name: str, **kwargs):
        super().__init__()
        timm = _import_timm()
        problem = timm_name_problem(name)
        if problem:
            raise ConfigError(f"backbone timm:{name}: {problem}")
        self.name = name
        try:
            self.net = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        except TypeError as e:  # an option the model's class does not take
            raise ConfigError(f"model.timm_kwargs={kwargs}: timm model {name!r} refused them ({e})") from None
        self.feature_dim = int(self.net.num_features)
        self.out_dim = int(getattr(self.net, "head_hidden_size", None) or self.net.num_features)
        info = getattr(self.net, "feature_info", None)
        self.stage_dims = tuple(int(f["num_chs"]) for f in info) if isinstance(info, list) else ()
        self._tokens = None  # whether timm's forward_features gives tokens; known after the first call

    def forward(self, x):
        return self.net(x)

    def _no_dense(self, what: str) -> ValueError:
        return ValueError(f"timm model {self.name!r} has no forward_intermediates(output_fmt='NCHW'), so it has no "
                          f"{what}; forward(x) gives its pooled features")  # fmt: skip

    def _dense_from_tokens(self, x):
        if not hasattr(self.net, "forward_intermediates"):
            raise self._no_dense("dense (B, C, h, w) features (its forward_features gives tokens)")
        return self.net.forward_intermediates(x, indices=1, norm=True, stop_early=True, output_fmt="NCHW",
                                              intermediates_only=True)[-1]  # fmt: skip

    def forward_features(self, x):
        if self._tokens:
            return self._dense_from_tokens(x)
        y = self.net.forward_features(x)
        if y.ndim == 4:
            self._tokens = False
            return y.permute(0, 3, 1, 2) if getattr(self.net, "output_fmt", "NCHW") == "NHWC" else y
        self._tokens = True
        return self._dense_from_tokens(x)

    def forward_stages(self, x, indices: Indices = None) -> list[torch.Tensor]:
        if not hasattr(self.net, "forward_intermediates") or not self.stage_dims:
            raise self._no_dense("stages")
        take = stage_indices(indices, len(self.stage_dims))
        return self.net.forward_intermediates(x, indices=take, stop_early=True, output_fmt="NCHW",
                                              intermediates_only=True)  # fmt: skip


def resnet_options_problem(name: str, cifar_stem=False, output_stride=None, deep_stem=False, **_) -> str | None:
    """None, or the one-line reason why the torchvision ResNets' own options do not fit: the output
    stride or the deep stem with another backbone, or either with the CIFAR stem."""
    for key, value, off in (("output_stride", output_stride, (None, 32)), ("deep_stem", deep_stem, (None, False))):
        if value not in off and str(name).lower() not in ("resnet18", "resnet34", "resnet50"):
            return (f"model.{key}={value} applies to the torchvision ResNets (resnet18|34|50), not to "
                    f"model.backbone={name}; remove it or choose a ResNet")
    if cifar_stem and (deep_stem or output_stride not in (None, 32)):
        return (f"model.cifar_stem=true excludes model.deep_stem={str(bool(deep_stem)).lower()} and model.output_stride="
                f"{output_stride} (the CIFAR stem keeps 32 px images at stride 1; the deep stem and the dilated stages "
                "are the segmentation network's); choose one")
    return None


def build_backbone(name: str, **kw) -> nn.Module:
    """``small_cnn`` (``width``, ``depth``), ``resnet18|34|50`` (``cifar_stem``, ``output_stride``,
    ``deep_stem``) or ``timm:NAME`` (``timm_kwargs``: a dict for ``timm.create_model``). Options of the
    other kinds are ignored, except the torchvision ResNets' own options set with another backbone,
    which are an error."""
    problem = resnet_options_problem(name, **kw)
    if problem:
        raise ConfigError(problem)
    if name.lower().startswith(TIMM_PREFIX):
        if kw.get("cifar_stem"):
            raise ConfigError(f"model.cifar_stem applies to the torchvision ResNets, not to {name}; "
                              "pass the timm model's own options instead")  # fmt: skip
        return TimmBackbone(name[len(TIMM_PREFIX):], **kw.get("timm_kwargs", {}))
    name = name.lower()
    if name == "small_cnn":
        return SmallCNN(width=kw.get("width", 32), depth=kw.get("depth", 1))
    if name in ("resnet18", "resnet34", "resnet50"):
        return TorchvisionResNet(int(name[6:]), cifar_stem=kw.get("cifar_stem", False), output_stride=kw.get("output_stride"),
                                 deep_stem=bool(kw.get("deep_stem", False)))  # fmt: skip
    raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)} or timm:NAME")


def torchvision_state_dict(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of a :class:`TorchvisionResNet` (or of an :class:`Encoder` around one) in
    torchvision's ``resnet*`` key format: ``conv1.weight``, ``bn1.running_mean``,
    ``layer1.0.conv1.weight``, ... with no prefix and no ``fc`` (detection libraries load such a
    file as a backbone without renaming). Tensors are detached, contiguous copies on the CPU. Any
    other backbone is a one-line :class:`UserError` (it has no torchvision layout)."""
    if isinstance(backbone, Encoder):
        backbone = backbone.backbone
    if not isinstance(backbone, TorchvisionResNet):
        kind = f"timm:{backbone.name}" if isinstance(backbone, TimmBackbone) else type(backbone).__name__
        raise UserError(f"the backbone is {kind}, which has no torchvision ResNet key format; only runs with "
                        "model.backbone=resnet18|resnet34|resnet50 can be exported")  # fmt: skip
    return {k: v.detach().cpu().contiguous().clone() for k, v in backbone.net.state_dict().items()
            if not k.startswith("fc.")}  # fmt: skip


# the keys of an ImageNet checkpoint that a backbone without classifier leaves out (RePRI and CWT load
# resnet50_v2.pth with strict=False for this: RePRI src/model/resnet.py:195-196)
CLASSIFIER_KEYS = ("fc.weight", "fc.bias")


def backbone_weight_keys(backbone: nn.Module) -> dict[str, str]:
    """The key map of a backbone weights file: {key in the file: key in ``backbone.state_dict()``}.

    - :class:`TorchvisionResNet`: torchvision's ``resnet*`` names (``conv1.weight``, ``bn1.running_mean``,
      ``layer1.0.conv1.weight``, ...; the model's ``net.`` prefix dropped). With ``deep_stem`` these are the
      official PSPNet / RePRI / CWT deep-base names (semseg's ``initmodel/resnet50_v2.pth``): ``conv1, bn1,
      conv2, bn2, conv3, bn3`` for the stem, then ``layer1`` .. ``layer4`` as torchvision's.
    - :class:`SmallCNN`: its own state-dict names (``features.0.0.weight``, ...).
    - :class:`TimmBackbone`: timm's names for the model (``net.`` dropped).
    An :class:`Encoder` maps through its backbone (its input norm has no weights)."""
    if isinstance(backbone, Encoder):
        backbone = backbone.backbone
    own = list(backbone.state_dict())
    if isinstance(backbone, (TorchvisionResNet, TimmBackbone)):
        return {k[len("net."):]: k for k in own}
    return {k: k for k in own}


def load_backbone_weights(backbone: nn.Module, state: dict, where: str) -> None:
    """Loads a weights file's ``state`` into ``backbone`` through :func:`backbone_weight_keys`, strictly:
    every weight of the backbone from the file, except ``num_batches_tracked`` counters (files saved
    before PyTorch 0.4.1 have none; the model keeps its own) and the file's ImageNet classifier
    (``fc.weight``, ``fc.bias``), which is skipped. The first missing key, the first unexpected key,
    or the first key of another shape (with both shapes) is a one-line :class:`UserError` naming
    ``where`` (e.g. ``model.weights=PATH``). A file saved from ``nn.DataParallel`` (every key
    prefixed ``module.``) is read without the prefix."""
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    target = backbone.backbone if isinstance(backbone, Encoder) else backbone
    keys = backbone_weight_keys(target)
    own = target.state_dict()
    kind = f"timm:{target.name}" if isinstance(target, TimmBackbone) else type(target).__name__
    if isinstance(target, TorchvisionResNet):
        kind = f"{kind} ({'deep stem, ' if target.deep_stem else ''}{len(target.net.layer3)} blocks in layer3)"
    for file_key in state:
        if file_key not in keys and file_key not in CLASSIFIER_KEYS:
            raise UserError(f"{where}: unexpected key {file_key!r} (not a weight of the {kind} backbone; it expects keys "
                            f"such as {next(iter(keys))!r}); give a file of this backbone's weights or change "
                            "model.backbone / model.deep_stem")  # fmt: skip
    loaded = {}
    for file_key, key in keys.items():
        if file_key not in state:
            if key.endswith("num_batches_tracked"):
                continue
            raise UserError(f"{where}: missing key {file_key!r} ({len([k for k in keys if k not in state])} of the "
                            f"{kind} backbone's weights are not in the file); give a file of this backbone's weights or "
                            "change model.backbone / model.deep_stem")  # fmt: skip
        value = state[file_key]
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{where}: {file_key!r} is a {type(value).__name__}, not a tensor; give a state dict of tensors")
        if tuple(value.shape) != tuple(own[key].shape):
            raise UserError(f"{where}: {file_key!r} has shape {tuple(value.shape)} in the file but "
                            f"{tuple(own[key].shape)} in the model; give a file of this backbone's weights or change "
                            "model.backbone / model.deep_stem")  # fmt: skip
        loaded[key] = value
    with torch.no_grad():
        for key, value in loaded.items():
            own[key].copy_(value)


class Encoder(nn.Module):
    """InputNorm followed by a backbone: float [0, 1] images -> features (B, out_dim).
    ``forward_features`` / ``forward_stages`` give the backbone's maps of the normalised input."""

    def __init__(self, backbone: nn.Module, norm: str = "per_image"):
        super().__init__()
        self.norm = InputNorm(norm)
        self.backbone = backbone
        self.out_dim = backbone.out_dim
        self.feature_dim = getattr(backbone, "feature_dim", backbone.out_dim)
        self.stage_dims = tuple(getattr(backbone, "stage_dims", ()))
        self.channels_last = False

    def to_channels_last(self) -> "Encoder":
        """NHWC weights and inputs: faster convolutions on CPUs (oneDNN) and tensor cores."""
        self.channels_last = True
        return self.to(memory_format=torch.channels_last)

    def _input(self, x):
        x = self.norm(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x):
        return self.backbone(self._input(x))

    def forward_features(self, x):
        """(B, 3, H, W) images in [0, 1] -> the backbone's final map (B, feature_dim, h, w)."""
        return self.backbone.forward_features(self._input(x))

    def forward_stages(self, x, indices: Indices = None) -> list[torch.Tensor]:
        """(B, 3, H, W) images in [0, 1] -> the backbone's per-stage maps (see the module docstring)."""
        return self.backbone.forward_stages(self._input(x), indices)
