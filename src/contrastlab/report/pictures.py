"""Pictures of what a method takes as alike, for any method that can say it: the positives it found
for a few images (framed green when they share the image's label, red when not), and the nearest
neighbours of a query in each of several embedding spaces, side by side. The functions take plain
indices, labels, images and features; ``report/run.py`` asks the method for them."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .retrieval import _get_image, framed_grid, retrieval_from_features, same_label, save_grid
from .values import as_tensor


def positives_picture(
    query_indices: Sequence[int],
    positives: Sequence[Sequence],
    labels,
    images,
    max_shown: int = 12,
    class_names: Sequence[str] | None = None,
    label_name: str = "label",
) -> dict:
    """Queries and the positives a method found for them, as a grid and its numbers.

    ``positives[r]``: the positives of image ``query_indices[r]``, as image indices or
    ``(index, hard)`` pairs (hard: one the method's loss takes), in the order to show them; the
    first ``max_shown`` of each row are drawn. ``labels``: one label per image (< 0: unknown);
    ``images[i]`` (or ``images(i)``) is image i. Rows are named "#index, label_name class: same/found".

    Returns ``{"grid": (H, W, 3) uint8, "row_centres", "row_names", "query_indices", "shown": the
    indices drawn per row, "precision": share of all the positives with their query's label, "hard_precision":
    the same over the hard ones (nan when none), "n_found": positives per query}``."""
    if len(query_indices) != len(positives):
        raise ValueError(f"positives_picture: {len(query_indices)} queries but {len(positives)} lists of positives")
    if not len(query_indices):
        raise ValueError("positives_picture needs at least one query")
    if max_shown < 1:
        raise ValueError(f"max_shown must be >= 1, got {max_shown}")
    lab = as_tensor(labels).reshape(-1).cpu().long()
    rows, names, shown, found = [], [], [], []
    same_all, same_hard = [], []
    for q, pos in zip(query_indices, positives):
        q = int(q)
        pairs = [(int(p[0]), bool(p[1])) if isinstance(p, (tuple, list)) else (int(p), True) for p in pos]
        ql = int(lab[q])
        same = [same_label(ql, int(lab[j])) for j, _ in pairs]
        same_all += same
        same_hard += [s for s, (_, hard) in zip(same, pairs) if hard]
        row = pairs[:max_shown]
        shown.append([j for j, _ in row])
        found.append(len(pairs))
        rows.append((_get_image(images, q), [(_get_image(images, j), s) for (j, _), s in zip(row, same)]))
        name = class_names[ql] if class_names is not None and 0 <= ql < len(class_names) else ql
        more = f", {len(row)} shown" if len(row) < len(pairs) else ""
        names.append(f"#{q}, {label_name} {name}: {sum(same)}/{len(pairs)} same{more}")
    grid, centres = framed_grid(rows)
    share = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
    return {"grid": grid, "row_centres": centres, "row_names": names, "query_indices": [int(q) for q in query_indices],
            "shown": shown,
            "precision": share(same_all), "hard_precision": share(same_hard), "n_found": found}  # fmt: skip


@torch.no_grad()
def spaces_retrieval(
    query_feats: Mapping[str, Tensor],
    query_labels,
    query_images,
    bank_feats: Mapping[str, Tensor],
    bank_labels,
    bank_images,
    n_queries: int = 4,
    k: int = 8,
    seed: int = 0,
) -> dict:
    """The ``k`` cosine nearest bank rows of the same ``n_queries`` queries (seeded) in each space:
    ``query_feats`` / ``bank_feats`` map a space's name to its (Q, d) / (N, d) features (the same
    names). Returns ``{"spaces": names, "retrievals": {name: the dict of
    :func:`retrieval_from_features`}}``."""
    names = list(query_feats)
    if not names:
        raise ValueError("spaces_retrieval needs at least one space")
    if list(bank_feats) != names:
        raise ValueError(f"spaces_retrieval: query spaces {names} but bank spaces {list(bank_feats)}")
    out = {name: retrieval_from_features(query_feats[name], query_labels, query_images, bank_feats[name],
                                         bank_labels, bank_images, n_queries=n_queries, k=k, seed=seed)
           for name in names}  # fmt: skip
    return {"spaces": names, "retrievals": out}


def spaces_grid(spaces: Mapping, class_names: Sequence[str] | None = None, label_name: str = "label",
                query_ids: Sequence[int] | None = None) -> dict:
    """:func:`spaces_retrieval`'s result as one grid: for each query a group of rows, one per space
    (the query, then its neighbours in that space; green frame: same label, red: different).
    ``query_ids``: the image number to write for each query row of the features (default: the row).
    Returns ``{"grid", "row_centres", "row_names", "precision": {space: precision@k}}``."""
    names = spaces["spaces"]
    rets = [spaces["retrievals"][n] for n in names]
    nq = len(rets[0]["query_indices"])
    rows, row_names, gaps = [], [], []
    for r in range(nq):
        gaps.append(len(rows))
        ql = int(rets[0]["query_labels"][r])
        cname = class_names[ql] if class_names is not None and 0 <= ql < len(class_names) else ql
        for name, ret in zip(names, rets):
            nl = as_tensor(ret["neighbour_labels"])[r].tolist()
            tiles = [(img, same_label(ql, int(j))) for img, j in zip(ret["neighbour_images"][r], nl)]
            rows.append((ret["query_images"][r], tiles))
            qi = int(ret["query_indices"][r])
            qi = int(query_ids[qi]) if query_ids is not None else qi
            row_names.append(f"#{qi}, {label_name} {cname}: {name}" if name == names[0] else name)
    grid, centres = framed_grid(rows, row_gaps=gaps)
    prec = {}
    for name, ret in zip(names, rets):
        ql = as_tensor(ret["query_labels"]).reshape(-1, 1).long()
        nl = as_tensor(ret["neighbour_labels"]).long()
        prec[name] = float(((nl == ql) & (ql >= 0)).float().mean()) if nl.numel() else math.nan
    return {"grid": grid, "row_centres": centres, "row_names": row_names, "precision": prec}


def save_picture(picture: Mapping, path) -> None:
    """A picture of :func:`positives_picture` / :func:`spaces_grid` / :func:`mask_picture` as a PNG with its row names."""
    grid = picture["grid"]
    if not isinstance(grid, np.ndarray):
        raise ValueError("save_picture expects the dict of positives_picture, spaces_grid or mask_picture")
    save_grid(grid, path, picture["row_centres"], picture["row_names"])


def mask_picture(images, truths, preds, palette: Sequence[int], row_names: Sequence[str] | None = None) -> dict:
    """Scenes beside their true and predicted masks: one row per scene (the image, the truth, the
    prediction), masks coloured by ``palette`` (a flat PIL palette: class c is ``palette[3c:3c+3]``,
    255 its ignore colour), small images enlarged without smoothing to about 64 pixels.
    Returns ``{"grid": (H, W, 3) uint8, "row_centres", "row_names"}`` for :func:`save_picture`."""
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    n = len(images)
    if not n or len(truths) != n or len(preds) != n:
        raise ValueError(f"mask_picture: {len(images)} images, {len(truths)} truths, {len(preds)} predictions")
    h, w = int(images[0].shape[-2]), int(images[0].shape[-1])
    scale = max(1, math.ceil(64 / max(h, w)))
    ch, cw, pad = h * scale, w * scale, 4
    canvas = np.full((n * (ch + pad) + pad, 3 * (cw + pad) + pad, 3), 255, dtype=np.uint8)
    tops = []
    for r in range(n):
        img = as_tensor(images[r]).detach().cpu()
        img = img if img.dtype == torch.uint8 else (img.float().clamp(0, 1) * 255).round().to(torch.uint8)
        tiles = [img.permute(1, 2, 0).numpy()] + [pal[as_tensor(m).cpu().long().numpy()] for m in (truths[r], preds[r])]
        y0 = pad + r * (ch + pad)
        tops.append(y0)
        for c, tile in enumerate(tiles):
            x0 = pad + c * (cw + pad)
            canvas[y0 : y0 + ch, x0 : x0 + cw] = tile.repeat(scale, 0).repeat(scale, 1)
    names = list(row_names) if row_names is not None else [f"#{r}" for r in range(n)]
    return {"grid": canvas, "row_centres": [t + ch // 2 for t in tops], "row_names": names}


def perturbation_tile(clean, adv, eps: float) -> Tensor:
    """The perturbation ``adv - clean`` magnified to fill [0, 1]: ``0.5 + (adv - clean) / (2 eps)``
    (mid grey = unchanged, black / white = -eps / +eps in that channel), float (3, H, W)."""
    d = as_tensor(adv).detach().cpu().float() - as_tensor(clean).detach().cpu().float()
    scale = eps if eps > 0 else max(float(d.abs().max()), 1e-12)
    return (0.5 + d / (2 * scale)).clamp(0, 1)


def adversarial_picture(clean, adv, eps: float, row_names: Sequence[str] | None = None) -> dict:
    """Clean images beside their adversarial versions and the perturbation magnified
    (:func:`perturbation_tile`): one row per image, small images enlarged without smoothing to
    about 64 pixels. Returns ``{"grid", "row_centres", "row_names"}`` for :func:`save_picture`."""
    n = len(clean)
    if not n or len(adv) != n:
        raise ValueError(f"adversarial_picture: {len(clean)} clean and {len(adv)} adversarial images")
    h, w = int(clean[0].shape[-2]), int(clean[0].shape[-1])
    scale = max(1, math.ceil(64 / max(h, w)))
    ch, cw, pad = h * scale, w * scale, 4
    canvas = np.full((n * (ch + pad) + pad, 3 * (cw + pad) + pad, 3), 255, dtype=np.uint8)
    tops = []
    for r in range(n):
        tiles = [as_tensor(clean[r]).float(), as_tensor(adv[r]).float(), perturbation_tile(clean[r], adv[r], eps)]
        y0 = pad + r * (ch + pad)
        tops.append(y0)
        for c, t in enumerate(tiles):
            img = (t.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            x0 = pad + c * (cw + pad)
            canvas[y0 : y0 + ch, x0 : x0 + cw] = img.repeat(scale, 0).repeat(scale, 1)
    names = list(row_names) if row_names is not None else [f"#{r}" for r in range(n)]
    return {"grid": canvas, "row_centres": [t + ch // 2 for t in tops], "row_names": names}


def overlay(image, mask, colour=(255, 40, 40), alpha: float = 0.55, dim: float = 0.35) -> np.ndarray:
    """An (H, W, 3) uint8 picture of ``image`` (uint8 (3, H, W) or float in [0, 1]) with the pixels
    where ``mask == 1`` tinted by ``colour`` (``alpha`` of it), the others dimmed to ``dim`` of their
    brightness (so that the mask's shape shows on colourful images) and those where ``mask == 255``
    (ignored) greyed."""
    img = as_tensor(image).detach().cpu()
    img = img if img.dtype == torch.uint8 else (img.float().clamp(0, 1) * 255).round().to(torch.uint8)
    out = img.permute(1, 2, 0).numpy().astype(np.float32)
    m = as_tensor(mask).cpu().long().numpy()
    out[m == 1] = (1 - alpha) * out[m == 1] + alpha * np.asarray(colour, dtype=np.float32)
    out[m == 0] = dim * out[m == 0]
    out[m == 255] = 0.5 * out[m == 255] + 0.5 * 160
    return out.round().clip(0, 255).astype(np.uint8)


def episode_picture(support_images, support_masks, query_images, query_masks, preds,
                    row_names: Sequence[str] | None = None) -> dict:  # fmt: skip
    """Few-shot episodes, one row each: the K support images with their masks (red; the rest dimmed), the
    query with its true mask (green) and with the predicted mask (red); small images enlarged without smoothing to
    about 64 pixels. ``support_images`` (E, K, 3, H, W), ``support_masks`` (E, K, H, W), ``query_images``
    (E, 3, H, W), ``query_masks`` / ``preds`` (E, H, W). Returns the dict of :func:`save_picture`."""
    n = len(query_images)
    if not n or len(support_images) != n or len(query_masks) != n or len(preds) != n:
        raise ValueError(f"episode_picture: {len(support_images)} supports, {len(query_images)} queries, "
                         f"{len(query_masks)} truths, {len(preds)} predictions")  # fmt: skip
    k = int(support_images.shape[1])
    h, w = int(query_images.shape[-2]), int(query_images.shape[-1])
    scale = max(1, math.ceil(64 / max(h, w)))
    ch, cw, pad, gap = h * scale, w * scale, 4, 12  # a wider gap between the supports and the query
    width = (k + 2) * (cw + pad) + pad + gap
    canvas = np.full((n * (ch + pad) + pad, width, 3), 255, dtype=np.uint8)
    tops = []
    for r in range(n):
        tiles = [overlay(support_images[r, j], support_masks[r, j]) for j in range(k)]
        tiles += [overlay(query_images[r], query_masks[r], colour=(40, 200, 40)), overlay(query_images[r], preds[r])]
        y0 = pad + r * (ch + pad)
        tops.append(y0)
        for c, tile in enumerate(tiles):
            x0 = pad + c * (cw + pad) + (gap if c >= k else 0)
            canvas[y0 : y0 + ch, x0 : x0 + cw] = tile.repeat(scale, 0).repeat(scale, 1)
    names = list(row_names) if row_names is not None else [f"#{r}" for r in range(n)]
    return {"grid": canvas, "row_centres": [t + ch // 2 for t in tops], "row_names": names}
