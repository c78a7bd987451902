"""Stage-1 training of CWT as RePRI's (issue 18): SGD with Nesterov momentum, the label-smoothed cross-entropy
(against a loop over pixels) and the joint image + mask augmentation (alignment, ignore padding, seeds)."""
import math

import pytest
import torch

from contrastlab.config import load_config
from contrastlab.errors import ConfigError


# ----------------------------------------------------------------------------- optim.nesterov
def test_nesterov_sgd_follows_the_update_written_as_a_loop():
    """v <- mu v + g (g with weight decay wd w); w <- w - lr (g + mu v) (Sutskever et al. 2013 in PyTorch's form)."""
    from contrastlab.engine.optim import build_optimizer

    cfg = load_config("cwt_stage1", ["optim.name=sgd", "optim.nesterov=true", "optim.momentum=0.9", "optim.lr=0.1",
                                     "optim.scale_lr=false", "optim.weight_decay=0.01", "optim.exclude_bias_bn=false"])  # fmt: skip
    lin = torch.nn.Linear(3, 1, bias=False).double()
    w0 = [float(x) for x in lin.weight.detach().flatten()]
    opt = build_optimizer(lin, cfg.optim, 1)
    assert opt.param_groups[0]["nesterov"] is True
    x = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    w, v = list(w0), [0.0, 0.0, 0.0]
    for step in range(4):
        opt.zero_grad()
        (lin(x) ** 2).sum().backward()
        opt.step()
        out = sum(wi * xi for wi, xi in zip(w, x[0].tolist()))
        for i in range(3):
            g = 2 * out * float(x[0, i]) + 0.01 * w[i]
            v[i] = g if step == 0 else 0.9 * v[i] + g
            w[i] -= 0.1 * (g + 0.9 * v[i])
    assert [float(a) for a in lin.weight.detach().flatten()] == pytest.approx(w, rel=1e-12)
    plain = build_optimizer(lin, load_config("cwt_stage1", ["optim.name=sgd"]).optim, 1)
    assert plain.param_groups[0]["nesterov"] is False  # the default


def test_nesterov_needs_sgd_with_momentum():
    with pytest.raises(ConfigError, match="optim.nesterov=true needs optim.name=sgd"):
        load_config("cwt_stage1", ["optim.nesterov=true"])  # the digits preset's Adam
    with pytest.raises(ConfigError, match="optim.momentum=0.0"):
        load_config("cwt_stage1", ["optim.name=sgd", "optim.nesterov=true", "optim.momentum=0"])
