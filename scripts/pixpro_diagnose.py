"""Issue 16: why PixPro's features are no better than random init on the digit scenes (docs/pixpro.md).

    python scripts/pixpro_diagnose.py oracle [--size 48] [--crop 0.5 1.0]
    python scripts/pixpro_diagnose.py features RUN [RUN ...]

``oracle``: the PixPro loss (both directions, best -2) reached by hand-made pixel features that only say
foreground or background, z_i = (f_i, 1 - f_i + 0.001) with f_i the share of map cell i of the view that is
digit (from the scenes' masks), through the PPM with the identity transform (gamma 2) and the consistency
loss, on views drawn as the preset draws them (crop boxes of the 32 px scenes; no flip, as the preset); and
the same features with the digit's identity added (f_i times a one-hot of the scene's digit): the loss is
the same, since it never compares two images (tests/test_pixpro.py::test_the_pixpro_loss_never_compares_two_images).
The library's own functions compute the pairs, the PPM and the loss.

``features``: for trained runs, on 512 test scenes at 32 px (BN in eval mode, as the probes): the pooled
backbone features' mean cosine between scenes and their nearest-class-mean digit accuracy (class means from
the same scenes), and the projector's unit pixel vectors: their per-channel std (about 1/sqrt(d) when they
spread over the sphere, 0 when collapsed), their mean cosine within a scene and the mean cosine between the
scenes' mean vectors.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from contrastlab.config import load_config  # noqa: E402
from contrastlab.data import build_datasets  # noqa: E402
from contrastlab.data.views import crop_boxes, resized_crop  # noqa: E402
from contrastlab.losses import pixel_consistency_loss, positive_pixel_mask  # noqa: E402
from contrastlab.nn import PixelPropagation  # noqa: E402


def oracle(size: int, crop: tuple[float, float], n: int = 2000, seed: int = 0, overrides=()) -> dict:
    cfg = load_config("pixpro", list(overrides))
    train = build_datasets(cfg.data)[0]
    n = min(n, len(train))
    fg = (train.masks[:n] > 0).float()[:, None]
    digit = train.labels["digit"][:n]
    side = fg.shape[-1]
    h = size // 8  # the small CNN's final map: stride 8
    g = torch.Generator().manual_seed(seed)
    no_flip = torch.zeros(n, dtype=torch.bool)

    def view():
        boxes = crop_boxes(n, side, side, crop, tuple(cfg.views.crop_ratio), g, None)
        share = F.adaptive_avg_pool2d(resized_crop(fg, boxes, no_flip, size), h)  # (n, 1, h, h)
        return share, boxes / side

    (f1, b1), (f2, b2) = view(), view()
    pos = positive_pixel_mask(b1, no_flip, b2, no_flip, (h, h), cfg.method["threshold"])

    def loss(z1, z2):
        ppm = PixelPropagation(z1.shape[1], 0, cfg.method["gamma"], True)
        return float(pixel_consistency_loss(ppm(z1), z2, pos) + pixel_consistency_loss(ppm(z2), z1, pos.transpose(1, 2)))

    onehot = F.one_hot(digit, 10).float()[:, :, None, None]
    bg1, bg2 = 1 - f1 + 1e-3, 1 - f2 + 1e-3
    return {"views": f"{size} px, crops {list(crop)}, {h} x {h} maps", "pos_pixels": float(pos.any(2).float().mean()),
            "fg_bg": loss(torch.cat([f1, bg1], 1), torch.cat([f2, bg2], 1)),
            "fg_bg_digit": loss(torch.cat([f1 * onehot, bg1], 1), torch.cat([f2 * onehot, bg2], 1))}  # fmt: skip


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
    z = F.normalize(method.head(fmap), dim=1).flatten(2)  # (n, d, pixels)
    unit = z.transpose(1, 2).reshape(-1, z.shape[1])
    scene = F.normalize(z.mean(2), dim=1)
    off = ~torch.eye(n, dtype=torch.bool)
    return {"run": run, "map": list(fmap.shape[2:]),
            "pooled_cos_between_scenes": float((pooled @ pooled.T)[off].mean()),
            "pooled_nearest_class_mean_acc": float((pooled @ means.T).argmax(1).eq(y).float().mean()),
            "proj_channel_std": float(unit.std(0).mean()), "one_over_sqrt_d": z.shape[1] ** -0.5,
            "proj_cos_within_scene": float(torch.einsum("bdi,bdj->bij", z, z).mean()),
            "proj_cos_between_scenes": float((scene @ scene.T)[off].mean())}  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("oracle")
    o.add_argument("--size", type=int, default=48)
    o.add_argument("--crop", type=float, nargs=2, default=(0.5, 1.0))
    f = sub.add_parser("features")
    f.add_argument("runs", nargs="+")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.cmd == "oracle":
        print(oracle(a.size, tuple(a.crop)))
    else:
        for run in a.runs:
            print(features(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
