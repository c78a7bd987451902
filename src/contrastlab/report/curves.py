"""Training curves: a run's metrics.csv read back, and its numeric columns plotted against step,
one panel per kind (loss, accuracy, learning rate, throughput, FID, KID)."""
from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence

from ..files import atomic_save
from .values import to_float


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


def columns(metrics: Sequence[Mapping]) -> list[str]:
    cols: list[str] = []
    for row in metrics:
        for k in row:
            if k not in cols:
                cols.append(k)
    return cols


def _series(metrics: Sequence[Mapping], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(metrics):
        y = to_float(row.get(key))
        if y is None:
            continue
        x = to_float(row.get("step"))
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
    for name, keys in _panels(columns(metrics)):
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


def plot_accuracy_vs_eps(curves: Mapping[str, Sequence[Mapping]], path, norm: str = "linf") -> bool:
    """Accuracy against the attack's radius, one line per (classifier, attack): ``curves`` maps a
    classifier's name to its points ``{"eps", "pgd", "fgsm"?}`` (``eval robust``'s ``curve``).
    Returns False (and writes nothing) when no curve has a point."""
    from matplotlib.figure import Figure

    lines = []
    for name, points in curves.items():
        pts = sorted((p for p in points if to_float(p.get("eps")) is not None), key=lambda p: p["eps"])
        for attack in ("pgd", "fgsm"):
            xy = [(p["eps"] * 255, 100 * p[attack]) for p in pts if to_float(p.get(attack)) is not None]
            if xy:
                lines.append((f"{name}, {attack.upper()}", xy, "-" if attack == "pgd" else "--"))
    if not lines:
        return False
    fig = Figure(figsize=(5.0, 3.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    for label, xy, style in lines:
        ax.plot([x for x, _ in xy], [y for _, y in xy], style, marker="o", markersize=4, linewidth=1.4, label=label)
    ax.set_xlabel(f"eps ({norm}, x 1/255)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png"))
    return True
