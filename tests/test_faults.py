"""Nothing lost: runs killed at random moments and during file writes resume to the weights and
the history of an uninterrupted run; signals stop a run honestly; the run folder is protected."""
import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from contrastlab.cli import main
from contrastlab.config import load_config
from contrastlab.checkpoint import load_checkpoint
from contrastlab.engine.trainer import fit
from contrastlab.errors import UserError

HERE = Path(__file__).resolve().parent
FAULT = HERE / "fault_scripts" / "train_with_fault.py"


def _weights(run_dir):
    return load_checkpoint(Path(run_dir) / "last.ckpt")["model"]


def _history(run_dir):
    """(step, loss) of the training rows and (step, knn_top1) of the monitor rows of metrics.csv,
    and every row's step and kind (a row with neither counts too)."""
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    train = [(int(r["step"]), r["loss"]) for r in rows if r.get("loss")]
    knn = [(int(r["step"]), r["knn_top1"]) for r in rows if r.get("knn_top1")]
    every = [(r["step"], "loss" if r.get("loss") else "knn" if r.get("knn_top1") else "other") for r in rows]
    return train, knn, every


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "src"), env.get("PYTHONPATH", "")])
    return env


def _run(args, when="none", n=0, wait=True):
    cmd = [sys.executable, str(FAULT), when, str(n), "--", *args]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    return subprocess.run(cmd, capture_output=True, timeout=300, env=_env())


