import os

import pytest
import torch

# Keep the generated digit scenes out of the user's cache and shared by the whole session.
os.environ.setdefault("CONTRASTLAB_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "test-data"))
# One thread: the suite's steps are small, and on a 2-core machine shared with other work two threads made
# them up to ~100x slower (each thread waiting for the other's core). Tests that need more set it themselves.
torch.set_num_threads(1)

TINY = [
    "data.n_train=256",
    "data.n_test=128",
    "model.width=8",
    "model.proj_hidden=32",
    "model.proj_dim=16",
    "optim.batch_size=32",
    "optim.warmup_steps=0",  # runs of a few steps: a warm-up as long as the run is refused at start
    "trainer.knn_every=0",
    "trainer.progress=false",
    "trainer.accelerator=cpu",
]


@pytest.fixture
def tiny():
    """Overrides that make any digits recipe a sub-second CPU run."""
    return list(TINY)


def _check_momentum_step(method, online, key, batch, m=0.5):
    """One forward + backward of ``method`` (momentum ``m``) after moving its online weights by 0.1:
    each key weight becomes m * key + (1 - m) * online (the update before the keys), every online
    weight gets a gradient and no key weight does (key weights are the parameters named key_*)."""
    with torch.no_grad():
        for p in method.parameters():
            if p.requires_grad:
                p.add_(0.1)  # the online branch moves away from its copy
    key_before = [p.clone() for p in key]
    method(batch)["loss"].backward()
    assert len(key) == len(online) > 0
    for kb, k, o in zip(key_before, key, online):
        assert torch.allclose(k, m * kb + (1 - m) * o)
    for name, p in method.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert name.startswith("key_") and p.grad is None, name


@pytest.fixture
def momentum_step_check():
    """The check of a momentum-encoder method's step (:func:`_check_momentum_step`), shared by the methods' tests."""
    return _check_momentum_step


def _run_queue_steps(recipe: str, out_dir) -> list:
    """Two training steps of ``recipe`` on two gloo processes (tests/dist_scripts/queue_steps.py via
    torchrun); returns each rank's record (its steps: loss, state, queue pointers, keys() calls), after
    checking that the two ranks hold the same weights after each step (BatchNorm statistics aside)."""
    import math
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "dist_scripts", "queue_steps.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script, recipe,
           str(out_dir)]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    r = [torch.load(os.path.join(str(out_dir), f"rank{i}.pt"), weights_only=True) for i in range(2)]
    for t, (s0, s1) in enumerate(zip(r[0]["steps"], r[1]["steps"])):
        assert math.isfinite(s0["loss"]) and math.isfinite(s1["loss"])
        for name, v in s0["state"].items():
            if "running_" not in name and "num_batches" not in name:  # BN statistics are per process
                assert torch.equal(v, s1["state"][name]), (t, name)
    return r


@pytest.fixture
def queue_steps():
    """:func:`_run_queue_steps`: the two-process check of a queue method (DetCo, LooC)."""
    return _run_queue_steps
