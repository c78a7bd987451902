"""The trainer: runs any method through Lightning Fabric.

One loop for every method: a method is an ``nn.Module`` whose ``forward(batch)`` returns a dict
with the ``loss``; the trainer owns devices, DDP, precision, the optimiser and schedule,
checkpoints and resume, logs, the progress bar and the online kNN monitor. It never looks at
the method's name.

Determinism: the data order is a function of (seed, epoch) and every step re-seeds the
random generators from (seed, rank, step), so a run resumed from a checkpoint continues
exactly as the uninterrupted run would (on the same hardware and thread count).
"""
from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from ..checkpoint import save_atomic
from ..config import Config, UserError, to_dict  # noqa: F401  (UserError: re-exported)
from ..errors import Interrupted
from ..files import atomic_write
from .batches import StepBatches, _batches, batches, step_seed  # noqa: F401  (re-exported)
from .logging import RunLogger
from .rundir import CKPT_NAME, claimed, clear_run
from .setup import build_setup, compile_networks, fabric_class, make_fabric  # noqa: F401
from .step import train_step

_fabric_class = fabric_class  # the earlier private name, kept for scripts that used it


@dataclass
class FitResult:
    run_dir: Path
    step: int
    metrics: dict = field(default_factory=dict)
    is_main: bool = True  # rank 0 (only it reports)
    interrupted: int | None = None  # the signal that stopped the run (SIGINT / SIGTERM), if any


class _Stop:
    """SIGTERM / SIGINT set a flag: the loop checkpoints the last completed step and stops. A
    second signal stops at once (:class:`Interrupted`), except while a checkpoint is being
    written (:meth:`protect`): then it takes effect when the write is done, so a checkpoint is
    never cut short and never holds a half-finished step."""

    def __init__(self):
        self.signum: int | None = None
        self._critical = False
        self._deferred: int | None = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            return
        if self._critical:
            self._deferred = signum
            return
        raise Interrupted(signum)

    @contextlib.contextmanager
    def protect(self):
        """A block that a second signal does not cut short (it is raised when the block is done)."""
        self._critical = True
        try:
            yield
        finally:
            self._critical = False
        if self._deferred is not None:
            signum, self._deferred = self._deferred, None
            raise Interrupted(signum)

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def monitor(method, train_set, test_set, cfg: Config, device, run_dir: Path, step: int) -> dict:
    """The periodic check of a run (``contrastlab.eval.monitor_for``: the method's own ``monitor``,
    or that of the protocol it names, kNN accuracy by default). Compiled networks run eagerly
    here: evaluation shapes and eval-mode BatchNorm would otherwise compile new graphs."""
    from ..eval import monitor_for

    with torch.compiler.set_stance("force_eager"):
        was = method.training
        try:
            return monitor_for(method)(method, train_set, test_set, cfg, device, run_dir, step)
        finally:
            method.train(was)


def fit(cfg: Config) -> FitResult:
    """Train ``cfg`` into its run folder (resuming it when it holds a checkpoint of the same
    config). A SIGINT / SIGTERM checkpoints the last completed step and returns a result whose
    ``interrupted`` is the signal (the summary says ``"status": "interrupted"``). The process's
    torch thread count, which ``trainer.threads`` sets for the run, is restored on return."""
    threads = torch.get_num_threads()
    try:
        fabric = make_fabric(cfg)
        fabric.launch()
        run_dir = Path(cfg.trainer.out_dir or f"runs/{cfg.method['name']}-{cfg.data.name}")
        with claimed(run_dir, enabled=fabric.is_global_zero):
            return _fit(cfg, fabric, run_dir)
    finally:
        torch.set_num_threads(threads)


