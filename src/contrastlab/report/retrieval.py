"""Nearest-neighbour retrieval examples: queries and their cosine nearest neighbours in a feature
bank, drawn as a grid with frames coloured by whether the labels agree."""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from ..files import atomic_save
from ..nn.neighbours import topk_neighbours
from .values import as_tensor

_QUERY_RGB = (40, 90, 220)
_SAME_RGB = (20, 170, 60)
_DIFF_RGB = (220, 30, 30)


def _get_image(source, i: int):
    if callable(source) and not isinstance(source, Tensor):
        return source(i)
    return source[i]


def _to_chw_uint8(img, size: tuple[int, int] | None = None) -> Tensor:
    """A (3, H, W) uint8 tensor from a (C, H, W) or (H, W) uint8 / float in [0, 1] image."""
    t = as_tensor(img).detach().cpu()
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3:
        raise ValueError(f"expected an image (C, H, W), got shape {tuple(t.shape)}")
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    elif t.shape[0] == 4:
        t = t[:3]
    elif t.shape[0] != 3:
        raise ValueError(f"expected 1, 3 or 4 channels first, got shape {tuple(t.shape)}")
    if t.dtype != torch.uint8:
        t = (t.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if size is not None and tuple(t.shape[1:]) != tuple(size):
        t = torch.nn.functional.interpolate(t[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        t = t.round().clamp(0, 255).to(torch.uint8)
    return t.contiguous()


@torch.no_grad()
def retrieval_from_features(
    query_feats: Tensor,
    query_labels: Tensor,
    query_images,
    bank_feats: Tensor,
    bank_labels: Tensor,
    bank_images,
    n_queries: int = 8,
    k: int = 8,
    seed: int = 0,
    exclude_self: bool | None = None,
) -> dict:
    """Pick ``n_queries`` random queries (seeded) and their ``k`` cosine nearest bank rows.

    ``query_images`` / ``bank_images``: anything where ``x[i]`` gives image ``i`` (a
    uint8 (N, 3, H, W) tensor, a dataset returning tensors, a list) or a callable
    ``get_image(i)``.  Images are (C, H, W) uint8 (or float in [0, 1]); all are
    resized to the first query's size.  ``exclude_self`` (default: when
    ``query_feats is bank_feats``) drops a query's own row from its neighbours.

    Returns the dict :func:`write_report` expects (``query_images`` (Q, 3, H, W),
    ``query_labels`` (Q,), ``neighbour_images`` (Q, K, 3, H, W), ``neighbour_labels``
    (Q, K)) plus ``query_indices``, ``neighbour_indices`` and ``similarities``.
    """
    if exclude_self is None:
        exclude_self = query_feats is bank_feats
    nq_total = query_feats.shape[0]
    gen = torch.Generator().manual_seed(seed)
    q_idx = torch.randperm(nq_total, generator=gen)[: min(n_queries, nq_total)]
    q = torch.nn.functional.normalize(query_feats[q_idx.to(query_feats.device)].float(), dim=1)
    bank = bank_feats
    inv = torch.empty(bank.shape[0], dtype=torch.float32, device=bank.device)
    for s in range(0, bank.shape[0], 65536):
        inv[s : s + 65536] = bank[s : s + 65536].float().norm(dim=1).clamp_min(1e-12).reciprocal()
    extra = 1 if exclude_self else 0
    sims, nb = topk_neighbours(q, bank, k + extra, bank_scale=inv)
    sims, nb = sims.cpu(), nb.cpu()
    if exclude_self:
        keep_s, keep_i = [], []
        for r in range(nb.shape[0]):
            mask = nb[r] != q_idx[r]
            if bool(mask.all()):
                mask[-1] = False
            keep_s.append(sims[r][mask][:k])
            keep_i.append(nb[r][mask][:k])
        sims, nb = torch.stack(keep_s), torch.stack(keep_i)
    kk = nb.shape[1]
    q_lab = as_tensor(query_labels).reshape(-1).cpu().long()[q_idx]
    b_lab = as_tensor(bank_labels).reshape(-1).cpu().long()
    first = _to_chw_uint8(_get_image(query_images, int(q_idx[0]))) if len(q_idx) else None
    size = tuple(first.shape[1:]) if first is not None else None
    q_imgs = [_to_chw_uint8(_get_image(query_images, int(i)), size) for i in q_idx]
    n_imgs = [[_to_chw_uint8(_get_image(bank_images, int(j)), size) for j in row] for row in nb]
    h, w = size if size is not None else (1, 1)
    return {
        "query_images": torch.stack(q_imgs) if q_imgs else torch.empty(0, 3, h, w, dtype=torch.uint8),
        "query_labels": q_lab,
        "neighbour_images": (
            torch.stack([torch.stack(r) for r in n_imgs]) if n_imgs and kk
            else torch.empty(len(q_idx), kk, 3, h, w, dtype=torch.uint8)
        ),
        "neighbour_labels": b_lab[nb],
        "query_indices": q_idx,
        "neighbour_indices": nb,
        "similarities": sims,
    }


def framed_grid(rows, row_gaps=()) -> tuple[np.ndarray, list[int]]:
    """Rows of framed image tiles as an (H, W, 3) uint8 image, and the y of each row's centre.

    ``rows``: one ``(query_image, [(image, same), ...])`` per row; the query gets a blue frame, then,
    after a gap, each other image a green frame when ``same`` is true, red when false. Rows may hold
    different numbers of images (the grid is as wide as the longest). ``row_gaps``: indices of rows
    preceded by extra space (groups of rows). Images are (C, H, W) uint8 or float in [0, 1], resized
    to the first query's size; small ones are enlarged without smoothing to about 64 pixels."""
    rows = [(q, list(others)) for q, others in rows]
    if not rows:
        raise ValueError("framed_grid needs at least one row")
    qi = [_to_chw_uint8(q) for q, _ in rows]
    size = tuple(qi[0].shape[1:])
    qi = [_to_chw_uint8(q, size) for q in qi]
    nq = len(rows)
    kk = max(len(others) for _, others in rows)
    h, w = size
    scale = max(1, math.ceil(64 / max(h, w)))
    ch, cw = h * scale, w * scale
    b = max(2, round(max(ch, cw) / 20))  # frame width
    pad = max(2, b)  # space between cells
    gap = 3 * pad  # extra space between the query and the other images, and before a row of row_gaps
    cell_h, cell_w = ch + 2 * b, cw + 2 * b
    gaps = sorted({int(r) for r in row_gaps if 0 < int(r) < nq})
    height = nq * cell_h + (nq + 1) * pad + gap * len(gaps)
    width = (kk + 1) * cell_w + (kk + 2) * pad + gap
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    tops = [pad + r * (cell_h + pad) + gap * sum(1 for g in gaps if g <= r) for r in range(nq)]

    def put(img: Tensor, row: int, col: int, rgb):
        y0 = tops[row]
        x0 = pad + col * (cell_w + pad) + (gap if col > 0 else 0)
        canvas[y0 : y0 + cell_h, x0 : x0 + cell_w] = rgb
        big = img.repeat_interleave(scale, 1).repeat_interleave(scale, 2) if scale > 1 else img
        canvas[y0 + b : y0 + b + ch, x0 + b : x0 + b + cw] = big.permute(1, 2, 0).numpy()

    for r, (_, others) in enumerate(rows):
        put(qi[r], r, 0, _QUERY_RGB)
        for c, (img, same) in enumerate(others):
            put(_to_chw_uint8(img, size), r, c + 1, _SAME_RGB if same else _DIFF_RGB)
    return canvas, [y + cell_h // 2 for y in tops]


def retrieval_grid(retrieval: Mapping) -> np.ndarray:
    """The retrieval dict as an (H, W, 3) uint8 image: one row per query, the query
    (blue frame) then its neighbours (green frame: same label, red: different)."""
    qimgs = retrieval["query_images"]
    ni = retrieval["neighbour_images"]
    nq = len(qimgs)
    kk = len(ni[0]) if nq else 0
    ql = as_tensor(retrieval["query_labels"]).reshape(-1).cpu().long()
    nl = as_tensor(retrieval["neighbour_labels"]).reshape(nq, kk).cpu().long()
    rows = [(qimgs[r], [(ni[r][c], same_label(int(ql[r]), int(nl[r, c]))) for c in range(kk)]) for r in range(nq)]
    return framed_grid(rows)[0]


def same_label(a: int, b: int) -> bool:
    """Whether two labels agree (a green frame); an unknown label (< 0) never agrees."""
    return a == b and a >= 0


def save_grid(canvas: np.ndarray, path, row_centres=None, row_names=None) -> None:
    """Save a grid image as a PNG at its own pixel size; with ``row_names``, each row's name is
    written left of it (at ``row_centres``, the y of each row as :func:`framed_grid` returns)."""
    import matplotlib.image

    if not row_names:
        atomic_save(path, lambda tmp: matplotlib.image.imsave(tmp, canvas, format="png"))
        return
    from matplotlib.figure import Figure

    n_rows = 0 if row_centres is None else len(row_centres)
    if n_rows != len(row_names):
        raise ValueError(f"save_grid: {len(row_names)} row names for {n_rows} rows")
    h, w = canvas.shape[:2]
    left = 8 + 6 * max(len(str(n)) for n in row_names)  # pixels for the names (about 6 per character)
    dpi = 100
    fig = Figure(figsize=((w + left) / dpi, h / dpi), dpi=dpi)
    ax = fig.add_axes((left / (w + left), 0, w / (w + left), 1))
    ax.imshow(canvas, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    for y, name in zip(row_centres, row_names):
        fig.text((left - 4) / (w + left), 1 - y / h, str(name), ha="right", va="center", fontsize=8)
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def plot_retrieval(retrieval: Mapping, path) -> dict:
    """Save :func:`retrieval_grid` as a PNG; returns ``{"precision_at_k", "k", "n_queries"}``."""
    save_grid(retrieval_grid(retrieval), path)
    ql = as_tensor(retrieval["query_labels"]).reshape(-1).cpu().long()
    nl = as_tensor(retrieval["neighbour_labels"]).cpu().long()
    nq = ql.shape[0]
    nl = nl.reshape(nq, -1)
    prec = float((nl == ql[:, None]).float().mean()) if nl.numel() else math.nan
    return {"precision_at_k": prec, "k": int(nl.shape[1]), "n_queries": int(nq)}
