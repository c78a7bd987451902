"""The contrastlab contender of the CPU benchmarks: a recipe's real training step."""
from __future__ import annotations

import torch


def make_step(recipe: str, images, overrides=(), channels_last: bool = True):
    """The real training step (`train_step` through Fabric, CPU) of a recipe on ``images()``
    batches, views included; ``step``/``epoch`` are past every warm-up."""
    from contrastlab.config import load_config
    from contrastlab.engine.optim import build_optimizer, build_scheduler
    from contrastlab.engine.trainer import _fabric_class, train_step
    from contrastlab.methods import build_method

    cfg = load_config(recipe, ["trainer.max_steps=1000000", "data.long_tail_ratio=null", *overrides])
    torch.manual_seed(0)
    method = build_method(cfg)
    if channels_last:
        method.encoder.to_channels_last()
    fabric = _fabric_class()(accelerator="cpu", devices=1)
    opt = build_optimizer(method, cfg.optim, cfg.optim.batch_size)
    sched = build_scheduler(opt, cfg.optim, cfg.trainer.max_steps)
    model, opt = fabric.setup(method, opt)
    model.train()
    g = torch.Generator()
    k = [0]

    def step():
        k[0] += 1
        g.manual_seed(k[0])
        train_step(model, opt, sched, fabric, {"images": images(), "generator": g, "step": 10_000, "epoch": 0})

    return step
