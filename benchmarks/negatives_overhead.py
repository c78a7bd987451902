"""Training-step overhead of the issue-4 axes over plain SimCLR / MoCo (CPU, digits presets).

Each contender is the real training step (`train_step` through Fabric) of a recipe on the same
uint8 batches of digit scenes, views included: simclr vs dcl and hcl (the debiased / hard loss),
moco vs mochi (MoCHi(256, 128, 64) over a 4,096-key queue, past the warm-up) and vs
combined (HCL + MoCHi + pruned branch); sdclr's pruned branch vs simclr for information.
Prints medians and the median of per-round ratios; the last line is JSON.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _steps import make_step  # noqa: E402
from _timing import emit, environment, interleaved, median_ratio  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from contrastlab.data import digit_scenes

    pool = digit_scenes()[0].images[:2048]
    k = [0]

    def images():
        k[0] += 1
        return pool[(k[0] % 8) * 256 : (k[0] % 8 + 1) * 256]

    res = {"benchmark": "negatives_overhead", "rounds": a.rounds, "reps": a.reps, **environment(seeds={"config": 0, "weights": 0, "data": "digit_scenes() at its fixed seed", "views": "step k: generator seed k"})}
    groups = {
        "simclr_family": {"simclr": ("simclr", ()), "dcl": ("dcl", ()), "hcl": ("hcl", ()), "sdclr": ("sdclr", ())},
        # the setting: a 4,096-key queue, MoCHi(256, 128, 64) (the presets use 1,024 keys and N = 64)
        # (shuffle-BN over 8 sub-batches in each, as when results/bench_negatives_overhead.json was measured)
        "moco_family": {"moco": ("moco", ("method.queue_size=4096", "method.shuffle_groups=8")),
                        "mochi": ("mochi", ("method.queue_size=4096", "method.mochi_n_hard=256")),
                        "combined": ("combined", ("method.queue_size=4096", "method.mochi_n_hard=256"))},
    }
    for group, members in groups.items():
        times = interleaved({n: make_step(r, images, o) for n, (r, o) in members.items()}, a.rounds, a.reps)
        base = next(iter(members))
        res[group] = {"median_s": {n: round(statistics.median(t), 4) for n, t in times.items()},
                      "ratio_vs_" + base: {n: round(median_ratio(times, n, base), 4) for n in members if n != base}}  # fmt: skip
        print(f"{group}: " + ", ".join(f"{n} {statistics.median(t) * 1000:.0f} ms" for n, t in times.items()))
        for n in members:
            if n != base:
                print(f"  {n} / {base} = {median_ratio(times, n, base):.3f}")
    emit(res, a.out)


if __name__ == "__main__":
    main()
