"""Method building blocks: momentum update, queue, and one training step of each method."""
import copy

import pytest
import torch

from contrastlab.config import load_config
from contrastlab.methods import build_method
from contrastlab.nn import Queue, momentum_update


def test_momentum_update_formula():
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = copy.deepcopy(target)
    momentum_update(online, target, 0.9)
    for p_t, p_b, p_o in zip(target.parameters(), before.parameters(), online.parameters()):
        assert torch.allclose(p_t, 0.9 * p_b + 0.1 * p_o)


def test_queue_is_fifo_and_wraps():
    q = Queue(5, 2)
    keys = torch.nn.functional.normalize(torch.randn(7, 2), dim=1)
    q.push(keys[:3])
    assert torch.allclose(q.keys[:3], keys[:3]) and int(q.ptr) == 3
    q.push(keys[3:7])  # positions 3, 4, 0, 1
    assert torch.allclose(q.keys[3:5], keys[3:5]) and torch.allclose(q.keys[:2], keys[5:7]) and int(q.ptr) == 2
    assert torch.allclose(q.keys[2], keys[2])


def _batch(n=16):
    g = torch.Generator().manual_seed(0)
    return {"images": (torch.rand(n, 3, 32, 32, generator=g) * 255).to(torch.uint8), "generator": g}


@pytest.mark.parametrize("recipe", ["simclr", "moco", "dcl", "hcl", "mochi", "sdclr", "combined"])
def test_one_step_reaches_every_trainable_weight(recipe, tiny):
    method = load_config(recipe).method
    small_queue = ["method.queue_size=32"] if method["name"] == "moco" else []
    if small_queue and method["mochi_n_hard"] > 32:  # MoCHi's hardest negatives come from the queue
        small_queue.append("method.mochi_n_hard=32")
    cfg = load_config(recipe, tiny + small_queue)
    m = build_method(cfg)
    out = m(_batch())
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert name.startswith("key_") and p.grad is None


def test_moco_step_enqueues_keys_and_updates_key_encoder(tiny):
    cfg = load_config("moco", tiny + ["method.queue_size=64", "method.momentum=0.5"])
    m = build_method(cfg)
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(0.1)  # make the online and key encoders differ
    key_before = [p.clone() for p in m.key_encoder.parameters()]
    queue_before = m.queue.keys.clone()
    m(_batch(16))
    assert int(m.queue.ptr) == 16
    assert not torch.allclose(m.queue.keys[:16], queue_before[:16]) and torch.equal(m.queue.keys[16:], queue_before[16:])
    for kb, k, o in zip(key_before, m.key_encoder.parameters(), m.encoder.parameters()):
        assert torch.allclose(k, 0.5 * kb + 0.5 * o)


def test_moco_cosine_momentum_schedule(tiny):
    """momentum_schedule=cosine: m rises from `momentum` at step 0 to 1 at the last step
    (1 - (1 - m)(cos(pi k / K) + 1) / 2), and the step's key update uses it."""
    import math

    cfg = load_config("moco", tiny + ["method.queue_size=64", "method.momentum=0.9", "method.momentum_schedule=cosine"])
    m = build_method(cfg)
    K = 40
    for k in (0, 10, 20, 30, 40):
        expected = 1 - 0.1 * (math.cos(math.pi * k / K) + 1) / 2
        assert abs(m.momentum_at(k, K) - expected) < 1e-12
    assert m.momentum_at(0, K) == 0.9 and m.momentum_at(K, K) == 1.0 and abs(m.momentum_at(20, K) - 0.95) < 1e-12
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(0.1)
    key_before = [p.clone() for p in m.key_encoder.parameters()]
    m(_batch(16) | {"step": 20, "total_steps": K})
    for kb, k, o in zip(key_before, m.key_encoder.parameters(), m.encoder.parameters()):
        assert torch.allclose(k, 0.95 * kb + 0.05 * o, atol=1e-6)
    # constant (the default): the configured m at every step
    const = build_method(load_config("moco", tiny + ["method.momentum=0.9"]))
    assert const.momentum_at(20, K) == 0.9