def _fit(cfg: Config, fabric, run_dir: Path) -> FitResult:
    """The loop: prepares the run folder, then steps, logs, monitors, checkpoints and stops."""
    s = build_setup(cfg, fabric, run_dir)
    t = cfg.trainer
    rank, device, is_main = fabric.global_rank, fabric.device, fabric.is_global_zero
    method, model, optimizer, scheduler = s.method, s.model, s.optimizer, s.scheduler
    train_set, test_set, source = s.train_set, s.test_set, s.source
    step, total, per_epoch, global_batch = s.step, s.total, s.per_epoch, s.global_batch

    fabric.barrier()  # every process has read the checkpoint before rank 0 touches the folder
    if is_main:
        if t.overwrite and source is None:
            gone = clear_run(run_dir)
            if gone:
                print(f"trainer.overwrite: removed {', '.join(gone)} from {run_dir}", file=sys.stderr)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "config.yaml", yaml.safe_dump(_plain(to_dict(cfg)), sort_keys=False))
    logger = RunLogger(run_dir, enabled=is_main, resume_step=step)

    saved = {"step": -1}  # the step of the checkpoint last written by this run

    def save():
        if saved["step"] == step:  # this step is already on disk
            return
        if is_main:
            state = {
                "model": method.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": step,
                "config": _plain(to_dict(cfg)),
                "format": 1,
            }
            with stop.protect():  # a signal now takes effect once the file is complete
                save_atomic(state, run_dir / CKPT_NAME)
                saved["step"] = step
        fabric.barrier()
        saved["step"] = step

    gen = torch.Generator(device=device)
    metrics: dict = {}
    bar = None
    if is_main and t.progress:
        from tqdm.auto import tqdm

        tty = sys.stderr.isatty()
        bar = tqdm(total=total, initial=step, desc=f"{cfg.method['name']}", unit="step", dynamic_ncols=True,
                   mininterval=0.5 if tty else 10, leave=True)  # fmt: skip
    if source is not None and is_main:
        print(f"resumed from {source} at step {step}", file=sys.stderr)

    t0 = time.time()
    ips, last_t, last_step = 0.0, time.perf_counter(), step
    deadline = None if t.max_minutes is None else t0 + 60 * t.max_minutes
    out_of_time = False
    whole = True  # the method's state is that of a completed step (not mid-step)
    model.train()
    stop = _Stop()
    try:
        with stop:
            for batch in s.batches():
                s = step_seed(cfg.seed, rank, step)
                torch.manual_seed(s)
                gen.manual_seed(s)
                batch["generator"] = gen
                batch["step"] = step
                batch["total_steps"] = total
                batch["epoch"] = step // per_epoch
                batch["steps_per_epoch"] = per_epoch
                whole = False
                out = train_step(model, optimizer, scheduler, fabric, batch, step)
                step += 1
                whole = True
                loss = out["loss"]
                if step % t.log_every == 0 or step == total:
                    now = time.perf_counter()
                    ips = (step - last_step) * global_batch / max(now - last_t, 1e-9)
                    last_t, last_step = now, step
                    row = {"loss": loss.item(), "lr": optimizer.param_groups[0]["lr"], "img_per_s": ips, "epoch": step / per_epoch}
                    row.update({k: float(v) for k, v in out.items() if k != "loss"})
                    logger.log(step, row)
                    if bar is not None:
                        bar.set_postfix(loss=f"{row['loss']:.3f}", img_s=f"{ips:.0f}", refresh=False)
                if bar is not None:
                    bar.update(1)
                if t.knn_every and step % t.knn_every == 0 and step < total and test_set is not None:
                    if is_main:
                        metrics = monitor(method, train_set, test_set, cfg, device, run_dir, step)
                        logger.log(step, metrics)
                        if bar is not None:
                            bar.write(f"step {step}: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
                    model.train()
                    fabric.barrier()
                    last_t = time.perf_counter()  # images/s measures training only
                if step % t.ckpt_every == 0 and step < total:
                    save()
                out_of_time = deadline is not None and time.time() > deadline
                if stop.requested or out_of_time:
                    break
            if bar is not None:
                bar.close()
                bar = None
            if is_main and (stop.requested or out_of_time):
                why = (f"{signal.Signals(stop.signum).name} received" if stop.requested
                       else f"time budget of {t.max_minutes} min reached")  # fmt: skip
                print(f"{why}: checkpointing at step {step} of {total}", file=sys.stderr)
            save()
    except BaseException:
        # keep what was learned: a checkpoint of the last completed step, never of a half step
        if whole and step > 0:
            try:
                save()
            except BaseException:
                pass
        raise
    finally:
        if bar is not None:
            bar.close()
    train_seconds = time.time() - t0
    status = "interrupted" if stop.requested else ("time_budget" if out_of_time else "complete")
    if is_main and test_set is not None and not stop.requested:
        metrics = monitor(method, train_set, test_set, cfg, device, run_dir, step)
        logger.log(step, metrics)
    logger.close()
    summary = {"status": status, "step": step, "total_steps": total, "train_seconds": round(train_seconds, 1),
               "device": device_label(device)}
    if stop.requested:
        summary["signal"] = signal.Signals(stop.signum).name
    else:
        summary.update(metrics)
    if is_main:
        atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2))
    return FitResult(run_dir, step, summary, is_main, interrupted=stop.signum)


def device_label(device) -> str:
    """"cpu", or the GPU's name ("cuda: NVIDIA H200") for the run's summary."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return device.type


def _plain(x):
    """Tuples -> lists recursively (YAML- and weights_only-friendly)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
