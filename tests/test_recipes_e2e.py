"""The shipped real-data recipes, end to end on a tiny image-folder fixture: train with the kNN
monitor on, then ``eval knn``, ``eval linear`` and ``report``, through the command line, for both
view back-ends (per-image torchvision views in loader workers, batched views on the device)."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from contrastlab.cli import main

SMALL = ["model.backbone=small_cnn", "model.width=8", "model.proj_hidden=32", "model.proj_dim=16", "data.image_size=32",
         "optim.batch_size=8", "trainer.max_steps=6", "trainer.knn_every=3", "trainer.knn_k=5", "trainer.ckpt_every=4",
         "trainer.accelerator=cpu", "trainer.progress=false", "optim.warmup_steps=0", "optim.warmup_epochs=null"]  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """ROOT/train/<class>/*.{png,jpg} (2 classes x 16) and ROOT/test/<class>/* (2 x 6): the test
    split under the name test/, which the recipes must find."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 6)):
        for c, base in (("cat", (200, 60, 40)), ("dog", (40, 80, 210))):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                arr = np.clip(np.array(base) + rng.normal(0, 40, (36 + i % 5, 44, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def _last_json(capsys):
    lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
    return json.loads(lines[-1])


@pytest.mark.parametrize("recipe", ["simclr/imagefolder", "moco/imagefolder"])
@pytest.mark.parametrize("backend,workers", [("torchvision", 1), ("batched", 0)])
def test_imagefolder_recipe_trains_evaluates_and_reports(folder, tmp_path, capsys, recipe, backend, workers):
    out = tmp_path / "run"
    extra = ["method.queue_size=16"] if recipe.startswith("moco") else []
    args = ["train", recipe, f"data.root={folder}", f"views.backend={backend}", f"data.num_workers={workers}",
            f"trainer.out_dir={out}", *SMALL, *extra]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    r = _last_json(capsys)
    assert r["status"] == "complete" and r["step"] == 6 and 0 <= r["knn_top1"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["knn_top1"] == r["knn_top1"]
    with open(out / "metrics.csv", newline="") as f:
        monitored = [row for row in csv.DictReader(f) if row["step"] == "3" and row.get("knn_top1")]
    assert monitored, "the kNN monitor did not run at step 3"

    assert main(["eval", "knn", str(out), "k=5"]) == 0
    k = _last_json(capsys)
    assert k["n_train"] == 32 and k["n_test"] == 12 and 0 <= k["top1"] <= 1
    assert main(["eval", "linear", str(out), "epochs=5"]) == 0
    lin = _last_json(capsys)
    assert len(lin["per_class_acc"]) == 2 and 0 <= lin["top1"] <= 1
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").exists() and "retrieval" in (out / "report.html").read_text()
    # rerunning the finished command changes nothing and reports the same result
    assert main(args) == 0
    assert _last_json(capsys)["knn_top1"] == r["knn_top1"]


@pytest.mark.parametrize("recipe", ["simclr/imagefolder_cpu", "moco/imagefolder_cpu"])
def test_cpu_imagefolder_presets_train_in_memory_evaluate_and_report(folder, tmp_path, capsys, recipe):
    """The CPU presets for a user's folder hold the decoded images in memory (data.in_memory) and
    train, monitor, evaluate and report like the full-scale recipes."""
    out = tmp_path / "run"
    extra = ["method.queue_size=16"] if recipe.startswith("moco") else []
    args = ["train", recipe, f"data.root={folder}", f"trainer.out_dir={out}", *SMALL, *extra]
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    r = _last_json(capsys)
    assert r["status"] == "complete" and r["step"] == 6 and 0 <= r["knn_top1"] <= 1
    assert main(["eval", "knn", str(out), "k=5"]) == 0
    k = _last_json(capsys)
    assert k["n_train"] == 32 and k["n_test"] == 12 and 0 <= k["top1"] <= 1
    assert main(["eval", "linear", str(out), "epochs=5"]) == 0 and len(_last_json(capsys)["per_class_acc"]) == 2
    assert main(["report", str(out)]) == 0 and (out / "report.html").exists()


def test_in_memory_trains_the_same_weights_as_decoding_files(folder, tmp_path, capsys):
    """data.in_memory changes where the images come from, not what is trained (so it may change
    between a run and its resumption): the same weights after the same steps."""
    import torch

    states = []
    for in_memory in ("true", "false"):
        out = tmp_path / f"run-{in_memory}"
        args = ["train", "simclr/imagefolder_cpu", f"data.root={folder}", f"data.in_memory={in_memory}",
                f"trainer.out_dir={out}", *SMALL, "trainer.knn_every=0"]  # fmt: skip
        assert main(args) == 0, capsys.readouterr().err[-2000:]
        states.append(torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)["model"])
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def _copy(folder, tmp_path):
    import shutil

    root = tmp_path / "imgs"
    shutil.copytree(folder, root)
    return root


def test_bad_test_image_is_named_before_training(folder, tmp_path, capsys):
    root = _copy(folder, tmp_path)
    (root / "test" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "run"
    assert main(["train", "simclr/imagefolder", f"data.root={root}", f"trainer.out_dir={out}", *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.png" in err[0], err
    assert not (out / "last.ckpt").exists()


def test_no_test_split_is_said_once(folder, tmp_path, capsys):
    import shutil

    root = _copy(folder, tmp_path)
    shutil.rmtree(root / "test")
    assert main(["train", "simclr/imagefolder", f"data.root={root}", f"trainer.out_dir={tmp_path / 'run'}",
                 "views.backend=batched", "data.num_workers=0", *SMALL]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("no val/ or test/ folder under") == 1 and "kNN monitor is off" in err


def test_data_error_in_a_loader_worker_is_one_line(folder, tmp_path, capsys, monkeypatch):
    """A file that breaks after the start-up check (here: the check is skipped) fails inside a
    loader worker: the user sees the worker's one line naming the file, not two tracebacks."""
    from contrastlab.data.files import FileImageSet

    root = _copy(folder, tmp_path)
    for p in (root / "train").rglob("*"):
        if p.is_file():
            p.write_bytes(b"garbage")  # every file, so the first batch meets one
    monkeypatch.setattr(FileImageSet, "check_readable", lambda self, max_files=None: None)
    code = main(["train", "simclr/imagefolder", f"data.root={root}", f"trainer.out_dir={tmp_path / 'run'}",
                 "views.backend=torchvision", "data.num_workers=1", *SMALL])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "is unreadable or corrupt" in err[0] and str(root / "train") in err[0] and "Traceback" not in err[0]
