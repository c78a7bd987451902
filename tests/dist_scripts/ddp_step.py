"""Run by the distributed tests under `torchrun --nproc_per_node 2` (gloo, CPU), the way a user
starts a multi-process run: Fabric(strategy=ddp) picks the process group up from torchrun.

    python -m torch.distributed.run --nproc_per_node 2 ddp_step.py simclr|moco OUT_DIR

Each rank saves what the test compares into OUT_DIR/rank{r}.pt:
- simclr: the views it got (its half of a fixed global batch), its local loss and the parameter
  gradients after DDP's all-reduce (one backward, no optimiser step);
- moco: three real training steps (train_step, batched views from per-rank step seeds); for
  each, the views this rank drew, the queue pointer before the step and the whole state after.
"""
import sys

import torch

from contrastlab.config import load_config
from contrastlab.engine.optim import build_optimizer, build_scheduler
from contrastlab.engine.trainer import _fabric_class, step_seed, train_step
from contrastlab.methods import build_method

TINY = ["data.n_train=256", "data.n_test=128", "model.width=8", "model.proj_hidden=32", "model.proj_dim=16",
        "optim.batch_size=16", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]  # fmt: skip


def main(kind: str, out: str):
    torch.set_num_threads(1)
    extra = ["method.queue_size=64", "method.momentum=0.9", "method.bn=shuffle", "method.symmetric=false"] if kind == "moco" else []
    cfg = load_config(kind, TINY + extra)
    # SimCLR's gradient check runs in float64 so that it can hold to 1e-5 on large gradients
    precision = "64-true" if kind == "simclr" else "32-true"
    fabric = _fabric_class()(accelerator="cpu", devices=2, strategy="ddp", precision=precision)
    fabric.launch()
    rank, world = fabric.global_rank, fabric.world_size
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    method = build_method(cfg)
    opt = build_optimizer(method, cfg.optim, cfg.optim.batch_size)  # the global batch
    sched = build_scheduler(opt, cfg.optim, 100)
    model, opt = fabric.setup(method, opt)
    model.train()
    b = cfg.optim.batch_size // world  # this process's share of the global batch
    g = torch.Generator().manual_seed(123)  # the same global batch on every rank
    rec = {"rank": rank, "world": world}
    if kind == "simclr":
        v1, v2 = torch.rand(2, world * b, 3, 32, 32, generator=g, dtype=torch.float64)
        mine = slice(rank * b, (rank + 1) * b)
        out_ = model({"views": [v1[mine], v2[mine]]})
        fabric.backward(out_["loss"])
        rec.update(loss=out_["loss"].detach(), grads={n: p.grad.clone() for n, p in method.named_parameters()},
                   state={n: t.clone() for n, t in method.state_dict().items()})  # fmt: skip
    else:
        images = (torch.rand(world * b, 3, 32, 32, generator=g) * 255).to(torch.uint8)
        mine = images[rank * b : (rank + 1) * b]
        gen = torch.Generator()
        steps = []
        for step in range(3):
            seed = step_seed(cfg.seed, rank, step)
            gen.manual_seed(seed)
            views = (method.views(mine, gen), method.views(mine, gen))  # what this step's generator draws
            torch.manual_seed(seed)
            gen.manual_seed(seed)
            ptr = int(method.queue.ptr)
            train_step(model, opt, sched, fabric, {"images": mine, "generator": gen}, step)
            steps.append({"views": views, "ptr_before": ptr, "images": mine,
                          "state": {n: t.clone() for n, t in method.state_dict().items()}})  # fmt: skip
        rec["steps"] = steps
    torch.save(rec, f"{out}/rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
