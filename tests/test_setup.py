"""engine.setup.build_setup: the trainer's set-up (and the benchmarks'), checked on its own."""
import pytest
import torch

from contrastlab.config import load_config
from contrastlab.data import build_datasets
from contrastlab.engine.setup import build_setup, make_fabric
from contrastlab.engine.trainer import fit
from contrastlab.errors import UserError


def _cfg(tiny, *extra):
    return load_config("simclr", tiny + ["trainer.devices=1", *extra])


def test_steps_per_epoch_and_total_from_the_data(tiny):
    cfg = _cfg(tiny, "trainer.max_steps=null", "trainer.max_epochs=3", "optim.batch_size=30")
    fabric = make_fabric(cfg)
    s = build_setup(cfg, fabric)
    n = len(build_datasets(cfg.data)[0])
    assert s.per_epoch == n // 30 and s.total == 3 * (n // 30) and s.step == 0 and s.source is None
    assert s.global_batch == 30
    first = next(iter(s.batches()))
    assert first["images"].shape[0] == 30


def test_without_data_the_caller_brings_batches(tiny):
    cfg = _cfg(tiny, "trainer.max_steps=17")
    s = build_setup(cfg, make_fabric(cfg), datasets=(None, None))
    assert s.train_set is None and s.total == 17 and s.per_epoch == 1
    assert s.scheduler is not None and len(s.optimizer.param_groups) >= 1
    cfg = _cfg(tiny, "trainer.max_steps=null", "trainer.max_epochs=2")
    with pytest.raises(UserError, match="trainer.max_steps"):
        build_setup(cfg, make_fabric(cfg), datasets=(None, None))


def test_resumes_the_run_folders_checkpoint(tiny, tmp_path):
    cfg = _cfg(tiny, "trainer.max_steps=4", "trainer.ckpt_every=2", f"trainer.out_dir={tmp_path}")
    fit(cfg)
    s = build_setup(cfg, make_fabric(cfg), run_dir=tmp_path)
    assert s.step == 4 and s.source is not None
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert all(torch.equal(v, s.method.state_dict()[k]) for k, v in ckpt["model"].items())
