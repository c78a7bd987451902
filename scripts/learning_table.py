"""A markdown table of a learning-results file (written by scripts/learning_results.py), for docs/:

    python scripts/learning_table.py results/learning_looc.json --cols "linear label=digit" "linear label=color"
    python scripts/learning_table.py results/learning_looc.json --list      # the evaluations the file holds

Each row of the file's table is a line; each column an evaluation (``PROTOCOL OPTIONS`` as the file
names it) and a metric (``--metric``, default top1). A cell is the mean over the row's seeds in
percent, ``± std`` (sample standard deviation) when there are several seeds, and ``—`` when the row
has no such evaluation. The best mean of a column is bold (``--bold``). Every number printed is in the
file's summary (as a fraction), which is what tests/test_provenance.py checks in docs/.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def cell(s: dict | None, digits: int) -> str:
    if not s:
        return "—"
    out = f"{100 * s['mean']:.{digits}f}"
    if s.get("n", 1) > 1 and "std" in s:
        out += f" ± {100 * s['std']:.{digits}f}"
    return out


def table(res: dict, cols: list[str], metric: str = "top1", digits: int = 1, bold: bool = True,
          names: dict | None = None, rows: list[str] | None = None) -> str:  # fmt: skip
    """The markdown table: one line per row of ``res['summary']`` (or ``rows``), one column per eval."""
    summary = res["summary"]
    rows = rows or list(summary)
    stats = {(r, c): summary.get(r, {}).get(c, {}).get(metric) for r in rows for c in cols}
    best = {c: max((s["mean"] for (r, cc), s in stats.items() if cc == c and s), default=None) for c in cols}
    header = "| run | " + " | ".join((names or {}).get(c, c) for c in cols) + " |"
    lines = [header, "|" + "---|" * (len(cols) + 1)]
    for r in rows:
        cells = []
        for c in cols:
            text = cell(stats[(r, c)], digits)
            if bold and stats[(r, c)] and len(rows) > 1 and stats[(r, c)]["mean"] == best[c]:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file")
    ap.add_argument("--cols", nargs="*", default=None, help="evaluations, as the file names them")
    ap.add_argument("--names", nargs="*", default=None, help="column headers, one per --cols")
    ap.add_argument("--rows", nargs="*", default=None)
    ap.add_argument("--metric", default="top1")
    ap.add_argument("--digits", type=int, default=1)
    ap.add_argument("--no-bold", action="store_true")
    ap.add_argument("--list", action="store_true", help="print the evaluations the file holds")
    a = ap.parse_args(argv)
    res = json.loads(Path(a.file).read_text())
    if a.list:
        for r, evs in res["summary"].items():
            print(r, "->", ", ".join(e for e in evs if e != "train_seconds"))
        return
    cols = a.cols or sorted({e for evs in res["summary"].values() for e in evs if e != "train_seconds"})
    if a.names and len(a.names) != len(cols):
        raise SystemExit(f"--names gives {len(a.names)} headers for {len(cols)} columns")
    names = dict(zip(cols, a.names)) if a.names else None
    print(table(res, cols, a.metric, a.digits, not a.no_bold, names, a.rows))


if __name__ == "__main__":
    main()
