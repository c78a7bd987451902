"""Training-step cost of RoCL over SimCLR at the same batch (CPU, digits presets).

Each contender is the real training step (`train_step` through Fabric) of a recipe, views included, on
the same uint8 batches of the embedded digit scenes (batches in the order of a drop-last loader, the same
for every contender):
- ``simclr`` (simclr/digits) and ``rocl`` (rocl/digits: the same network and views, plus the instance-wise
  attack of ``method.attack_steps`` PGD iterations on view 1, each a forward and backward pass of B images
  with BatchNorm in eval mode, and the three views in one forward pass of 3B), both at ``--batch``;
- ``rocl_k7``: RoCL with the official 7 attack steps (rocl/cifar10's ``attack_steps``) on the same preset.
Rounds are interleaved; medians of step times and medians of per-round ratios vs simclr, with quartiles.
The extra cost is the attack's k passes and the third view: about (2 k + 3) / 2 SimCLR steps' worth of
network passes, counting a backward pass as about twice a forward one, less the attack's saved weight
gradients.

Prints medians and ratios; the last line is JSON (--out writes it to a file).

    OMP_NUM_THREADS=1 python benchmarks/rocl_overhead.py --threads 1 --rounds 7 --out results/bench_rocl_overhead.json
    python benchmarks/rocl_overhead.py --tiny    # checks the script in seconds, measures nothing
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _steps import EpochOrder, make_step  # noqa: E402
from _timing import emit, environment, interleaved, median_ratio, ratio_quartiles  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=2, help="steps per contender per round")
    ap.add_argument("--batch", type=int, default=64, help="images per step (rocl/digits' batch)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--tiny", action="store_true", help="batch 8, 2 rounds of 1 step: checks the script")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.tiny:
        a.rounds, a.reps, a.batch = 2, 1, 8
    from contrastlab.config import load_config
    from contrastlab.data import build_datasets

    train = build_datasets(load_config("simclr").data)[0]
    images_of = lambda index: train.images[index]  # noqa: E731
    same = [f"optim.batch_size={a.batch}", "optim.warmup_steps=0"]
    k_digits = load_config("rocl").method["attack_steps"]
    k_official = load_config("rocl/cifar10").method["attack_steps"]
    res = {"benchmark": "rocl_overhead", "rounds": a.rounds, "reps": a.reps, "batch": a.batch, "tiny": a.tiny,
           "attack_steps": {"rocl": k_digits, "rocl_k7": k_official},
           **environment(seeds={"config": 0, "weights": 0, "data": "the digit scenes (digit_scenes at its fixed seed)",
                                "batch_order": "epoch e: torch.randperm at seed e", "views": "step k: generator seed k",
                                "attack_random_start": "torch's global generator after the set-up's seed 0"})}  # fmt: skip
    steps = {}
    for name, recipe, extra in (("simclr", "simclr", []), ("rocl", "rocl", []),
                                ("rocl_k7", "rocl", [f"method.attack_steps={k_official}"])):
        order = EpochOrder(len(train), a.batch, images_of)
        steps[name] = make_step(recipe, order.images, same + extra)
    times = interleaved(steps, a.rounds, a.reps)
    med = {n: statistics.median(t) for n, t in times.items()}
    res["median_step_s"] = {n: round(m, 5) for n, m in med.items()}
    res["img_per_s"] = {n: round(a.batch / m, 1) for n, m in med.items()}
    res["ratio_vs_simclr"] = {n: round(median_ratio(times, n, "simclr"), 4) for n in steps if n != "simclr"}
    res["quartiles_vs_simclr"] = {n: ratio_quartiles(times, n, "simclr") for n in steps if n != "simclr"}
    res["per_round_s"] = {n: [round(x, 6) for x in t] for n, t in times.items()}
    print(f"steps at batch {a.batch} ({a.rounds} interleaved rounds of {a.reps}, {torch.get_num_threads()} threads): "
          + ", ".join(f"{n} {1000 * m:.1f} ms" for n, m in med.items()))  # fmt: skip
    for n, r in res["ratio_vs_simclr"].items():
        print(f"  {n} / simclr = {r:.3f} (attack steps {res['attack_steps'][n]})")
    emit(res, a.out)


if __name__ == "__main__":
    main()
