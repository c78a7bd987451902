"""The contenders shared by the benchmarks: a recipe's real training step through the library, and
a bare PyTorch SimCLR step that does the same work by hand."""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F


def make_step(recipe: str, images, overrides=(), channels_last: bool = True, accelerator: str = "cpu",
              precision: str = "32-true", return_model: bool = False):  # fmt: skip
    """The real training step (`train_step` through Fabric) of a recipe on ``images()`` batches,
    views included; ``step``/``epoch`` are past every warm-up. ``images()`` must return uint8
    images on the accelerator. With ``return_model`` also returns the Fabric-wrapped method."""
    from contrastlab.config import load_config
    from contrastlab.engine.setup import build_setup, make_fabric
    from contrastlab.engine.step import train_step

    cfg = load_config(recipe, ["trainer.max_steps=1000000", "data.long_tail_ratio=null", "seed=0", "trainer.threads=null",
                               f"trainer.accelerator={accelerator}", "trainer.devices=1", f"trainer.precision={precision}",
                               f"trainer.channels_last={str(channels_last).lower()}", *overrides])  # fmt: skip
    fabric = make_fabric(cfg)
    s = build_setup(cfg, fabric, datasets=(None, None))  # the trainer's set-up; the images are the caller's
    model, opt, sched = s.model, s.optimizer, s.scheduler
    model.train()
    g = torch.Generator(device=fabric.device)
    k = [0]

    def step():
        k[0] += 1
        g.manual_seed(k[0])
        train_step(model, opt, sched, fabric, {"images": images(), "generator": g, "step": 10_000, "epoch": 0})

    return (step, model) if return_model else step


def resnet18_cifar() -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem (3x3/1 conv, no max-pool), no classifier."""
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


def bare_simclr_step(backbone: nn.Module, feat_dim: int, images, views, mean, std, *, lr: float, momentum: float = 0.9,
                     weight_decay: float = 1e-6, temperature: float = 0.5, proj_hidden: int = 2048, proj_dim: int = 128,
                     device="cpu", bf16: bool = False, channels_last: bool = True, seed: int = 0):  # fmt: skip
    """A SimCLR step written by hand, doing the work of the library's step: two views of the
    uint8 batch ``images()`` by ``views(x, generator)`` (the augmentation both share), input
    standardisation ``(x - mean) / std``, one forward pass of B per view through ``backbone`` and
    a Linear-BN-ReLU-Linear head, NT-Xent over the 2B views in float32, SGD with momentum and
    weight decay on the weights (not on biases and norm parameters, as the library's default
    ``optim.exclude_bias_bn``); under bf16 autocast when ``bf16`` (views, passes and loss, as
    Fabric's ``bf16-mixed`` wraps the method's forward). Left out, and so counted as the library's
    overhead: the learning-rate schedule's step, the finite-loss check, Fabric's wrappers."""
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Linear(feat_dim, proj_hidden, bias=False), nn.BatchNorm1d(proj_hidden), nn.ReLU(inplace=True),
                         nn.Linear(proj_hidden, proj_dim))  # fmt: skip
    backbone, head = backbone.to(device), head.to(device)
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    params = [p for m in (backbone, head) for p in m.parameters()]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]  # fmt: skip
    opt = torch.optim.SGD(groups, lr=lr, momentum=momentum)
    mean = torch.as_tensor(mean, device=device).view(1, 3, 1, 1)
    std = torch.as_tensor(std, device=device).view(1, 3, 1, 1)
    backbone.train(), head.train()
    dev_type = torch.device(device).type
    g = torch.Generator(device=device)
    k = [0]

    def encode(v):
        v = (v - mean) / std
        if channels_last:
            v = v.contiguous(memory_format=torch.channels_last)
        return head(backbone(v))

    def step():
        k[0] += 1
        g.manual_seed(k[0])
        x = images()
        ctx = torch.autocast(dev_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            v1, v2 = views(x, g), views(x, g)
            z1, z2 = encode(v1), encode(v2)  # one pass of B per view, as the library's SimCLR
            z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
            n = x.shape[0]
            sim = z @ z.t() / temperature
            sim.fill_diagonal_(float("-inf"))
            target = torch.cat([torch.arange(n, 2 * n, device=z.device), torch.arange(n, device=z.device)])
            loss = F.cross_entropy(sim, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step
