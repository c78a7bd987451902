"""A 2-D map of feature vectors (t-SNE or PCA), coloured by class."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..files import atomic_save
from .values import as_tensor


def _pca(x: Tensor, dims: int) -> Tensor:
    x = x - x.mean(0, keepdim=True)
    dims = min(dims, *x.shape)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return x @ vh[:dims].T


def embed_2d(feats, method: str = "tsne", max_points: int | None = 2000, seed: int = 0, tsne_iter: int = 500):
    """2-D coordinates of (a seeded random subset of at most ``max_points``) features.

    Returns ``(coords (n, 2) numpy, index (n,) LongTensor of the rows used, method)``;
    ``method`` is ``"tsne"`` (scikit-learn Barnes-Hut, on the 50 leading principal
    components, ``tsne_iter`` iterations: 500 takes ~2 s for 2000 points on 2 CPU
    cores, sklearn's default 1000 about twice that) or ``"pca"``; t-SNE falls back
    to PCA below 5 points.
    """
    x = as_tensor(feats).detach().cpu().to(torch.float32).reshape(len(feats), -1)
    n = x.shape[0]
    if max_points is not None and n > max_points:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=gen)[:max_points].sort().values
    else:
        idx = torch.arange(n)
    x = x[idx]
    if method not in ("tsne", "pca"):
        raise ValueError(f"unknown embedding method {method!r} (expected 'tsne' or 'pca')")
    if method == "tsne" and x.shape[0] >= 5:
        from sklearn.manifold import TSNE

        if x.shape[1] > 50:
            x = _pca(x, 50)
        perplexity = float(min(30.0, (x.shape[0] - 1) / 3))
        coords = TSNE(
            n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=max(250, tsne_iter)
        ).fit_transform(
            x.double().numpy()
        )
        return np.asarray(coords), idx, "tsne"
    coords = _pca(x, 2)
    if coords.shape[1] < 2:
        coords = torch.cat([coords, torch.zeros(coords.shape[0], 2 - coords.shape[1])], 1)
    return coords.numpy(), idx, "pca"


def plot_embedding(feats, labels, path, class_names=None, method: str = "tsne",
                   max_points: int | None = 2000, seed: int = 0) -> dict:
    """Scatter of a 2-D embedding of ``feats`` coloured by ``labels`` (-1: grey).

    Returns ``{"method", "n_points"}``.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    coords, idx, used = embed_2d(feats, method=method, max_points=max_points, seed=seed)
    y = as_tensor(labels).reshape(-1).cpu().long()[idx].numpy() if labels is not None else np.zeros(len(idx), int)
    classes = sorted(int(c) for c in np.unique(y))
    known = [c for c in classes if c >= 0]
    cmap = colormaps["tab10" if len(known) <= 10 else "tab20" if len(known) <= 20 else "turbo"]
    fig = Figure(figsize=(7.5, 6.0), dpi=100, layout="constrained")
    ax = fig.subplots()
    for j, c in enumerate(classes):
        m = y == c
        if c < 0:
            color, name = (0.6, 0.6, 0.6, 0.6), "unlabelled"
        else:
            pos = known.index(c)
            color = cmap(pos if len(known) <= 20 else pos / max(1, len(known) - 1))
            name = str(class_names[c]) if class_names is not None and c < len(class_names) else str(c)
        ax.scatter(coords[m, 0], coords[m, 1], s=8, color=color, label=name, linewidths=0)
    if len(classes) <= 30:
        ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title(f"{'t-SNE' if used == 'tsne' else 'PCA'} of {len(idx)} points")
    ax.set_xticks([])
    ax.set_yticks([])
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png"))
    return {"method": used, "n_points": int(len(idx))}
