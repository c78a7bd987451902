"""A static HTML report of a run: training curves, an embedding map, retrieval examples.

``write_report`` writes ``run_dir/report.html`` and PNGs under ``run_dir/report/``.
Figures are drawn with matplotlib's object API (``matplotlib.figure.Figure``, which
renders with Agg) and never import ``matplotlib.pyplot``: nothing needs a display and
the process-wide pyplot backend is left untouched (safe inside notebooks too).
"""
from __future__ import annotations

import csv
import datetime as _dt
import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..nn.neighbours import topk_neighbours
from ..files import atomic_save, atomic_write

__all__ = [
    "read_metrics_csv",
    "write_report",
    "retrieval_from_features",
    "retrieval_grid",
    "embed_2d",
    "plot_curves",
    "plot_embedding",
    "plot_retrieval",
]

_QUERY_RGB = (40, 90, 220)
_SAME_RGB = (20, 170, 60)
_DIFF_RGB = (220, 30, 30)


# ----------------------------------------------------------------------------- metrics


def _parse_cell(s: str):
    s = s.strip()
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


def read_metrics_csv(path) -> list[dict]:
    """Rows of a metrics.csv as dicts; numbers are parsed (int, else float), empty
    cells are left out of their row, other text is kept as str."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.append({k: _parse_cell(v) for k, v in row.items() if k is not None and v not in (None, "")})
    return rows


def _to_float(v) -> float | None:
    """A finite-or-nan float from a number or numeric string; None for empty / non-numeric."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, Tensor):
        if v.numel() != 1:
            return None
        v = v.item()
    if isinstance(v, str):
        v = v.strip()
        if not v:
            return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _columns(metrics: Sequence[Mapping]) -> list[str]:
    cols: list[str] = []
    for row in metrics:
        for k in row:
            if k not in cols:
                cols.append(k)
    return cols


def _series(metrics: Sequence[Mapping], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(metrics):
        y = _to_float(row.get(key))
        if y is None:
            continue
        x = _to_float(row.get("step"))
        xs.append(float(i) if x is None else x)
        ys.append(y)
    return xs, ys


def _panels(cols: list[str]) -> list[tuple[str, list[str]]]:
    def pick(pred):
        return [c for c in cols if c != "step" and pred(c.lower())]

    panels = [
        ("loss", pick(lambda c: "loss" in c)),
        ("accuracy", pick(lambda c: "top1" in c or "top5" in c or "acc" in c)),
        ("learning rate", pick(lambda c: c == "lr" or c.startswith("lr_") or c.endswith("_lr"))),
        ("images / s", pick(lambda c: "per_s" in c or "throughput" in c)),
        ("FID (lower is better)", pick(lambda c: c.startswith("fid"))),
        ("KID (lower is better)", pick(lambda c: c.startswith("kid"))),
    ]
    return [(name, keys) for name, keys in panels if keys]


def plot_curves(metrics: Sequence[Mapping], path) -> bool:
    """Loss, accuracy (e.g. knn_top1), lr and throughput against step, one panel each.

    Returns False (and writes nothing) when there is nothing numeric to plot.
    """
    from matplotlib.figure import Figure

    panels = []
    for name, keys in _panels(_columns(metrics)):
        series = [(k, *_series(metrics, k)) for k in keys]
        series = [s for s in series if s[1]]
        if series:
            panels.append((name, series))
    if not panels:
        return False
    fig = Figure(figsize=(4.2 * len(panels), 3.4), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, series) in zip(axes, panels):
        for key, xs, ys in series:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, linewidth=1.4, label=key)
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if name == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        if len(series) > 1 or series[0][0] != name:
            ax.legend(fontsize=8)
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png"))
    return True


# ----------------------------------------------------------------------------- embedding


def _as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


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
    x = _as_tensor(feats).detach().cpu().to(torch.float32).reshape(len(feats), -1)
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
    y = _as_tensor(labels).reshape(-1).cpu().long()[idx].numpy() if labels is not None else np.zeros(len(idx), int)
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


# ----------------------------------------------------------------------------- retrieval


def _get_image(source, i: int):
    if callable(source) and not isinstance(source, Tensor):
        return source(i)
    return source[i]


def _to_chw_uint8(img, size: tuple[int, int] | None = None) -> Tensor:
    """A (3, H, W) uint8 tensor from a (C, H, W) or (H, W) uint8 / float in [0, 1] image."""
    t = _as_tensor(img).detach().cpu()
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
    q_lab = _as_tensor(query_labels).reshape(-1).cpu().long()[q_idx]
    b_lab = _as_tensor(bank_labels).reshape(-1).cpu().long()
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