def test_kills_during_writes_and_at_random_moments_lose_nothing(tmp_path, tiny):
    """One run, killed (SIGKILL) half-way through a checkpoint write, through the metrics.csv
    rewrite of a resume, through a metrics.csv append, just before a rename, and at two random
    moments, each time resumed by rerunning the same command: it ends with the weights and the
    metrics history (every logged loss and kNN value, each step once) of the uninterrupted run.

    The faults, in order (checkpoints every 4 steps, a row per step, kNN at 20, 40, 60 and the last step):
    the 3rd checkpoint write (step 12) is cut half-way; the resume from step 8 dies half-way
    through rewriting metrics.csv (the rewrite that drops rows after step 8); the next resume
    dies half-way through appending its 7th row (step 15); the next (from 12) dies just before
    its 5th rename (config.yaml, metrics.csv, checkpoint 16, the kNN columns' rewrite at 20,
    then checkpoint 20); then two kills at random moments, each a random few steps after the
    checkpoint it resumed from (read from the rows it logs), so that on a fast machine too they
    land before the run ends."""
    steps = 64
    args = ["train", "simclr", *tiny, f"trainer.max_steps={steps}", "trainer.ckpt_every=4", "trainer.log_every=1",
            "trainer.knn_every=20", "optim.warmup_steps=5", f"trainer.threads={torch.get_num_threads()}"]  # fmt: skip
    # the uninterrupted run, in a process that exits with 97 if a run file is written in place
    full = _run(args + [f"trainer.out_dir={tmp_path / 'full'}"], "inplace", 0)
    assert full.returncode == 0, full.stderr.decode()[-800:]

    out = tmp_path / "faulty"
    run = args + [f"trainer.out_dir={out}"]
    kills = []
    for when, n in [("ckpt", 3), ("rewrite", 1), ("append", 7), ("replace", 5)]:
        p = _run(run, when, n)
        assert p.returncode == -signal.SIGKILL, (when, p.stderr.decode()[-800:])
        kills.append((when, load_checkpoint(out / "last.ckpt")["step"] if (out / "last.ckpt").exists() else 0))
    rng = random.Random(0)
    for _ in range(2):
        start = load_checkpoint(out / "last.ckpt")["step"]
        p = _run(run, wait=False)
        # wait until the process has logged a random step a few steps past the checkpoint it resumed
        # from (a row per step), then kill it a random moment (up to 50 ms) later: mid-step or
        # mid-write, long before the run's end whatever the machine's pace
        target = start + rng.randint(2, 10)
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            step = _last_logged_step(out)
            if step is not None and step >= target:
                break
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))
        assert p.poll() is None, f"the run ended before the random kill (start {start}, target {target})"
        p.send_signal(signal.SIGKILL)
        p.communicate()
        kills.append(("random", _step_or_none(out)))
    done = _run(run)
    assert done.returncode == 0, done.stderr.decode()[-800:]
    assert [s for _, s in kills[:4]] == [8, 8, 12, 16], kills  # each fault hit where it was aimed
    assert all(s is None or s < steps for _, s in kills), kills

    a, b = _weights(tmp_path / "full"), _weights(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after the kills {kills}"
    (ta, ka, ea), (tb, kb, eb) = _history(tmp_path / "full"), _history(out)
    assert [s for s, _ in ta] == list(range(1, steps + 1))
    assert tb == ta, f"loss history differs after the kills {kills}"
    assert kb == ka and [s for s, _ in ka] == [20, 40, 60, 64]
    assert eb == ea, "rows that are neither losses nor kNN values (a partial line kept?)"
    # no temporaries of the killed writes are left behind
    assert not [p.name for p in out.rglob(".*tmp*")]


def _last_logged_step(out):
    """The step of the last complete row of metrics.csv, or None (no file, header only, or a row
    being written)."""
    try:
        text = (out / "metrics.csv").read_text()
    except OSError:
        return None
    lines = text.split("\n")[:-1]  # complete lines only
    try:
        return int(lines[-1].split(",")[0]) if len(lines) > 1 else None
    except ValueError:
        return None


def _step_or_none(out):
    try:
        return load_checkpoint(out / "last.ckpt")["step"]
    except Exception:
        return None


def test_stale_temporaries_are_removed_at_start(tmp_path, tiny):
    tmp_path.mkdir(exist_ok=True)
    stale = [tmp_path / ".last.ckpt.tmp-123-abcdef", tmp_path / ".last.ckpt.tmp4567", tmp_path / ".metrics.csv.tmp-9-000000"]
    for p in stale:
        p.write_bytes(b"x" * 100)
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    fit(load_config("simclr", tiny + ["trainer.max_steps=2", f"trainer.out_dir={tmp_path}"]))
    assert not any(p.exists() for p in stale) and keep.read_text() == "mine"


# ----------------------------------------------------------------------------- signals
def _start(tmp_path, tiny, extra=()):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "contrastlab.cli", "train", "simclr", *tiny, "trainer.max_steps=100000",
           "trainer.ckpt_every=100000", f"trainer.out_dir={out}", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.csv").exists():
        time.sleep(0.05)
    time.sleep(1.0)
    return proc, out


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_run_exits_nonzero_and_says_so(tmp_path, tiny, sig, code):
    """`train && eval` must not evaluate a half-trained model: a signal exits 128 + signum, prints
    no result line, and the summary says the run was interrupted (the checkpoint is kept)."""
    import json

    proc, out = _start(tmp_path, tiny)
    proc.send_signal(sig)
    try:
        stdout, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, err.decode()[-800:]
    assert stdout.decode().strip() == ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == signal.Signals(sig).name
    assert "knn_top1" not in summary
    step = load_checkpoint(out / "last.ckpt")["step"]
    assert 0 < step == summary["step"] < 100000
    err_lines = [l for l in err.decode().splitlines() if l.startswith("contrastlab:")]
    assert len(err_lines) == 1 and "rerun the same command to continue" in err_lines[0]


def test_second_signal_mid_step_keeps_the_last_whole_step(tmp_path, tiny, monkeypatch):
    """Two signals inside a training step (after the forward pass has moved BatchNorm's running
    statistics and counters): the run stops at once, and what is on disk is the checkpoint of a
    completed step, equal to that step of an uninterrupted run, BatchNorm counters included."""
    from contrastlab.errors import Interrupted
    from contrastlab.methods.simclr import SimCLR

    common = tiny + ["trainer.max_steps=12", "trainer.ckpt_every=4"]
    fit(load_config("simclr", common + [f"trainer.out_dir={tmp_path / 'ref'}"]))

    real_forward = SimCLR.forward

    def forward(self, batch):
        out = real_forward(self, batch)  # BN statistics of this step are updated here
        if batch["step"] == 6:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(SimCLR, "forward", forward)
    with pytest.raises(Interrupted):
        fit(load_config("simclr", common + [f"trainer.out_dir={tmp_path / 'cut'}"]))
    ck = load_checkpoint(tmp_path / "cut" / "last.ckpt")
    assert ck["step"] == 4  # the last periodic checkpoint: step 7 never completed
    monkeypatch.setattr(SimCLR, "forward", real_forward)
    # resuming the interrupted run reaches the uninterrupted run's weights exactly
    fit(load_config("simclr", common + [f"trainer.out_dir={tmp_path / 'cut'}"]))
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "cut")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_second_signal_during_a_checkpoint_write_waits_for_it(tmp_path, tiny, monkeypatch):
    """A signal arriving while the checkpoint is written does not cut the write short: the file
    is complete (it loads and holds the step), then the run stops with the signal's code."""
    from contrastlab import checkpoint as ck
    from contrastlab.errors import Interrupted

    real = ck.torch.save
    calls = []  # (step, finished) of each checkpoint write

    def save(obj, f, *a, **k):
        calls.append([obj["step"], False])
        if len(calls) == 2:  # the second periodic checkpoint: two signals mid-write
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        real(obj, f, *a, **k)
        calls[-1][1] = True

    monkeypatch.setattr(ck.torch, "save", save)
    with pytest.raises(Interrupted) as e:
        fit(load_config("simclr", tiny + ["trainer.max_steps=40", "trainer.ckpt_every=3", f"trainer.out_dir={tmp_path}"]))
    assert e.value.signum == signal.SIGTERM
    assert load_checkpoint(tmp_path / "last.ckpt")["step"] == 6
    assert calls == [[3, True], [6, True]]  # the interrupted write finished; nothing written twice


