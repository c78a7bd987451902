"""Augmentation throughput: contrastlab's batched views vs per-image torchvision transforms.

Both draw the same SimCLR family (random resized crop, flip, colour jitter, grayscale, and blur
at 224 px) for a batch of uint8 images: `BatchedViews` on the whole batch tensor at once,
`torchvision_views` (torchvision.transforms.v2) image by image as a data-loader worker would.
Sizes: 256 CIFAR-size images (32 px) and 64 ImageNet-size images (256 px in, 224 px out).
Prints medians, images/s and the median per-round speed-up; the last line is JSON.

This is call throughput of the augmentation alone, both in one process: not a training-speed gain.
A per-image pipeline normally runs in DataLoader workers, beside the training step; end_to_end.py
measures training throughput (data + views + step) of both paths that way.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import emit, environment, interleaved, median_ratio  # noqa: E402

from contrastlab.data.views import BatchedViews, ViewConfig, torchvision_views  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    res = {"benchmark": "views", "rounds": a.rounds, "reps": a.reps, **environment(seeds={"images": 0, "views": 0}), "cases": {}}
    for name, n, size, out, blur in (("cifar_32px", 256, 32, 32, 0.0), ("imagenet_224px", 64, 256, 224, 0.5)):
        cfg = ViewConfig(blur_p=blur)
        x = (torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
        batched = BatchedViews(cfg, out)
        per_image = torchvision_views(cfg, out)
        g = torch.Generator().manual_seed(0)
        contenders = {
            "batched": lambda: batched(x, g),
            "torchvision": lambda: torch.stack([per_image(img) for img in x]),
        }
        times = interleaved(contenders, a.rounds, a.reps, warmup=1)
        case = {"batch": n, "in_px": size, "out_px": out, "blur_p": blur,
                "img_per_s": {k: round(n / statistics.median(t), 1) for k, t in times.items()},
                "speedup_batched_vs_torchvision": round(median_ratio(times, "torchvision", "batched"), 2)}  # fmt: skip
        res["cases"][name] = case
        print(f"{name:15s} batched {case['img_per_s']['batched']:9.1f} img/s   torchvision "
              f"{case['img_per_s']['torchvision']:9.1f} img/s   speed-up x{case['speedup_batched_vs_torchvision']}")
    emit(res, a.out)


if __name__ == "__main__":
    main()
