"""Run by tests/test_looc.py and tests/test_detco.py under `torchrun --nproc_per_node 2` (gloo, CPU): two
training steps of a queue method (train_step, views from per-rank step seeds, shuffle-BN for the keys across
the ranks).

    python -m torch.distributed.run --nproc_per_node 2 queue_steps.py RECIPE OUT_DIR

Each rank saves into OUT_DIR/rank{r}.pt, per step: what each call of the method's ``keys`` returned during the
step, in order (``calls``: LooC's one (S spaces, S keys, B, d); DetCo's global then local (B, L, d)), the
pointers of every queue of the method (in module order) before the step, the loss and the whole state after.
"""
import sys

import torch

from contrastlab.config import load_config
from contrastlab.engine.optim import build_optimizer, build_scheduler
from contrastlab.engine.trainer import _fabric_class, step_seed, train_step
from contrastlab.methods import build_method
from contrastlab.nn import Queue

TINY = ["data.n_train=256", "data.n_test=128", "model.width=8", "model.proj_hidden=32", "model.proj_dim=16",
        "optim.batch_size=16", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
        "method.queue_size=64", "method.momentum=0.9", "method.bn=shuffle"]  # fmt: skip


def main(recipe: str, out: str):
    torch.set_num_threads(1)
    cfg = load_config(recipe, TINY)
    fabric = _fabric_class()(accelerator="cpu", devices=2, strategy="ddp", precision="32-true")
    fabric.launch()
    rank, world = fabric.global_rank, fabric.world_size
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    method = build_method(cfg)
    seen = []
    keys = method.keys
    method.keys = lambda *a, **k: seen.append(keys(*a, **k)) or seen[-1]  # record what forward computes
    queues = [m for m in method.modules() if isinstance(m, Queue)]
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
        ptrs, before = [int(q.ptr) for q in queues], len(seen)
        out_ = train_step(model, opt, sched, fabric, {"images": mine, "generator": gen}, step)
        steps.append({"calls": [k.clone() for k in seen[before:]], "ptrs": ptrs, "loss": float(out_["loss"]),
                      "state": {n: t.clone() for n, t in method.state_dict().items()}})  # fmt: skip
    torch.save({"rank": rank, "world": world, "steps": steps}, f"{out}/rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
