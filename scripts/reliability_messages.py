"""What a user sees for each fault and bad input of docs/reliability.md: runs every case through
the real command line (a subprocess each), records the exit code and the lines on stderr, and
writes them to results/reliability_messages.json (with the commit and the command).

    python scripts/reliability_messages.py --out results/reliability_messages.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ["data.n_train=256", "data.n_test=128", "model.width=8", "model.proj_hidden=32", "model.proj_dim=16",
        "optim.batch_size=32", "optim.warmup_steps=0", "trainer.progress=false", "trainer.accelerator=cpu",
        "trainer.threads=1"]  # fmt: skip
SMALL_FOLDER = ["model.backbone=small_cnn", "model.width=8", "model.proj_hidden=32", "model.proj_dim=16",
                "data.image_size=32", "optim.batch_size=8", "trainer.max_steps=4", "trainer.knn_k=5",
                "trainer.accelerator=cpu", "trainer.progress=false", "data.num_workers=0", "optim.warmup_epochs=null"]  # fmt: skip


def cli(*args, wait=True):
    cmd = [sys.executable, "-m", "contrastlab.cli", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


def seen(p) -> dict:
    err = [l for l in p.stderr.splitlines() if l.startswith("contrastlab") or "no val/ or test/" in l]
    return {"exit": p.returncode, "stderr": err, "stdout_lines": len([l for l in p.stdout.splitlines() if l.strip()])}


def image_folder(root: Path, test_name="test", n=8):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, k in (("train", n), (test_name, 4)):
        if split is None:
            continue
        for c in ("cat", "dog"):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(k):
                Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/reliability_messages.json")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="reliability-"))
    cases = {}

    def case(name, p, **extra):
        cases[name] = {**seen(p), **extra}
        print(f"{name}: exit {p.returncode}: {cases[name]['stderr']}", flush=True)

    # --- image folders
    folder = image_folder(tmp / "imgs")
    case("imagefolder recipe with a test/ split (torchvision views, monitor on)",
         cli("train", "simclr/imagefolder", f"data.root={folder}", f"trainer.out_dir={tmp / 'if'}", "trainer.knn_every=2",
             *SMALL_FOLDER))  # fmt: skip
    bad = image_folder(tmp / "bad")
    (bad / "test" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    case("corrupt image in the test split", cli("train", "simclr/imagefolder", f"data.root={bad}",
                                                 f"trainer.out_dir={tmp / 'bad-run'}", *SMALL_FOLDER))  # fmt: skip
    none = image_folder(tmp / "notest", test_name=None)
    case("no val/ or test/ folder", cli("train", "simclr/imagefolder", f"data.root={none}", "views.backend=batched",
                                        f"trainer.out_dir={tmp / 'nt'}", *SMALL_FOLDER))  # fmt: skip
    case("data.test_dir names a missing folder", cli("train", "simclr/imagefolder", f"data.root={folder}",
                                                     "data.test_dir=holdout", f"trainer.out_dir={tmp / 'x'}", *SMALL_FOLDER))  # fmt: skip

    # --- the run folder
    run = tmp / "run"
    base = ["train", "simclr", *TINY, "trainer.max_steps=3", f"trainer.out_dir={run}"]
    cli(*base)
    case("trainer.resume=never into a run folder", cli(*base, "trainer.resume=never"))
    case("resume=auto with another config", cli(*base, "optim.lr=0.1"))
    case("another method and width into a run folder", cli("train", "moco", *TINY, "trainer.max_steps=3",
                                                           f"trainer.out_dir={run}", "model.width=16"))  # fmt: skip
    case("a resume-safe change (trainer.knn_every, threads)", cli(*base, "trainer.knn_every=1", "trainer.threads=2"))
    case("trainer.overwrite=true", cli(*base, "optim.lr=0.1", "trainer.overwrite=true"))
    holder = cli("train", "simclr", *TINY, "trainer.max_steps=100000", f"trainer.out_dir={tmp / 'busy'}", wait=False)
    while not (tmp / "busy" / "metrics.csv").exists() and holder.poll() is None:
        time.sleep(0.1)
    case("a second process trains into the same folder", cli("train", "simclr", *TINY, "trainer.max_steps=3",
                                                             f"trainer.out_dir={tmp / 'busy'}"))  # fmt: skip
    for sig in (signal.SIGTERM, signal.SIGINT):
        if sig == signal.SIGINT:
            holder = cli("train", "simclr", *TINY, "trainer.max_steps=100000", f"trainer.out_dir={tmp / 'busy2'}", wait=False)
            while not (tmp / "busy2" / "metrics.csv").exists() and holder.poll() is None:
                time.sleep(0.1)
        time.sleep(1.0)
        holder.send_signal(sig)
        out, err = holder.communicate()
        p = subprocess.CompletedProcess(holder.args, holder.returncode, out.decode(), err.decode())
        d = tmp / ("busy" if sig == signal.SIGTERM else "busy2")
        case(f"{signal.Signals(sig).name} during training", p,
             summary_status=json.loads((d / "summary.json").read_text())["status"])  # fmt: skip

    # --- checkpoints
    trunc = tmp / "trunc"
    shutil.copytree(run, trunc, ignore=shutil.ignore_patterns(".lock"))
    raw = (trunc / "last.ckpt").read_bytes()
    (trunc / "last.ckpt").write_bytes(raw[: len(raw) // 3])
    case("eval on a truncated checkpoint", cli("eval", "knn", trunc))

    # --- environment faults (a real tmpfs where mounting is allowed)
    mnt = tmp / "fs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)], capture_output=True).returncode == 0:
        try:
            case("disk full at the first checkpoint (300 KiB tmpfs)",
                 cli("train", "simclr", *TINY, "trainer.max_steps=3", "model.width=32", f"trainer.out_dir={mnt / 'run'}"))
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
            case("read-only output folder", cli("train", "simclr", *TINY, "trainer.max_steps=3", f"trainer.out_dir={mnt}"))
        finally:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)

    # --- translate
    tr = tmp / "cut"
    cli("train", "cut", "data.n_train=64", "data.n_test=32", "method.ngf=8", "method.ndf=8", "method.n_blocks=1",
        "method.head_dim=16", "method.num_patches=16", "optim.batch_size=4", "trainer.max_steps=1",
        "trainer.progress=false", "trainer.accelerator=cpu", f"trainer.out_dir={tr}")  # fmt: skip
    src = image_folder(tmp / "photos", n=1) / "train" / "cat"
    from PIL import Image

    Image.new("RGB", (32, 32), (10, 200, 10)).save(src / "0.jpg")  # 0.jpg beside 0.png
    case("translate OUT = IN", cli("translate", tr, src, src))
    case("translate into a folder inside IN", cli("translate", tr, src, src / "out"))
    p = cli("translate", tr, src, tmp / "tr-out")
    case("translate a.jpg and a.png", p, written=sorted(x.name for x in (tmp / "tr-out").iterdir()))
    case("translate into a folder that holds files", cli("translate", tr, src, tmp / "tr-out"))

    # --- options checked at load
    for ov in ["method.temperature=0", "method.temperature=-1", "trainer.max_steps=0", "trainer.max_steps=-1",
               "trainer.max_epochs=0", "optim.weight_decay=-1", "trainer.ckpt_every=0", "trainer.log_every=0",
               "trainer.knn_k=0", "optim.batch_size=1", "data.n_train=0", "trainer.precision=abc",
               "trainer.accelerator=tpu", "trainer.threads=-2"]:  # fmt: skip
        case(f"train simclr {ov}", cli("train", "simclr", ov))
    case("train moco method.queue_size=0", cli("train", "moco", "method.queue_size=0"))
    for opt in ["k=0", "temperature=0", "k=100000"]:
        p = cli("eval", "knn", run, opt)
        last = json.loads(p.stdout.splitlines()[-1]) if p.returncode == 0 else {}
        case(f"eval knn {opt}", p, **({"k": last.get("k"), "k_requested": last.get("k_requested")} if last else {}))

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True,
                                cwd=ROOT).stdout.strip())  # fmt: skip
    import torch

    out = {"commit": commit + ("+dirty" if dirty else ""), "command": " ".join(["python", *sys.argv]),
           "torch": torch.__version__, "threads": 1, "seeds": [0], "cases": cases}  # fmt: skip
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    os.environ.setdefault("CONTRASTLAB_CACHE", str(ROOT / ".cache" / "test-data"))
    main()
