"""Dense evaluation (issue 16, point 5): the linear segmentation probe (eval seg) and its mIoU
against loops over pixels and classes, the PASCAL VOC layout on a tiny fixture written here, and
the export of a ResNet backbone in torchvision's key format."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from contrastlab.cli import main
from contrastlab.data.voc import VOC_CLASSES, voc_palette
from contrastlab.errors import UserError
from contrastlab.eval.seg import (DenseLinearProbe, confusion_matrix, dense_probe, mask_targets, probe_loss,
                                  segmentation_scores)  # fmt: skip

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints"


def _run(tmp_path, name="simclr"):
    """A run folder holding a tiny checkpoint fixture (SmallCNN width 4 on 64 / 32 digit scenes)."""
    run = tmp_path / f"run_{name}"
    run.mkdir()
    shutil.copy(FIXTURES / f"{name}.ckpt", run / "last.ckpt")
    return run


def _last_json(capsys):
    out = capsys.readouterr().out
    return json.loads([line for line in out.splitlines() if line.strip()][-1])


# ----------------------------------------------------------------------------- the metrics
def _loop_scores(pred, target, n_classes, ignore=255):
    """Confusion matrix, per-class IoU and mIoU by plain loops over pixels and classes."""
    conf = [[0] * n_classes for _ in range(n_classes)]
    for p, t in zip(pred.reshape(-1).tolist(), target.reshape(-1).tolist()):
        if t == ignore:
            continue
        conf[t][p] += 1
    ious = []
    for c in range(n_classes):
        tp = conf[c][c]
        fp = sum(conf[r][c] for r in range(n_classes)) - tp
        fn = sum(conf[c][k] for k in range(n_classes)) - tp
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else None)
    present = [v for v in ious if v is not None]
    total = sum(map(sum, conf))
    return conf, ious, sum(present) / len(present), sum(conf[c][c] for c in range(n_classes)) / total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_miou_matches_a_loop_with_ignore_and_absent_classes(seed):
    g = torch.Generator().manual_seed(seed)
    k = 6
    target = torch.randint(0, 4, (3, 9, 7), generator=g)  # classes 4 and 5 never in the truth
    target[torch.rand(target.shape, generator=g) < 0.2] = 255  # ignored pixels
    pred = torch.randint(0, 4, target.shape, generator=g)
    pred[0, 0, :3] = 4  # class 4: predicted only (a false positive: IoU 0, in the mean); class 5: absent
    target[0, 0, :3] = 1
    conf, ious, miou, acc = _loop_scores(pred, target, k)
    got_conf = confusion_matrix(pred, target, k)
    assert got_conf.tolist() == conf
    s = segmentation_scores(got_conf)
    assert s["miou"] == pytest.approx(miou, abs=1e-12) and s["pixel_acc"] == pytest.approx(acc, abs=1e-12)
    assert ious[4] == 0 and ious[5] is None and s["classes_scored"] == 5
    for got, want in zip(s["per_class_iou"], ious):
        assert (math.isnan(got) and want is None) or got == pytest.approx(want, abs=1e-12)
    # whatever is predicted on ignored pixels changes nothing
    other = torch.where(target == 255, (pred + 1) % 4, pred)
    assert confusion_matrix(other, target, k).tolist() == conf


def test_miou_refuses_values_outside_the_classes():
    with pytest.raises(ValueError, match="target values"):
        confusion_matrix(torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 7, 255]), 3)
    assert math.isnan(segmentation_scores(torch.zeros(3, 3, dtype=torch.long))["miou"])


def test_binary_targets_keep_ignore():
    m = torch.tensor([[0, 3, 255], [10, 0, 1]], dtype=torch.uint8)
    assert mask_targets(m, "binary").tolist() == [[0, 1, 255], [1, 0, 1]]
    assert mask_targets(m, "all").tolist() == [[0, 3, 255], [10, 0, 1]]


# ----------------------------------------------------------------------------- the probe
def test_probe_shapes_and_bilinear_upsampling_by_hand():
    """A 1x1 conv, then bilinear upsampling with align_corners=False to the image size: a 2-wide
    map [a, b] becomes [a, 3a/4 + b/4, a/4 + 3b/4, b] on 4 pixels (centres at -1/4, 1/4, 3/4, 5/4
    of the map's pixels, clamped at the edges)."""
    probe = DenseLinearProbe(3, 5)
    assert probe(torch.rand(2, 3, 4, 4), (32, 24)).shape == (2, 5, 32, 24)
    probe = DenseLinearProbe(1, 1)
    with torch.no_grad():
        probe.conv.weight.fill_(1.0)
    a, b, c, d = 1.0, 5.0, -2.0, 3.0
    f = torch.tensor([[a, b], [c, d]]).view(1, 1, 2, 2)
    w = [0.0, 0.25, 0.75, 1.0]  # the weight of the second map pixel at each output pixel
    want = torch.tensor([[(1 - wy) * ((1 - wx) * a + wx * b) + wy * ((1 - wx) * c + wx * d) for wx in w] for wy in w])
    torch.testing.assert_close(probe(f, (4, 4))[0, 0], want)


def _colour_scenes(n, k=4, size=16, block=4, seed=0):
    """Images whose colour encodes the class: a random class per block x block cell, each class one
    colour (plus noise); masks with a few ignored pixels."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, k, (n, size // block, size // block), generator=g)
    masks = cells.repeat_interleave(block, 1).repeat_interleave(block, 2)
    colours = torch.tensor([[0.1, 0.1, 0.1], [0.9, 0.1, 0.1], [0.1, 0.9, 0.2], [0.2, 0.3, 0.9]])[:k]
    images = colours[masks].permute(0, 3, 1, 2) + 0.03 * torch.randn(n, 3, size, size, generator=g)
    masks = masks.clone()
    masks[:, 0, :] = 255
    return images, masks


def test_probe_finds_a_mask_the_features_carry_and_not_in_noise():
    """Features that carry the class (the colour-coded pixels: an identity encoder) give a probe at
    ~100 % mIoU; random features of the same shape stay near chance."""
    xtr, mtr = _colour_scenes(24)
    xte, mte = _colour_scenes(12, seed=1)
    r = dense_probe(xtr, mtr, xte, mte, 4, epochs=30, lr=0.05, batch_size=8)
    assert r["miou"] > 0.99 and r["pixel_acc"] > 0.99 and r["pred"].shape == mte.shape
    # an encoder of stride 4 whose map is the block's colour: the upsampled probe still gets the blocks
    pooled = lambda x: F.avg_pool2d(x, 4)  # noqa: E731
    r4 = dense_probe(pooled(xtr), mtr, pooled(xte), mte, 4, epochs=30, lr=0.05, batch_size=8)
    assert r4["miou"] > 0.6
    g = torch.Generator().manual_seed(3)
    noise = dense_probe(torch.randn(24, 8, 4, 4, generator=g), mtr, torch.randn(12, 8, 4, 4, generator=g), mte, 4,
                        epochs=30, lr=0.05, batch_size=8)  # fmt: skip
    assert noise["miou"] < 0.3


def test_dense_features_leave_the_encoder_frozen():
    """Feature maps in eval mode (BatchNorm's running statistics, not the batch's, and untouched),
    the encoder's mode restored; the pixels baseline is the image in [0, 1]."""
    from contrastlab.eval.seg import dense_features

    class Enc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3, 2, 1), torch.nn.BatchNorm2d(4)

        def forward_features(self, x):
            return self.bn(self.conv(x))

    enc = Enc().train()
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    before = enc.bn.running_mean.clone()
    f = dense_features(enc, images, batch_size=2)
    assert f.shape == (5, 4, 4, 4) and enc.training and torch.equal(enc.bn.running_mean, before)
    with torch.no_grad():
        torch.testing.assert_close(f, enc.eval().forward_features(images.float() / 255))
    torch.testing.assert_close(dense_features(None, images), images.float() / 255)


