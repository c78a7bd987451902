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


# ----------------------------------------------------------------------------- label-smoothed cross-entropy
def loop_smoothed_ce(logits, target, eps, ignore=255):
    """RePRI's smoothed targets (1 - eps on the pixel's class, eps / (C - 1) elsewhere), pixel by pixel, float64."""
    b, c, h, w = logits.shape
    total, n = 0.0, 0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                t = int(target[i, y, x])
                if t == ignore:
                    continue
                zs = [float(logits[i, k, y, x]) for k in range(c)]
                m = max(zs)
                log_z = m + math.log(sum(math.exp(z - m) for z in zs))
                total -= sum(((1 - eps) if k == t else eps / (c - 1)) * (zs[k] - log_z) for k in range(c))
                n += 1
    return total / max(n, 1)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("c", [2, 5])
def test_smoothed_cross_entropy_matches_a_loop_over_the_valid_pixels(eps, c):
    from contrastlab.losses import smoothed_cross_entropy

    g = torch.Generator().manual_seed(c)
    logits = torch.randn(2, c, 3, 4, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, c, (2, 3, 4), generator=g)
    target[0, 1] = 255  # a row of ignored pixels
    target[1, 2, 3] = 255
    got = smoothed_cross_entropy(logits, target, eps)
    assert float(got) == pytest.approx(loop_smoothed_ce(logits, target, eps), rel=1e-12)
    if eps == 0:
        torch.testing.assert_close(got, torch.nn.functional.cross_entropy(logits, target, ignore_index=255))
    # ignored pixels carry no gradient, whatever their logits
    lg = logits.clone().requires_grad_(True)
    smoothed_cross_entropy(lg, target, eps).backward()
    assert torch.all(lg.grad[0, :, 1] == 0) and torch.all(lg.grad[1, :, 2, 3] == 0)
    assert float(smoothed_cross_entropy(logits, torch.full_like(target, 255), eps)) == 0.0


def test_stage1_uses_the_smoothed_loss_when_asked():
    from contrastlab.losses import smoothed_cross_entropy
    from contrastlab.methods import build_method

    cfg = load_config("cwt_stage1", ["model.width=4", "method.bottleneck_dim=8", "method.label_smoothing=0.1"])
    m = build_method(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # confident logits, so that smoothing changes the loss
        m.net.classifier.weight.copy_(torch.randn(m.net.classifier.weight.shape, generator=g) * 50)
    images = torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    masks = torch.randint(0, 6, (2, 32, 32), generator=g)
    masks[:, :4] = 255
    with torch.no_grad():
        got = m({"images": images, "masks": masks})["loss"]
        logits = m.net(images.float() / 255)
    torch.testing.assert_close(got, smoothed_cross_entropy(logits, masks, 0.1))
    assert not torch.allclose(got, torch.nn.functional.cross_entropy(logits, masks, ignore_index=255))
    with pytest.raises(ConfigError, match="method.label_smoothing"):
        load_config("cwt_stage1", ["method.label_smoothing=1.0"])
