"""A k-nearest-neighbour graph over the images of a training set and the images reachable in it
(Invariance Propagation's positives: breadth-first search to a given depth).

The graph is an (n, k) integer buffer: row i lists the k neighbours of image i, -1 where none is
known yet. Memory is O(n k); a search from a batch touches only the rows it reaches.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..distributed import gather_no_grad

__all__ = ["KNNGraph", "reachable", "neighbours_without_self"]

_PAD = torch.iinfo(torch.long).max  # sorts after every image index


class KNNGraph(nn.Module):
    """``neighbours`` (n, k) long, -1 where unknown. Starts empty (0 rows) until :meth:`allocate`,
    or until a state dict is loaded (it is sized from the stored tensor)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.register_buffer("neighbours", torch.empty(0, k, dtype=torch.long))

    def __len__(self) -> int:
        return self.neighbours.shape[0]

    def allocate(self, n: int) -> None:
        self.neighbours = torch.full((n, self.k), -1, dtype=torch.long, device=self.neighbours.device)

    @torch.no_grad()
    def set_rows(self, index: torch.Tensor, rows: torch.Tensor) -> None:
        """``neighbours[index] = rows`` with the rows of every process (gathered in rank order)."""
        index = gather_no_grad(index.to(self.neighbours.device))
        rows = gather_no_grad(rows.to(self.neighbours.device, torch.long))
        self.neighbours[index] = rows

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, error_msgs):
        stored = state_dict.get(prefix + "neighbours")
        if stored is not None and stored.dim() == 2 and stored.shape[1] == self.k:
            self.neighbours = torch.empty_like(stored, device=self.neighbours.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, error_msgs)

    def extra_repr(self) -> str:
        return f"n={len(self)}, k={self.k}"


def neighbours_without_self(ranked: torch.Tensor, index: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k): the first ``k`` entries of each row of ``ranked`` (B, >= k+1; most similar first)
    that are not the row's own image ``index[b]``: the top-(k+1) minus self, or the top k when
    self is not among them."""
    if ranked.shape[1] < k + 1:
        raise ValueError(f"need at least k + 1 = {k + 1} ranked candidates per row, got {ranked.shape[1]}")
    top = ranked[:, : k + 1]
    is_self = (top == index.to(top.device)[:, None]).to(torch.int8)
    order = torch.argsort(is_self, dim=1, stable=True)  # the others first, in their ranked order
    return top.gather(1, order)[:, :k]


def _unique_rows(ids: torch.Tensor) -> torch.Tensor:
    """Each row's distinct valid entries (>= 0), sorted, padded with ``_PAD`` to the widest row."""
    key = torch.where(ids >= 0, ids, torch.full_like(ids, _PAD))
    key, _ = key.sort(dim=1)
    if key.shape[1] > 1:
        dup = torch.zeros_like(key, dtype=torch.bool)
        dup[:, 1:] = key[:, 1:] == key[:, :-1]
        key = key.masked_fill(dup, _PAD).sort(dim=1).values
    width = int((key != _PAD).sum(1).max()) if key.numel() else 0
    return key[:, :width].contiguous()


def _unpad(x: torch.Tensor) -> torch.Tensor:
    return x.masked_fill(x == _PAD, -1)


def _member(values: torch.Tensor, sorted_rows: torch.Tensor) -> torch.Tensor:
    """(B, m) bool: whether ``values[b, j]`` is in ``sorted_rows[b]`` (sorted, ``_PAD``-padded)."""
    if sorted_rows.shape[1] == 0:
        return torch.zeros_like(values, dtype=torch.bool)
    pos = torch.searchsorted(sorted_rows, values).clamp_max(sorted_rows.shape[1] - 1)
    return sorted_rows.gather(1, pos) == values


@torch.no_grad()
def reachable(neighbours: torch.Tensor, index: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Breadth-first search in the graph ``neighbours`` (n, k) (entries < 0 are no edge) from each
    image of ``index`` (B,) to ``depth`` hops: the images reached, the start excluded.

    Returns ``(ids, mask)``, both (B, m): row b holds the distinct images reached from
    ``index[b]``, sorted by index, padded with -1 where ``mask`` is False; m is the largest count
    (at most k + k^2 + ... + k^depth, and at most n - 1). Each level expands only the new
    frontier, so the work is that of a BFS, never O(n) per row."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    index = index.to(neighbours.device, torch.long)
    b = index.shape[0]
    visited = index[:, None].clone()  # sorted per row (one entry); the start counts as visited
    frontier = visited
    for _ in range(depth):
        if frontier.shape[1] == 0:
            break
        valid = frontier != _PAD
        nxt = neighbours[torch.where(valid, frontier, 0)]  # (B, f, k)
        nxt = nxt.masked_fill(~valid[:, :, None], -1).reshape(b, -1)
        nxt = _unique_rows(nxt)
        frontier = _unique_rows(_unpad(nxt.masked_fill(_member(nxt, visited), _PAD)))  # the new images only
        visited = _unique_rows(_unpad(torch.cat([visited, frontier], 1)))
    ids = _unique_rows(_unpad(visited.masked_fill(visited == index[:, None], _PAD)))
    mask = ids != _PAD
    return ids.masked_fill(~mask, -1), mask