# ----------------------------------------------------------------------------- the run folder
def test_resume_never_into_an_existing_run_is_refused(tmp_path, tiny):
    cfg = tiny + ["trainer.max_steps=3", f"trainer.out_dir={tmp_path}"]
    fit(load_config("simclr", cfg))
    before = (tmp_path / "last.ckpt").read_bytes(), (tmp_path / "metrics.csv").read_text()
    with pytest.raises(UserError, match=r"already holds a run .*trainer.resume=never would replace it.*new trainer.out_dir"):
        fit(load_config("simclr", cfg + ["trainer.resume=never", "optim.lr=0.1"]))
    assert ((tmp_path / "last.ckpt").read_bytes(), (tmp_path / "metrics.csv").read_text()) == before


def test_overwrite_replaces_the_run(tmp_path, tiny):
    cfg = tiny + ["trainer.max_steps=3", f"trainer.out_dir={tmp_path}"]
    fit(load_config("simclr", cfg + ["trainer.log_every=1"]))
    (tmp_path / "eval.json").write_text("{}")
    res = fit(load_config("simclr", cfg + ["trainer.overwrite=true", "trainer.max_steps=2", "trainer.log_every=1",
                                           "optim.lr=0.1"]))  # fmt: skip
    assert res.step == 2 and not (tmp_path / "eval.json").exists()
    ck = load_checkpoint(tmp_path / "last.ckpt")
    assert ck["step"] == 2 and ck["config"]["optim"]["lr"] == 0.1
    assert [s for s, _ in _history(tmp_path)[0]] == [1, 2]


def test_resume_with_another_config_is_refused_naming_the_keys(tmp_path, tiny):
    cfg = tiny + ["trainer.max_steps=3", f"trainer.out_dir={tmp_path}"]
    fit(load_config("simclr", cfg))
    with pytest.raises(UserError, match=r"was trained with another config \(optim.lr: .*; use a new trainer.out_dir"):
        fit(load_config("simclr", cfg + ["optim.lr=0.123"]))
    # a different method or width: one line naming them, not a list of weight names
    with pytest.raises(UserError) as e:
        fit(load_config("moco", cfg + ["model.width=16"]))
    msg = str(e.value)
    assert "method.name: simclr in the run, moco now" in msg and "model.width" in msg and "\n" not in msg
    assert len(msg) < 600
    # keys that do not change the weights may differ: the run continues
    res = fit(load_config("simclr", cfg + ["trainer.knn_every=1", "trainer.log_every=1", "trainer.max_minutes=60"]))
    assert res.step == 3


def test_two_processes_cannot_train_into_one_folder(tmp_path, tiny):
    from contrastlab.files import FolderLock

    with FolderLock(tmp_path):  # another process holds the folder (flock: per open file)
        with pytest.raises(UserError, match=r"is in use: process \d+ trains into it now"):
            fit(load_config("simclr", tiny + ["trainer.max_steps=2", f"trainer.out_dir={tmp_path}"]))
    assert not (tmp_path / "last.ckpt").exists()
    fit(load_config("simclr", tiny + ["trainer.max_steps=2", f"trainer.out_dir={tmp_path}"]))  # free again
    assert (tmp_path / "last.ckpt").exists()


def test_lock_is_released_when_the_holder_is_killed(tmp_path, tiny):
    proc, out = _start(tmp_path, tiny)
    try:
        with pytest.raises(UserError, match="is in use"):
            fit(load_config("simclr", tiny + ["trainer.max_steps=2", f"trainer.out_dir={out}"]))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    res = fit(load_config("simclr", tiny + ["trainer.max_steps=100000", "trainer.ckpt_every=100000",
                                            f"trainer.out_dir={out}", "trainer.max_minutes=1e-9"]))  # fmt: skip
    assert res.step >= 1 and res.metrics["status"] == "time_budget" and res.interrupted is None


