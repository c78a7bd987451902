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
import copy
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from ..config import Config, UserError, to_dict
from ..data import build_datasets
from ..data.base import TensorImageSet
from ..data.real import worker_error_line
from ..errors import Interrupted
from ..files import atomic_write
from ..methods import build_method, method_class
from ..methods.contract import optimizes_itself
from ..checkpoint import load_weights, save_atomic
from .logging import RunLogger
from .manual import ManualSteps, OptimizerSet, SchedulerSet
from .optim import build_optimizer, build_scheduler
from .rundir import CKPT_NAME, claimed, clear_run, load_resume, resume_source


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of one step on one process: distinct per rank (augmentations differ across
    processes) and per step, and a pure function of its arguments (exact resume)."""
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2**63 - 1)


class StepBatches:
    """Indices of the batch of each step: epoch e uses randperm(n) seeded by (seed, e); the
    global batch of a step is split across ranks; incomplete batches are dropped."""

    def __init__(self, n: int, batch: int, world: int, rank: int, seed: int, start: int, total: int):
        self.n, self.batch, self.world, self.rank, self.seed = n, batch, world, rank, seed
        self.start, self.total = start, total
        self.per_epoch = n // (batch * world)

    def indices(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.per_epoch)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7_777 + epoch))
        gb = self.batch * self.world
        glob = perm[i * gb : (i + 1) * gb]
        return glob[self.rank * self.batch : (self.rank + 1) * self.batch]

    def __iter__(self):
        for s in range(self.start, self.total):
            yield self.indices(s).tolist()

    def __len__(self):
        return self.total - self.start


class _TwoViewSet(torch.utils.data.Dataset):
    """Per-image augmentation path: each item is two torchvision views of the raw image. Image
    files are decoded at full size and augmented there (set_transform, on a shallow copy of the
    data set: the training set itself keeps serving plain images to the kNN monitor), not after
    resizing."""

    def __init__(self, ds, transform):
        self.ds, self.transform = ds, transform
        if hasattr(ds, "set_transform"):
            self.ds = copy.copy(ds)
            self.ds.set_transform(_PairTransform(transform))
            self.transform = None

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        img, _ = self.ds[i]
        v1, v2 = img if self.transform is None else (self.transform(img), self.transform(img))
        return v1, v2, i


class _PairTransform:
    """Two independent draws of one per-image transform (picklable for loader workers)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        return self.transform(img), self.transform(img)


def _batches(train_set, sampler: StepBatches, cfg: Config, device):
    """Yields batch dicts for the steps of ``sampler``; a data error raised in a loader worker
    (a corrupt file) comes out as the worker's one-line message."""
    try:
        yield from _batches_of(train_set, sampler, cfg, device)
    except Exception as e:  # a worker's UserError comes back as a UserError holding its traceback
        line = worker_error_line(e)
        if line is None:
            raise
        raise UserError(line) from None


def _batches_of(train_set, sampler: StepBatches, cfg: Config, device):
    """Yields batch dicts for the steps of ``sampler`` (images or views on the device)."""
    d = cfg.data
    pin = d.pin_memory and device.type == "cuda"
    if cfg.views.backend == "torchvision":
        from ..data.views import torchvision_views

        tf = torchvision_views(cfg.views, d.image_size)
        loader = _loader(_TwoViewSet(train_set, tf), sampler, d, pin)
        for v1, v2, idx in loader:
            yield {"views": [v1.to(device, non_blocking=pin), v2.to(device, non_blocking=pin)], "index": idx}
    elif hasattr(train_set, "get_batch"):
        # data sets that assemble whole batches themselves (e.g. unpaired domains: {"a", "b"});
        # their random picks use the step's seed, so a resumed run sees the same batches
        for step, idx in zip(range(sampler.start, sampler.total), sampler):
            g = torch.Generator().manual_seed(step_seed(cfg.seed, sampler.rank, step) + 1)
            out = train_set.get_batch(torch.tensor(idx), generator=g)
            yield {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in out.items()} | {"index": torch.tensor(idx)}
    elif isinstance(train_set, TensorImageSet):
        for idx in sampler:
            idx = torch.tensor(idx)
            x = train_set.images[idx]
            if pin:
                x = x.pin_memory()
            yield {"images": x.to(device, non_blocking=pin), "index": idx}
    else:
        for x, idx in _loader(train_set, sampler, d, pin):
            yield {"images": x.to(device, non_blocking=pin), "index": idx}


def _loader(ds, sampler, d, pin):
    return torch.utils.data.DataLoader(
        ds,
        batch_sampler=sampler,
        num_workers=d.num_workers,
        pin_memory=pin,
        persistent_workers=d.persistent_workers and d.num_workers > 0,
    )


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


def compile_networks(method: torch.nn.Module) -> list[str]:
    """``trainer.compile``: compiles, in place, each network the method holds (its direct
    submodules with parameters: encoders, heads, momentum twins), not the method's step itself,
    whose queues, random permutations and Python control flow would break the graph into many
    small pieces. In-place compilation keeps the parameter names, so checkpoints are the same
    with and without it. Returns the compiled names."""
    names = []
    for name, child in method.named_children():
        if any(True for _ in child.parameters()):
            child.compile(dynamic=False)
            names.append(name)
    return names


