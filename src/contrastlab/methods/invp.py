"""Invariance Propagation, InvP (Wang et al., NeurIPS 2020): positives found by walking a kNN graph.

One augmented view per image, a memory bank ``v`` (one L2-normalised row per training image)
and a kNN graph over the images (k neighbours each). Per step, for the embeddings f of the batch:

1. background B: the K rows of the bank most similar to f (chunked search, never n x n);
   ``S_j = exp(f . v_j / t)``; instance loss ``L_ins = -log(S_self / sum_B S)``;
2. positives: the images reached from the anchor within ``depth`` hops of the graph as it was
   left by the previous visits (breadth-first search, the anchor excluded); the hard positives P
   are the ``n_pos`` of them LEAST similar to f; invariance loss
   ``L_inv = -log(sum_P S / (sum_B S - S_self))``;
3. ``L = L_ins + lambda [epoch > T] L_inv`` (the paper's epochs count from 1: on from the
   (T+1)-th epoch, i.e. after T whole epochs, or after ``inv_start_steps`` steps);
4. the graph rows of the batch become the top-(k+1) of B minus the anchor itself (read at the
   next visit), and the bank rows ``v_i <- normalize(0.5 v_i + 0.5 f_i)``.

The bank and the graph are buffers (checkpointed), sized from the training set by
``setup_data`` (:class:`contrastlab.methods.contract.UsesTrainingSet`). When the training set
has labels, the share of discovered positives with the anchor's label is logged
(``pos_precision``; ``hard_pos_precision`` for P): a monitor only, never used for training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, UserError
from ..fields import option
from ..losses.bank import background_instance_loss, invariance_loss
from ..nn.bank import MemoryBank, bank_dots
from ..nn.graph import KNNGraph, neighbours_without_self, reachable
from ..nn.neighbours import topk_neighbours
from .common import build_encoder, build_projector, build_views

__all__ = ["InvP", "InvPConfig", "discover_positives", "hard_positives"]


@dataclass
class InvPConfig:
    name: Literal["invp"] = "invp"
    temperature: float = option(0.2, gt=0)  # t
    n_background: int = option(4096, ge=2, doc="K, the background set (the anchor's own row included)")
    k: int = option(4, ge=1, doc="neighbours per image in the kNN graph")
    depth: int = option(3, ge=1, doc="hops of the positive search (the paper's l)")
    n_pos: int = option(50, ge=1, doc="hard positives per anchor")
    # true: the n_pos LEAST similar discovered positives (the paper's hard positives); false: the most similar
    hard_positives: bool = True
    inv_weight: float = option(0.6, ge=0)  # lambda
    # T: L_inv is on after this many whole epochs (the paper's [epoch > T], epochs counted from 1) ...
    inv_start_epochs: Optional[float] = option(30.0, ge=0)
    # ... or after this many steps (then set inv_start_epochs=null)
    inv_start_steps: Optional[int] = option(None, ge=0)
    bank_momentum: float = option(0.5, ge=0, lt=1, doc="v <- normalize(m v + (1 - m) f)")
    chunk_size: int = option(65536, ge=1, doc="bank rows per chunk of the background search")

    @classmethod
    def check(cls, cfg) -> None:
        m = cfg.method
        if m["n_background"] < m["k"] + 1:
            raise ConfigError(f"method.n_background={m['n_background']}: the graph keeps the top-(k+1) of the background "
                              f"minus the anchor, so it needs at least method.k + 1 = {m['k'] + 1}; raise n_background "
                              "or lower k")  # fmt: skip
        if m["inv_start_steps"] is not None and m["inv_start_epochs"] is not None:
            raise ConfigError(f"method.inv_start_steps={m['inv_start_steps']} and method.inv_start_epochs="
                              f"{m['inv_start_epochs']}: give T once (set method.inv_start_epochs=null to count it in steps)")  # fmt: skip
        if m["inv_start_steps"] is None and m["inv_start_epochs"] is None:
            raise ConfigError("method.inv_start_steps=null and method.inv_start_epochs=null: give T, when the invariance "
                              "loss starts (0 = from the first step)")  # fmt: skip


def discover_positives(neighbors: torch.Tensor, index, depth: int) -> list[set[int]]:
    """For each image of ``index`` (a 1-D tensor or sequence of ints), the set of images reached
    from it within ``depth`` hops of the kNN graph ``neighbors`` ((n, k) integer tensor; row i
    lists the neighbours of image i, negative entries are no edge), itself excluded.

    Returns one Python ``set`` of ints per entry of ``index``, in order. The method uses the same
    search in tensor form (:func:`contrastlab.nn.graph.reachable`: a padded (B, m) tensor and
    its mask, rows sorted); this is that result as sets."""
    if not torch.is_tensor(neighbors) or neighbors.dim() != 2 or neighbors.dtype.is_floating_point:
        raise ValueError(f"neighbors must be an (n, k) integer tensor, got {getattr(neighbors, 'shape', type(neighbors))}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    index = torch.as_tensor(index, dtype=torch.long).reshape(-1).to(neighbors.device)
    n = neighbors.shape[0]
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
        raise ValueError(f"index entries must be images 0..{n - 1} of the graph")
    if neighbors.numel() and int(neighbors.max()) >= n:
        raise ValueError(f"neighbors holds an image >= n = {n} (its number of rows)")
    ids, mask = reachable(neighbors.long(), index, depth)
    return [set(row[m].tolist()) for row, m in zip(ids.cpu(), mask.cpu())]


def hard_positives(sim: torch.Tensor, mask: torch.Tensor, n_pos: int, hardest: bool = True) -> torch.Tensor:
    """(B, m) bool: of each row's candidates (``mask``), the ``n_pos`` with the LOWEST similarity
    ``sim`` (``hardest=False``: the highest), or all of them when there are fewer."""
    if sim.shape[1] == 0:
        return mask.clone()
    fill = float("inf") if hardest else float("-inf")
    keyed = sim.detach().masked_fill(~mask, fill)
    take = min(n_pos, sim.shape[1])
    pos = keyed.topk(take, dim=1, largest=not hardest).indices
    chosen = torch.zeros_like(mask)
    chosen.scatter_(1, pos, True)
    return chosen & mask


def _label_precision(labels: torch.Tensor, anchors: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
    """The share of (anchor, positive) pairs with the same label, over pairs whose labels are known
    (>= 0); None when there is none."""
    a = labels[anchors][:, None].expand_as(ids)
    p = labels[ids.clamp_min(0)]
    known = mask & (a >= 0) & (p >= 0)
    if not bool(known.any()):
        return None
    return ((a == p) & known).sum().float() / known.sum()


class InvP(nn.Module):
    Config = InvPConfig

    def __init__(self, cfg):
        super().__init__()
        self.cfg = c = self.Config(**cfg.method)
        self.encoder = build_encoder(cfg.model)
        self.projector = build_projector(self.encoder.out_dim, cfg.model)
        self.views = build_views(cfg)
        self.bank = MemoryBank(cfg.model.proj_dim, c.bank_momentum)
        self.graph = KNNGraph(c.k)
        self.register_buffer("labels", torch.empty(0, dtype=torch.long), persistent=False)  # monitor only

    def setup_data(self, train_set) -> None:
        """The bank (random unit rows) and the graph (no edges yet), one row per training image,
        and the training labels for the precision monitor when the set has them."""
        n, c = len(train_set), self.cfg
        if c.n_background > n:
            raise ConfigError(f"method.n_background={c.n_background}: more than the {n} images of the training set; "
                              f"lower it to at most {n}")  # fmt: skip
        self.bank.allocate(n)
        self.graph.allocate(n)
        labels = getattr(train_set, "labels", {}) or {}
        name = getattr(train_set, "default_label", None)
        if name in labels and len(labels[name]) == n:
            self.labels = torch.as_tensor(labels[name], dtype=torch.long).to(self.labels.device)

    def inv_active(self, batch: dict) -> bool:
        """[epoch > T]: from step ``inv_start_steps``, or after ``inv_start_epochs`` whole epochs."""
        c = self.cfg
        step = batch.get("step", 0)
        if c.inv_start_steps is not None:
            return step >= c.inv_start_steps
        if "steps_per_epoch" in batch:
            return step >= round(c.inv_start_epochs * batch["steps_per_epoch"])
        return batch.get("epoch", 0) >= c.inv_start_epochs

    def view(self, batch: dict) -> torch.Tensor:
        """One augmented view per image (the first of the loader's two on the per-image path)."""
        if "views" in batch:
            return batch["views"][0]
        return self.views(batch["images"], batch.get("generator"))

    def forward(self, batch: dict) -> dict:
        c, bank = self.cfg, self.bank.vectors
        if bank.shape[0] == 0:
            raise UserError("invp: the memory bank is empty; the trainer sizes it from the training set "
                            "(setup_data), which a set-up without data does not have")  # fmt: skip
        index = batch["index"].to(bank.device)
        f = F.normalize(self.projector(self.encoder(self.view(batch))).float(), dim=1)
        with torch.no_grad():
            background = topk_neighbours(f.detach(), bank, c.n_background, c.chunk_size)[1]  # (B, K), most similar first
            candidates, found = reachable(self.graph.neighbours, index, c.depth)  # the graph of the previous visits
        with torch.autocast(f.device.type, enabled=False):
            s_b = bank_dots(f, bank, background)
            s_self = bank_dots(f, bank, index[:, None])[:, 0]
            s_p = bank_dots(f, bank, candidates.clamp_min(0))
            l_ins = background_instance_loss(s_self, s_b, c.temperature)
            chosen = hard_positives(s_p, found, c.n_pos, hardest=c.hard_positives)
            l_inv, has = invariance_loss(s_p, chosen, s_b, background == index[:, None], c.temperature)
        active = self.inv_active(batch)
        loss = l_ins + c.inv_weight * l_inv if active else l_ins
        with torch.no_grad():  # for the next visits: the graph from this background, then the bank
            self.graph.set_rows(index, neighbours_without_self(background, index, c.k))
            self.bank.update(index, f)
        out = {"loss": loss, "loss_ins": l_ins.detach(), "inv_on": float(active),
               "pos_found": found.sum(1).float().mean()}  # fmt: skip
        if bool(has.any()):
            out["loss_inv"] = l_inv.detach()
        if self.labels.numel():
            for key, m in (("pos_precision", found), ("hard_pos_precision", chosen)):
                p = _label_precision(self.labels, index, candidates, m)
                if p is not None:
                    out[key] = p
        return out

    @torch.no_grad()
    def discovered_positives(self, index) -> list[list[tuple[int, bool]]] | None:
        """What the report shows: for each training image of ``index``, the images
        :func:`discover_positives` finds for it in the graph as the run left it (``depth`` hops), as
        ``(image, hard)`` pairs; ``hard`` marks the ``n_pos`` the invariance loss would take
        (:func:`hard_positives`, with the anchor's bank row standing in for its embedding). The
        hard ones come first, then the others, each group from the chosen end (least similar first
        with ``hard_positives``, most similar first without). None when the graph has no edge yet
        (a run stopped before its first step)."""
        nb, bank, c = self.graph.neighbours, self.bank.vectors, self.cfg
        if nb.shape[0] == 0 or not bool((nb >= 0).any()):
            return None
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= nb.shape[0]):
            raise UserError(f"invp: positives asked for images outside 0..{nb.shape[0] - 1} of the run's graph")
        out = []
        for i, found in zip(index.tolist(), discover_positives(nb, index, c.depth)):
            ids = torch.tensor(sorted(found), dtype=torch.long, device=bank.device)
            sim = (bank[ids].float() @ bank[i].float())[None]
            chosen = hard_positives(sim, torch.ones_like(sim, dtype=torch.bool), c.n_pos, c.hard_positives)[0]
            key = sim[0] if c.hard_positives else -sim[0]  # the chosen end first
            order = sorted(range(len(ids)), key=lambda j: (not bool(chosen[j]), float(key[j]), int(ids[j])))
            out.append([(int(ids[j]), bool(chosen[j])) for j in order])
        return out