def test_single_process_shuffle_bn_encodes_keys_in_shuffled_sub_batches():
    """Shuffle-BN in one process: each key is computed with the BatchNorm statistics of a random
    sub-batch (the groups of a permutation), not of the whole batch, and comes back in order."""
    import torch.nn as nn

    from contrastlab.methods.moco import shuffled_keys

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten()).train()
    x = torch.rand(12, 3, 5, 5)
    keys = shuffled_keys(net, x, torch.Generator().manual_seed(3), groups=3)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    ref = torch.empty_like(keys)
    for g in range(3):
        idx = perm[4 * g : 4 * (g + 1)]
        with torch.no_grad():
            ref[idx] = net(x[idx])  # BN statistics of these four images only
    assert torch.allclose(keys, ref, atol=1e-6)
    with torch.no_grad():
        whole = net(x)
    assert not torch.allclose(keys, whole, atol=1e-3)  # the sub-batch statistics really differ
    assert torch.allclose(shuffled_keys(net, x, groups=1), whole, atol=1e-6)


def test_moco_shuffle_groups_is_validated(tiny):
    from contrastlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"method.shuffle_groups=0: must be >= 1"):
        load_config("moco", tiny + ["method.shuffle_groups=0"])


def test_channels_last_encoder_computes_the_same_features():
    from contrastlab.nn import Encoder, SmallCNN

    torch.manual_seed(0)
    a = Encoder(SmallCNN(8)).eval()
    b = copy.deepcopy(a).to_channels_last()
    x = torch.rand(4, 3, 32, 32)
    assert torch.allclose(a(x), b(x), atol=1e-5)
    assert b.backbone.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)


def test_per_image_norm_removes_colour_offsets():
    from contrastlab.nn import InputNorm

    x = torch.rand(2, 3, 8, 8)
    shifted = x * torch.tensor([2.0, 0.5, 1.5]).view(1, 3, 1, 1) + torch.tensor([0.1, 0.3, -0.2]).view(1, 3, 1, 1)
    n = InputNorm("per_image")
    assert torch.allclose(n(x), n(shifted), atol=1e-2)
    out = n(x)
    assert torch.allclose(out.mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-5)


