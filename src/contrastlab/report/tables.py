"""The report's tables: the last value of each logged column, one row per evaluation of
``eval.json``, and a nested summary flattened to dotted keys; rendered as HTML."""
from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import numpy as np

from .curves import columns
from .values import fmt


def flatten(d: Mapping, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.extend(flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


def html_table(rows: list[tuple[str, str]]) -> str:
    body = "\n".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(v)}</td></tr>" for k, v in rows
    )
    return f"<table>\n{body}\n</table>"


# entries of an evaluation result that describe it rather than measure it
EVAL_META = ("protocol", "checkpoint", "step", "label", "features", "method", "extractor", "n_train", "n_test",
              "n_inputs", "n_real", "k_requested", "probe_data")


def eval_metrics(result: Mapping, prefix: str = "") -> list[str]:
    """``name value`` for each scalar measurement of an evaluation result (nested dicts, such as
    a translation's per-direction scores, with their key as a prefix; lists left out)."""
    out = []
    for k, v in result.items():
        if k in EVAL_META:
            continue
        if isinstance(v, Mapping):
            out += eval_metrics(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float, np.generic)) and not isinstance(v, bool):
            out.append(f"{prefix}{k} {fmt(v)}")
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
                     fmt(r.get("step", "")), ", ".join(eval_metrics(r))))  # fmt: skip
    return rows


def html_grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}\n</table>"


def final_metrics(metrics: Sequence[Mapping]) -> list[tuple[str, str]]:
    """Last non-empty value of each column."""
    rows = []
    for col in columns(metrics):
        last = None
        for row in metrics:
            v = row.get(col)
            if v is None or (isinstance(v, str) and not v.strip()):
                continue
            if isinstance(v, float) and math.isnan(v):
                continue
            last = v
        if last is not None:
            rows.append((col, fmt(last)))
    return rows
