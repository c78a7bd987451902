"""Training-step cost of the dense methods (PixPro, PixContrast, DetCo) against plain MoCo (CPU, digits presets).

Each contender is the real training step (`train_step` through Fabric) of a recipe, views included,
on the same uint8 batches of the digit scenes (the 10,000 training scenes the four presets share,
batches in the order of a drop-last loader, the same for every contender), as each preset sets it:
- ``moco`` (moco/digits: one query and one key view of 32 px, the small CNN, queue 1024);
- ``pixpro`` (pixpro/digits: two views of 48 px, each encoded online and by the momentum branch to a
  6 x 6 final map, every pixel projected by a 1x1-conv head, the pixel propagation module, the
  consistency loss over the positive pixel pairs, both directions);
- ``pixcontrast`` (pixcontrast/digits: the same views and maps, a pixel-level InfoNCE both directions);
- ``detco`` (detco/digits: a global pair of 32 px and a local pair, each a 3 x 3 jigsaw of 12 px
  patches, all four stages of the small CNN, a global and a local head and queue per stage,
  L_gg + L_ll + L_lg at each).
All at one batch size (``--batch``, default 64: the presets' own). Rounds are interleaved (the
order rotated each round); medians of step times, and medians (with quartiles) of per-round
ratios vs moco.

Prints medians and ratios; the last line is JSON (--out writes it to a file).

    OMP_NUM_THREADS=1 python benchmarks/dense_overhead.py --threads 1 --rounds 7 \
        --out results/bench_dense_overhead.json
    python benchmarks/dense_overhead.py --tiny    # checks the script in seconds, measures nothing
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

RECIPES = {"moco": "moco/digits", "pixpro": "pixpro/digits", "pixcontrast": "pixcontrast/digits",
           "detco": "detco/digits"}  # fmt: skip


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=3, help="steps per contender per round")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--tiny", action="store_true", help="batch 16, 2 rounds of 1 step: checks the script")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.tiny:
        a.rounds, a.reps, a.batch = 2, 1, 16
    from contrastlab.config import load_config
    from contrastlab.data import build_datasets

    train = build_datasets(load_config("moco/digits").data)[0]  # the training scenes (the four presets' data: is the same)
    images_of = lambda index: train.images[index]  # noqa: E731
    res = {"benchmark": "dense_overhead", "rounds": a.rounds, "reps": a.reps, "batch": a.batch, "tiny": a.tiny,
           "train_rows": len(train), "recipes": RECIPES,
           **environment(seeds={"config": 0, "weights": 0, "data": "the digits scenes (digit_scenes at its fixed seed)",
                                "batch_order": "epoch e: torch.randperm at seed e",
                                "views": "step k: generator seed k"})}  # fmt: skip
    steps, view_px = {}, {}
    for name, recipe in RECIPES.items():
        order = EpochOrder(len(train), a.batch, images_of)  # a fresh order each: the same batches for every contender
        steps[name] = make_step(recipe, order.images, [f"optim.batch_size={a.batch}"])
        cfg = load_config(recipe)
        view_px[name] = cfg.views.size or cfg.data.image_size
    view_px["detco_local_patch"] = load_config("detco/digits").method["local_size"]
    res["view_px"] = view_px

    times = interleaved(steps, a.rounds, a.reps)
    med = {n: statistics.median(t) for n, t in times.items()}
    others = [n for n in steps if n != "moco"]
    res["median_step_s"] = {n: round(m, 5) for n, m in med.items()}
    res["img_per_s"] = {n: round(a.batch / m, 1) for n, m in med.items()}
    res["ratio_vs_moco"] = {n: round(median_ratio(times, n, "moco"), 4) for n in others}
    res["quartiles_vs_moco"] = {n: ratio_quartiles(times, n, "moco") for n in others}
    res["ratio_pixcontrast_vs_pixpro"] = round(median_ratio(times, "pixcontrast", "pixpro"), 4)
    res["per_round_s"] = {n: [round(x, 6) for x in t] for n, t in times.items()}
    print(f"steps at batch {a.batch} ({a.rounds} interleaved rounds of {a.reps}, {torch.get_num_threads()} threads): "
          + ", ".join(f"{n} {1000 * m:.1f} ms" for n, m in med.items()))  # fmt: skip
    for n in others:
        q = res["quartiles_vs_moco"][n]
        print(f"  {n} / moco = {res['ratio_vs_moco'][n]:.3f} (quartiles {q[0]:.3f} to {q[2]:.3f})")
    emit(res, a.out)


if __name__ == "__main__":
    main()