@pytest.mark.parametrize("tau_plus,beta", [(0.1, 0.0), (0.1, 1.0), (0.0, 0.5)])
def test_simclr_loss_axis_uses_the_debiased_loss(tiny, tau_plus, beta):
    from contrastlab.losses import debiased_nt_xent, nt_xent

    cfg = load_config("simclr", tiny + [f"method.tau_plus={tau_plus}", f"method.beta={beta}"])
    torch.manual_seed(0)
    m = build_method(cfg)
    v1, v2 = torch.rand(2, 16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loss = m({"views": [v1, v2]})["loss"]
    z1, z2 = m.projector(m.encoder(v1)), m.projector(m.encoder(v2))  # train-mode BN: same outputs
    t = cfg.method["temperature"]
    assert torch.allclose(loss, debiased_nt_xent(z1, z2, t, tau_plus, beta), atol=1e-6)
    assert not torch.allclose(loss, nt_xent(z1, z2, t), atol=1e-4)


@pytest.mark.parametrize("tau_plus,beta", [(0.1, 0.0), (0.1, 1.0)])
def test_moco_loss_axis_uses_the_debiased_queue_loss(tiny, tau_plus, beta):
    from contrastlab.losses import debiased_info_nce, info_nce

    cfg = load_config("moco", tiny + ["method.queue_size=32", "method.symmetric=false", "method.shuffle_groups=1",
                                      f"method.tau_plus={tau_plus}",
                                      f"method.beta={beta}"])  # fmt: skip
    torch.manual_seed(0)
    m = build_method(cfg)
    queue = m.queue.keys.clone()
    v1, v2 = torch.rand(2, 16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loss = m({"views": [v1, v2]})["loss"]
    # step 0: the key branch equals the online one, so the momentum update leaves it unchanged
    q, k = m.projector(m.encoder(v1)), m.projector(m.encoder(v2))
    t = cfg.method["temperature"]
    assert torch.allclose(loss, debiased_info_nce(q, k, queue, t, tau_plus, beta), atol=1e-5)
    assert not torch.allclose(loss, info_nce(q, k, queue, t), atol=1e-4)


@pytest.mark.parametrize("step,active", [(0, True), (4, False)])
def test_moco_mochi_appends_each_querys_synthetic_negatives(tiny, step, active):
    """The loss is InfoNCE with mochi_negatives(q, queue) as per-query extra negatives (drawn
    from the step's generator), and plain InfoNCE before the warm-up ends."""
    from contrastlab.losses import info_nce, mochi_negatives

    warm = 0 if active else 5
    cfg = load_config("moco", tiny + ["method.queue_size=32", "method.symmetric=false", "method.shuffle_groups=1",
                                      "method.mochi_n_hard=8",
                                      "method.mochi_s=4", "method.mochi_s_prime=2", f"method.mochi_warmup_steps={warm}"])  # fmt: skip
    torch.manual_seed(0)
    m = build_method(cfg)
    queue = m.queue.keys.clone()
    v1, v2 = torch.rand(2, 16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loss = m({"views": [v1, v2], "generator": torch.Generator().manual_seed(7), "step": step})["loss"]
    q, k = m.projector(m.encoder(v1)), m.projector(m.encoder(v2))
    t = cfg.method["temperature"]
    extra = mochi_negatives(q, queue, 8, 4, 2, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(loss, info_nce(q, k, queue, t, extra_negatives=extra if active else None), atol=1e-5)
    assert active == (not torch.allclose(loss, info_nce(q, k, queue, t), atol=1e-4))


@pytest.mark.parametrize("epochs,step,spe,active", [(1.5, 14, 10, False), (1.5, 15, 10, True), (2, 0, None, False)])
def test_moco_mochi_warmup_in_epochs(tiny, epochs, step, spe, active):
    """mochi_warmup_epochs: mixing from step round(epochs x steps per epoch) (the trainer passes
    steps_per_epoch), or from that epoch when the caller gives only the epoch."""
    from contrastlab.losses import info_nce

    cfg = load_config("moco", tiny + ["method.queue_size=32", "method.symmetric=false", "method.shuffle_groups=1",
                                      "method.mochi_n_hard=8", "method.mochi_s=4", "method.mochi_s_prime=2",
                                      f"method.mochi_warmup_epochs={epochs}"])  # fmt: skip
    torch.manual_seed(0)
    m = build_method(cfg)
    queue = m.queue.keys.clone()
    v1, v2 = torch.rand(2, 16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    batch = {"views": [v1, v2], "generator": torch.Generator().manual_seed(7), "step": step, "epoch": 1}
    if spe is not None:
        batch["steps_per_epoch"] = spe
    loss = m(batch)["loss"]
    q, k = m.projector(m.encoder(v1)), m.projector(m.encoder(v2))
    plain = info_nce(q, k, queue, cfg.method["temperature"])
    assert active == (not torch.allclose(loss, plain, atol=1e-4))


@pytest.mark.parametrize("symmetric", [True, False])
def test_moco_enqueues_the_keys_of_both_views_when_symmetric(tiny, symmetric):
    """Symmetric MoCo enqueues k1 and k2 (2B keys per step, as the official symmetric demo of
    facebookresearch/moco does); the asymmetric one enqueues k2 (B keys)."""
    import torch.nn.functional as F

    cfg = load_config("moco", tiny + ["method.queue_size=64", f"method.symmetric={str(symmetric).lower()}",
                                      "method.bn=none"])  # fmt: skip
    torch.manual_seed(0)
    m = build_method(cfg)
    before = m.queue.keys.clone()
    v1, v2 = torch.rand(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    m({"views": [v1, v2], "generator": torch.Generator().manual_seed(2), "step": 0})
    with torch.no_grad():  # step 0: the key branch equals the online one after the momentum update
        k1, k2 = (F.normalize(m.key_projector(m.key_encoder(v)), dim=1) for v in (v1, v2))
    n = 16 if symmetric else 8
    assert int(m.queue.ptr) == n
    expected = torch.cat([k1, k2]) if symmetric else k2
    assert torch.allclose(m.queue.keys[:n], expected, atol=1e-5)
    assert torch.equal(m.queue.keys[n:], before[n:])


def test_simclr_mochi_uses_the_batch_as_pool(tiny):
    from contrastlab.losses import mochi_negatives, nt_xent

    cfg = load_config("simclr", tiny + ["method.mochi_n_hard=6", "method.mochi_s=3", "method.mochi_s_prime=1"])
    torch.manual_seed(0)
    m = build_method(cfg)
    v1, v2 = torch.rand(2, 16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loss = m({"views": [v1, v2], "generator": torch.Generator().manual_seed(3)})["loss"]
    z1, z2 = m.projector(m.encoder(v1)), m.projector(m.encoder(v2))
    anchors = torch.nn.functional.normalize(torch.cat([z1, z2]).detach(), dim=1)
    i = torch.arange(32)
    extra = mochi_negatives(anchors, anchors, 6, 3, 1, generator=torch.Generator().manual_seed(3),
                            exclude=torch.stack([i, (i + 16) % 32], dim=1))  # fmt: skip
    t = cfg.method["temperature"]
    assert torch.allclose(loss, nt_xent(z1, z2, t, extra_negatives=extra), atol=1e-5)
    assert not torch.allclose(loss, nt_xent(z1, z2, t), atol=1e-4)


def test_sdclr_branch_masks_wiring_and_epoch_renewal(tiny):
    """SimCLR with the pruned branch: view 1 through the dense model, view 2 through the pruned
    twin; masks cover the encoder's convs at the pruning fraction, are renewed when the epoch
    changes (not within one), and travel in the state dict."""
    from contrastlab.losses import nt_xent
    from contrastlab.nn.pruning import mask_sparsity

    cfg = load_config("simclr", tiny + ["method.pruned_branch=true", "method.prune_fraction=0.7"])
    torch.manual_seed(0)
    m = build_method(cfg)
    v1, v2 = torch.rand(2, 16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loss = m({"views": [v1, v2], "epoch": 0})["loss"]
    masks = m.pruned.encoder_twin.masks()
    n_convs = sum(isinstance(x, torch.nn.Conv2d) for x in m.encoder.modules())
    assert len(masks) == n_convs and abs(mask_sparsity(masks) - 0.7) < 0.01
    z1 = m.projector(m.encoder(v1))
    z2 = m.pruned(m.encoder, m.projector, v2, 0)
    assert torch.allclose(loss, nt_xent(z1, z2, cfg.method["temperature"]), atol=1e-5)
    assert not torch.allclose(z2, m.projector(m.encoder(v2)), atol=1e-3)
    loss.backward()
    assert all(p.grad is not None for p in m.encoder.parameters())
    before = {k: v.clone() for k, v in masks.items()}
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(torch.randn_like(p))
    m({"views": [v1, v2], "epoch": 0})
    assert all(torch.equal(before[k], v) for k, v in m.pruned.encoder_twin.masks().items())
    m({"views": [v1, v2], "epoch": 1})
    assert int(m.pruned.mask_epoch) == 1
    assert any(not torch.equal(before[k], v) for k, v in m.pruned.encoder_twin.masks().items())
    fresh = build_method(cfg)
    fresh.load_state_dict(m.state_dict())  # strict: masks and their epoch are part of the state
    assert int(fresh.pruned.mask_epoch) == 1


def test_moco_with_all_three_axes_runs_and_wires_the_pruned_query(tiny):
    """MoCo + HCL loss + MoCHi + pruned branch (the combination of issue 4) in one config."""
    from contrastlab.losses import debiased_info_nce

    cfg = load_config("moco", tiny + ["method.queue_size=64", "method.tau_plus=0.1", "method.beta=1.0",
                                      "method.mochi_n_hard=16", "method.mochi_s=8", "method.mochi_s_prime=4",
                                      "method.pruned_branch=true", "method.prune_fraction=0.5"])  # fmt: skip
    torch.manual_seed(0)
    m = build_method(cfg)
    out = m(_batch())
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in m.encoder.parameters())
    assert all(p.grad is not None for p in m.pruned.parameters())
    # wiring with mixing off: 0.5 (L(dense q1, k2) + L(pruned q2, k1))
    cfg2 = load_config("moco", tiny + ["method.queue_size=64", "method.tau_plus=0.1", "method.pruned_branch=true",
                                       "method.prune_fraction=0.5", "method.shuffle_groups=1"])  # fmt: skip
    torch.manual_seed(0)
    m2 = build_method(cfg2)
    queue = m2.queue.keys.clone()
    v1, v2 = torch.rand(2, 16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loss = m2({"views": [v1, v2]})["loss"]
    k1, k2 = m2.projector(m2.encoder(v1)), m2.projector(m2.encoder(v2))  # step 0: key = online weights
    q2 = m2.pruned(m2.encoder, m2.projector, v2, 0)
    t = cfg2.method["temperature"]
    ref = 0.5 * (debiased_info_nce(k1, k2, queue, t, 0.1) + debiased_info_nce(q2, k1, queue, t, 0.1))
    assert torch.allclose(loss, ref, atol=1e-5)


def test_pruning_that_empties_a_layer_fails_at_the_start(tiny):
    from contrastlab.errors import ConfigError

    cfg = load_config("simclr", tiny + ["method.pruned_branch=true", "method.prune_fraction=0.99"])
    m = build_method(cfg)
    with pytest.raises(ConfigError, match="prunes every weight of .*lower method.prune_fraction"):
        m(_batch())
