"""Training-step overhead of the issue-15 family (LooC, InvP) over plain MoCo (CPU, digits presets).

Each contender is the real training step (`train_step` through Fabric) of a recipe, views
included, on the same uint8 batches of the digit scenes (the 2,000 training scenes of
invp/digits, batches in the order of a drop-last loader, the same for every contender):
- ``moco`` (moco/digits), ``looc`` (looc/digits: 3 left-out augmentations, so 4 keys and 4 heads
  and queues), ``invp`` (invp/digits: one view, a bank and a graph of 2,000 rows, K = 256), and
  ``invp_bank<N>``: the same InvP step with a bank and graph of N rows (``--bank-rows``, default
  50,000 x 128, CIFAR's size; the set-up is given a stand-in training set of N rows, and each batch
  keeps the same images with indices drawn over the N rows). Both InvP steps are past the
  switch-on epoch T (L_inv in the loss), their graphs first filled by a whole-bank kNN graph.
All at one batch size (``--batch``, default 128: the invp/digits preset's; moco/looc/digits train at
64). Rounds are interleaved; medians of step times and medians of per-round ratios vs moco.

InvP has no per-epoch graph rebuild: at each step it rewrites the graph rows of the batch's
images (the top-(k+1) of the background it searches for the instance loss anyway, minus self)
and reads the graph of the previous visits to find positives. Its per-epoch graph update is thus
spread over the epoch's steps; it is measured on its own, part by part (bank search, positive
search, graph rows, bank update: `_steps.invp_step_parts`), at both bank sizes, with what share of
the step (and so of an epoch) each is. For reference, a whole-bank kNN rebuild (every bank row
against the bank, what a per-epoch rebuild would cost; not done by the method) is timed once per
bank size, with its share of an epoch of steps.

Prints medians and ratios; the last line is JSON (--out writes it to a file).

    OMP_NUM_THREADS=1 python benchmarks/family_overhead.py --threads 1 --rounds 15 \
        --out results/bench_family_overhead.json
    python benchmarks/family_overhead.py --tiny    # checks the script in seconds, measures nothing
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _steps import EpochOrder, SizedRows, invp_of, invp_step_parts, make_step, whole_bank_graph  # noqa: E402
from _timing import emit, environment, interleaved, median_ratio, ratio_quartiles  # noqa: E402

PARTS = ("bank_search", "positive_search", "graph_rows", "bank_update")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=3, help="steps per contender per round")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--bank-rows", type=int, default=50_000, help="the larger InvP bank (rows of 128)")
    ap.add_argument("--rebuild-reps", type=int, default=3, help="timings of each whole-bank rebuild (median)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--tiny", action="store_true",
                    help="batch 16, 2 rounds of 1 step, a 512-row bank: checks the script")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.tiny:
        a.rounds, a.reps, a.batch, a.bank_rows, a.rebuild_reps = 2, 1, 16, 512, 1
    from contrastlab.config import load_config
    from contrastlab.data import build_datasets

    train = build_datasets(load_config("invp/digits").data)[0]  # the preset's 2,000 scenes, with labels
    images_of = lambda index: train.images[index]  # noqa: E731
    big = f"invp_bank{a.bank_rows}"
    n_big = a.bank_rows

    def big_images(index):  # indices over the big bank; the images of the same 2,000 scenes (row i: scene i mod 2,000)
        return train.images[index % len(train)]

    orders = {n: EpochOrder(len(train), a.batch, images_of) for n in ("moco", "looc", "invp")}
    orders[big] = EpochOrder(n_big, a.batch, big_images)
    res = {"benchmark": "family_overhead", "rounds": a.rounds, "reps": a.reps, "batch": a.batch, "tiny": a.tiny,
           "train_rows": len(train), "big_bank_rows": n_big,
           **environment(seeds={"config": 0, "weights": 0,
                                "data": "the invp/digits scenes (digit_scenes at its fixed seed)",
                                "batch_order": "epoch e: torch.randperm at seed e", "views": "step k: generator seed k",
                                "big_bank_labels": "stand-in labels at seed 0",
                                "invp_parts": "anchors and noise at seed 0"})}  # fmt: skip
    steps, models = {}, {}
    steps["moco"] = make_step("moco/digits", orders["moco"].images)
    steps["looc"] = make_step("looc/digits", orders["looc"].images)
    for name, rows in (("invp", None), (big, n_big)):
        ts = train if rows is None else SizedRows(rows)
        steps[name], models[name] = make_step("invp/digits", orders[name].images, train_set=ts,
                                              extra=orders[name].extra, return_model=True)  # fmt: skip

    # the graphs start with realistic edges (a whole-bank kNN graph of the bank), timed: a per-epoch rebuild's cost
    rebuild = {}
    for name, model in models.items():
        m = invp_of(model)
        t = []
        for _ in range(a.rebuild_reps):
            t0 = time.perf_counter()
            whole_bank_graph(m)
            t.append(time.perf_counter() - t0)
        rebuild[name] = statistics.median(t)
        print(f"{name}: whole-bank kNN rebuild of {len(m.bank)} x {m.bank.dim}: {rebuild[name]:.3f} s", flush=True)

    times = interleaved(steps, a.rounds, a.reps)
    med = {n: statistics.median(t) for n, t in times.items()}
    res["median_step_s"] = {n: round(m, 5) for n, m in med.items()}
    res["img_per_s"] = {n: round(a.batch / m, 1) for n, m in med.items()}
    res["ratio_vs_moco"] = {n: round(median_ratio(times, n, "moco"), 4) for n in steps if n != "moco"}
    res["quartiles_vs_moco"] = {n: ratio_quartiles(times, n, "moco") for n in steps if n != "moco"}
    res["ratio_invp_big_vs_invp"] = round(median_ratio(times, big, "invp"), 4)
    res["per_round_s"] = {n: [round(x, 6) for x in t] for n, t in times.items()}
    print(f"steps at batch {a.batch} ({a.rounds} interleaved rounds of {a.reps}, {torch.get_num_threads()} threads): "
          + ", ".join(f"{n} {1000 * m:.1f} ms" for n, m in med.items()))  # fmt: skip
    for n, r in res["ratio_vs_moco"].items():
        print(f"  {n} / moco = {r:.3f}")

    # InvP's bank and graph work, part by part, at both bank sizes (interleaved rounds of each size's parts)
    res["invp_parts"] = {}
    for name, model in models.items():
        m = invp_of(model)
        parts = invp_step_parts(m, a.batch)
        pt = interleaved(parts, a.rounds, max(a.reps, 5))
        pmed = {p: statistics.median(pt[p]) for p in PARTS}
        per_epoch = len(m.bank) // a.batch
        graph_step = pmed["positive_search"] + pmed["graph_rows"]
        res["invp_parts"][name] = {
            "bank_rows": len(m.bank), "steps_per_epoch": per_epoch,
            "median_ms": {p: round(1000 * v, 4) for p, v in pmed.items()},
            # a part's share of the step = its share of an epoch (an epoch is per_epoch such steps)
            "share_of_step": {p: round(v / med[name], 4) for p, v in pmed.items()},
            "graph_update_s_per_epoch": round(per_epoch * graph_step, 4),
            "graph_update_share_of_epoch": round(graph_step / med[name], 4),
            "bank_work_share_of_epoch": round((pmed["bank_search"] + pmed["bank_update"]) / med[name], 4),
            "epoch_s": round(per_epoch * med[name], 3),
            "whole_bank_rebuild_s": round(rebuild[name], 4),
            "whole_bank_rebuild_share_of_epoch": round(rebuild[name] / (rebuild[name] + per_epoch * med[name]), 4),
        }  # fmt: skip
        r = res["invp_parts"][name]
        print(f"{name} ({len(m.bank)} rows, {per_epoch} steps an epoch of {r['epoch_s']:.1f} s): "
              + ", ".join(f"{p} {1000 * v:.2f} ms ({v / med[name]:.1%})" for p, v in pmed.items())
              + f"; graph update {r['graph_update_share_of_epoch']:.1%} of an epoch; a whole-bank rebuild would add "
              f"{rebuild[name]:.2f} s ({r['whole_bank_rebuild_share_of_epoch']:.1%} of the epoch)")  # fmt: skip
    emit(res, a.out)


if __name__ == "__main__":
    main()