def retrieval_grid(retrieval: Mapping) -> np.ndarray:
    """The retrieval dict as an (H, W, 3) uint8 image: one row per query, the query
    (blue frame) then its neighbours (green frame: same label, red: different)."""
    qi = torch.stack([_to_chw_uint8(x) for x in retrieval["query_images"]])
    size = tuple(qi.shape[2:])
    ni = retrieval["neighbour_images"]
    nq = qi.shape[0]
    kk = len(ni[0]) if nq else 0
    ql = _as_tensor(retrieval["query_labels"]).reshape(-1).cpu().long()
    nl = _as_tensor(retrieval["neighbour_labels"]).reshape(nq, kk).cpu().long()
    h, w = size
    scale = max(1, math.ceil(64 / max(h, w)))
    ch, cw = h * scale, w * scale
    b = max(2, round(max(ch, cw) / 20))  # frame width
    pad = max(2, b)  # space between cells
    gap = 3 * pad  # extra space between the query and its neighbours
    cell_h, cell_w = ch + 2 * b, cw + 2 * b
    height = nq * cell_h + (nq + 1) * pad
    width = (kk + 1) * cell_w + (kk + 2) * pad + gap
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)

    def put(img: Tensor, row: int, col: int, rgb):
        y0 = pad + row * (cell_h + pad)
        x0 = pad + col * (cell_w + pad) + (gap if col > 0 else 0)
        canvas[y0 : y0 + cell_h, x0 : x0 + cell_w] = rgb
        big = img.repeat_interleave(scale, 1).repeat_interleave(scale, 2) if scale > 1 else img
        canvas[y0 + b : y0 + b + ch, x0 + b : x0 + b + cw] = big.permute(1, 2, 0).numpy()

    for r in range(nq):
        put(qi[r], r, 0, _QUERY_RGB)
        for c in range(kk):
            same = int(nl[r, c]) == int(ql[r]) and int(ql[r]) >= 0
            put(_to_chw_uint8(ni[r][c], size), r, c + 1, _SAME_RGB if same else _DIFF_RGB)
    return canvas


def plot_retrieval(retrieval: Mapping, path) -> dict:
    """Save :func:`retrieval_grid` as a PNG; returns ``{"precision_at_k", "k", "n_queries"}``."""
    import matplotlib.image

    grid = retrieval_grid(retrieval)
    atomic_save(path, lambda tmp: matplotlib.image.imsave(tmp, grid, format="png"))
    ql = _as_tensor(retrieval["query_labels"]).reshape(-1).cpu().long()
    nl = _as_tensor(retrieval["neighbour_labels"]).cpu().long()
    nq = ql.shape[0]
    nl = nl.reshape(nq, -1)
    prec = float((nl == ql[:, None]).float().mean()) if nl.numel() else math.nan
    return {"precision_at_k": prec, "k": int(nl.shape[1]), "n_queries": int(nq)}


# ----------------------------------------------------------------------------- html


def _fmt(v) -> str:
    if isinstance(v, Tensor):
        v = v.item() if v.numel() == 1 else v
    if isinstance(v, Tensor):
        return f"tensor of shape {tuple(v.shape)}"
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, str):
        f = _to_float(v)
        return f"{f:.6g}" if f is not None and not v.strip().lstrip("-").isdigit() else v
    if isinstance(v, (list, tuple, np.ndarray)):
        seq = list(v)
        head = ", ".join(_fmt(x) for x in seq[:8])
        return f"[{head}{', ...' if len(seq) > 8 else ''}] (n={len(seq)})" if len(seq) > 8 else f"[{head}]"
    s = repr(v)
    return s if len(s) <= 200 else s[:197] + "..."


def _flatten(d: Mapping, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


def _table(rows: list[tuple[str, str]]) -> str:
    body = "\n".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(v)}</td></tr>" for k, v in rows
    )
    return f"<table>\n{body}\n</table>"


# entries of an evaluation result that describe it rather than measure it
_EVAL_META = ("protocol", "checkpoint", "step", "label", "features", "method", "extractor", "n_train", "n_test",
              "n_inputs", "n_real", "k_requested", "probe_data")


def _eval_metrics(result: Mapping, prefix: str = "") -> list[str]:
    """``name value`` for each scalar measurement of an evaluation result (nested dicts, such as
    a translation's per-direction scores, with their key as a prefix; lists left out)."""
    out = []
    for k, v in result.items():
        if k in _EVAL_META:
            continue
        if isinstance(v, Mapping):
            out += _eval_metrics(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float, np.generic)) and not isinstance(v, bool):
            out.append(f"{prefix}{k} {_fmt(v)}")
    return out


def evaluation_rows(evals: Mapping) -> list[tuple[str, str, str, str, str]]:
    """One row per evaluation of ``eval.json`` (its entries are keyed protocol/label/features):
    (protocol, label, features, step, measurements)."""
    rows = []
    for key, r in sorted(evals.items()):
        if not isinstance(r, Mapping):
            continue
        parts = (key.split("/") + ["", "", ""])[:3]
        rows.append((str(r.get("protocol", parts[0])), str(r.get("label", parts[1])), str(r.get("features", parts[2])),
                     _fmt(r.get("step", "")), ", ".join(_eval_metrics(r))))  # fmt: skip
    return rows


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}\n</table>"