def test_probe_is_deterministic():
    xtr, mtr = _colour_scenes(8)
    r1 = dense_probe(xtr, mtr, xtr, mtr, 4, epochs=3, batch_size=4, seed=5)
    r2 = dense_probe(xtr, mtr, xtr, mtr, 4, epochs=3, batch_size=4, seed=5)
    assert torch.equal(r1["probe"].conv.weight, r2["probe"].conv.weight)


def test_probe_loss_is_a_loop_over_the_pixels_not_ignored():
    g = torch.Generator().manual_seed(0)
    probe = DenseLinearProbe(5, 3)
    with torch.no_grad():
        probe.conv.weight.normal_(generator=g)
    feats = torch.randn(2, 5, 2, 3, generator=g)
    targets = torch.randint(0, 3, (2, 6, 9), generator=g)
    targets[:, :2] = 255
    logits = probe(feats, (6, 9))
    terms = [-torch.log_softmax(logits[b, :, y, x], 0)[targets[b, y, x]]
             for b in range(2) for y in range(6) for x in range(9) if targets[b, y, x] != 255]
    torch.testing.assert_close(probe_loss(probe, feats, targets), torch.stack(terms).mean())


# ----------------------------------------------------------------------------- eval seg on the digit scenes
def test_eval_seg_on_the_digit_scenes(tmp_path, capsys):
    run = _run(tmp_path)
    assert main(["eval", "seg", str(run), "epochs=2"]) == 0
    r = _last_json(capsys)
    assert (r["protocol"], r["label"], r["classes"], r["n_classes"]) == ("seg", "mask", "all", 11)
    assert list(r["per_class_iou"]) == ["background", *map(str, range(10))]
    assert 0 <= r["miou"] <= 1 and 0 <= r["pixel_acc"] <= 1 and r["feature_map"] == [16, 4, 4]
    assert main(["eval", "seg", str(run), "epochs=2", "classes=binary", "features=pixels"]) == 0
    b = _last_json(capsys)
    assert b["n_classes"] == 2 and list(b["per_class_iou"]) == ["background", "foreground"]
    kept = json.loads((run / "eval.json").read_text())
    assert {"seg/mask/model", "seg/mask/pixels/binary"} <= set(kept)
    ex = torch.load(run / r["examples"], weights_only=True)
    assert ex["pred"].shape == (8, 32, 32) and ex["class_names"][0] == "background"


