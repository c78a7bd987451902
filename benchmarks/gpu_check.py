"""GPU check: real training steps on CUDA through the library's own code paths.

Run on a machine with a GPU (under 5 minutes):

    python benchmarks/gpu_check.py --out results/gpu_check.json

Measures, on synthetic 32 px data (no download):
- SimCLR, ResNet-18 with the CIFAR stem, batch 512, bf16 autocast via Fabric: images/s
  (median over timed windows) and peak GPU memory; the same step as a bare PyTorch loop
  (same model, loss and optimiser) for the overhead ratio;
- MoCo v2 (queue 4096, shuffle-BN path, symmetric off): images/s and peak memory;
- an end-to-end ``fit`` of the SimCLR digits preset on CUDA with bf16 (trainer, kNN monitor,
  checkpoint), and its kNN accuracy.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


DEV = "cuda"


def _sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def _timed(step, n_warm, n_windows, steps_per_window, batch):
    for _ in range(n_warm):
        step()
    _sync()
    rates = []
    for _ in range(n_windows):
        t = time.perf_counter()
        for _ in range(steps_per_window):
            step()
        _sync()
        rates.append(steps_per_window * batch / (time.perf_counter() - t))
    return statistics.median(rates), rates


def library_step(recipe, overrides, batch):
    from contrastlab.config import load_config
    from contrastlab.engine.optim import build_optimizer
    from contrastlab.engine.trainer import _fabric_class
    from contrastlab.methods import build_method

    cfg = load_config(recipe, overrides + [f"optim.batch_size={batch}"])
    fabric = _fabric_class()(accelerator=DEV, devices=1, precision="bf16-mixed")
    torch.manual_seed(0)
    method = build_method(cfg).to(memory_format=torch.channels_last)
    opt = build_optimizer(method, cfg.optim, batch)
    model, opt = fabric.setup(method, opt)
    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=DEV)
    g = torch.Generator(device=DEV).manual_seed(0)

    def step():
        out = model({"images": x, "generator": g})
        opt.zero_grad(set_to_none=True)
        fabric.backward(out["loss"])
        opt.step()

    return step


def bare_simclr_step(batch):
    """The floor: the same ResNet-18 + head + NT-Xent + LARS-free SGD step written by hand."""
    import torch.nn as nn
    import torch.nn.functional as F
    import torchvision

    net = torchvision.models.resnet18(num_classes=128)
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Sequential(nn.Linear(512, 2048, bias=False), nn.BatchNorm1d(2048), nn.ReLU(), nn.Linear(2048, 128))
    net = net.to(DEV).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x1 = torch.rand(batch, 3, 32, 32, device=DEV)
    x2 = torch.rand(batch, 3, 32, 32, device=DEV)

    def step():
        with torch.autocast(DEV, dtype=torch.bfloat16):
            z = net(torch.cat([x1, x2]))
        z = F.normalize(z.float(), dim=1)
        s = z @ z.T / 0.5
        s.fill_diagonal_(float("-inf"))
        n = batch
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(DEV)
        loss = F.cross_entropy(s, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/gpu_check.json")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--dry-run", action="store_true", help="tiny CPU run to check the script itself")
    args = ap.parse_args()
    global DEV
    if args.dry_run:
        DEV = "cpu"
        args.batch = 8
    elif not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device")
    name = torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu"
    res = {"device": name, "torch": torch.__version__, "batch": args.batch}
    mem = (lambda: round(torch.cuda.max_memory_allocated() / 2**30, 3)) if DEV == "cuda" else (lambda: None)
    reset = torch.cuda.reset_peak_memory_stats if DEV == "cuda" else (lambda: None)
    torch.backends.cudnn.benchmark = True
    common = ["model.backbone=resnet18", "model.cifar_stem=true", "model.norm=cifar", "model.proj_hidden=2048",
              f"trainer.accelerator={DEV}", "views.blur_p=0.0", "optim.name=sgd"]  # fmt: skip

    reset()
    ips, rates = _timed(library_step("simclr/cifar10", common, args.batch), 5, 5, 10, args.batch)
    res["simclr_resnet18_bf16_img_per_s"] = round(ips, 1)
    res["simclr_peak_mem_gib"] = mem()
    reset()
    ips_bare, _ = _timed(bare_simclr_step(args.batch), 5, 5, 10, args.batch)
    res["bare_loop_img_per_s"] = round(ips_bare, 1)
    res["bare_loop_peak_mem_gib"] = mem()
    res["simclr_vs_bare_speed_ratio"] = round(ips / ips_bare, 3)

    reset()
    mo = ["method.queue_size=4096", "method.momentum=0.99"]
    ips_m, _ = _timed(library_step("moco/cifar10", common + mo, args.batch), 5, 5, 10, args.batch)
    res["moco_v2_resnet18_bf16_img_per_s"] = round(ips_m, 1)
    res["moco_peak_mem_gib"] = mem()

    from contrastlab.config import load_config
    from contrastlab.engine.trainer import fit

    with tempfile.TemporaryDirectory() as d:
        t = time.time()
        r = fit(load_config("simclr", [f"trainer.accelerator={DEV}", "trainer.precision=bf16-mixed", "trainer.progress=false",
                                       f"trainer.max_steps={3 if args.dry_run else 800}", "trainer.knn_every=100",
                                       f"trainer.out_dir={d}"]))  # fmt: skip
        res["digits_simclr_fit_s"] = round(time.time() - t, 1)
        res["digits_simclr_fit_knn_top1"] = r.metrics.get("knn_top1")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
