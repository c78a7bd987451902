"""One optimisation step of any method (the trainer's, and the benchmarks')."""
from __future__ import annotations

import torch

from .manual import ManualSteps, OptimizerSet


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
