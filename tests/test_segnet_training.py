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
    logits = torch.randn(2, 6, 32, 32, generator=g) * 4  # confident logits, so that smoothing changes the loss

    class Fixed(torch.nn.Module):
        def forward(self, x):
            assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 and float(x.max()) <= 1
            return logits

    m.net = Fixed()
    images = torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    masks = torch.randint(0, 6, (2, 32, 32), generator=g)
    masks[:, :4] = 255
    with torch.no_grad():
        got = m({"images": images, "masks": masks})["loss"]
    torch.testing.assert_close(got, smoothed_cross_entropy(logits, masks, 0.1))
    assert not torch.allclose(got, torch.nn.functional.cross_entropy(logits, masks, ignore_index=255))
    with pytest.raises(ConfigError, match="method.label_smoothing"):
        load_config("cwt_stage1", ["method.label_smoothing=1.0"])


# ----------------------------------------------------------------------------- data.seg_aug: image + mask together
def _blocks(b=4, size=32, cell=8, seed=0):
    """Masks of cell x cell blocks of labels 0..4 and uint8 images whose three channels encode the label
    as 40 (label + 1): a pixel's label can be read back from the image."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, 5, (b, size // cell, size // cell), generator=g)
    masks = cells.repeat_interleave(cell, 1).repeat_interleave(cell, 2)
    images = (40 * (masks + 1)).to(torch.uint8)[:, None].repeat(1, 3, 1, 1)
    return images, masks


def test_the_augmented_mask_stays_aligned_with_its_image_and_padding_is_ignore():
    from contrastlab.data.pair_transforms import SegAugConfig, augment_pairs

    c = SegAugConfig(scale=(0.5, 2.0), rotate=(-10.0, 10.0), rotate_p=1.0, hflip=0.5, vflip=0.5)
    images, masks = _blocks(8)
    checked = padded = 0
    for seed in range(6):
        img, msk = augment_pairs(images, masks, c, torch.Generator().manual_seed(seed))
        assert img.shape == images.shape and img.dtype == torch.uint8 and msk.shape == masks.shape
        assert set(msk.unique().tolist()) <= {0, 1, 2, 3, 4, 255}
        # interior pixels (a 5 x 5 neighbourhood of one label in the mask): the image says the same label (within
        # a quarter of a label step: bilinear images and nearest masks meet a few grey levels apart at block edges)
        win = msk.float().unfold(1, 5, 1).unfold(2, 5, 1)  # (B, H-4, W-4, 5, 5)
        centre = msk[:, 2:-2, 2:-2]
        uniform = (win == centre[..., None, None].float()).all(-1).all(-1)
        label_px = uniform & (centre != 255)
        read = img[:, 0, 2:-2, 2:-2].float() / 40 - 1
        assert torch.allclose(read[label_px], centre[label_px].float(), atol=0.25)
        checked += int(label_px.sum())
        # ignored interior pixels are padding or rotated-in corners: the image is 0 there (the official padding)
        pad_px = uniform & (centre == 255)
        assert torch.all(img[:, :, 2:-2, 2:-2].permute(1, 0, 2, 3)[:, pad_px] == 0)
        padded += int(pad_px.sum())
    assert checked > 0.3 * 6 * 8 * 28 * 28 and padded > 100  # the check saw most pixels, and padding


def test_seg_aug_scale_half_is_the_2x2_mean_and_the_even_pixel_padded_with_ignore():
    from contrastlab.data.pair_transforms import SegAugConfig, augment_pairs

    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64)
    masks = torch.randint(0, 4, (2, 16, 16), generator=g)
    img, msk = augment_pairs(images, masks, SegAugConfig(scale=(0.5, 0.5)), torch.Generator().manual_seed(0))
    for b in range(2):
        for y in range(16):
            for x in range(16):
                inside = 4 <= y < 12 and 4 <= x < 12  # 8 x 8 padded by 4 on each side (half before, half after)
                if not inside:
                    assert int(msk[b, y, x]) == 255 and all(float(img[b, k, y, x]) == 0 for k in range(3))
                    continue
                i, j = y - 4, x - 4
                assert int(msk[b, y, x]) == int(masks[b, 2 * i, 2 * j])
                for k in range(3):
                    want = sum(float(images[b, k, 2 * i + u, 2 * j + v]) for u in (0, 1) for v in (0, 1)) / 4
                    assert float(img[b, k, y, x]) == pytest.approx(want, abs=1e-12)


def test_seg_aug_rotation_matches_a_loop_over_output_pixels():
    """angle a about (w / 2, h / 2) (OpenCV's getRotationMatrix2D): the source of output (x, y) is
    (cos a dx - sin a dy + cx, sin a dx + cos a dy + cy); mask: its nearest pixel or 255 outside, image:
    bilinear with 0 outside."""
    from contrastlab.data.pair_transforms import SegAugConfig, augment_pairs

    g = torch.Generator().manual_seed(5)
    h, w = 9, 12
    images = torch.rand(1, 2, h, w, generator=g, dtype=torch.float64)
    masks = torch.randint(0, 4, (1, h, w), generator=g)
    c = SegAugConfig(rotate=(-30.0, 30.0), rotate_p=1.0)
    gen = torch.Generator().manual_seed(11)
    u = torch.rand(1, 7, generator=torch.Generator().manual_seed(11), dtype=torch.float64)[0].tolist()
    angle = -30.0 + 60.0 * u[2]
    img, msk = augment_pairs(images, masks, c, gen)
    a = math.radians(angle)
    cx, cy = w / 2, h / 2
    for y in range(h):
        for x in range(w):
            sx = math.cos(a) * (x - cx) - math.sin(a) * (y - cy) + cx
            sy = math.sin(a) * (x - cx) + math.cos(a) * (y - cy) + cy
            if min(abs(sx % 1 - 0.5), abs(sy % 1 - 0.5)) > 1e-6:  # no rounding tie
                rx, ry = round(sx), round(sy)
                want = int(masks[0, ry, rx]) if 0 <= rx < w and 0 <= ry < h else 255
                assert int(msk[0, y, x]) == want
            x0, y0 = math.floor(sx), math.floor(sy)
            for k in range(2):
                v = 0.0
                for yy, wy in ((y0, 1 - (sy - y0)), (y0 + 1, sy - y0)):
                    for xx, wx in ((x0, 1 - (sx - x0)), (x0 + 1, sx - x0)):
                        if 0 <= yy < h and 0 <= xx < w:
                            v += wy * wx * float(images[0, k, yy, xx])
                assert float(img[0, k, y, x]) == pytest.approx(v, abs=1e-9)


def test_seg_aug_upscale_then_random_crop_matches_a_loop():
    """scale 2 (nearest mask: pixel (i, j) of the 2x image is (i // 2, j // 2)), then the crop back to 16 at offsets
    floor(u * 17) of the image's sixth and seventh uniforms."""
    from contrastlab.data.pair_transforms import SegAugConfig, augment_pairs

    g = torch.Generator().manual_seed(4)
    masks = torch.randint(0, 5, (6, 16, 16), generator=g)
    images = masks[:, None].repeat(1, 3, 1, 1).to(torch.uint8)
    u = torch.rand(6, 7, generator=torch.Generator().manual_seed(9), dtype=torch.float64).tolist()
    _, msk = augment_pairs(images, masks, SegAugConfig(scale=(2.0, 2.0)), torch.Generator().manual_seed(9))
    offsets = set()
    for b in range(6):
        y0, x0 = int(u[b][5] * 17), int(u[b][6] * 17)
        offsets.add((y0, x0))
        for y in range(16):
            for x in range(16):
                assert int(msk[b, y, x]) == int(masks[b, (y0 + y) // 2, (x0 + x) // 2])
    assert len(offsets) > 1


def test_seg_aug_flips_are_exact_and_draws_are_seeded():
    from contrastlab.data.pair_transforms import SegAugConfig, augment_pairs

    images, masks = _blocks(3, seed=1)
    img, msk = augment_pairs(images, masks, SegAugConfig(hflip=1.0, vflip=1.0), torch.Generator().manual_seed(0))
    assert torch.equal(img, images.flip(-1).flip(-2)) and torch.equal(msk, masks.flip(-1).flip(-2))
    off = SegAugConfig()
    same = augment_pairs(images, masks, off, torch.Generator().manual_seed(0))
    assert same[0] is images and same[1] is masks  # off: untouched, nothing drawn
    c = SegAugConfig(scale=(0.5, 2.0), rotate=(-10.0, 10.0), hflip=0.5, vflip=0.5)
    a = augment_pairs(images, masks, c, torch.Generator().manual_seed(7))
    b = augment_pairs(images, masks, c, torch.Generator().manual_seed(7))
    d = augment_pairs(images, masks, c, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], d[1])


def test_stage1_draws_augmented_pairs_as_a_function_of_the_step_and_trains(tmp_path, capsys):
    import csv

    from contrastlab.cli import main
    from contrastlab.data import build_datasets
    from contrastlab.methods import build_method

    aug = ["data.seg_aug.scale=[0.5,2.0]", "data.seg_aug.rotate=[-10,10]", "data.seg_aug.hflip=0.5",
           "data.seg_aug.vflip=0.5"]  # fmt: skip
    tiny = ["data.n_train=200", "data.n_test=100", "model.width=4", "method.bottleneck_dim=8", "optim.batch_size=8",
            "trainer.threads=1", "trainer.log_every=1", "trainer.knn_every=0"]  # fmt: skip
    cfg = load_config("cwt_stage1", tiny + aug)
    train, _ = build_datasets(cfg.data)
    m = build_method(cfg)
    m.setup_data(train)
    plain = build_method(load_config("cwt_stage1", tiny))
    plain.setup_data(train)
    a, b, c = m.draw(3, 8), m.draw(3, 8), m.draw(4, 8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    raw = plain.draw(3, 8)
    assert not torch.equal(a[1], raw[1]) and a[0].shape == raw[0].shape  # the same images, augmented
    from contrastlab.data.pair_transforms import augment_pairs

    g = torch.Generator().manual_seed((0 * 1_000_003 + 3) * 2 + 1)  # the documented seed: (episode_seed, step)
    want = augment_pairs(raw[0], raw[1], cfg.data.seg_aug, g)
    assert torch.equal(a[0], want[0]) and torch.equal(a[1], want[1])
    assert (a[1] == 255).any()
    with pytest.raises(ConfigError, match=r"data.seg_aug.scale=\[2.0, 0.5\]"):
        load_config("cwt_stage1", ["data.seg_aug.scale=[2.0,0.5]"])
    out = tmp_path / "run"
    assert main(["train", "cwt_stage1", *tiny, *aug, "method.label_smoothing=0.1", "trainer.max_steps=3",
                 f"trainer.out_dir={out}"]) == 0, capsys.readouterr().err[-2000:]  # fmt: skip
    rows = [r for r in csv.DictReader((out / "metrics.csv").open()) if r.get("loss")]
    assert len(rows) == 3 and all(math.isfinite(float(r["loss"])) for r in rows)


def test_stage2_augments_every_episode_image_with_its_mask():
    from contrastlab.data import build_datasets
    from contrastlab.methods import build_method
    from contrastlab.methods.episodic import episode_batch

    tiny = ["data.n_train=200", "data.n_test=100", "model.width=4", "method.bottleneck_dim=8", "method.adapt_steps=1",
            "optim.batch_size=2", "method.stage1="]  # fmt: skip
    cfg = load_config("cwt", tiny + ["data.seg_aug.hflip=1.0", "method.shots=2"])
    train, _ = build_datasets(cfg.data)
    m = build_method(cfg)
    m.setup_data(train)
    batch = {"images": torch.zeros(2, 3, 32, 32), "step": 5}
    raw = episode_batch(m.episodes, batch, "cwt")
    seen = {}

    def spy(support_images, support_masks, query_image, generator=None):
        seen.update(s=support_images, sm=support_masks, q=query_image)
        return torch.zeros(2, 2, 32, 32, requires_grad=True)

    m.query_logits = spy
    m(batch)
    assert seen["s"].shape == raw["support_images"].shape == (2, 2, 3, 32, 32)
    assert torch.equal(seen["s"], raw["support_images"].flip(-1)) and torch.equal(seen["sm"], raw["support_masks"].flip(-1))
    assert torch.equal(seen["q"], raw["query_image"].flip(-1))
    # random draws: each image its own (some flipped, some not), a function of the step
    m.seg_aug = load_config("cwt", tiny + ["data.seg_aug.hflip=0.5"]).data.seg_aug
    a, b = m.augment_episodes(raw, 5), m.augment_episodes(raw, 5)
    assert torch.equal(a["support_masks"], b["support_masks"]) and torch.equal(a["query_image"], b["query_image"])
    flipped = [bool(torch.equal(x, y.flip(-1))) and not torch.equal(x, y)
               for x, y in zip(torch.cat([a["support_images"].flatten(0, 1), a["query_image"]]),
                               torch.cat([raw["support_images"].flatten(0, 1), raw["query_image"]]))]  # fmt: skip
    assert 0 < sum(flipped) < len(flipped)
    from contrastlab.data.pair_transforms import augment_pairs

    g = torch.Generator().manual_seed((0 * 1_000_003 + 5) * 2 + 1)  # the documented seed: (episode_seed, step)
    want, _ = augment_pairs(torch.cat([raw["support_images"].flatten(0, 1), raw["query_image"]]),
                            torch.cat([raw["support_masks"].flatten(0, 1), raw["query_mask"]]), m.seg_aug, g)  # fmt: skip
    assert torch.equal(a["query_image"], want[4:]) and torch.equal(a["support_images"].flatten(0, 1), want[:4])


# ----------------------------------------------------------------------------- data.resize=pad (the official letterbox)
def test_letterbox_size_is_the_official_resize():
    from contrastlab.data.fewshot_sets import letterbox_size

    # by hand from RePRI src/dataset/transform.py:88-106: the longer side to the size, the other int(side * ratio),
    # each cut to a multiple of 8
    assert letterbox_size(20, 40, 17) == (8, 16)  # int(20 * 17 / 40) = 8; 17 -> 16
    assert letterbox_size(500, 375, 417) == (416, 312)  # int(312.75) = 312
    assert letterbox_size(375, 500, 473) == (352, 472)  # int(354.75) = 354 -> 352
    assert letterbox_size(64, 64, 64) == (64, 64)


def test_pad_resize_letterboxes_pascal_pairs_with_ignore(tmp_path):
    import numpy as np
    from PIL import Image

    from contrastlab.data import build_datasets

    root = tmp_path / "pascal"
    lines = []
    for j, c in enumerate((1, 6, 11, 16, 1, 6)):
        m = np.zeros((20, 40), dtype=np.uint8)
        m[:, :20] = c  # the left half
        name = f"2008_{j:04d}"
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        (root / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((20, 40, 3), 200, dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        Image.fromarray(m, mode="L").save(root / "SegmentationClassAug" / f"{name}.png")
        lines.append(f"JPEGImages/{name}.jpg SegmentationClassAug/{name}.png")
    (root / "lists").mkdir()
    (root / "lists" / "trainaug.txt").write_text("\n".join(lines) + "\n")  # the recipe's data.train_dir
    (root / "lists" / "val.txt").write_text("\n".join(lines) + "\n")
    cfg = load_config("cwt_stage1/pascal5i", [f"data.root={root}", "data.image_size=17"])  # the recipe: resize pad
    train, _ = build_datasets(cfg.data)
    assert train.images.shape == (6, 3, 17, 17) and train.masks.shape == (6, 17, 17)
    assert torch.all(train.masks[:, 8:] == 255) and torch.all(train.masks[:, :, 16:] == 255)  # padding: ignore
    assert torch.all(train.images[:, :, 8:] == 0) and torch.all(train.images[:, :, :, 16:] == 0)  # padding: 0
    assert torch.all((train.images[:, :, :8, :16].int() - 200).abs() <= 3)  # the content, aspect ratio kept
    for j, c in enumerate((1, 6, 11, 16, 1, 6)):
        assert torch.all(train.masks[j, :8, :8] == c) and torch.all(train.masks[j, :8, 8:16] == 0)
    stretched, _ = build_datasets(load_config("cwt_stage1/pascal5i", [f"data.root={root}", "data.image_size=17",
                                                                  "data.resize=stretch"]).data)
    assert not (stretched.masks == 255).any()
    with pytest.raises(ConfigError, match="data.resize=pad applies to data.name=pascal5i or coco20i"):
        load_config("cwt_stage1", ["data.resize=pad"])
