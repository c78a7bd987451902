"""Run by the distributed tests under `torchrun --nproc_per_node 2` (gloo, CPU): a real SimCLR run
through `contrastlab.engine.trainer.fit()`, recording what each rank's method sees.

    python -m torch.distributed.run --nproc_per_node 2 fit_views.py RUN_DIR OUT_DIR

Before `fit` is called, `SimCLR.forward` is wrapped; for the first two steps it records, into
OUT_DIR/rank{r}.pt, the step, the batch's images, the two views the method draws from them and
the views the step's generator draws from a probe batch that is the same on every rank (so that
the per-rank data cannot make the ranks' views differ on its own). The generator's state is put
back after each draw, so the run itself goes on exactly as it would without the recording.
"""
import os
import sys

import torch

from contrastlab.config import load_config
from contrastlab.engine.trainer import fit
from contrastlab.methods.simclr import SimCLR

TINY = ["data.n_train=256", "data.n_test=64", "model.width=8", "model.proj_hidden=32", "model.proj_dim=16",
        "optim.batch_size=8", "optim.warmup_steps=0", "trainer.max_steps=2", "trainer.knn_every=0", "trainer.progress=false",
        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]  # fmt: skip


def main(run_dir: str, out: str):
    torch.set_num_threads(1)
    cfg = load_config("simclr", TINY + [f"trainer.out_dir={run_dir}"])
    rec = []
    forward = SimCLR.forward

    def recording_forward(self, batch):
        if batch["step"] < 2:
            g, x = batch["generator"], batch["images"]
            probe = (torch.rand(x.shape, generator=torch.Generator().manual_seed(99)) * 255).to(x.dtype)
            draws = {}
            for name, images in (("views", x), ("probe", probe)):
                state = g.get_state()
                draws[name] = torch.stack([self.views(images, g), self.views(images, g)])
                g.set_state(state)
            rec.append({"step": batch["step"], "images": x.clone(), **draws})
        return forward(self, batch)

    SimCLR.forward = recording_forward
    result = fit(cfg)
    rank = int(os.environ["RANK"])  # set by torchrun
    torch.save({"rank": rank, "step": result.step, "steps": rec}, f"{out}/rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
