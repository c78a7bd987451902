"""Issue 16: why PixPro's features are no better than random init on the digit scenes (docs/pixpro.md).

    python scripts/pixpro_diagnose.py RUN [RUN ...]

RUN: PixPro runs, or runs of other methods (their backbone only, for comparison).

For each run, on 512 test scenes at 32 px (BN in eval mode, as the probes): the pooled backbone
features' mean cosine between scenes and their nearest-class-mean digit accuracy (class means from the
same scenes); the backbone map's std between scenes (per channel and position) and within a scene (per
scene and channel, over the positions), each averaged; and for PixPro, the projector's unit pixel vectors:
their per-channel std (about 1/sqrt(d) when they spread over the sphere, 0 when collapsed), their mean
cosine within a scene and the mean cosine between the scenes' mean vectors.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from contrastlab.data import build_datasets  # noqa: E402
from contrastlab.nn import ConvMLPHead  # noqa: E402


@torch.no_grad()
def features(run: str, n: int = 512) -> dict:
    from contrastlab.eval.run import load_run

    cfg, method, _ = load_run(run, [])
    method.eval()
    test = build_datasets(cfg.data)[1]
    x, y = test.images[:n].float().div(255), test.labels["digit"][:n]
    fmap = method.encoder.forward_features(x)
    pooled = F.normalize(method.encoder(x), dim=1)
    means = F.normalize(torch.stack([pooled[y == k].mean(0) for k in range(10)]), dim=1)
    off = ~torch.eye(n, dtype=torch.bool)
    out = {"run": run, "map": list(fmap.shape[2:]),
           "pooled_cos_between_scenes": float((pooled @ pooled.T)[off].mean()),
           "pooled_nearest_class_mean_acc": float((pooled @ means.T).argmax(1).eq(y).float().mean()),
           "backbone_std_between_scenes": float(fmap.std(0).mean()),
           "backbone_std_within_scene": float(fmap.flatten(2).std(2).mean())}  # fmt: skip
    if isinstance(getattr(method, "head", None), ConvMLPHead):  # PixPro's per-pixel projector (not other methods')
        z = F.normalize(method.head(fmap), dim=1).flatten(2)  # (n, d, pixels)
        unit = z.transpose(1, 2).reshape(-1, z.shape[1])
        scene = F.normalize(z.mean(2), dim=1)
        out.update({"proj_channel_std": float(unit.std(0).mean()), "one_over_sqrt_d": z.shape[1] ** -0.5,
                    "proj_cos_within_scene": float(torch.einsum("bdi,bdj->bij", z, z).mean()),
                    "proj_cos_between_scenes": float((scene @ scene.T)[off].mean())})  # fmt: skip
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders or checkpoints of PixPro runs")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    for run in a.runs:
        print(features(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
