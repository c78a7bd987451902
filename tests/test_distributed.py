"""Two gloo processes on the CPU: SimCLR's loss and gradients across processes equal a single
process on the concatenated batch."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from contrastlab.losses import nt_xent

pytestmark = pytest.mark.distributed


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, z1, z2, t, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        b = z1.shape[0] // world
        a = z1[rank * b : (rank + 1) * b].clone().requires_grad_(True)
        c = z2[rank * b : (rank + 1) * b].clone().requires_grad_(True)
        loss = nt_xent(a, c, t)
        loss.backward()
        out[rank] = (loss.detach(), a.grad.clone(), c.grad.clone())
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_nt_xent_two_processes_equals_one(t):
    world, n, d = 2, 8, 5
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    ref1, ref2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    ref = nt_xent(ref1, ref2, t, gather=False)
    ref.backward()
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(world, _free_port(), z1, z2, t, out), nprocs=world, join=True)
    b = n // world
    # each rank averages over its own 2b anchors; the mean over ranks is the global loss
    assert sum(out[r][0].item() for r in range(world)) / world == pytest.approx(ref.item(), abs=1e-5)
    for rank in range(world):
        _, g1, g2 = out[rank]
        # the gather's backward sums every rank's contribution: the local gradient is world x the
        # single-process gradient of the same rows, and DDP's mean over ranks divides by world
        assert torch.allclose(g1 / world, ref1.grad[rank * b : (rank + 1) * b], atol=1e-6)
        assert torch.allclose(g2 / world, ref2.grad[rank * b : (rank + 1) * b], atol=1e-6)


def test_trainer_two_processes_writes_one_run(tmp_path):
    """`trainer.devices=2 trainer.strategy=ddp` on the CPU (gloo): both processes train, rank 0
    alone writes the checkpoint, log and report line."""
    import json
    import subprocess
    import sys

    from conftest import TINY

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "contrastlab.cli", "train", "simclr", *TINY, "trainer.devices=2",
           "trainer.strategy=ddp", "trainer.max_steps=6", "trainer.ckpt_every=3", f"trainer.out_dir={out}"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-1500:]
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    assert len(lines) == 1 and json.loads(lines[0])["step"] == 6
    from contrastlab.engine.checkpoint import load_checkpoint

    assert load_checkpoint(out)["step"] == 6
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:] if r.split(",")[1]] == ["6"]  # log_every=10: only the last step, once
