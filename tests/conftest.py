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
