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
    ``init_type`` / ``init_gain``: see :func:`~contrastlab.nn.init.init_weights`.
    """

    def __init__(self, in_channels: list[int], dim: int = 256, use_mlp: bool = True, init_type: str = "normal",
                 init_gain: float = 0.02):  # fmt: skip
        super().__init__()
        self.in_channels = [int(c) for c in in_channels]
        self.use_mlp = use_mlp
        if use_mlp:
            mlp = lambda c: nn.Sequential(nn.Linear(c, dim), nn.ReLU(), nn.Linear(dim, dim))  # noqa: E731
            self.mlps = nn.ModuleList(mlp(c) for c in self.in_channels)
        else:
            self.mlps = nn.ModuleList(nn.Identity() for _ in self.in_channels)
        self.out_dims = [dim if use_mlp else c for c in self.in_channels]
        init_weights(self, init_gain, init_type)

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


class PatchStackHead(nn.Module):
    """SimDCL's mapping network (``MappingF`` in models/networks.py of JunlinHan/DCLGAN): it reads
    the patch embeddings of one image at all its L PatchNCE layers (each (P, d): P patches of a
    d-dim head output) stacked as one L-channel "image" of P rows and d columns, and maps them
    to one L2-normalised ``dim`` vector:

        conv3x3 (L -> dim, stride 2, no padding), ReLU, global average pool,
        Linear(dim, dim), ReLU, Linear(dim, dim),  x / (|x|_2 + 1e-7)

    ``forward(embeddings)``: a list of L tensors (B, P, d) (every layer the same P and d) ->
    (B, dim). The official code stacks the embeddings of its one image (batch 1); here each image
    of a batch is its own stack. ``init_type`` / ``init_gain``: see :func:`init_weights`."""

    def __init__(self, n_layers: int, dim: int = 64, init_type: str = "normal", init_gain: float = 0.02):
        super().__init__()
        self.n_layers, self.dim = int(n_layers), int(dim)
        self.conv = nn.Conv2d(self.n_layers, self.dim, 3, stride=2)
        self.mlp = nn.Sequential(nn.Linear(self.dim, self.dim), nn.ReLU(), nn.Linear(self.dim, self.dim))
        init_weights(self, init_gain, init_type)

    def forward(self, embeddings: list[torch.Tensor]) -> torch.Tensor:
        if len(embeddings) != self.n_layers:
            raise ValueError(f"PatchStackHead was built for {self.n_layers} layers, got {len(embeddings)} embeddings")
        shapes = {tuple(e.shape) for e in embeddings}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3 or min(next(iter(shapes))[1:]) < 3:
            raise ValueError(f"PatchStackHead needs (B, P, d) embeddings of one shape with P, d >= 3, "
                             f"got {sorted(shapes)}")  # fmt: skip
        x = torch.stack(embeddings, dim=1)  # (B, L, P, d)
        x = self.mlp(F.relu(self.conv(x)).mean(dim=(2, 3)))
        return x / (x.norm(dim=1, keepdim=True) + 1e-7)
