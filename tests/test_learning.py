"""Learning checks (make test-slow): the CPU presets must learn the digit scenes.

Targets of the foundation issue: SimCLR >= 93% kNN digit accuracy (k=20, cosine, weighted), MoCo
v2 >= 88%, while random-init features and raw pixels stay far below. The targets are judged on
several seeds, recorded by ``python scripts/learning_results.py presets`` in
``results/learning_presets.json`` (a fast test below reads it); the slow test retrains seed 0 and
requires it to land within the spread those seeds measured, so a regression of the code fails it
and seed noise does not. Training time is recorded, not asserted (the cores are shared).
"""
import json
from pathlib import Path

import pytest

from contrastlab.cli import main
from contrastlab.config import load_config
from contrastlab.engine.trainer import fit

RESULTS = Path(__file__).resolve().parent.parent / "results" / "learning_presets.json"
TARGETS = {"simclr": ("SimCLR", 0.93), "moco": ("MoCo v2", 0.88)}


def _recorded(row: str) -> dict:
    return json.loads(RESULTS.read_text())["summary"][row]


def _knn(run_dir, capsys, *extra):
    assert main(["eval", "knn", str(run_dir), *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["top1"]


@pytest.mark.parametrize("recipe", sorted(TARGETS))
def test_recorded_seeds_meet_the_targets(recipe):
    """The presets' targets hold on every recorded seed (and the baselines stay far below)."""
    row, target = TARGETS[recipe]
    rec = _recorded(row)
    knn = rec["knn"]["top1"]
    assert knn["n"] >= 3 and min(knn["values"]) >= target, knn
    assert rec["knn features=pixels"]["top1"]["mean"] <= 0.40
    assert rec["knn features=random"]["top1"]["mean"] < knn["mean"] - 0.15


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(TARGETS))
def test_preset_learns_digits(tmp_path, capsys, recipe):
    row, target = TARGETS[recipe]
    knn = _recorded(row)["knn"]["top1"]
    # seed 0 again: within 3 standard deviations of the recorded seeds' mean (at least 1 point),
    # and never below the target
    floor = max(target, knn["mean"] - max(3 * knn["std"], 0.01))
    res = fit(load_config(recipe, [f"trainer.out_dir={tmp_path}", "trainer.progress=false", "trainer.knn_every=0"]))
    learned = _knn(tmp_path, capsys)
    pixels = _knn(tmp_path, capsys, "features=pixels")
    random = _knn(tmp_path, capsys, "features=random")
    print(json.dumps({"recipe": recipe, "learned": learned, "pixels": pixels, "random": random, "floor": floor,
                      "train_seconds": res.metrics["train_seconds"]}))  # fmt: skip
    assert pixels <= 0.40 and random < learned - 0.15
    assert learned >= floor


@pytest.mark.slow
def test_cut_preset_translates_digit_domains(tmp_path, capsys):
    """CUT on the embedded domains: the translations must be closer to real B images than the
    untranslated A inputs are (FID and KID, fallback extractor) and keep the digit (a classifier
    trained on real B recognises it far above chance)."""
    fit(load_config("cut", [f"trainer.out_dir={tmp_path}", "trainer.progress=false"]))
    assert main(["eval", "translation", str(tmp_path), "extractor=random"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["AtoB"]
    print(json.dumps(r))
    assert r["fid"] < 0.5 * r["fid_untranslated"] and r["kid_mean"] < 0.5 * r["kid_mean_untranslated"]
    assert r["digit_acc_translated"] >= 0.35 and r["digit_acc_untranslated"] < 0.5 * r["digit_acc_translated"]  # chance: 10%
