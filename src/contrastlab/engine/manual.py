"""Methods that own their optimisation steps (GANs, adversarial inner loops, episodic training).

A method opts in with ``manual_optimization = True`` and a ``configure_optimizers(optim_cfg)``
that returns ``{name: torch.optim.Optimizer}``. The trainer wraps them into one
:class:`OptimizerSet` (checkpointed and resumed like a single optimiser, with one schedule per
optimiser) and hands the method a :class:`ManualSteps` in ``batch["optim"]``; the method's
``forward(batch)`` calls ``batch["optim"].step("G", loss)`` for each of its updates, in the order
the paper does them. The backward goes through Fabric (mixed precision, loss scaling), so the
method never touches devices or precision, and the trainer never looks at the method's name.
"""
from __future__ import annotations

import torch


class OptimizerSet:
    """Named optimisers that checkpoint as one (``state_dict`` is ``{name: state}``)."""

    def __init__(self, optimizers: dict):
        if not optimizers:
            raise ValueError("configure_optimizers returned no optimiser")
        self.optimizers = dict(optimizers)

    def __getitem__(self, name):
        return self.optimizers[name]

    def items(self):
        return self.optimizers.items()

    @property
    def param_groups(self):  # the first optimiser's groups, for logging the learning rate
        return next(iter(self.optimizers.values())).param_groups

    def state_dict(self) -> dict:
        return {n: o.state_dict() for n, o in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.optimizers):
            raise KeyError(f"checkpoint has optimisers {sorted(state)}, the method has {sorted(self.optimizers)}")
        for n, o in self.optimizers.items():
            o.load_state_dict(state[n])


class SchedulerSet:
    """One learning-rate schedule per optimiser of an :class:`OptimizerSet`, stepped together."""

    def __init__(self, schedulers: dict):
        self.schedulers = dict(schedulers)

    def step(self):
        for s in self.schedulers.values():
            s.step()

    def state_dict(self) -> dict:
        return {n: s.state_dict() for n, s in self.schedulers.items()}

    def load_state_dict(self, state: dict) -> None:
        for n, s in self.schedulers.items():
            s.load_state_dict(state[n])


class ManualSteps:
    """What a manual-optimisation method gets in ``batch["optim"]`` for one training step."""

    def __init__(self, fabric, optimizers: OptimizerSet, step: int):
        self.fabric, self.optimizers, self.global_step = fabric, optimizers, step

    def step(self, name: str, loss: torch.Tensor) -> None:
        """zero_grad, backward of ``loss`` (through Fabric) and the step of optimiser ``name``."""
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss of optimiser {name!r} is {loss.item()} at step {self.global_step}; lower optim.lr or check the data"
            )
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        self.fabric.backward(loss)
        opt.step()
