"""MoCo's queue of negative keys."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..distributed import gather_no_grad


class Queue(nn.Module):
    """A FIFO of K normalised keys, a buffer (so it is checkpointed and moves with the model).

    ``push`` gathers the keys of all processes (rank order) so every rank's queue is the same.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, k: torch.Tensor) -> None:
        k = gather_no_grad(F.normalize(k.detach().float(), dim=1)).to(self.keys.dtype)
        size = self.keys.shape[0]
        n = k.shape[0]
        if n > size:
            k, n = k[-size:], size
        p = int(self.ptr)
        idx = (torch.arange(n, device=k.device) + p) % size
        self.keys[idx] = k
        self.ptr.fill_((p + n) % size)
