"""The alpha network of Labels4Free (Abdal et al., ICCV 2021, section 3.2): a small network on a
generator's intermediate feature maps that outputs a soft foreground mask at full resolution.

As ``bg_extractor`` in model_new.py of RameenAbdal/Labels4Free (lines 853-913), generalised to any
number of resolution levels: the feature maps come in pairs, two per resolution (the upsampling
and the second styled convolution of a StyleGAN2 level), lowest resolution first. Each map is
reduced by its own 1 x 1 convolution to 3 channels; a level is the concatenation of its pair (6
channels). Then

    out = up(level_0)
    for each middle level l:  out = up(lrelu_0.2(conv1x1_{12->6}([level_l, out])))
    mask = sigmoid(conv1x1_{6->1}(level_last + out))

where ``up`` is bicubic upsampling (align_corners=True) by 2. The official network uses the last
six levels of the generator (from 8 px for a 256 px generator, 16 px for 512, 32 px for 1024:
``res_idx`` in model_new.py line 397); ``levels`` chooses how many here (the 32 px digit generator
has three: 8, 16 and 32 px)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class AlphaNetwork(nn.Module):
    def __init__(self, feature_channels: list[int], reduce: int = 3):
        super().__init__()
        if len(feature_channels) < 4 or len(feature_channels) % 2:
            raise ValueError(f"the alpha network needs pairs of feature maps of at least two levels, got {len(feature_channels)} maps")
        self.reduce0 = nn.ModuleList([nn.Conv2d(c, reduce, 1) for c in feature_channels[0::2]])
        self.reduce1 = nn.ModuleList([nn.Conv2d(c, reduce, 1) for c in feature_channels[1::2]])
        self.merge = nn.ModuleList([nn.Conv2d(4 * reduce, 2 * reduce, 1) for _ in range(len(feature_channels) // 2 - 2)])
        self.out = nn.Conv2d(2 * reduce, 1, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """feats: the maps of the last ``2 * levels`` generator layers, lowest resolution first -> mask (B, 1, S, S)."""
        if len(feats) != 2 * len(self.reduce0):
            raise ValueError(f"the alpha network takes {2 * len(self.reduce0)} feature maps, got {len(feats)}")

        def level(i):
            return torch.cat([self.reduce0[i](feats[2 * i]), self.reduce1[i](feats[2 * i + 1])], 1)

        def up(x):
            return F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=True)

        out = up(level(0))
        for i, merge in enumerate(self.merge, start=1):
            out = up(F.leaky_relu(merge(torch.cat([level(i), out], 1)), 0.2))
        return torch.sigmoid(self.out(level(len(self.reduce0) - 1) + out))


# The official release (RameenAbdal/Labels4Free) stores the alpha network as the state dict of one of
# two classes of model_new.py: ``bg_extractor_repro`` (lines 784-850; the class test_sample.py loads
# the released "Alpha Network" weights into, from ``ckpt["bg_extractor_ema"]``), always six levels,
# with one attribute per convolution, and ``bg_extractor`` (lines 853-913; train.py without
# --reproduce_model) with module lists. Both compute what AlphaNetwork computes; only the names differ.
OFFICIAL_LAYOUTS = ("repro", "lists")


def official_alpha_key_map(net: AlphaNetwork, layout: str) -> dict[str, str]:
    """{official key: AlphaNetwork key} for ``layout`` "repro" (bg_extractor_repro: conv1 .. conv12,
    conv_next, conv_next2 .. conv_next4, conv_n) or "lists" (bg_extractor: conv_fns0.i, conv_fns1.i,
    conv_merge_fns.j, conv_n)."""
    levels = len(net.reduce0)
    if layout == "repro":
        if levels != 6:
            raise ValueError(f"the official bg_extractor_repro has 6 levels; this alpha network has {levels} "
                             "(alpha_levels=6 reads it)")  # fmt: skip
        names = {}
        for i in range(levels):
            names[f"reduce0.{i}"] = f"conv{2 * i + 1}"
            names[f"reduce1.{i}"] = f"conv{2 * i + 2}"
        for j in range(len(net.merge)):
            names[f"merge.{j}"] = "conv_next" if j == 0 else f"conv_next{j + 1}"
    elif layout == "lists":
        names = {f"reduce0.{i}": f"conv_fns0.{i}" for i in range(levels)}
        names.update({f"reduce1.{i}": f"conv_fns1.{i}" for i in range(levels)})
        names.update({f"merge.{j}": f"conv_merge_fns.{j}" for j in range(len(net.merge))})
    else:
        raise ValueError(f"layout must be one of {OFFICIAL_LAYOUTS}, got {layout!r}")
    names["out"] = "conv_n"
    return {f"{theirs}.{p}": f"{ours}.{p}" for ours, theirs in names.items() for p in ("weight", "bias")}


def load_alpha_network(path, net: AlphaNetwork, entry: str = "bg_extractor_ema") -> str:
    """Loads an official Labels4Free alpha network (``entry`` of the file, as train.py saves it and
    test_sample.py reads it) into ``net``; returns the layout found ("repro" or "lists"). Every key
    is mapped explicitly; a missing or unexpected key, or a shape that differs, is a one-line
    UserError naming the key (and both shapes)."""
    import os

    from ..errors import UserError

    if not os.path.isfile(str(path)):
        raise UserError(f"alpha network checkpoint {path} does not exist")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: not a tensors-only checkpoint ({type(e).__name__}); re-save its "
                        f"{entry!r} state dict alone") from None  # fmt: skip
    if not isinstance(ckpt, dict) or entry not in ckpt:
        have = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"{path}: no {entry!r} state dict (the official train.py saves the alpha network's EMA "
                        f"under it); this file has {have}")  # fmt: skip
    state = ckpt[entry]
    layout = "lists" if any(k.startswith("conv_fns0.") for k in state) else "repro"
    try:
        key_map = official_alpha_key_map(net, layout)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    missing = [k for k in key_map if k not in state]
    unexpected = [k for k in state if k not in key_map]
    if missing or unexpected:
        raise UserError(f"{path}: {entry} ({layout} layout) does not match an alpha network of {len(net.reduce0)} "
                        f"levels: {len(missing)} missing key(s) {missing[:3]}, {len(unexpected)} unexpected key(s) "
                        f"{unexpected[:3]}; set method.alpha_levels to the checkpoint's")  # fmt: skip
    mine = net.state_dict()
    new = {}
    for theirs, ours in key_map.items():
        t = state[theirs]
        if not torch.is_tensor(t) or tuple(t.shape) != tuple(mine[ours].shape):
            got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise UserError(f"{path}: {entry} key {theirs!r} has shape {got} where the configured alpha network has "
                            f"{tuple(mine[ours].shape)}; the generator's channels (size, channel_multiplier) must be "
                            "the checkpoint's")  # fmt: skip
        new[ours] = t.to(mine[ours].dtype)
    net.load_state_dict(new, strict=True)
    return layout
