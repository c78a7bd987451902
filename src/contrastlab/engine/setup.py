"""Setting up a run, before its first step: the data, the method with its initial (or resumed)
weights, optimiser(s) and schedule(s), all on Lightning Fabric. The trainer's loop starts from
it, and the benchmarks time the real training step by building the same set-up."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..checkpoint import load_weights, read_state_dict
from ..config import Config, UserError
from ..data import build_datasets
from ..methods import build_method, method_class
from ..methods.contract import optimizes_itself, uses_training_set
from .batches import StepBatches, batches
from .manual import OptimizerSet, SchedulerSet
from .optim import build_optimizer, build_scheduler, schedule_problem, warmup_steps_of
from .rundir import load_resume, resume_source


@dataclass
class TrainingSetup:
    """Everything a training loop starts from. ``method`` is the method itself (its state dict is
    what checkpoints hold), ``model`` the same wrapped by Fabric (what a step calls); ``step`` is
    the first step to run (0, or the resumed checkpoint's), ``source`` the checkpoint resumed."""

    cfg: Config
    fabric: Any
    method: torch.nn.Module
    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    train_set: Any
    test_set: Any
    step: int
    total: int
    per_epoch: int
    global_batch: int
    source: Path | None = None
    per_process_batch: int = 0  # global_batch / processes
    warmup: int = 0  # the warm-up in steps

    def batches(self):
        """The batches of this process from ``step`` to ``total`` (see :mod:`.batches`)."""
        f = self.fabric
        sampler = StepBatches(len(self.train_set), self.per_process_batch, f.world_size, f.global_rank,
                              self.cfg.seed, self.step, self.total)  # fmt: skip
        return batches(self.train_set, sampler, self.cfg, f.device)


def fabric_class():
    try:
        from lightning_fabric import Fabric
    except ImportError:  # the `lightning` package ships the same class
        from lightning.fabric import Fabric
    return Fabric



def make_fabric(cfg: Config):
    """The Fabric of ``cfg.trainer`` (accelerator, devices, nodes, strategy, precision; the CPU
    thread count set), not yet launched. Methods that make their own optimisation steps run in
    one process (a one-line error otherwise)."""
    t = cfg.trainer
    if optimizes_itself(method_class(cfg.method["name"])) and (
        str(t.devices) not in ("1", "auto") or t.num_nodes != 1
    ):
        raise one_process_only(cfg)
    if t.threads:
        torch.set_num_threads(t.threads)
    return fabric_class()(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy, precision=t.precision
    )


class SchedulePlan(NamedTuple):
    global_batch: int  # images per step over all processes (optim.batch_size)
    per_process: int  # images per step of each process
    per_epoch: int  # steps per epoch
    total: int  # steps of the run
    warmup: int  # warm-up steps


def plan_schedule(cfg: Config, n_train: int | None, world: int) -> SchedulePlan:
    """The batch and step plan of ``cfg`` for ``n_train`` training images (None: no data, one step
    per epoch) on ``world`` processes; one-line UserErrors for a batch that does not split evenly
    or exceeds the data, and for a warm-up not shorter than the run."""
    t, o = cfg.trainer, cfg.optim
    global_batch = o.batch_size
    if global_batch % world:
        raise UserError(f"optim.batch_size={global_batch} is the global batch (images per step over all processes) "
                        f"and must divide evenly among the {world} processes; make it a multiple of {world}")  # fmt: skip
    if n_train is not None and n_train < global_batch:
        raise UserError(f"batch larger than the data set: {global_batch} images per step ({world} processes x "
                        f"{global_batch // world}) but the training set has {n_train}; lower optim.batch_size")  # fmt: skip
    per_epoch = n_train // global_batch if n_train is not None else 1
    total = t.max_steps if t.max_steps is not None else t.max_epochs * per_epoch
    warmup = warmup_steps_of(o, per_epoch)
    problem = schedule_problem(o, total, warmup)
    if problem:
        raise UserError(problem)
    return SchedulePlan(global_batch, global_batch // world, per_epoch, total, warmup)


def build_setup(cfg: Config, fabric, run_dir: Path | None = None, datasets: tuple | None = None) -> TrainingSetup:
    """The set-up of ``cfg`` on a launched ``fabric``; with ``run_dir``, resumed from the run
    folder's checkpoint when it holds one of the same config (see :mod:`.rundir`). Touches no
    file: preparing the folder is the trainer's. ``datasets``: (train, test) already built from
    ``cfg.data`` (the benchmarks share one between contenders), or (None, None) for a set-up
    without data whose caller brings its own batches (a method with one optimiser; no resume)."""
    t, o = cfg.trainer, cfg.optim
    world = fabric.world_size
    is_main = fabric.is_global_zero
    source = resume_source(cfg, run_dir) if run_dir is not None else None
    ckpt = load_resume(cfg, source, run_dir) if source is not None else None
    weights = read_state_dict(cfg.model.weights, f"model.weights={cfg.model.weights}") if (
        cfg.model.weights and ckpt is None) else None  # read before the data: a bad file fails at once  # fmt: skip

    train_set, test_set = datasets if datasets is not None else build_datasets(cfg.data)
    if train_set is None and t.max_steps is None:  # no data: the caller brings its own batches (benchmarks)
        raise UserError("a set-up without data needs trainer.max_steps")
    plan = plan_schedule(cfg, len(train_set) if train_set is not None else None, world)
    global_batch, per_process, per_epoch, total, warmup = plan
    if is_main:
        for ds in (train_set, test_set):
            if ds is not None and hasattr(ds, "check_readable"):
                ds.check_readable()
        note = getattr(train_set, "note", None)
        if note:
            print(note, file=sys.stderr)
    if is_main and world > 1:
        print(f"batch: {global_batch} images per step = {world} processes x {per_process}", file=sys.stderr)

    torch.manual_seed(cfg.seed)  # the same initial weights on every process
    method = build_method(cfg)
    if weights is not None:  # a fresh run: the backbone's initial weights (a resumed one has its checkpoint's)
        load_encoder_weights(method, weights, f"model.weights={cfg.model.weights}")
        del weights
    if train_set is not None and uses_training_set(method):  # e.g. a memory bank of one row per image
        method.setup_data(train_set)
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
            raise one_process_only(cfg)
        optimizer = OptimizerSet(method.configure_optimizers(o))
        scheduler = SchedulerSet({n: build_scheduler(opt, o, total, warmup) for n, opt in optimizer.items()})
    else:
        optimizer = build_optimizer(method, o, global_batch)
        scheduler = build_scheduler(optimizer, o, total, warmup)

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
    return TrainingSetup(cfg, fabric, method, model, optimizer, scheduler, train_set, test_set, step, total, per_epoch,
                         global_batch, source, per_process, warmup)  # fmt: skip


def load_encoder_weights(method: torch.nn.Module, state: dict, where: str) -> list[str]:
    """``model.weights``: the file's backbone weights into every :class:`~contrastlab.nn.Encoder` of the
    method (its encoder and any momentum copy of it), before ``setup_data`` (so a stage that loads a
    previous run's network there keeps that one). Returns the encoders' names; a method without an
    encoder is a one-line error."""
    from ..nn import Encoder
    from ..nn.backbones import load_backbone_weights

    names = [name for name, m in method.named_modules() if isinstance(m, Encoder)]
    if not names:
        raise UserError(f"{where}: method {type(method).__name__} has no backbone encoder (model.backbone) to load "
                        "backbone weights into; remove model.weights")  # fmt: skip
    for name in names:
        load_backbone_weights(method.get_submodule(name), state, where)
    return names


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



def one_process_only(cfg) -> UserError:
    return UserError(
        f"{cfg.method['name']} updates several networks per step and runs in one process for now; "
        "set trainer.devices=1 and trainer.num_nodes=1 (multi-process training of such methods is not supported yet)"
    )
