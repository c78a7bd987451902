"""Self-supervised pretext tasks on batched image tensors: the input and its class label.

- Rotation (Gidaris et al., ICLR 2018): each image turned by k x 90 degrees, k in {0, 1, 2, 3} the
  label (:func:`rotate_quarters`, :func:`rotation_task`). Turn direction as ``torch.rot90`` over
  (H, W): counter-clockwise, as the official Adv-SS-Pretraining code
  (``pretraining/train_adv_rotation.py``, ``rotation``: ``torch.rot90(input[i], target[i], [1, 2])``).
- Jigsaw (Noroozi and Favaro, ECCV 2016): the image cut into a ``grid`` x ``grid`` grid of patches
  and the patches reordered by one of ``n_classes`` permutations, the permutation's index the label
  (:func:`jigsaw_permutations`, :func:`shuffle_patches`, :func:`jigsaw_task`). Class 0 is the
  identity (the unshuffled image), as the official code's ``order == 0``
  (``pretraining/train_adv_jigsaw.py``, ``jigsaw``); the other classes are chosen greedily for maximal
  minimal Hamming distance to the classes already chosen (Noroozi and Favaro, Sec. 3.3), from a
  seeded pool of candidates, so the set is a deterministic function of (grid, n_classes, seed).
  Output patch j is input patch ``perm[j]`` (the official ``new_batches = [batches[perm[j]] ...]``).

Bottom layer: imports torch and :mod:`contrastlab.errors` only.
"""
from __future__ import annotations

import itertools
import math

import torch

from ..errors import ConfigError

__all__ = ["rotate_quarters", "rotation_task", "jigsaw_permutations", "shuffle_patches", "jigsaw_task",
           "hamming_distances"]


def rotate_quarters(images: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Image i turned by ``k[i]`` x 90 degrees counter-clockwise: (B, C, H, W) with H == W, k (B,) in 0..3."""
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotate_quarters expects square images (B, C, S, S), got {tuple(images.shape)}")
    k = k.to(images.device).long() % 4
    out = images.clone()
    for turn in (1, 2, 3):
        sel = k == turn
        if sel.any():
            out[sel] = torch.rot90(images[sel], turn, dims=(2, 3))
    return out


def rotation_task(images: torch.Tensor, generator: torch.Generator | None = None):
    """(turned images, labels): a balanced draw of the four turns (each turn on B // 4 or B // 4 + 1
    images, in random order), as the official ``rotation`` (a permutation of [0, 1, 2, 3] * (B // 4 + 1)
    cut to B)."""
    b = images.shape[0]
    order = torch.randperm(b, generator=generator, device=generator.device if generator is not None else "cpu")
    labels = (order % 4).to(images.device)
    return rotate_quarters(images, labels), labels


def hamming_distances(perms: torch.Tensor) -> torch.Tensor:
    """(P, P) number of positions where two permutations differ."""
    return (perms[:, None, :] != perms[None, :, :]).sum(-1)


def jigsaw_permutations(n_classes: int, grid: int = 4, seed: int = 0, pool: int = 2000) -> torch.Tensor:
    """``n_classes`` permutations of the ``grid * grid`` patches, (n_classes, grid * grid) long.

    Row 0 is the identity; each next row is, of the candidates not yet chosen, the one whose
    smallest Hamming distance to the rows chosen so far is largest (ties: the first candidate).
    Candidates: every permutation when there are at most ``pool`` of them, else ``pool`` random
    permutations drawn with ``seed``; the result is a function of (n_classes, grid, seed, pool)."""
    n = grid * grid
    if grid < 2:
        raise ConfigError(f"jigsaw grid={grid}: needs at least a 2 x 2 grid of patches")
    total = math.factorial(n)
    if n_classes < 2 or n_classes > total:
        raise ConfigError(f"jigsaw n_classes={n_classes}: a {grid} x {grid} grid has {total} permutations; "
                          f"use 2 to {min(total, pool)} classes")  # fmt: skip
    if total <= pool:
        cand = torch.tensor(list(itertools.permutations(range(n))), dtype=torch.long)
    else:
        g = torch.Generator().manual_seed(seed)
        cand = torch.stack([torch.randperm(n, generator=g) for _ in range(pool)])
    if n_classes > len(cand):
        raise ConfigError(f"jigsaw n_classes={n_classes}: more than the {len(cand)} candidate permutations; "
                          "lower n_classes")  # fmt: skip
    identity = torch.arange(n)
    chosen = [identity]
    min_dist = (cand != identity).sum(1)  # each candidate's distance to the closest chosen row
    for _ in range(n_classes - 1):
        i = int(torch.argmax(min_dist))  # first of the largest
        chosen.append(cand[i])
        min_dist = torch.minimum(min_dist, (cand != cand[i]).sum(1))
        min_dist[i] = -1  # never chosen twice
    return torch.stack(chosen)


def shuffle_patches(images: torch.Tensor, perms: torch.Tensor, labels: torch.Tensor, grid: int) -> torch.Tensor:
    """Image i with its ``grid`` x ``grid`` patches reordered by ``perms[labels[i]]``: output patch j
    (row-major) is input patch ``perms[labels[i]][j]``. When the side is not a multiple of ``grid``
    the central grid-divisible region is shuffled and the border rows / columns are kept."""
    b, ch, h, w = images.shape
    ph, pw = h // grid, w // grid
    if ph < 1 or pw < 1:
        raise ValueError(f"shuffle_patches: a {grid} x {grid} grid does not fit images of {h} x {w} px")
    oy, ox = (h - grid * ph) // 2, (w - grid * pw) // 2
    region = images[:, :, oy : oy + grid * ph, ox : ox + grid * pw]
    patches = region.reshape(b, ch, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, ch, ph, pw)
    order = perms.to(images.device)[labels.to(images.device).long()]  # (B, n)
    moved = torch.gather(patches, 1, order[:, :, None, None, None].expand_as(patches))
    moved = moved.reshape(b, grid, grid, ch, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(b, ch, grid * ph, grid * pw)
    out = images.clone()
    out[:, :, oy : oy + grid * ph, ox : ox + grid * pw] = moved
    return out


def jigsaw_task(images: torch.Tensor, perms: torch.Tensor, grid: int, identity_p: float = 0.1,
                generator: torch.Generator | None = None):
    """(shuffled images, labels): each image's class uniform over the ``len(perms)`` classes, then set to
    0 (the identity) with probability ``identity_p``, as the official ``jigsaw`` (``bias = 0.9``: the
    drawn order is kept with probability 0.9, else 0)."""
    b = images.shape[0]
    dev = generator.device if generator is not None else torch.device("cpu")
    labels = torch.randint(0, len(perms), (b,), generator=generator, device=dev)
    keep = torch.rand(b, generator=generator, device=dev) >= identity_p
    labels = torch.where(keep, labels, torch.zeros_like(labels)).to(images.device)
    return shuffle_patches(images, perms, labels, grid), labels
