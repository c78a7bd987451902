"""Trainer: exact resume after a kill, checkpoints, logs, and clear errors for bad input."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from contrastlab.config import UserError, load_config
from contrastlab.checkpoint import load_checkpoint
from contrastlab.engine.trainer import StepBatches, fit


def _weights(run_dir):
    return load_checkpoint(Path(run_dir) / "last.ckpt")["model"]


@pytest.mark.parametrize("recipe", ["simclr", "moco", "combined"])
def test_killed_run_resumes_to_identical_weights(tmp_path, tiny, recipe):
    """combined: MoCo + HCL + MoCHi (from step 10) + the pruned branch, whose masks are renewed
    every 8 steps (epochs of 256 images): the mixing draws and the masks resume exactly too."""
    steps = 120
    # the same thread count in this process and in the subprocess (float sums depend on it; the
    # subprocess would otherwise follow OMP_NUM_THREADS while this one follows conftest)
    common = tiny + [f"trainer.max_steps={steps}", "trainer.ckpt_every=10", "optim.warmup_steps=5",
                     f"trainer.threads={torch.get_num_threads()}"]  # fmt: skip
    if recipe in ("moco", "combined"):
        common.append("method.queue_size=64")
    if recipe == "combined":  # MoCHi's hardest negatives come from the (small) queue
        common += ["method.mochi_warmup_steps=10", "method.mochi_n_hard=32"]
    # the uninterrupted run
    fit(load_config(recipe, common + [f"trainer.out_dir={tmp_path / 'full'}"]))
    # the same run in a process that is killed (SIGKILL: no chance to clean up) half way
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "contrastlab.cli", "train", recipe, *common, f"trainer.out_dir={out}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    step_at_kill = None
    while time.time() < deadline and proc.poll() is None:
        if (out / "last.ckpt").exists():
            step_at_kill = load_checkpoint(out / "last.ckpt")["step"]
            if step_at_kill >= 20:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed mid-way: {proc.stderr.read().decode()[-500:]}"
    killed_at = load_checkpoint(out / "last.ckpt")["step"]
    assert 0 < killed_at < steps
    # resume in the same folder (resume=auto) and finish
    res = fit(load_config(recipe, common + [f"trainer.out_dir={out}"]))
    assert res.step == steps
    a, b = _weights(tmp_path / "full"), _weights(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume from step {killed_at}"
    # the metrics log of the resumed run has every logged step exactly once
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    logged = [int(r[0]) for r in rows if r[1]]  # training rows (the kNN rows have no loss)
    assert logged == sorted(set(logged)) and logged[-1] == steps


def test_step_batches_cover_epoch_and_split_ranks():
    n, b, world = 103, 5, 2
    per_epoch = n // (b * world)
    for epoch in range(2):
        seen = []
        for rank in range(world):
            s = StepBatches(n, b, world, rank, seed=3, start=0, total=per_epoch * 2)
            for step in range(epoch * per_epoch, (epoch + 1) * per_epoch):
                seen.extend(s.indices(step).tolist())
        assert len(seen) == len(set(seen)) == per_epoch * b * world  # disjoint across ranks and steps
    s0 = StepBatches(n, b, 1, 0, seed=3, start=0, total=5)
    assert not torch.equal(s0.indices(0), StepBatches(n, b, 1, 0, seed=4, start=0, total=5).indices(0))


def test_run_writes_logs_summary_and_tensorboard(tmp_path, tiny):
    res = fit(load_config("simclr", tiny + ["trainer.max_steps=6", "trainer.log_every=2", f"trainer.out_dir={tmp_path}"]))
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "summary.json").exists()
    assert any((tmp_path / "tb").iterdir())
    header, *rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert header.startswith("step,loss,lr,img_per_s")
    assert [r.split(",")[0] for r in rows][:3] == ["2", "4", "6"]
    assert 0 <= res.metrics["knn_top1"] <= 1
    ckpt = load_checkpoint(tmp_path / "last.ckpt")
    assert ckpt["step"] == 6 and ckpt["config"]["method"]["name"] == "simclr"


def test_batch_larger_than_data_set(tmp_path, tiny):
    with pytest.raises(UserError, match="batch larger than the data set: 512 images per step.*256"):
        fit(load_config("simclr", tiny + ["optim.batch_size=512", "trainer.max_steps=1", f"trainer.out_dir={tmp_path}"]))


def test_missing_data_folder(tmp_path, tiny):
    cfg = load_config("simclr/cifar10", [f"data.root={tmp_path / 'nope'}", "trainer.accelerator=cpu"])
    with pytest.raises(UserError, match=r"data folder .*nope does not exist"):
        fit(cfg)


def test_unreadable_image_is_named_before_training(tmp_path, tiny):
    from PIL import Image

    for cls in ("a", "b"):
        d = tmp_path / "imgs" / "train" / cls
        d.mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40, 30), (i * 40, 10, 10)).save(d / f"{i}.png")
    (tmp_path / "imgs" / "train" / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    cfg = load_config(
        "simclr/imagefolder",
        [f"data.root={tmp_path / 'imgs'}", "data.image_size=32", "data.num_workers=0", "optim.batch_size=2",
         "model.backbone=small_cnn", "model.width=8", "trainer.max_steps=1", "trainer.accelerator=cpu",
         "trainer.precision=32-true", "optim.warmup_epochs=null", f"trainer.out_dir={tmp_path / 'run'}"],
    )  # fmt: skip
    with pytest.raises(UserError, match="broken.png"):
        fit(cfg)
    assert not (tmp_path / "run" / "last.ckpt").exists()  # failed at start, nothing trained


def test_per_image_torchvision_views_train_on_folder_and_tensors(tmp_path, tiny):
    from PIL import Image

    for cls in ("a", "b"):
        d = tmp_path / "imgs" / "train" / cls
        d.mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (40 + i, 30), (i * 30, 90, 10)).save(d / f"{i}.png")
    common = ["views.backend=torchvision", "trainer.max_steps=2", "trainer.accelerator=cpu", "trainer.progress=false",
              "model.backbone=small_cnn", "model.width=8", "trainer.precision=32-true", "data.num_workers=0",
              "optim.warmup_epochs=null"]  # fmt: skip
    res = fit(load_config("simclr/imagefolder", common + [f"data.root={tmp_path / 'imgs'}", "data.image_size=32",
                                                         "optim.batch_size=4", f"trainer.out_dir={tmp_path / 'f'}"]))  # fmt: skip
    assert res.step == 2
    res = fit(load_config("simclr", tiny + common + [f"trainer.out_dir={tmp_path / 't'}"]))
    assert res.step == 2 and 0 <= res.metrics["knn_top1"] <= 1


def test_compile_networks_trains_like_eager_and_keeps_checkpoint_names(tmp_path, tiny, request):
    """trainer.compile compiles the method's networks in place (not its step): the run's losses
    and weights follow the eager run's to float tolerance, the checkpoint has the same names,
    and the kNN monitor runs eagerly (no graphs compiled for evaluation)."""
    import torch._dynamo

    # two threads, as the tolerance below was set at: on one thread (the suite's default) inductor's CPU
    # kernels round so that a few first-layer weights end up to ~3e-3 apart after Adam's normalised steps
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    common = tiny + ["trainer.max_steps=4", "method.queue_size=64", "trainer.knn_every=2", "trainer.log_every=1"]
    eager = fit(load_config("moco", common + [f"trainer.out_dir={tmp_path / 'eager'}"]))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    comp = fit(load_config("moco", common + ["trainer.compile=true", f"trainer.out_dir={tmp_path / 'comp'}"]))
    # encoder + projector (training mode, with grad) and their momentum twins (no grad): 4 frames,
    # each compiled once; the two kNN monitors add none
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert frames == 4, dict(torch._dynamo.utils.counters["stats"])
    a, b = _weights(tmp_path / "eager"), _weights(tmp_path / "comp")
    assert a.keys() == b.keys()
    # Adam moves every weight by up to lr = 2e-3 per step; fused kernels round differently, and
    # Adam's normalised update turns that into differences of ~1e-5, far below a real step
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=5e-4), k
    def losses(run):
        import csv

        with open(tmp_path / run / "metrics.csv") as f:
            return [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")]

    le, lc = losses("eager"), losses("comp")
    assert len(le) == 4 and len(lc) == 4 and all(abs(x - y) < 1e-3 for x, y in zip(le, lc)), (le, lc)
    assert abs(eager.metrics["knn_top1"] - comp.metrics["knn_top1"]) < 0.02
    torch._dynamo.reset()


def test_fit_restores_the_process_thread_count(tmp_path, tiny):
    """trainer.threads sets torch's thread count for the run only: an in-process fit (a notebook,
    a test) leaves the count as it found it, even when the run fails."""
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    fit(load_config("simclr", tiny + ["trainer.max_steps=1", f"trainer.threads={want}", f"trainer.out_dir={tmp_path / 'a'}"]))
    assert torch.get_num_threads() == before
    with pytest.raises(Exception):
        fit(load_config("simclr", tiny + ["trainer.max_steps=1", f"trainer.threads={want}", "data.name=imagefolder",
                                          f"data.root={tmp_path / 'missing'}", f"trainer.out_dir={tmp_path / 'b'}"]))
    assert torch.get_num_threads() == before
