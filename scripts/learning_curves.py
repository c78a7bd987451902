"""Plot a training curve that a learning-results file keeps with its runs (``curves``: columns of each
run's metrics.csv, written by scripts/learning_results.py for the tables in its CURVES), for docs/:

    python scripts/learning_curves.py results/learning_invp.json --curves pos_precision hard_pos_precision \
        --out docs/img/invp_pos_precision.png

One panel per curve; one colour per row of the table; each seed a thin line, the mean over the seeds
(at the steps every seed logged) a thick one. Prints the mean at the first and the last logged step
of each row and curve, the numbers a caption quotes, as JSON.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def mean_curve(runs: list[list[list[float]]]) -> tuple[list[int], list[float]]:
    """(steps, mean value) over several runs' [[step, value], ...], at the steps all of them logged."""
    if not runs:
        return [], []
    common = set.intersection(*[{int(s) for s, _ in r} for r in runs])
    steps = sorted(common)
    by_run = [{int(s): v for s, v in r} for r in runs]
    return steps, [sum(d[s] for d in by_run) / len(by_run) for s in steps]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file")
    ap.add_argument("--curves", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default=None)
    a = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.loads(Path(a.file).read_text())
    rows: dict[str, list[dict]] = {}
    for key, run in res["runs"].items():
        rows.setdefault(key.split("/seed")[0], []).append(run)
    missing = [c for c in a.curves if not any(c in r.get("curves", {}) for rs in rows.values() for r in rs)]
    if missing:
        raise SystemExit(f"{a.file} keeps no curve {', '.join(missing)}")
    fig, axes = plt.subplots(1, len(a.curves), figsize=(5 * len(a.curves), 3.6), squeeze=False)
    summary = {}
    for ax, curve in zip(axes[0], a.curves):
        for i, (name, runs) in enumerate(rows.items()):
            series = [r["curves"][curve] for r in runs if r.get("curves", {}).get(curve)]
            if not series:
                continue
            colour = f"C{i}"
            for s in series:
                ax.plot([p[0] for p in s], [p[1] for p in s], color=colour, alpha=0.3, lw=0.8)
            steps, mean = mean_curve(series)
            ax.plot(steps, mean, color=colour, lw=2, label=f"{name} ({len(series)} seeds)")
            if steps:
                summary.setdefault(name, {})[curve] = {"first_step": steps[0], "first": mean[0],
                                                       "last_step": steps[-1], "last": mean[-1]}  # fmt: skip
        ax.set_xlabel("step")
        ax.set_title(curve)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(a.title or f"{res.get('table', '')}: {Path(a.file).name} (commit {res.get('commit')})", fontsize=9)
    fig.tight_layout()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(json.dumps({"file": a.file, "out": a.out, "curves": summary}))


if __name__ == "__main__":
    main()
