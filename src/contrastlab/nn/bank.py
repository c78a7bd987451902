"""A memory bank: one L2-normalised vector per training image, updated by a moving average when
the image is visited (Wu et al., CVPR 2018; Invariance Propagation keeps its kNN graph beside it).

The bank is a buffer, so it is checkpointed and moves with the model. Its number of rows is the
size of the training set, which a method learns only once the data exists: the bank starts
empty (0 rows) and :meth:`MemoryBank.allocate` sizes it; loading a state dict sizes it from the
stored tensor (so a checkpoint is read by a method built from its config alone, e.g. for
evaluation). Memory is O(n d); nothing here ever forms an n x n tensor.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..distributed import gather_no_grad

__all__ = ["MemoryBank", "bank_dots"]


class MemoryBank(nn.Module):
    """``vectors`` (n, dim): L2-normalised rows, updated as
    ``v_i <- normalize(momentum * v_i + (1 - momentum) * normalize(f_i))`` for the visited images
    (Invariance Propagation's update with momentum 0.5)."""

    def __init__(self, dim: int, momentum: float = 0.5):
        super().__init__()
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.dim, self.momentum = dim, momentum
        self.register_buffer("vectors", torch.empty(0, dim))

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @torch.no_grad()
    def allocate(self, n: int, generator: torch.Generator | None = None) -> None:
        """n random unit vectors (Gaussian directions, drawn with ``generator`` or the global RNG),
        on the device the bank is on."""
        v = torch.randn(n, self.dim, generator=generator)
        self.vectors = F.normalize(v, dim=1).to(self.vectors.device)

    @torch.no_grad()
    def update(self, index: torch.Tensor, features: torch.Tensor) -> None:
        """The moving average of the rows ``index`` towards the normalised ``features`` (B, dim),
        with the rows of every process (gathered in rank order), so all processes keep the same
        bank. ``index`` holds distinct rows."""
        f = gather_no_grad(F.normalize(features.detach().float(), dim=1))
        index = gather_no_grad(index.to(self.vectors.device))
        old = self.vectors[index].float()
        new = F.normalize(self.momentum * old + (1 - self.momentum) * f.to(old.device), dim=1)
        self.vectors[index] = new.to(self.vectors.dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, error_msgs):
        stored = state_dict.get(prefix + "vectors")
        if stored is not None and stored.dim() == 2 and stored.shape[1] == self.dim:
            # the number of rows is the training set's, known from the stored bank
            self.vectors = torch.empty_like(stored, device=self.vectors.device, dtype=self.vectors.dtype)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, error_msgs)

    def extra_repr(self) -> str:
        return f"n={len(self)}, dim={self.dim}, momentum={self.momentum}"


def bank_dots(f: torch.Tensor, bank: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, J) float32 dot products ``f[b] . bank[index[b, j]]`` of the queries ``f`` (B, dim) with
    the bank rows ``index`` (B, J), differentiable in ``f``. The rows are gathered into a copy
    (B, J, dim), which autograd keeps for the backward pass: the bank may then be updated in
    place before the backward pass runs. Memory O(B J dim), independent of the bank's size."""
    rows = bank[index].float()  # (B, J, dim) copy
    return torch.einsum("bd,bjd->bj", f.float(), rows)
