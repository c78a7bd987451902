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
    from contrastlab.checkpoint import load_checkpoint

    assert load_checkpoint(out)["step"] == 6
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:] if r.split(",")[1]] == ["6"]  # log_every=10: only the last step, once


# --- real steps under torchrun (tests/dist_scripts/ddp_step.py) -------------------------------

SCRIPT = os.path.join(os.path.dirname(__file__), "dist_scripts", "ddp_step.py")


def _torchrun(kind, out):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPT, kind, str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _script_cfg(kind):
    import importlib.util

    from contrastlab.config import load_config

    spec = importlib.util.spec_from_file_location("ddp_step", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    extra = ["method.queue_size=64", "method.momentum=0.9", "method.bn=shuffle", "method.symmetric=false"]
    return load_config(kind, [o for o in mod.TINY if not o.startswith("trainer.")] + (extra if kind == "moco" else []))


def test_simclr_ddp_step_equals_one_process_on_the_global_batch(tmp_path):
    """Two processes, each with its half of the global batch: the mean of their losses is the
    loss of one process on the whole batch, and the parameter gradients after DDP's all-reduce
    equal that process's gradients (so negatives come from all ranks, with gradient). In float64,
    so that 1e-5 is a strict tolerance for gradients of size ~5."""
    from contrastlab.methods import build_method

    r = _torchrun("simclr", tmp_path)
    cfg = _script_cfg("simclr")
    b, t = cfg.optim.batch_size // 2, cfg.method["temperature"]  # per process
    v1, v2 = torch.rand(2, 2 * b, 3, 32, 32, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    torch.manual_seed(cfg.seed)
    ref = build_method(cfg).double().train()  # the run used precision=64-true

    def embed(v, r_):  # DDP without SyncBN: BatchNorm statistics per process, i.e. per half
        return ref.projector(ref.encoder(v[r_ * b : (r_ + 1) * b]))

    z1 = torch.cat([embed(v1, 0), embed(v1, 1)])
    z2 = torch.cat([embed(v2, 0), embed(v2, 1)])
    loss = nt_xent(z1, z2, t, gather=False)
    loss.backward()
    assert (r[0]["loss"] + r[1]["loss"]).item() / 2 == pytest.approx(loss.item(), abs=1e-5)
    n_checked = 0
    for name, p in ref.named_parameters():
        for rank in range(2):
            assert torch.allclose(r[rank]["grads"][name], p.grad, atol=1e-5), (rank, name)
        n_checked += 1
    assert n_checked > 10
    # the check has teeth: local negatives only (no gather) give other gradients
    ref.zero_grad()
    local = sum(nt_xent(embed(v1, k), embed(v2, k), t, gather=False) for k in range(2)) / 2
    local.backward()
    w = ref.encoder.backbone.features[0][0].weight
    assert not torch.allclose(r[0]["grads"]["encoder.backbone.features.0.0.weight"], w.grad, atol=1e-5)


def test_moco_ddp_queue_order_shuffle_bn_momentum_and_seeds(tmp_path):
    """Three MoCo v2 steps on two processes: every rank holds the same weights, key encoder and
    queue; the key encoder is the EMA of the online one; the queue receives the keys of rank 0
    then rank 1, computed with BatchNorm over sub-batches shuffled across ranks (not the local
    ones); each rank draws its own augmentations."""
    import torch.nn.functional as F

    from contrastlab.engine.trainer import step_seed
    from contrastlab.methods import build_method

    r = _torchrun("moco", tmp_path)
    cfg = _script_cfg("moco")
    b, m = cfg.optim.batch_size // 2, cfg.method["momentum"]  # per process
    torch.manual_seed(cfg.seed)
    ref = build_method(cfg).train()
    prev = {n: p.detach().clone() for n, p in ref.named_parameters()}
    for t in range(3):
        s0, s1 = r[0]["steps"][t], r[1]["steps"][t]
        for name, v in s0["state"].items():
            if "running_" not in name and "num_batches" not in name:  # BN statistics are per process
                assert torch.equal(v, s1["state"][name]), (t, name)
        state = s0["state"]
        for name in prev:
            if name.startswith(("key_encoder.", "key_projector.")):
                online = name.replace("key_encoder.", "encoder.").replace("key_projector.", "projector.")
                ema = m * prev[name] + (1 - m) * prev[online]
                assert torch.allclose(state[name], ema, atol=1e-6), (t, name)
        prev = {n: state[n].clone() for n in prev}
        # the keys of this step, recomputed with shuffle-BN across the two ranks
        ref.load_state_dict(state)
        x2 = torch.cat([s0["views"][1], s1["views"][1]])
        perm = torch.randperm(2 * b, generator=torch.Generator().manual_seed(step_seed(cfg.seed, 0, t)))
        with torch.no_grad():
            key = lambda x: ref.key_projector(ref.key_encoder(x))  # noqa: E731
            k = torch.cat([key(x2[perm[:b]]), key(x2[perm[b:]])])[torch.argsort(perm)]
            local = torch.cat([key(x2[:b]), key(x2[b:])])
        rows = (torch.arange(2 * b) + s0["ptr_before"]) % state["queue.keys"].shape[0]
        assert torch.allclose(state["queue.keys"][rows], F.normalize(k, dim=1), atol=1e-5), t
        assert not torch.allclose(state["queue.keys"][rows], F.normalize(local, dim=1), atol=1e-3)
        # per-rank augmentation seeds: rank 1's views are not the ones rank 0's seed draws
        g = torch.Generator()
        assert torch.equal(s1["views"][0], ref.views(s1["images"], g.manual_seed(step_seed(cfg.seed, 1, t))))
        assert not torch.allclose(s1["views"][0], ref.views(s1["images"], g.manual_seed(step_seed(cfg.seed, 0, t))))


# --- augmentations per rank through fit() (tests/dist_scripts/fit_views.py) --------------------

FIT_SCRIPT = os.path.join(os.path.dirname(__file__), "dist_scripts", "fit_views.py")


def _fit_run(tmp, name):
    import subprocess
    import sys

    run, out = tmp / f"run-{name}", tmp / f"rec-{name}"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", FIT_SCRIPT,
           str(run), str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_fit_draws_per_rank_views_that_repeat_with_the_run(tmp_path):
    """Through the real trainer (`fit()`, two gloo processes under torchrun): at the same step the
    two ranks' generators draw different augmentations of the same probe images (the seed depends
    on the rank, not only the data), each rank's views are those of its step seed
    (seed, rank, step), and a second run of the same config draws exactly the same views."""
    import importlib.util

    from contrastlab.config import load_config
    from contrastlab.engine.trainer import step_seed
    from contrastlab.methods import build_method

    a, b = _fit_run(tmp_path, "a"), _fit_run(tmp_path, "b")
    assert [r["rank"] for r in a] == [0, 1] and all(r["step"] == 2 for r in a + b)
    for run in (a, b):
        assert [s["step"] for r in run for s in r["steps"]] == [0, 1, 0, 1]
    spec = importlib.util.spec_from_file_location("fit_views", FIT_SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = load_config("simclr", mod.TINY)
    views = build_method(cfg).views
    for t in range(2):
        s0, s1 = a[0]["steps"][t], a[1]["steps"][t]
        # the probe is the same on both ranks, so only the generator can tell the ranks apart
        assert not torch.allclose(s0["probe"], s1["probe"], atol=1e-3), t
        assert not torch.allclose(s0["views"][0], s0["views"][1], atol=1e-3), t  # two views, two draws
        for rank, s in enumerate((s0, s1)):
            g = torch.Generator().manual_seed(step_seed(cfg.seed, rank, t))
            assert torch.equal(s["views"], torch.stack([views(s["images"], g), views(s["images"], g)])), (t, rank)
        # the same run again: the same images and the same draws, rank by rank
        for rank in range(2):
            for key in ("images", "views", "probe"):
                assert torch.equal(a[rank]["steps"][t][key], b[rank]["steps"][t][key]), (t, rank, key)
    # the steps differ too (seed is a function of the step)
    assert not torch.allclose(a[0]["steps"][0]["probe"], a[0]["steps"][1]["probe"], atol=1e-3)
