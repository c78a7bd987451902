"""Run by tests/test_detco.py under `torchrun --nproc_per_node 2` (gloo, CPU): two DetCo training steps
(train_step, global and jigsaw views from per-rank step seeds, shuffle-BN for the keys across the ranks).

    python -m torch.distributed.run --nproc_per_node 2 detco_step.py OUT_DIR

Each rank saves into OUT_DIR/rank{r}.pt, per step: the global and local keys its forward computed (each
(B, L, d)), the queue pointers before the step, the loss and the whole state after the step.
"""
import sys

import torch

from contrastlab.config import load_config
from contrastlab.engine.optim import build_optimizer, build_scheduler
from contrastlab.engine.trainer import _fabric_class, step_seed, train_step
from contrastlab.methods import build_method

TINY = ["data.n_train=256", "data.n_test=128", "model.width=8", "model.proj_hidden=32", "model.proj_dim=16",
        "optim.batch_size=16", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
        "method.queue_size=64", "method.momentum=0.9", "method.bn=shuffle"]  # fmt: skip


def main(out: str):
    torch.set_num_threads(1)
    cfg = load_config("detco", TINY)
    fabric = _fabric_class()(accelerator="cpu", devices=2, strategy="ddp", precision="32-true")
    fabric.launch()
    rank, world = fabric.global_rank, fabric.world_size
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    method = build_method(cfg)
    seen = []
    keys = method.keys
    method.keys = lambda x, local, g=None: seen.append(keys(x, local, g)) or seen[-1]  # record what forward computes
    opt = build_optimizer(method, cfg.optim, cfg.optim.batch_size)
    sched = build_scheduler(opt, cfg.optim, 100)
    model, opt = fabric.setup(method, opt)
    model.train()
    b = cfg.optim.batch_size // world
    images = (torch.rand(world * b, 3, 32, 32, generator=torch.Generator().manual_seed(123)) * 255).to(torch.uint8)
    mine = images[rank * b : (rank + 1) * b]
    gen, steps = torch.Generator(), []
    for step in range(2):
        seed = step_seed(cfg.seed, rank, step)
        torch.manual_seed(seed)
        gen.manual_seed(seed)
        ptrs = [int(q.ptr) for q in [*method.global_queues, *method.local_queues]]
        out_ = train_step(model, opt, sched, fabric, {"images": mine, "generator": gen}, step)
        steps.append({"global_keys": seen[-2].clone(), "local_keys": seen[-1].clone(), "ptrs": ptrs,
                      "loss": float(out_["loss"]),
                      "state": {n: t.clone() for n, t in method.state_dict().items()}})  # fmt: skip
    torch.save({"rank": rank, "world": world, "steps": steps}, f"{out}/rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
