"""Timing helpers for the benchmarks: interleaved rounds, medians and ratios measured in one run.

The machines are shared and noisy, so contenders run in alternating order within each round and
every reported ratio is the median over rounds of the per-round ratio (a neighbour that slows one
round slows every contender of that round alike).
"""
from __future__ import annotations

import json
import platform
import statistics
import time

import torch


def interleaved(contenders: dict, rounds: int, reps: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each ``contenders[name]()``, one value per round (mean of ``reps`` calls).
    The order of the contenders is rotated every round."""
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    times = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            for _ in range(reps):
                contenders[name]()
            times[name].append((time.perf_counter() - t0) / reps)
    return times


def median_ratio(times: dict, a: str, b: str) -> float:
    """Median over rounds of time(a) / time(b): above 1 means a is slower."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def environment() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine()}  # fmt: skip


def emit(result: dict, out: str | None):
    """Print the result as one JSON line (last line of output) and optionally write it to a file."""
    line = json.dumps(result)
    if out:
        with open(out, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    print(line)
