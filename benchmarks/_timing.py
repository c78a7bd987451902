"""Timing helpers for the benchmarks: interleaved rounds, medians and ratios measured in one run.

The machines are shared and noisy, so contenders run in alternating order within each round and
every reported ratio is the median over rounds of the per-round ratio (a neighbour that slows one
round slows every contender of that round alike).

Every results file records where it came from (:func:`environment`): the commit (and the source
files that differed from it), the command, torch's version, the thread count, the seeds and the
machine's load average when the run started.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def interleaved(contenders: dict, rounds: int, reps: int, warmup: int = 2, sync=None, before=None, after=None) -> dict[str, list[float]]:
    """Seconds per call of each ``contenders[name]()``, one value per round (mean of ``reps`` calls).
    The order of the contenders is rotated every round.

    ``sync()`` (e.g. ``torch.cuda.synchronize``) is called before the clock starts and before it
    stops, so a window holds exactly its own device work. ``before[name]()`` / ``after[name]()``,
    where given, run untimed just before / after that contender's window (e.g. to drain or let
    settle a data loader's prefetching, so that no contender's background work falls into another's
    window)."""
    sync = sync or (lambda: None)
    before, after = before or {}, after or {}
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    times = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            if name in before:
                before[name]()
            sync()
            t0 = time.perf_counter()
            for _ in range(reps):
                contenders[name]()
            sync()
            times[name].append((time.perf_counter() - t0) / reps)
            if name in after:
                after[name]()
    return times


def median_ratio(times: dict, a: str, b: str) -> float:
    """Median over rounds of time(a) / time(b): above 1 means a is slower."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def ratio_quartiles(times: dict, a: str, b: str) -> list[float]:
    """First quartile, median and third quartile over rounds of time(a) / time(b): the spread."""
    r = [x / y for x, y in zip(times[a], times[b])]
    if len(r) < 2:
        return [round(r[0], 4)] * 3 if r else []
    q1, q2, q3 = statistics.quantiles(r, n=4, method="inclusive")
    return [round(q1, 4), round(q2, 4), round(q3, 4)]


def _git(*args) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.rstrip() if out.returncode == 0 else None


def provenance(seeds) -> dict:
    """What a results file must record (issue 12): the commit, the source files under src/ and
    benchmarks/ that differ from it (uncommitted: the numbers may not be the commit's), the
    command, the seeds the benchmark uses, the date and the load average when it started.
    ``BENCH_COMMIT=<sha>`` in the environment names the commit where git cannot (a copy of the
    working tree on another machine); uncommitted changes are then not checked (null)."""
    given = os.environ.get("BENCH_COMMIT")  # a copy of the tree whose .git is not the checkout's (a remote GPU machine)
    changed = None if given else _git("status", "--porcelain", "--", "src", "benchmarks")
    return {
        "commit": given or (_git("rev-parse", "HEAD") or "").strip() or None,
        "uncommitted_changes": None if changed is None else [ln[3:] for ln in changed.splitlines() if ln.strip()],
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "seeds": seeds,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_avg_1_5_15min": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def environment(seeds) -> dict:
    """torch's version, the thread count, the machine and :func:`provenance` (commit, command, seeds).
    ``seeds`` is required: a dict saying which seed each random part of the benchmark uses."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            **provenance(seeds)}  # fmt: skip


def emit(result: dict, out: str | None):
    """Print the result as one JSON line (last line of output) and optionally write it to a file
    (its folder is made if missing)."""
    line = json.dumps(result)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    print(line)