def train_step(model, optimizer, scheduler, fabric, batch: dict, step: int = 0) -> dict:
    """One optimisation step of any method: forward, finite-loss check, backward through Fabric
    (precision, DDP gradient averaging), optimiser and schedule. Returns the method's outputs.
    With an :class:`OptimizerSet` (methods with several optimisers) the method makes its own
    updates through ``batch["optim"]`` and the trainer only steps the schedules."""
    if isinstance(optimizer, OptimizerSet):
        batch["optim"] = ManualSteps(fabric, optimizer, step)
        out = model(batch)
        scheduler.step()
        return out
    out = model(batch)
    loss = out["loss"]
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower optim.lr or check the data")
    optimizer.zero_grad(set_to_none=True)
    fabric.backward(loss)
    optimizer.step()
    scheduler.step()
    return out


def _fabric_class():
    try:
        from lightning_fabric import Fabric
    except ImportError:  # the `lightning` package ships the same class
        from lightning.fabric import Fabric
    return Fabric


def fit(cfg: Config) -> FitResult:
    """Train ``cfg`` into its run folder (resuming it when it holds a checkpoint of the same
    config). A SIGINT / SIGTERM checkpoints the last completed step and returns a result whose
    ``interrupted`` is the signal (the summary says ``"status": "interrupted"``)."""
    Fabric = _fabric_class()

    t = cfg.trainer
    if optimizes_itself(method_class(cfg.method["name"])) and (
        str(t.devices) not in ("1", "auto") or t.num_nodes != 1
    ):
        raise _one_process_only(cfg)
    if t.threads:
        torch.set_num_threads(t.threads)
    fabric = Fabric(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy, precision=t.precision
    )
    fabric.launch()
    run_dir = Path(t.out_dir or f"runs/{cfg.method['name']}-{cfg.data.name}")
    with claimed(run_dir, enabled=fabric.is_global_zero):
        return _fit(cfg, fabric, run_dir)


def _fit(cfg: Config, fabric, run_dir: Path) -> FitResult:
    t, o = cfg.trainer, cfg.optim
    rank, world, device = fabric.global_rank, fabric.world_size, fabric.device
    is_main = fabric.is_global_zero
    source = resume_source(cfg, run_dir)
    ckpt = load_resume(cfg, source, run_dir) if source is not None else None

    train_set, test_set = build_datasets(cfg.data)
    global_batch = o.batch_size * world
    if len(train_set) < global_batch:
        raise UserError(
            f"batch larger than the data set: {global_batch} images per step ({o.batch_size} x {world} processes) "
            f"but the training set has {len(train_set)}; lower optim.batch_size"
        )
    if is_main:
        for ds in (train_set, test_set):
            if hasattr(ds, "check_readable"):
                ds.check_readable()
        note = getattr(train_set, "note", None)
        if note:
            print(note, file=sys.stderr)
    per_epoch = len(train_set) // global_batch
    total = t.max_steps if t.max_steps is not None else t.max_epochs * per_epoch

    torch.manual_seed(cfg.seed)  # the same initial weights on every process
    method = build_method(cfg)
    if cfg.model.sync_bn and world > 1:
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    if t.channels_last:
        from ..nn import Encoder

        for m in method.modules():
            if isinstance(m, Encoder):
                m.to_channels_last()
    manual = optimizes_itself(method)
    if manual:
        if world > 1:
            raise _one_process_only(cfg)
        optimizer = OptimizerSet(method.configure_optimizers(o))
        scheduler = SchedulerSet({n: build_scheduler(opt, o, total) for n, opt in optimizer.items()})
    else:
        optimizer = build_optimizer(method, o, global_batch)
        scheduler = build_scheduler(optimizer, o, total)

    step = 0
    if ckpt is not None:
        load_weights(method, ckpt["model"], source)  # strict: a mismatch is an error, never ignored
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step = int(ckpt["step"])
        del ckpt

    if t.compile:
        compiled = compile_networks(method)
        if is_main:
            print(f"torch.compile: {', '.join(compiled) or 'nothing to compile'} (the first steps compile them)", file=sys.stderr)
    model = method
    if manual:
        model = fabric.setup_module(model)
        names = list(optimizer.optimizers)
        wrapped = fabric.setup_optimizers(*optimizer.optimizers.values())
        optimizer = OptimizerSet(dict(zip(names, wrapped if len(names) > 1 else [wrapped])))
    else:
        model, optimizer = fabric.setup(model, optimizer)

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

    sampler = StepBatches(len(train_set), o.batch_size, world, rank, cfg.seed, step, total)
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
            for batch in _batches(train_set, sampler, cfg, device):
                s = step_seed(cfg.seed, rank, step)
                torch.manual_seed(s)
                gen.manual_seed(s)
                batch["generator"] = gen
                batch["step"] = step
                batch["total_steps"] = total
                batch["epoch"] = step // per_epoch
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
    summary = {"status": status, "step": step, "total_steps": total, "train_seconds": round(train_seconds, 1)}
    if stop.requested:
        summary["signal"] = signal.Signals(stop.signum).name
    else:
        summary.update(metrics)
    if is_main:
        atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2))
    return FitResult(run_dir, step, summary, is_main, interrupted=stop.signum)


def _one_process_only(cfg) -> UserError:
    return UserError(
        f"{cfg.method['name']} updates several networks per step and runs in one process for now; "
        "set trainer.devices=1 and trainer.num_nodes=1 (multi-process training of such methods is not supported yet)"
    )


def _plain(x):
    """Tuples -> lists recursively (YAML- and weights_only-friendly)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
