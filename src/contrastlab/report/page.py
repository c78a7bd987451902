"""A static HTML report of a run: training curves, an embedding map, retrieval examples.

``write_report`` writes ``run_dir/report.html`` and PNGs under ``run_dir/report/``.
Figures are drawn with matplotlib's object API (``matplotlib.figure.Figure``, which
renders with Agg) and never import ``matplotlib.pyplot``: nothing needs a display and
the process-wide pyplot backend is left untouched (safe inside notebooks too).
"""
from __future__ import annotations

import datetime as _dt
import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..files import atomic_write
from .curves import plot_curves, read_metrics_csv
from .embedding import plot_embedding
from .retrieval import plot_retrieval
from .tables import evaluation_rows, final_metrics, flatten, html_grid, html_table
from .values import fmt

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
            e.g. the sample grids of a translation run; an empty file name makes a section of the
            caption alone (a picture that could not be drawn, and why).
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

    final = final_metrics(metrics)
    if final:
        parts += ["<h2>Final metrics</h2>", html_table(final)]
    if evaluations:
        parts += ["<h2>Evaluations</h2>", html_grid(("protocol", "label", "features", "step", "results"),
                                                evaluation_rows(evaluations))]  # fmt: skip
    if summary:
        parts += ["<h2>Summary</h2>", html_table([(k, fmt(v)) for k, v in flatten(summary)])]

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
            f'Precision@{info["k"]} over these {info["n_queries"]} queries: {fmt(info["precision_at_k"])}.</p>',
        ]

    for heading, name, caption in figures:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if name:  # an empty file name: the section is its caption alone
            parts.append(f'<img src="report/{html.escape(name)}" alt="{html.escape(heading)}">')
        parts.append(f'<p class="caption">{html.escape(caption)}</p>')

    parts.append("</body></html>")
    out = run_dir / "report.html"
    atomic_write(out, "\n".join(parts) + "\n")
    return out
