"""SimCLR training step on the CPU: contrastlab vs a bare PyTorch loop vs lightly.

Setup (issue 3): ResNet-18 with the CIFAR stem, batch 128 of 32 px images, 2-layer projection
MLP 512-2048-128, NT-Xent at t=0.5, SGD (momentum 0.9). All three get the same pre-made pair of
views every step, so the ratio is the cost of the training step itself (model, loss, backward,
optimiser, and for contrastlab its Fabric wrapper, method module and schedule); the augmentation
is benchmarked on its own in views.py.

- bare: a hand-written loop, torchvision ResNet-18, nn.Sequential head, NT-Xent as a
  cross-entropy over the 2B x 2B similarity matrix, torch.optim.SGD; nothing else.
- contrastlab: the real training step (`contrastlab.engine.trainer.train_step`) of the SimCLR
  method built from the `simclr/cifar10` recipe, set up through Lightning Fabric.
- lightly: the same backbone with lightly's `SimCLRProjectionHead` and `NTXentLoss` (its head
  also has a BatchNorm after the last layer).

Second case, `--case digits`: the CPU preset of the embedded data set (SmallCNN 16-32-64-64 x2,
per-image standardisation, the preset's batch and temperature (128, 0.5), Adam, channels_last). Here the step includes
making the two batched views, as in training: contrastlab's step (`train_step` on a batch of
uint8 images) against a bare loop that calls the same `BatchedViews` and a plain nn.Sequential
CNN of the same shape; and contrastlab with channels_last off (the speed option's effect). This is the "framework vs single-file script" comparison at the preset.

Prints per-contender medians and the median of per-round ratios; the last line is JSON.
Usage: python benchmarks/simclr_step.py [--case resnet18|digits|both] [--rounds 7] [--reps 3] [--out F]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _steps import resnet18_cifar  # noqa: E402
from _timing import emit, environment, interleaved, median_ratio  # noqa: E402

LR, MOMENTUM, WD, T = 0.3, 0.9, 1e-6, 0.5


def bare(views):
    torch.manual_seed(0)
    backbone = resnet18_cifar()
    head = nn.Sequential(nn.Linear(512, 2048, bias=False), nn.BatchNorm1d(2048), nn.ReLU(inplace=True), nn.Linear(2048, 128))
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WD)
    backbone.train(), head.train()

    def step():
        v1, v2 = views()
        z1 = head(backbone((v1 - mean) / std))
        z2 = head(backbone((v2 - mean) / std))
        z = F.normalize(torch.cat([z1, z2]), dim=1)
        n = z1.shape[0]
        sim = z @ z.t() / T
        sim.fill_diagonal_(float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
        loss = F.cross_entropy(sim, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def contrastlab(views, batch, channels_last=False):
    from contrastlab.config import load_config
    from contrastlab.engine.setup import build_setup, make_fabric
    from contrastlab.engine.step import train_step

    cfg = load_config("simclr/cifar10", [
        "model.backbone=resnet18", "model.cifar_stem=true", "model.proj_hidden=2048", "model.proj_dim=128",
        "model.proj_layers=2", "model.norm=cifar", f"method.temperature={T}", "optim.name=sgd", f"optim.lr={LR}",
        "optim.scale_lr=false", f"optim.momentum={MOMENTUM}", f"optim.weight_decay={WD}", f"optim.batch_size={batch}",
        "optim.warmup_steps=0", "trainer.accelerator=cpu", "trainer.max_steps=1000000", "trainer.devices=1",
        "trainer.precision=32-true", "trainer.threads=null", f"trainer.channels_last={str(channels_last).lower()}", "seed=0",
    ])  # fmt: skip
    fabric = make_fabric(cfg)
    s = build_setup(cfg, fabric, datasets=(None, None))  # the trainer's set-up; the views are made here
    model, opt, sched = s.model, s.optimizer, s.scheduler
    model.train()

    def step():
        v1, v2 = views()
        train_step(model, opt, sched, fabric, {"views": [v1, v2]})

    return step


def lightly(views):
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    torch.manual_seed(0)
    backbone = resnet18_cifar()
    head = SimCLRProjectionHead(512, 2048, 128)
    criterion = NTXentLoss(temperature=T)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    opt = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    backbone.train(), head.train()

    def step():
        v1, v2 = views()
        loss = criterion(head(backbone((v1 - mean) / std)), head(backbone((v2 - mean) / std)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bare_digits(images, vcfg, temperature: float = 0.5):
    from contrastlab.data.views import BatchedViews

    torch.manual_seed(0)

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    layers, cin = [], 3
    for i, w in enumerate((16, 32, 64, 64)):
        if i:
            layers.append(nn.MaxPool2d(2))
        layers += block(cin, w) + block(w, w)
        cin = w
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()).to(memory_format=torch.channels_last)
    head = nn.Sequential(nn.Linear(64, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Linear(256, 128))
    opt = torch.optim.Adam(list(net.parameters()) + list(head.parameters()), lr=2e-3, weight_decay=1e-6)
    views = BatchedViews(vcfg, 32)
    g = torch.Generator()
    k = [0]

    def enc(x):
        x = (x - x.mean((2, 3), keepdim=True)) / (x.std((2, 3), keepdim=True) + 1e-3)
        return head(net(x.contiguous(memory_format=torch.channels_last)))

    def step():
        k[0] += 1
        g.manual_seed(k[0])
        x = images()
        v1, v2 = views(x, g), views(x, g)
        z = F.normalize(torch.cat([enc(v1), enc(v2)]), dim=1)  # one pass per view (faster on CPUs)
        n = x.shape[0]
        sim = z @ z.t() / temperature
        sim.fill_diagonal_(float("-inf"))
        loss = F.cross_entropy(sim, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def run_resnet18(a, res):
    g = torch.Generator().manual_seed(0)
    pool = [torch.rand(a.batch, 3, 32, 32, generator=g) for _ in range(4)]
    k = [0]

    def views():  # the same pairs for everyone, cycling through a few batches
        k[0] += 1
        return pool[k[0] % 4], pool[(k[0] + 1) % 4]

    contenders = {"bare": bare(views), "contrastlab": contrastlab(views, a.batch)}
    if not a.no_lightly:
        contenders["lightly"] = lightly(views)
    times = interleaved(contenders, a.rounds, a.reps)
    r = {"batch": a.batch, "median_s": {n: round(statistics.median(t), 4) for n, t in times.items()},
         "img_per_s": {n: round(2 * a.batch / statistics.median(t), 1) for n, t in times.items()},
         "ratio_contrastlab_vs_bare": round(median_ratio(times, "contrastlab", "bare"), 4)}  # fmt: skip
    if "lightly" in times:
        r["ratio_contrastlab_vs_lightly"] = round(median_ratio(times, "contrastlab", "lightly"), 4)
    res["resnet18"] = r
    print(f"ResNet-18 CIFAR stem, batch {a.batch}, pre-made views:")
    for n, t in times.items():
        print(f"  {n:12s} median {statistics.median(t) * 1000:8.1f} ms/step  ({2 * a.batch / statistics.median(t):7.1f} img/s)")
    print(f"  contrastlab / bare    = {r['ratio_contrastlab_vs_bare']:.3f} (median of per-round ratios)")
    if "ratio_contrastlab_vs_lightly" in r:
        print(f"  contrastlab / lightly = {r['ratio_contrastlab_vs_lightly']:.3f}")


def run_digits(a, res):
    from contrastlab.data import digit_scenes

    from _steps import make_step
    from contrastlab.config import load_config

    preset = load_config("simclr")  # the digits preset as it is now: its batch and temperature
    b, t = preset.optim.batch_size, preset.method["temperature"]
    pool = digit_scenes()[0].images[: 8 * b]
    k = [0]

    def images():
        k[0] += 1
        return pool[(k[0] % 8) * b : (k[0] % 8 + 1) * b]

    contenders = {"bare": bare_digits(images, preset.views, t), "contrastlab": make_step("simclr", images),
                  "contrastlab_nchw": make_step("simclr", images, channels_last=False)}  # fmt: skip
    times = interleaved(contenders, a.rounds, a.reps)
    res["digits"] = {"batch": b, "temperature": t, "median_s": {n: round(statistics.median(t), 4) for n, t in times.items()},
                     "img_per_s": {n: round(2 * b / statistics.median(t), 1) for n, t in times.items()},
                     "ratio_contrastlab_vs_bare": round(median_ratio(times, "contrastlab", "bare"), 4),
                     "ratio_nchw_vs_channels_last": round(median_ratio(times, "contrastlab_nchw", "contrastlab"), 4)}  # fmt: skip
    print(f"digits preset (SmallCNN 16x2, batch {b}, views included):")
    for n, t in times.items():
        print(f"  {n:12s} median {statistics.median(t) * 1000:8.1f} ms/step")
    print(f"  contrastlab / bare = {res['digits']['ratio_contrastlab_vs_bare']:.3f}")
    print(f"  channels_last off / on = {res['digits']['ratio_nchw_vs_channels_last']:.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=["resnet18", "digits", "both"], default="both")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-lightly", action="store_true", help="skip the peer (lightly not installed)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    res = {"benchmark": "simclr_step", "rounds": a.rounds, "reps": a.reps, **environment(seeds={"config": 0, "weights": 0, "data": 0, "views": "step k: generator seed k"})}
    if a.case in ("resnet18", "both"):
        run_resnet18(a, res)
    if a.case in ("digits", "both"):
        run_digits(a, res)
    emit(res, a.out)


if __name__ == "__main__":
    main()
