"""RP-Net's refinement steps at test: ``eval fewshot`` of one trained RP-Net run with ``method.t_test`` = each T
(the same weights: T at test changes nothing in training), 1000 1-shot episodes of the run's novel fold.

    python scripts/fewshot_refinement_steps.py RUN [--steps 1 2 4 10] [--out results/fewshot_refinement_steps.json]

One T is ``contrastlab eval fewshot RUN method.t_test=T`` on the command line (t_test does not change training,
so evaluation may set it); this script runs several in one process through ``contrastlab.eval.fewshot.run``. Writes
the JSON with the commit, the command, torch, the threads and the seeds (the run's training seed and the episodes')."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--steps", type=int, nargs="*", default=[1, 2, 4, 10])
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="the episodes' seed (episode i is a function of (seed, i))")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "results" / "fewshot_refinement_steps.json"))
    a = ap.parse_args(argv)
    import torch

    from contrastlab.eval.fewshot import FewShotOptions, run
    from contrastlab.eval.run import load_run

    torch.set_num_threads(a.threads)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    train_seed = int(load_run(a.run, [])[0].seed)
    res = {"run": a.run, "commit": commit, "episodes": a.episodes,
           "command": "python scripts/fewshot_refinement_steps.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "torch": torch.__version__, "threads": a.threads, "seeds": {"training": [train_seed], "episodes": a.seed},
           "results": {}}  # fmt: skip
    for t in a.steps:
        r = run(a.run, FewShotOptions(shots=1, episodes=a.episodes, n_examples=0, seed=a.seed), [f"method.t_test={t}"])
        res["results"][f"T={t}"] = {k: r.get(k) for k in ("miou", "fb_iou", "dice", "data", "fold", "novel_classes", "step")}
        print(f"T={t}: {json.dumps(res['results'][f'T={t}'])}", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
