"""The official Labels4Free repository's own quantitative check, run with this library's metric code:
the masks its README ships under custom_dataset/ (ten images per class: Cars, Cats, Faces, Horse;
``Mask_*_pred`` the Labels4Free masks, ``Mask_*_gt`` the ground truth) scored as its
test_customdata.py scores them (:func:`contrastlab.eval.masks.score_mask_folders`), with an
all-foreground and a centred-box prediction of the same masks for scale.

    python scripts/labels4free_official_masks.py --official PATH/TO/Labels4Free \
        [--official-commit SHA] --out results/labels4free_official_masks.json

PATH/TO/Labels4Free is a checkout (or export) of github.com/RameenAbdal/Labels4Free; nothing is
downloaded. The JSON holds the table per class, the commit, the command, torch's version and the
thread count (no seed: nothing here is random).
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
sys.path.insert(0, str(ROOT / "src"))

from contrastlab.errors import UserError  # noqa: E402
from contrastlab.eval.masks import score_mask_folders  # noqa: E402

# class: (folder, truth sub-folder, prediction sub-folder), as the official custom_dataset/ names them
CLASSES = {"cars": ("Cars", "Mask_car_gt", "Mask_car_pred"), "cats": ("Cats", "Mask_cat_gt", "Mask_cat_pred"),
           "faces": ("Faces", "Mask_face_gt", "Mask_face_pred"), "horses": ("Horse", "Mask_horse_gt", "Mask_horse_pred")}  # fmt: skip


def _git(*args):
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def score_official(official: Path, box_fraction: float = 0.5) -> dict:
    base = Path(official) / "custom_dataset"
    if not base.is_dir():
        raise UserError(f"{official}: no custom_dataset/ folder; pass a checkout of RameenAbdal/Labels4Free")
    out = {}
    for name, (folder, gt, pred) in CLASSES.items():
        out[name] = score_mask_folders(base / folder / gt, base / folder / pred, box_fraction=box_fraction)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", required=True, help="a checkout of RameenAbdal/Labels4Free")
    ap.add_argument("--official-commit", default=None, help="its commit, when the folder is not a git checkout")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    try:
        classes = score_official(Path(a.official))
    except UserError as e:
        sys.exit(f"error: {e}")
    official_commit = a.official_commit
    if official_commit is None and (Path(a.official) / ".git").exists():
        official_commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=a.official, capture_output=True,
                                         text=True).stdout.strip()  # fmt: skip
    out = {"table": "labels4free_official_masks", "classes": classes, "official_commit": official_commit,
           "protocol": "RameenAbdal/Labels4Free test_customdata.py: luminance == 255 is class 1 (the object); one "
                       "confusion matrix over the ten pairs; IoU = tp / (1e-4 + fp + fn + tp)",
           "commit": _git("rev-parse", "HEAD"),
           "uncommitted_changes": (_git("status", "--porcelain", "src", "scripts") or "").splitlines(),
           "command": "python " + " ".join(sys.argv), "torch": torch.__version__, "threads": 1,
           "seeds": "none (deterministic)"}  # fmt: skip
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    for name, r in classes.items():
        t = r["official_table"]
        print(f"{name:7s} object IoU {100 * t['1']['iou']:5.1f}  background IoU {100 * t['0']['iou']:5.1f}  "
              f"mIoU {100 * t['total']['iou']:5.1f} | centred box object IoU {100 * r['centred_box']['fg_iou']:5.1f}, "
              f"all-foreground {100 * r['all_foreground']['fg_iou']:5.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
