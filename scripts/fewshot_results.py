#!/usr/bin/env python3
"""The few-shot table: ProtoSeg (the PANet prototype baseline) on the embedded episodes.

For each data set (``digits``: novel digits 0-4 of fold 0; ``organs``: one held-out organ per fold) and
seed: train the CPU preset ``configs/protoseg/<data>.yaml`` (one thread), then ``contrastlab eval fewshot``
1-shot and 5-shot on 1000 test episodes (episode seed 0), and the same episodes with the untrained
prototype baseline on a random-init encoder of the same network (``method=prototype features=random``: the
floor). Writes ``results/fewshot_<data>.json`` with the commit, the command, torch, threads and seeds.

    PYTHONPATH=src python scripts/fewshot_results.py digits --seeds 0
    PYTHONPATH=src python scripts/fewshot_results.py organs --folds 0 1 2 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _git(*args) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()


def _commit() -> str:
    dirty = _git("status", "--porcelain", "--", "src", "configs", "scripts")
    return _git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")


def _cli(args: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    code = f"import sys; from contrastlab.cli import main; sys.exit(main({args!r}))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(args)}\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


KEEP = ("miou", "fb_iou", "fg_iou", "bg_iou", "per_class_iou", "dice", "per_class_dice", "novel_classes", "seconds")


def main(argv=None):
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", choices=["digits", "organs"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--folds", type=int, nargs="+", default=[0])
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--runs", default="runs/fewshot_results")
    a = ap.parse_args(argv)
    res = {"table": f"fewshot_{a.data}", "commit": _commit(),
           "command": f"PYTHONPATH=src python scripts/fewshot_results.py {' '.join(argv if argv is not None else sys.argv[1:])}",
           "torch": torch.__version__, "threads": 1, "seeds": a.seeds, "episode_seed": 0, "episodes": a.episodes,
           "what": "ProtoSeg trained on the base classes (recipe protoseg/" + a.data + ") vs the untrained prototype "
                   "baseline on a random-init encoder; eval fewshot on the test split", "runs": {}}  # fmt: skip
    for fold in a.folds:
        for seed in a.seeds:
            out = ROOT / a.runs / f"{a.data}-fold{fold}-s{seed}"
            t0 = time.time()
            train = _cli(["train", f"protoseg/{a.data}", f"method.fold={fold}", f"seed={seed}", f"trainer.out_dir={out}",
                          "trainer.threads=1", "trainer.progress=false", "trainer.overwrite=true"])  # fmt: skip
            entry = {"fold": fold, "seed": seed, "train_seconds": train.get("train_seconds"),
                     "wall_seconds": round(time.time() - t0, 1), "steps": train.get("step")}  # fmt: skip
            for shots in (1, 5):
                common = [str(out), f"shots={shots}", f"episodes={a.episodes}", "seed=0", "device=cpu"]
                r = _cli(["eval", "fewshot", *common])
                entry[f"trained_{shots}shot"] = {k: r[k] for k in KEEP if k in r}
                r = _cli(["eval", "fewshot", *common, "method=prototype", "features=random", "stage=2"])
                entry[f"random_{shots}shot"] = {k: r[k] for k in KEEP if k in r}
            res["runs"][f"fold{fold}/seed{seed}"] = entry
            print(json.dumps({"fold": fold, "seed": seed, **{k: v.get("miou") for k, v in entry.items() if isinstance(v, dict)}}), flush=True)
    path = ROOT / "results" / f"fewshot_{a.data}.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(path)


if __name__ == "__main__":
    main()