def _image_folder(root):
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 200, 30)).save(root / split / c / "x.png")
    return root


def test_eval_seg_one_line_errors(tmp_path, capsys):
    run = _run(tmp_path)
    folder = _image_folder(tmp_path / "folder")
    assert main(["eval", "seg", str(run), "data.name=imagefolder", f"data.root={folder}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no per-pixel masks" in err and "data.name=voc" in err
    assert main(["eval", "seg", str(_run(tmp_path, "cut"))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no encoder" in err
    assert main(["eval", "seg", str(run), "classes=digit"]) == 2
    assert "classes" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the VOC layout
COLOURS = {0: (0, 0, 0), 3: (230, 40, 40), 8: (40, 220, 60), 15: (50, 60, 230)}


def _voc(root, ids=None, size=(40, 30)):
    """A tiny PASCAL VOC folder: JPEGImages/*.jpg, SegmentationClass/*.png (palette, 255 around each
    object), ImageSets/Segmentation/{train,val}.txt. Each object's colour encodes its class."""
    ids = ids or {"train": [f"2007_{i:06d}" for i in range(6)], "val": [f"2008_{i:06d}" for i in range(3)]}
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = size
    for split, names in ids.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            mask = np.zeros((h, w), np.uint8)
            for cls in rng.choice([3, 8, 15], size=2, replace=False):
                x0, y0 = rng.integers(0, w - 16), rng.integers(0, h - 12)
                mask[y0 : y0 + 12, x0 : x0 + 16] = 255
                mask[y0 + 1 : y0 + 11, x0 + 1 : x0 + 15] = cls
            img = np.zeros((h, w, 3), np.uint8)
            for c, rgb in COLOURS.items():
                img[mask == c] = rgb
            img[mask == 255] = (200, 200, 200)
            Image.fromarray(img).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
            png = Image.fromarray(mask, mode="P")
            png.putpalette(voc_palette())
            png.save(root / "SegmentationClass" / f"{name}.png")
    return root


def test_voc_reader_resizes_images_and_masks_nearest(tmp_path):
    from contrastlab.data.voc import load_voc_split

    root = _voc(tmp_path / "VOC2012")
    s = load_voc_split(str(root), "train", 16)
    assert s.images.shape == (6, 3, 16, 16) and s.masks.shape == (6, 16, 16) and s.images.dtype == torch.uint8
    assert s.mask_classes == VOC_CLASSES and len(VOC_CLASSES) == 21
    name = "2007_000000"
    with Image.open(root / "SegmentationClass" / f"{name}.png") as im:
        assert im.mode == "P"
        raw = np.array(im)
        near = np.array(im.resize((16, 16), Image.Resampling.NEAREST))
    assert np.array_equal(s.masks[0].numpy(), near)  # nearest: no value between two classes
    assert set(np.unique(s.masks.numpy())) <= {0, 3, 8, 15, 255}
    counts = {c: int((raw == c).sum()) for c in (3, 8, 15)}
    assert VOC_CLASSES[int(s.labels["label"][0])] == VOC_CLASSES[max(counts, key=counts.get)]


def test_voc_reader_one_line_errors(tmp_path):
    from contrastlab.data.voc import load_voc_split, read_mask

    root = _voc(tmp_path / "VOC2012")
    with pytest.raises(UserError, match=r"split list .*test.txt does not exist; expected the VOC layout"):
        load_voc_split(str(root), "test", 16)
    (root / "JPEGImages" / "2008_000001.jpg").unlink()
    with pytest.raises(UserError, match=r"2008_000001.jpg \(listed in val.txt\) does not exist"):
        load_voc_split(str(root), "val", 16)
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(UserError, match="is a RGB image; expected a palette"):
        read_mask(str(tmp_path / "rgb.png"))
    Image.fromarray(np.full((4, 4), 40, np.uint8), mode="L").save(tmp_path / "big.png")
    with pytest.raises(UserError, match="has values 40; expected class indices 0-20 or 255"):
        read_mask(str(tmp_path / "big.png"))


def test_eval_seg_on_a_voc_folder(tmp_path, capsys):
    """data.name=voc through the protocol: 21 classes, only the present ones scored, 255 ignored;
    the colour-coded fixture is solved by the pixels baseline (a per-pixel colour classifier)."""
    root = _voc(tmp_path / "VOC2012")
    run = _run(tmp_path)
    voc = ["data.name=voc", f"data.root={root}", "data.image_size=24"]
    assert main(["eval", "seg", str(run), "features=pixels", "epochs=200", "lr=0.1", "batch_size=3", *voc]) == 0
    r = _last_json(capsys)
    assert r["n_classes"] == 21 and r["image_size"] == [24, 24] and r["n_train"] == 6 and r["n_test"] == 3
    scored = [c for c, v in r["per_class_iou"].items() if v is not None]
    assert r["classes_scored"] == len(scored) and {"background", "bird", "cat", "person"} <= set(scored)
    assert r["miou"] > 0.9, r
    assert main(["eval", "seg", str(run), "epochs=1", *voc]) == 0  # the run's own encoder on 24 px images
    assert _last_json(capsys)["feature_map"] == [16, 3, 3]


# ----------------------------------------------------------------------------- export
def _resnet_run(tmp_path, backbone="resnet18"):
    """A ResNet run folder without training: the SimCLR fixture's config with another backbone, the
    method built from it, its BatchNorm statistics made non-trivial, saved as a checkpoint."""
    from contrastlab.config import from_dict
    from contrastlab.methods import build_method

    ckpt = torch.load(FIXTURES / "simclr.ckpt", weights_only=True)
    ckpt["config"]["model"]["backbone"] = backbone
    torch.manual_seed(0)
    method = build_method(from_dict(ckpt["config"]))
    with torch.no_grad():
        for m in method.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    run = tmp_path / f"run_{backbone}"
    run.mkdir()
    torch.save({"model": method.state_dict(), "config": ckpt["config"], "step": 3, "format": ckpt["format"]},
               run / "last.ckpt")  # fmt: skip
    return run, method


def test_export_loads_into_torchvision_resnet18_with_the_same_outputs(tmp_path, capsys):
    import torchvision

    run, method = _resnet_run(tmp_path)
    out = tmp_path / "backbone.pth"
    assert main(["export", str(run), str(out)]) == 0
    r = _last_json(capsys)
    assert (r["backbone"], r["input_norm"], r["cifar_stem"]) == ("resnet18", "per_image", False)
    assert r["fc"].startswith("zeros")
    sd = torch.load(out, weights_only=True)
    tv = torchvision.models.resnet18(weights=None)
    tv.load_state_dict(sd, strict=True)
    assert not tv.fc.weight.any() and not tv.fc.bias.any()  # the untrained head is zeros, not noise
    tv.fc = torch.nn.Identity()
    tv.eval()
    enc = method.encoder.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tv(enc.norm(x)), enc(x))  # the file holds the backbone, not the input norm


def test_export_loads_into_torchvision_resnet50_with_strict_true(tmp_path, capsys):
    import torchvision

    run, method = _resnet_run(tmp_path, "resnet50")
    out = tmp_path / "r50.pth"
    assert main(["export", str(run), str(out)]) == 0
    sd = torch.load(out, weights_only=True)
    tv = torchvision.models.resnet50(weights=None)
    tv.load_state_dict(sd, strict=True)  # raises on any missing, unexpected or mis-shaped key
    assert tv.fc.weight.shape == (1000, 2048) and not tv.fc.weight.any() and not tv.fc.bias.any()
    tv.fc = torch.nn.Identity()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tv.eval()(method.encoder.norm(x)), method.encoder.eval()(x))


def test_export_without_fc_leaves_exactly_the_head_out(tmp_path, capsys):
    import torchvision

    run, _ = _resnet_run(tmp_path)
    out = tmp_path / "nofc.pth"
    assert main(["export", str(run), str(out), "--fc", "none"]) == 0
    assert _last_json(capsys)["fc"] == "none"
    missing, unexpected = torchvision.models.resnet18(weights=None).load_state_dict(
        torch.load(out, weights_only=True), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []


def test_export_refuses_a_small_cnn_run_in_one_line(tmp_path, capsys):
    assert main(["export", str(_run(tmp_path)), str(tmp_path / "x.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "SmallCNN" in err and "resnet18|resnet34|resnet50" in err
    assert not (tmp_path / "x.pth").exists()


# ----------------------------------------------------------------------------- report
def test_report_draws_the_probe_masks_only_when_a_seg_result_exists(tmp_path, capsys):
    from contrastlab.report.run import build_run_report, seg_figure

    run = _run(tmp_path)
    build_run_report(run, embedding_method="pca")
    assert not (run / "report" / "seg_masks.png").exists() and "Dense probe" not in (run / "report.html").read_text()
    assert main(["eval", "seg", str(run), "epochs=1", "n_examples=4"]) == 0
    capsys.readouterr()
    build_run_report(run, embedding_method="pca")
    assert (run / "report" / "seg_masks.png").is_file() and "Dense probe: predicted masks" in (run / "report.html").read_text()
    evals = json.loads((run / "eval.json").read_text())
    heading, name, caption = seg_figure(run, evals, tmp_path / "img")
    assert name == "seg_masks.png" and "mIoU" in caption and "0 = background" in caption
    with Image.open(tmp_path / "img" / name) as im:  # 4 rows of 64 px tiles (32 px scenes enlarged x2)
        assert im.height >= 4 * 64
    evals["seg/mask/model"]["examples"] = "gone.pt"
    assert seg_figure(run, evals, tmp_path / "img2") is None
