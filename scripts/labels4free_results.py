"""The Labels4Free numbers that docs/labels4free.md quotes: ``contrastlab eval masks`` on a trained
labels4free digits run, with the training times of it and of its StyleGAN2 generator.

    python scripts/labels4free_results.py runs/stylegan2-digits runs/labels4free-digits \
        --out results/learning_labels4free.json [--eval key=value ...]

Runs ``contrastlab eval masks L4F_RUN`` in a subprocess (its options after --eval) and writes its
JSON with each run's summary (steps, train seconds), the commit, the command, torch's version, the
thread count and the seeds (the runs' ``seed``, the protocol's ``seed``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _git(*args):
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gan_run")
    ap.add_argument("l4f_run")
    ap.add_argument("--out", required=True)
    ap.add_argument("--eval", nargs="*", default=[])
    a = ap.parse_args(argv)
    cmd = [sys.executable, "-m", "contrastlab.cli", "eval", "masks", a.l4f_run, *a.eval]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode:
        sys.exit(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"eval masks failed ({r.returncode})")
    result = json.loads([line for line in r.stdout.splitlines() if line.strip()][-1])

    def summary(run):
        s = json.loads((Path(run) / "summary.json").read_text())
        cfg = (Path(run) / "config.yaml").read_text()
        return {"run": str(run), "step": s.get("step"), "train_seconds": s.get("train_seconds"), "config": cfg}

    out = {"table": "labels4free", "eval_masks": result, "stylegan2_run": summary(a.gan_run),
           "labels4free_run": summary(a.l4f_run), "commit": os.environ.get("BENCH_COMMIT") or _git("rev-parse", "HEAD"),
           "uncommitted_changes": (_git("status", "--porcelain", "src", "scripts") or "").splitlines(),
           "command": "python " + " ".join(sys.argv), "torch": torch.__version__, "threads": 1,
           "seeds": {"training": "each run's config seed (0)", "eval_masks": result.get("seed")},
           "load_average": os.getloadavg()[0]}  # fmt: skip
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
