"""Batched views against independent per-image computations."""
import math

import torch
import torch.nn.functional as F

from contrastlab.data.views import BatchedViews, ViewConfig, apply_color, color_matrices, crop_boxes, gaussian_blur, resized_crop, torchvision_views


def test_crop_boxes_respect_scale_ratio_and_bounds():
    g = torch.Generator().manual_seed(0)
    boxes = crop_boxes(2000, 32, 48, (0.2, 0.9), (0.75, 4 / 3), g, "cpu")
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all() and (boxes[:, 2] <= 48).all() and (boxes[:, 3] <= 32).all()
    area = w * h / (32 * 48)
    # rounding to whole pixels moves area and ratio a little
    assert area.min() > 0.17 and area.max() < 0.95
    assert (w / h).min() > 0.7 and (w / h).max() < 1.4


def test_resized_crop_matches_per_image_crop_and_flip():
    x = torch.rand(3, 3, 20, 20)
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [4.0, 2.0, 14.0, 12.0], [5.0, 5.0, 15.0, 15.0]])
    flip = torch.tensor([False, False, True])
    out = resized_crop(x, boxes, flip, 10)
    assert torch.allclose(out[0], F.interpolate(x[:1], size=10, mode="bilinear", align_corners=False)[0], atol=1e-5)
    # a 10x10 crop resized to 10x10 is the crop itself (pixel centres coincide)
    assert torch.allclose(out[1], x[1, :, 2:12, 4:14], atol=1e-5)
    assert torch.allclose(out[2], x[2, :, 5:15, 5:15].flip(-1), atol=1e-5)


def _sequential_color(x, b, c, s, h_rad, gray):
    """Brightness, contrast, saturation, hue (YIQ rotation), grayscale one after the other, per image."""
    luma = torch.tensor([0.299, 0.587, 0.114])
    y = x * b
    mean = (luma[:, None, None] * x).sum(0).mean() * b
    y = c * y + (1 - c) * mean
    g = (luma[:, None, None] * y).sum(0, keepdim=True)
    y = s * y + (1 - s) * g
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    v = torch.einsum("ij,jhw->ihw", yiq, y)
    i, q = v[1].clone(), v[2].clone()
    v[1] = math.cos(h_rad) * i - math.sin(h_rad) * q
    v[2] = math.sin(h_rad) * i + math.cos(h_rad) * q
    y = torch.einsum("ij,jhw->ihw", torch.linalg.inv(yiq), v)
    if gray:
        y = (luma[:, None, None] * y).sum(0, keepdim=True).expand(3, -1, -1)
    return y.clamp(0, 1)


