"""Patch sampling and projection heads for patch-wise contrastive losses (CUT's PatchNCE)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .init import init_weights


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
