"""The command line: train, eval (JSON on the last line), report, and one-line errors."""
import json
import subprocess
import sys

import pytest

from contrastlab.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import TINY

    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "simclr", *TINY, "trainer.max_steps=8", f"trainer.out_dir={out}"]) == 0
    return out


def _last_json(capsys):
    lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
    return json.loads(lines[-1])


def test_eval_knn_prints_json_last(run_dir, capsys):
    assert main(["eval", "knn", str(run_dir), "k=5"]) == 0
    r = _last_json(capsys)
    assert r["protocol"] == "knn" and r["k"] == 5 and r["label"] == "digit" and 0 <= r["top1"] <= 1
    assert r["n_train"] == 256 and r["n_test"] == 128


@pytest.mark.parametrize("label,n", [("color", 6), ("rotation", 4)])
def test_eval_linear_on_other_attributes(run_dir, capsys, label, n):
    assert main(["eval", "linear", str(run_dir / "last.ckpt"), f"label={label}", "epochs=5"]) == 0
    r = _last_json(capsys)
    assert r["label"] == label and len(r["per_class_acc"]) == n


def test_eval_baselines(run_dir, capsys):
    assert main(["eval", "knn", str(run_dir), "features=pixels"]) == 0
    assert _last_json(capsys)["features"] == "pixels"
    assert main(["eval", "knn", str(run_dir), "features=random"]) == 0
    assert _last_json(capsys)["features"] == "random"
    saved = json.loads((run_dir / "eval.json").read_text())
    assert {"knn/digit/pixels", "knn/digit/random"} <= set(saved)


def test_report(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / "report.html").read_text()
    for png in ("curves.png", "embedding.png", "retrieval.png"):
        assert (run_dir / "report" / png).stat().st_size > 1000 and png in html


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", "simclr", "optim.lrr=1"], "unknown config key optim.'lrr'"),
        (["train", "simclr", "optim.lr=fast"], "optim.lr: expected a number, got 'fast'"),
        (["train", "nosuchmethod"], "unknown recipe 'nosuchmethod'"),
        (["eval", "knn", "/nonexistent/run"], "checkpoint /nonexistent/run does not exist"),
        (["train", "simclr/cifar10", "data.root=/nonexistent/cifar"], "data folder /nonexistent/cifar does not exist"),
    ],
)
def test_errors_are_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_eval_unknown_option_and_label(run_dir, capsys):
    assert main(["eval", "knn", str(run_dir), "kk=3"]) == 2
    assert "unknown option 'kk'" in capsys.readouterr().err
    assert main(["eval", "knn", str(run_dir), "label=shape"]) == 2
    assert "label='shape' is not a label" in capsys.readouterr().err


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "contrastlab.cli", "list"], capture_output=True, text=True, check=True)
    assert "simclr" in out.stdout and "moco/digits" in out.stdout


def test_eval_a_checkpoint_written_before_newer_config_keys(run_dir, tmp_path, capsys):
    """A run saved by an older version (its stored config lacks keys added since) still loads:
    the missing keys take their defaults."""
    import shutil

    import torch

    from contrastlab.checkpoint import load_checkpoint, save_atomic

    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    ckpt = load_checkpoint(old)
    for key in ("tau_plus", "beta"):
        del ckpt["config"]["method"][key]
    for key in ("rotation", "channel_perm_p", "invert_p"):
        del ckpt["config"]["views"][key]
    save_atomic(ckpt, old / "last.ckpt")
    assert main(["eval", "knn", str(old), "k=5"]) == 0
    assert _last_json(capsys)["top1"] >= 0
    assert "tau_plus" not in torch.load(old / "last.ckpt", weights_only=True)["config"]["method"]


def test_long_tail_linear_eval_probes_the_balanced_set(tmp_path, capsys):
    """SDCLR's protocol: pre-train on the long-tailed set, probe on the balanced one, report
    many / medium / few accuracy and the spread of per-class accuracy by pre-training counts."""
    from conftest import TINY

    out = tmp_path / "lt"
    assert main(["train", "sdclr", *TINY, "data.long_tail_ratio=10", "method.prune_fraction=0.5",
                 "trainer.max_steps=4", f"trainer.out_dir={out}"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["eval", "linear", str(out), "epochs=5"]) == 0
    r = _last_json(capsys)
    counts = r["pretrain_class_counts"]
    assert r["probe_data"] == "balanced" and r["n_train"] == 256 and sum(counts) < 256
    assert counts == sorted(counts, reverse=True) and counts[0] >= 10 * counts[-1] * 0.5
    assert {"many", "medium", "few", "std"} <= set(r) and (r["n_many"], r["n_medium"], r["n_few"]) == (4, 3, 3)
    assert main(["eval", "linear", str(out), "epochs=5", "probe_data=pretrain"]) == 0
    r2 = _last_json(capsys)
    assert r2["n_train"] == sum(counts) and r2["pretrain_class_counts"] == counts


def test_a_fixed_long_tailed_split_with_a_hold_out_trains_and_probes(tmp_path, capsys):
    """SDCLR's subsets on the digit scenes: a hold-out of 5 images per digit, the long-tailed
    subset 3 of the rest (ratio 10), the official head and pruning; the linear probe learns on the
    balanced set without the hold-out, the groups come from the subset's counts."""
    import torch
    from conftest import TINY

    from contrastlab.config import load_config
    from contrastlab.data import build_splits

    out = tmp_path / "lt"
    opts = ["data.long_tail_ratio=10", "data.val_per_class=5", "data.long_tail_split=3", "method.prune_fraction=0.5",
            "method.prune_random_fraction=0.1", "method.prune_random_mode=total", "model.proj_layers=3",
            "model.proj_bn_last=true"]  # fmt: skip
    assert main(["train", "sdclr", *TINY, *opts, "trainer.max_steps=3", f"trainer.out_dir={out}"]) == 0
    capsys.readouterr()
    assert main(["eval", "linear", str(out), "epochs=5"]) == 0
    r = _last_json(capsys)
    splits = build_splits(load_config("sdclr", [*TINY, *opts]).data)
    counts = torch.bincount(splits.train.labels["digit"], minlength=10).tolist()
    assert r["pretrain_class_counts"] == counts and len(splits.val) == 50
    assert r["n_train"] == 256 - 50 and (r["n_many"], r["n_medium"], r["n_few"]) == (4, 3, 3)