# ----------------------------------------------------------------------------- environment faults
@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB file system of its own (tmpfs; root can mount one in a container). Yields
    (folder, real): real is False where mounting is not allowed, and the tests then inject the
    same OSError the kernel would give."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode == 0
    yield mnt, ok
    if ok:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(folder: Path, leave: int = 0):
    """Fill the file system of ``folder`` up to ``leave`` free bytes."""
    import shutil

    free = shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def test_disk_full_keeps_the_last_good_checkpoint_and_says_so(small_fs, tiny, monkeypatch, capsys):
    import errno

    import contrastlab.engine.trainer as tr

    mnt, real = small_fs
    real_save = tr.save_atomic
    saves = {"n": 0}

    def save_then_fill(state, path):
        if saves["n"] == 1:  # the second checkpoint finds the disk full
            if real:
                _fill(mnt)
            else:
                def no_space(obj, f, *a, **k):
                    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

                monkeypatch.setattr(tr.save_atomic.__globals__["torch"], "save", no_space)
                monkeypatch.setattr("contrastlab.files._probe_write_fault",
                                    lambda folder: OSError(errno.ENOSPC, "No space left on device"))
        saves["n"] += 1
        real_save(state, path)

    monkeypatch.setattr(tr, "save_atomic", save_then_fill)
    out = mnt / "run"
    code = main(["train", "simclr", *tiny, "trainer.max_steps=20", "trainer.ckpt_every=2", "trainer.log_every=100",
                 f"trainer.out_dir={out}"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("contrastlab: error: no space left on ") and "while writing" in err[0]
    assert "last.ckpt; the last good checkpoint is kept" in err[0]
    if real:
        assert str(mnt) in err[0]
        (mnt / "filler").unlink()
    monkeypatch.undo()
    assert load_checkpoint(out / "last.ckpt")["step"] == 2  # the good one, intact
    assert not [p.name for p in out.glob(".*tmp*")]


def test_read_only_output_folder_is_one_line(small_fs, tiny, monkeypatch, capsys):
    import errno

    mnt, real = small_fs
    if real:
        assert subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True).returncode == 0
    else:
        real_open = os.open

        def ro_open(path, flags, *a, **k):
            if str(path).startswith(str(mnt)) and flags & os.O_CREAT:
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real_open(path, flags, *a, **k)

        monkeypatch.setattr(os, "open", ro_open)
        monkeypatch.setattr("pathlib.Path.mkdir", lambda self, *a, **k: None)
    out = mnt
    code = main(["train", "simclr", *tiny, "trainer.max_steps=2", f"trainer.out_dir={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "read-only file system" in err[0] and "trainer.out_dir" in err[0]


def test_truncated_checkpoint_message_is_whole(tmp_path, tiny, capsys):
    fit(load_config("simclr", tiny + ["trainer.max_steps=2", f"trainer.out_dir={tmp_path}"]))
    raw = (tmp_path / "last.ckpt").read_bytes()
    (tmp_path / "last.ckpt").write_bytes(raw[: len(raw) // 3])
    assert main(["eval", "knn", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("use another checkpoint or train again"), err
    assert "truncated, corrupt or not a checkpoint" in err[0]
    try:  # the reason is quoted whole (its first sentence), not cut at a character count
        torch.load(tmp_path / "last.ckpt", weights_only=True)
    except Exception as e:
        reason = " ".join(str(e).split(". ")[0].split())
    assert f"({reason})" in err[0], (reason, err[0])
    # training into the folder says the same, at start
    assert main(["train", "simclr", *tiny, "trainer.max_steps=2", f"trainer.out_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err.strip().endswith("use another checkpoint or train again")


def test_checkpoint_of_another_model_is_one_line(tmp_path, tiny, capsys):
    """Weights that do not fit the model named by the checkpoint's own config (e.g. a file edited
    by hand or written by another version): one line with a few names, not hundreds."""
    from contrastlab.checkpoint import save_atomic

    fit(load_config("simclr", tiny + ["trainer.max_steps=2", f"trainer.out_dir={tmp_path}"]))
    ck = load_checkpoint(tmp_path / "last.ckpt")
    ck["model"] = {k.replace("encoder.", "enc."): v for k, v in ck["model"].items()}
    save_atomic(ck, tmp_path / "last.ckpt")
    assert main(["eval", "knn", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "do not fit the model" in err[0] and len(err[0]) < 400, err