def _final_metrics(metrics: Sequence[Mapping]) -> list[tuple[str, str]]:
    """Last non-empty value of each column."""
    rows = []
    for col in _columns(metrics):
        last = None
        for row in metrics:
            v = row.get(col)
            if v is None or (isinstance(v, str) and not v.strip()):
                continue
            if isinstance(v, float) and math.isnan(v):
                continue
            last = v
        if last is not None:
            rows.append((col, _fmt(last)))
    return rows


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
.meta { color: #777; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.8em; text-align: left; }
th { background: #f6f6f6; font-weight: 600; }
td { font-family: ui-monospace, Menlo, Consolas, monospace; }
img { max-width: 100%; border: 1px solid #eee; }
.caption { color: #555; font-size: 0.9em; }
"""


def write_report(
    run_dir,
    metrics=None,
    embeddings: Mapping | None = None,
    retrieval: Mapping | None = None,
    title: str = "contrastlab run",
    summary: Mapping | None = None,
    embedding_method: str | None = None,
    max_points: int | None = 2000,
    seed: int = 0,
    figures: Sequence[tuple[str, str, str]] = (),
    evaluations: Mapping | None = None,
) -> Path:
    """Write ``run_dir/report.html`` (+ ``run_dir/report/*.png``); returns the html path.

    Args:
        run_dir: the run directory (created if missing).
        metrics: rows of metrics.csv (list of dicts; values may be numeric strings,
            rows may lack keys), or a path to a csv, or None to read
            ``run_dir/metrics.csv`` when it exists.  Plotted to ``curves.png``
            (loss / accuracy / lr / throughput against step), and the last value
            of each column goes into the "final metrics" table.
        embeddings: ``{"feats": (N, d), "labels": (N,), "class_names": list | None,
            "method": "tsne" | "pca" (optional)}`` -> ``embedding.png``.
        retrieval: dict from :func:`retrieval_from_features` -> ``retrieval.png``.
        title: page title.
        summary: extra results (e.g. eval dicts; nested dicts are flattened to
            dotted keys) rendered as a table.
        embedding_method: "tsne" (default; ~2 s on 2000 points with 2 CPU cores) or
            "pca" (instant); overrides ``embeddings["method"]``.
        max_points: embedding points (random, seeded subset); None for all.
        seed: seeds the subset and t-SNE.
        figures: extra images already under ``run_dir/report``: (heading, file name, caption),
            e.g. the sample grids of a translation run.
        evaluations: the run's ``eval.json`` (results keyed protocol/label/features): one
            table row per evaluation (protocol, label, features, step, measurements).
    """
    run_dir = Path(run_dir)
    img_dir = run_dir / "report"
    img_dir.mkdir(parents=True, exist_ok=True)
    if metrics is None:
        metrics = read_metrics_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").exists() else []
    elif isinstance(metrics, (str, os.PathLike)):
        metrics = read_metrics_csv(metrics)
    metrics = list(metrics)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(str(run_dir))} &middot; generated '
        f"{html.escape(_dt.datetime.now().strftime('%Y-%m-%d %H:%M:%S'))}"
        f"{' &middot; ' + str(len(metrics)) + ' logged rows' if metrics else ''}</p>",
    ]

    final = _final_metrics(metrics)
    if final:
        parts += ["<h2>Final metrics</h2>", _table(final)]
    if evaluations:
        parts += ["<h2>Evaluations</h2>", _grid(("protocol", "label", "features", "step", "results"),
                                                evaluation_rows(evaluations))]  # fmt: skip
    if summary:
        parts += ["<h2>Summary</h2>", _table([(k, _fmt(v)) for k, v in _flatten(summary)])]

    if metrics and plot_curves(metrics, img_dir / "curves.png"):
        parts += ["<h2>Training curves</h2>", '<img src="report/curves.png" alt="training curves">']

    if embeddings is not None:
        method = embedding_method or embeddings.get("method") or "tsne"
        info = plot_embedding(
            embeddings["feats"], embeddings.get("labels"), img_dir / "embedding.png",
            class_names=embeddings.get("class_names"), method=method, max_points=max_points, seed=seed,
        )
        name = "t-SNE" if info["method"] == "tsne" else "PCA"
        parts += [
            "<h2>Embedding</h2>",
            '<img src="report/embedding.png" alt="embedding map">',
            f'<p class="caption">{name} of {info["n_points"]} of {len(embeddings["feats"])} feature vectors, '
            "coloured by class.</p>",
        ]

    if retrieval is not None:
        info = plot_retrieval(retrieval, img_dir / "retrieval.png")
        parts += [
            "<h2>Nearest-neighbour retrieval</h2>",
            '<img src="report/retrieval.png" alt="retrieval examples">',
            f'<p class="caption">Each row: a query (blue frame), then its {info["k"]} nearest neighbours by '
            "cosine similarity; green frame = same label, red = different. "
            f'Precision@{info["k"]} over these {info["n_queries"]} queries: {_fmt(info["precision_at_k"])}.</p>',
        ]

    for heading, name, caption in figures:
        parts += [f"<h2>{html.escape(heading)}</h2>", f'<img src="report/{html.escape(name)}" alt="{html.escape(heading)}">',
                  f'<p class="caption">{html.escape(caption)}</p>']  # fmt: skip

    parts.append("</body></html>")
    out = run_dir / "report.html"
    atomic_write(out, "\n".join(parts) + "\n")
    return out