def test_color_matrix_equals_sequential_operations():
    cfg = ViewConfig(jitter_p=1.0, grayscale_p=0.5, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    g = torch.Generator().manual_seed(1)
    n = 16
    x = torch.rand(n, 3, 6, 6) * 0.8
    # recover the per-image draws by replaying the generator the way color_matrices draws
    m, c, b, gray, inv = color_matrices(n, cfg, g, "cpu")
    assert inv is None  # no inversion drawn unless invert_p > 0
    out = apply_color(x.clone(), m, c, b, gray)
    g2 = torch.Generator().manual_seed(1)
    torch.rand(n, generator=g2)  # jitter flags
    bb = 0.6 + 0.8 * torch.rand(n, generator=g2)
    cc = 0.6 + 0.8 * torch.rand(n, generator=g2)
    ss = 0.6 + 0.8 * torch.rand(n, generator=g2)
    hh = (-0.1 + 0.2 * torch.rand(n, generator=g2)) * 2 * math.pi
    assert torch.allclose(bb, b) and torch.allclose(cc, c)
    for i in range(n):
        ref = _sequential_color(x[i], bb[i].item(), cc[i].item(), ss[i].item(), hh[i].item(), bool(gray[i]))
        assert torch.allclose(out[i], ref, atol=1e-5), i


def test_gaussian_blur_matches_conv_with_explicit_kernel():
    x = torch.rand(2, 3, 12, 12)
    sigma = torch.tensor([0.7, 1.5])
    out = gaussian_blur(x, sigma, 5)
    for i in range(2):
        t = torch.arange(-2, 3).float()
        k1 = torch.exp(-(t**2) / (2 * sigma[i] ** 2))
        k1 = k1 / k1.sum()
        k2 = (k1[:, None] * k1[None, :]).expand(3, 1, 5, 5)
        ref = F.conv2d(F.pad(x[i : i + 1], (2, 2, 2, 2), mode="reflect"), k2, groups=3)
        assert torch.allclose(out[i], ref[0], atol=1e-5)


def test_views_seeded_and_in_range():
    v = BatchedViews(ViewConfig(blur_p=0.5), 16)
    x = (torch.rand(8, 3, 24, 24) * 255).to(torch.uint8)
    a = v(x, torch.Generator().manual_seed(5))
    b = v(x, torch.Generator().manual_seed(5))
    c = v(x, torch.Generator().manual_seed(6))
    assert a.shape == (8, 3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_torchvision_views_same_family():
    tf = torchvision_views(ViewConfig(blur_p=0.5), 16)
    out = tf((torch.rand(3, 24, 24) * 255).to(torch.uint8))
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1


def test_rotated_crop_by_quarter_turns_is_rot90():
    """At 90 and 180 degrees the pixel centres map onto pixel centres: the rotated crop is the
    crop rotated by torch.rot90 (also inside a non-square image, and with a flip)."""
    x = torch.rand(4, 3, 12, 20)
    boxes = torch.tensor([[0.0, 0.0, 12.0, 12.0], [6.0, 2.0, 16.0, 12.0], [8.0, 0.0, 20.0, 12.0], [3.0, 1.0, 13.0, 11.0]])
    flip = torch.tensor([False, False, False, True])
    angle = torch.tensor([90.0, -90.0, 180.0, 90.0])
    crops = [x[0, :, 0:12, 0:12], x[1, :, 2:12, 6:16], x[2, :, 0:12, 8:20], x[3, :, 1:11, 3:13]]
    for i, (crop, a, f) in enumerate(zip(crops, angle.tolist(), flip.tolist())):
        size = crop.shape[-1]
        out = resized_crop(x[i : i + 1], boxes[i : i + 1], flip[i : i + 1], size, angle[i : i + 1])[0]
        ref = crop.flip(-1) if f else crop
        # output pixel (u, v) samples the crop at R(angle) (u, v): image y axis points down, so a
        # positive angle turns the content counter-clockwise on screen (as torchvision's rotate)
        ref = torch.rot90(ref, k=int(a // 90) % 4, dims=(-2, -1))
        assert torch.allclose(out, ref, atol=1e-5), (i, a)


def test_rotation_zero_is_the_plain_crop():
    x = torch.rand(5, 3, 16, 16)
    boxes = crop_boxes(5, 16, 16, (0.3, 1.0), (0.75, 4 / 3), torch.Generator().manual_seed(0), "cpu")
    flip = torch.tensor([True, False, True, False, False])
    assert torch.allclose(resized_crop(x, boxes, flip, 8, torch.zeros(5)), resized_crop(x, boxes, flip, 8), atol=1e-6)


def test_channel_permutation_and_inversion_are_exact():
    """With jitter and grayscale off, every view is its crop with permuted channels, inverted or
    not; both happen at about their probabilities."""
    cfg = ViewConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0,
                     channel_perm_p=0.75, invert_p=0.5)  # fmt: skip
    x = torch.rand(400, 3, 4, 4)
    out = BatchedViews(cfg, 4)(x, torch.Generator().manual_seed(3))
    perms = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    n_inv = n_perm = 0
    for i in range(len(x)):
        hits = [(p, inv) for p in perms for inv in (False, True)
                if torch.allclose(out[i], (1 - x[i, list(p)]) if inv else x[i, list(p)], atol=1e-5)]  # fmt: skip
        assert len(hits) == 1, i
        p, inv = hits[0]
        n_inv += inv
        n_perm += p != (0, 1, 2)
    assert 0.42 < n_inv / len(x) < 0.58
    # a drawn permutation is the identity 1 time in 6: 0.75 * 5/6 = 0.625 of views change order
    assert 0.55 < n_perm / len(x) < 0.70


def test_torchvision_views_with_the_extra_options():
    cfg = ViewConfig(rotation=20, channel_perm_p=0.5, invert_p=0.5, flip_p=0.0)
    out = torchvision_views(cfg, 16)((torch.rand(3, 24, 24) * 255).to(torch.uint8))
    assert out.shape == (3, 16, 16) and 0 <= out.min() and out.max() <= 1


def test_rotation_direction_matches_torchvision():
    from torchvision.transforms.v2 import functional as TF

    x = torch.rand(1, 3, 9, 9)
    full = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    for a in (90.0, -90.0):
        out = resized_crop(x, full, torch.tensor([False]), 9, torch.tensor([a]))
        assert torch.allclose(out, TF.rotate(x, a), atol=1e-5)


def test_two_views_pair_draws_two_independent_views_in_order():
    """TwoViews.pair: the first and the second draw of the step's generator (two different views
    of each image), or the loader's views when the batch brings them."""
    from contrastlab.data.views import TwoViews

    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    views = TwoViews(ViewConfig(), 24)
    g = torch.Generator().manual_seed(3)
    v1, v2 = views.pair({"images": images, "generator": g})
    g.manual_seed(3)
    r1, r2 = views(images, g), views(images, g)
    assert torch.equal(v1, r1) and torch.equal(v2, r2)
    assert not torch.allclose(v1, v2)
    given = [torch.rand(6, 3, 24, 24), torch.rand(6, 3, 24, 24)]
    w1, w2 = views.pair({"views": given, "images": images})
    assert w1 is given[0] and w2 is given[1]


def test_views_return_normalised_boxes_and_flips_on_request():
    """return_boxes=True: the view is the crop of its box (normalised coordinates of the original
    image) flipped as its flag says, and the same draws as without boxes."""
    images = torch.randint(0, 256, (8, 3, 40, 30), dtype=torch.uint8)
    cfg = ViewConfig(flip_p=0.5, rotation=0.0, blur_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    views = BatchedViews(cfg, 16)
    x, boxes, flips = views(images, torch.Generator().manual_seed(1), return_boxes=True)
    assert torch.equal(x, views(images, torch.Generator().manual_seed(1)))
    assert boxes.shape == (8, 4) and flips.dtype == torch.bool and flips.any() and not flips.all()
    assert (boxes >= 0).all() and (boxes <= 1).all() and (boxes[:, 2] > boxes[:, 0]).all()
    pixels = boxes * torch.tensor([30.0, 40.0, 30.0, 40.0])
    assert torch.allclose(pixels, pixels.round(), atol=1e-4)  # whole-pixel boxes, scaled by W and H
    ref = resized_crop(images.float() / 255, pixels.round(), flips, 16)
    torch.testing.assert_close(x, ref)


def test_views_size_crops_at_another_side_than_the_images(tiny):
    """views.size: the views' side (DCL's 32 px crops of 96 px STL-10 images); null is data.image_size.
    Both back-ends honour it, and the model still sees whole images at data.image_size elsewhere."""
    from contrastlab.config import load_config
    from contrastlab.data.views import torchvision_views
    from contrastlab.methods import build_method

    cfg = load_config("simclr", tiny + ["views.size=16"])
    m = build_method(cfg)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    v1, v2 = m.views.pair({"images": images, "generator": torch.Generator().manual_seed(0)})
    assert v1.shape == v2.shape == (4, 3, 16, 16)
    assert build_method(load_config("simclr", tiny)).views.out_size == cfg.data.image_size == 32
    from PIL import Image

    tf = torchvision_views(cfg.views, cfg.views.size)
    assert tf(Image.new("RGB", (32, 32))).shape == (3, 16, 16)


def test_quarter_turns_turn_each_view_by_a_uniform_multiple_of_90_degrees():
    """With every other augmentation off, each view is its image turned by torch.rot90 k times, k uniform
    over 0..3; without the option the view is the image itself (the generator's draws are unchanged)."""
    off = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    x = torch.rand(400, 3, 6, 6)
    out = BatchedViews(ViewConfig(quarter_turns=True, **off), 6)(x, torch.Generator().manual_seed(0))
    counts = [0, 0, 0, 0]
    for i in range(len(x)):
        hits = [k for k in range(4) if torch.allclose(out[i], torch.rot90(x[i], k, dims=(-2, -1)), atol=1e-5)]
        assert len(hits) == 1, i
        counts[hits[0]] += 1
    assert all(70 < c < 130 for c in counts), counts
    plain = BatchedViews(ViewConfig(**off), 6)(x, torch.Generator().manual_seed(0))
    assert torch.allclose(plain, x, atol=1e-5)
    tf = torchvision_views(ViewConfig(quarter_turns=True, **off), 6)
    img = (torch.rand(3, 6, 6) * 255).to(torch.uint8)
    seen = set()
    for _ in range(60):
        v = tf(img)
        hits = [k for k in range(4) if torch.allclose(v, torch.rot90(img, k, dims=(-2, -1)).float() / 255, atol=1e-6)]
        assert len(hits) == 1
        seen.add(hits[0])
    assert seen == {0, 1, 2, 3}
