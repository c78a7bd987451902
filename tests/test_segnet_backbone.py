"""The segmentation backbone of CWT / RePRI's stage 1 (issue 18): the dilated ResNet (output stride 8 / 16),
PSPNet's deep stem and ``model.weights`` (backbone weights from a file, in torchvision's or the official
deep-stem key names), each against a hand computation or the file it loaded."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from contrastlab.config import load_config
from contrastlab.errors import ConfigError, UserError
from test_backbones import _trained_like
from contrastlab.nn.backbones import (TorchvisionResNet, backbone_weight_keys, build_backbone, load_backbone_weights,
                                      torchvision_state_dict)  # fmt: skip


_random_bn = _trained_like  # random BatchNorm affine and statistics (test_backbones)


# ----------------------------------------------------------------------------- output stride
@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("stride,side", [(8, 8), (16, 4), (32, 2), (None, 2)])
def test_output_stride_gives_the_layer4_side_of_a_64px_input(depth, stride, side):
    torch.manual_seed(0)
    b = build_backbone(f"resnet{depth}", output_stride=stride).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        stages = b.forward_stages(x)
        final = b.forward_features(x)
    assert final.shape == (1, b.feature_dim, side, side)
    assert [s.shape[-1] for s in stages] == [16, 8, max(side, 4), side]
    assert torch.equal(stages[-1], final)


@pytest.mark.parametrize("depth", [18, 50])
def test_dilated_and_deep_stem_weights_have_the_torchvision_or_official_shapes(depth):
    import torchvision.models as tvm

    plain = {k: v.shape for k, v in getattr(tvm, f"resnet{depth}")().state_dict().items() if not k.startswith("fc.")}
    for stride in (8, 16):
        got = torchvision_state_dict(build_backbone(f"resnet{depth}", output_stride=stride))
        assert {k: v.shape for k, v in got.items()} == plain  # ImageNet weights load unchanged
    deep = {k: v.shape for k, v in torchvision_state_dict(build_backbone(f"resnet{depth}", deep_stem=True, output_stride=8)).items()}
    # the official deep base (RePRI src/model/resnet.py:105-112): conv1 3->64 /2, conv2 64->64, conv3 64->128
    assert deep["conv1.weight"] == (64, 3, 3, 3) and deep["conv2.weight"] == (64, 64, 3, 3)
    assert deep["conv3.weight"] == (128, 64, 3, 3) and deep["bn3.running_mean"] == (128,)
    width = 64
    assert deep["layer1.0.conv1.weight"] == (width, 128, 1 if depth == 50 else 3, 1 if depth == 50 else 3)
    assert deep["layer1.0.downsample.0.weight"] == (64 * (4 if depth == 50 else 1), 128, 1, 1)
    rest = {k: v for k, v in deep.items() if not k.startswith(("conv", "bn", "layer1.0.conv1", "layer1.0.downsample"))}
    assert rest == {k: v for k, v in plain.items() if not k.startswith(("conv", "bn", "layer1.0.conv1", "layer1.0.downsample"))}


def test_the_default_options_build_the_same_network_with_the_same_initial_weights():
    torch.manual_seed(5)
    a = TorchvisionResNet(50)
    torch.manual_seed(5)
    b = build_backbone("resnet50", output_stride=32, deep_stem=False)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert all(m.dilation == (1, 1) for m in b.modules() if isinstance(m, nn.Conv2d))


def _hand_stage(layer, x, d):
    """A ResNet stage at stride 1 with its 3x3 convs dilated d in every block (the official PSPNet's, CWT
    src/model/pspnet.py:94-103), written out with F.conv2d / F.batch_norm from the stage's weights."""
    def bn(m, y):
        return F.batch_norm(y, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    for blk in layer:
        if hasattr(blk, "conv3"):  # Bottleneck: 1x1, 3x3 dilated, 1x1
            y = F.relu(bn(blk.bn1, F.conv2d(x, blk.conv1.weight)))
            y = F.relu(bn(blk.bn2, F.conv2d(y, blk.conv2.weight, stride=1, padding=d, dilation=d)))
            y = bn(blk.bn3, F.conv2d(y, blk.conv3.weight))
        else:  # BasicBlock: both 3x3 dilated
            y = F.relu(bn(blk.bn1, F.conv2d(x, blk.conv1.weight, stride=1, padding=d, dilation=d)))
            y = bn(blk.bn2, F.conv2d(y, blk.conv2.weight, stride=1, padding=d, dilation=d))
        short = x if blk.downsample is None else bn(blk.downsample[1], F.conv2d(x, blk.downsample[0].weight, stride=1))
        x = F.relu(y + short)
    return x


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("stride", [8, 16])
def test_dilated_stages_match_a_hand_computation_of_the_official_layout(depth, stride):
    torch.manual_seed(1)
    b = _random_bn(build_backbone(f"resnet{depth}", output_stride=stride))
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        s = b.forward_stages(x)
        l3 = _hand_stage(b.net.layer3, s[1], 2) if stride == 8 else None
        l4 = _hand_stage(b.net.layer4, s[2], 4 if stride == 8 else 2)
    if stride == 8:
        torch.testing.assert_close(s[2], l3)
    torch.testing.assert_close(s[3], l4)
    assert s[3].shape[-1] == 48 // stride


def test_deep_stem_matches_a_hand_computation_and_feeds_layer1_128_channels():
    torch.manual_seed(2)
    b = _random_bn(build_backbone("resnet50", deep_stem=True, output_stride=8))
    n = b.net
    x = torch.rand(2, 3, 64, 64)

    def cbr(conv, bn, y, stride):
        y = F.conv2d(y, conv.weight, stride=stride, padding=1)
        return F.relu(F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))

    with torch.no_grad():
        want = F.max_pool2d(cbr(n.conv3, n.bn3, cbr(n.conv2, n.bn2, cbr(n.conv1, n.bn1, x, 2), 1), 1), 3, 2, 1)
        got = b._stem(x)
        torch.testing.assert_close(got, want)
        assert got.shape == (2, 128, 16, 16)
        assert n.layer1[0].conv1.in_channels == 128 and n.layer1[0].downsample[0].in_channels == 128
        assert b.forward_stages(x, [0])[0].shape == (2, 256, 16, 16)
    r18 = build_backbone("resnet18", deep_stem=True)
    assert r18.net.layer1[0].conv1.in_channels == 128 and r18.net.layer1[0].downsample[0].in_channels == 128


def test_stride_and_stem_options_refuse_other_backbones_with_one_line():
    with pytest.raises(ConfigError, match="model.output_stride=8 applies to the torchvision ResNets"):
        load_config("cwt_stage1", ["model.output_stride=8"])  # small_cnn
    with pytest.raises(ConfigError, match="model.deep_stem=True applies"):
        load_config("cwt_stage1", ["model.deep_stem=true"])
    with pytest.raises(ConfigError, match="cifar_stem=true excludes"):
        load_config("cwt_stage1", ["model.backbone=resnet18", "model.cifar_stem=true", "model.deep_stem=true"])
    with pytest.raises(ConfigError, match="model.output_stride"):
        load_config("cwt_stage1", ["model.backbone=resnet18", "model.output_stride=4"])


# ----------------------------------------------------------------------------- model.weights
TINY = ["data.n_train=200", "data.n_test=100", "method.bottleneck_dim=8", "optim.batch_size=4", "trainer.max_steps=2",
        "trainer.threads=1", "trainer.log_every=1", "trainer.knn_every=0"]  # fmt: skip
DEEP = ["model.backbone=resnet18", "model.deep_stem=true", "model.output_stride=8"]
PLAIN = ["model.backbone=resnet18", "model.output_stride=8"]


def _file_state(cfg, seed, drop_counters=False):
    """A weights file in the key names the format expects (torchvision's / the official deep-stem ones,
    which are the same names for the stem's conv1 .. bn3), the model's own shapes, random values,
    plus an ImageNet classifier that the loader skips."""
    from contrastlab.methods import build_method

    torch.manual_seed(123)
    enc = build_method(cfg).net.encoder
    g = torch.Generator().manual_seed(seed)
    state = {}
    for file_key, key in backbone_weight_keys(enc).items():
        v = enc.backbone.state_dict()[key]
        if key.endswith("num_batches_tracked"):
            if drop_counters:
                continue
            state[file_key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[file_key] = torch.rand(v.shape, generator=g) + 0.5
        else:
            state[file_key] = torch.randn(v.shape, generator=g)
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, enc.feature_dim), torch.randn(1000)
    return state


@pytest.mark.parametrize("net,drop", [(DEEP, True), (PLAIN, False), ([], False)])
def test_model_weights_load_every_tensor_of_the_file_when_the_run_starts(tmp_path, net, drop):
    from contrastlab.engine.setup import build_setup, make_fabric

    base = load_config("cwt_stage1", TINY + net)
    state = _file_state(base, 9, drop_counters=drop)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": state} if drop else state, path)  # semseg-style {"state_dict": ...} too
    cfg = load_config("cwt_stage1", TINY + net + [f"model.weights={path}"])
    s = build_setup(cfg, make_fabric(cfg))
    own = s.method.net.encoder.backbone.state_dict()
    keys = backbone_weight_keys(s.method.net.encoder)
    for file_key, key in keys.items():
        if file_key in state:
            assert torch.equal(own[key], state[file_key]), file_key
        else:  # only the counters may be absent: the model keeps its own
            assert drop and key.endswith("num_batches_tracked") and int(own[key]) == 0
    if net == DEEP:
        assert "conv3.weight" in keys and keys["conv3.weight"] == "net.conv3.weight"
        assert "layer1.0.conv1.weight" in keys
    # the decoder keeps its seeded initial weights: only the backbone is loaded
    torch.manual_seed(cfg.seed)
    from contrastlab.methods import build_method

    fresh = build_method(cfg).state_dict()
    assert all(torch.equal(fresh[k], v) for k, v in s.method.state_dict().items() if not k.startswith("net.encoder."))


def test_model_weights_train_end_to_end_through_the_cli(tmp_path, capsys):
    from contrastlab.checkpoint import load_checkpoint
    from contrastlab.cli import main

    state = _file_state(load_config("cwt_stage1", TINY + DEEP), 4)
    torch.save(state, tmp_path / "w.pth")
    out = tmp_path / "run"
    code = main(["train", "cwt_stage1", *TINY, *DEEP, f"model.weights={tmp_path / 'w.pth'}", f"trainer.out_dir={out}"])
    assert code == 0, capsys.readouterr().err[-2000:]
    model = load_checkpoint(out)["model"]
    import csv
    import math

    rows = [r for r in csv.DictReader((out / "metrics.csv").open()) if r.get("loss")]
    assert len(rows) == 2 and all(math.isfinite(float(r["loss"])) for r in rows)
    moved = [k for k, v in state.items() if k in ("conv1.weight", "layer4.1.conv2.weight")
             and not torch.equal(model[f"net.encoder.backbone.net.{k}"], v)]  # fmt: skip
    assert moved == ["conv1.weight", "layer4.1.conv2.weight"]  # started from the file, then trained


@pytest.mark.parametrize("case", ["shape", "missing", "unexpected", "absent", "not_a_dict"])
def test_a_bad_weights_file_fails_with_one_line_naming_the_key(tmp_path, capsys, case):
    from contrastlab.cli import main

    base = load_config("cwt_stage1", TINY + DEEP)
    state = _file_state(base, 1)
    path = tmp_path / "w.pth"
    if case == "shape":
        state["layer2.0.conv2.weight"] = torch.zeros(128, 128, 1, 1)
        want = "'layer2.0.conv2.weight' has shape (128, 128, 1, 1) in the file but (128, 128, 3, 3) in the model"
    elif case == "missing":
        del state["bn2.running_var"]
        want = "missing key 'bn2.running_var'"
    elif case == "unexpected":
        state["layer5.0.conv1.weight"] = torch.zeros(1)
        want = "unexpected key 'layer5.0.conv1.weight'"
    elif case == "not_a_dict":
        state = [torch.zeros(1)]
        want = "not a state dict"
    else:
        want = "the file does not exist"
    if case != "absent":
        torch.save(state, path)
    code = main(["train", "cwt_stage1", *TINY, *DEEP, f"model.weights={path}", f"trainer.out_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and want in err[-1] and f"model.weights={path}" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_a_plain_stem_file_does_not_load_into_the_deep_stem():
    """The torchvision ResNet's 7x7 conv1 is another shape than the deep stem's 3x3 conv1."""
    import torchvision.models as tvm

    tv = tvm.resnet18().state_dict()
    deep = build_backbone("resnet18", deep_stem=True)
    with pytest.raises(UserError, match=r"'conv1.weight' has shape \(64, 3, 7, 7\) in the file but \(64, 3, 3, 3\)"):
        load_backbone_weights(deep, tv, "model.weights=x")
    plain = build_backbone("resnet18", output_stride=8)
    load_backbone_weights(plain, tv, "model.weights=x")  # torchvision's own file loads into the dilated network
    assert all(torch.equal(plain.net.state_dict()[k], v) for k, v in tv.items() if not k.startswith("fc."))


def test_stage2_runs_on_a_deep_stem_dilated_stage1_and_refuses_another_stem_with_one_line(tmp_path, capsys):
    from contrastlab.checkpoint import load_checkpoint
    from contrastlab.cli import main

    s1 = tmp_path / "s1"
    assert main(["train", "cwt_stage1", *TINY, *DEEP, "trainer.max_steps=1", f"trainer.out_dir={s1}"]) == 0
    common = [*TINY, "method.adapt_steps=1", "optim.batch_size=2", "trainer.max_steps=1", f"method.stage1={s1}"]
    capsys.readouterr()
    assert main(["train", "cwt", *common, "model.backbone=resnet18", "model.output_stride=8",
                 f"trainer.out_dir={tmp_path / 'a'}"]) != 0  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert "model.deep_stem=True there, False here" in err[-1] and "Traceback" not in "".join(err)
    assert main(["train", "cwt", *common, *DEEP, f"trainer.out_dir={tmp_path / 'b'}"]) == 0, capsys.readouterr().err[-2000:]
    one, two = load_checkpoint(s1)["model"], load_checkpoint(tmp_path / "b")["model"]
    assert torch.equal(one["net.encoder.backbone.net.conv3.weight"], two["net.encoder.backbone.net.conv3.weight"])


def test_a_deep_stem_export_says_so_and_loads_back_through_model_weights(tmp_path, capsys):
    """contrastlab export of a deep-stem dilated ResNet run writes the official deep-base names, which
    model.weights reads back tensor for tensor (fc zeros skipped)."""
    import json

    from contrastlab.checkpoint import load_checkpoint
    from contrastlab.cli import main
    from contrastlab.engine.setup import build_setup, make_fabric

    sim = ["data.n_train=64", "data.n_test=32", "optim.batch_size=16", "trainer.max_steps=1", "trainer.threads=1",
           "trainer.knn_every=0", "model.proj_hidden=16", "model.proj_dim=8", "optim.warmup_steps=0", *DEEP]  # fmt: skip
    run = tmp_path / "sim"
    assert main(["train", "simclr", *sim, f"trainer.out_dir={run}"]) == 0, capsys.readouterr().err[-2000:]
    capsys.readouterr()
    assert main(["export", str(run), str(tmp_path / "b.pth")]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["deep_stem"] is True and info["output_stride"] == 8 and "deep stem" in info["note"]
    sd = torch.load(tmp_path / "b.pth", weights_only=True)
    assert {"conv1.weight", "conv2.weight", "conv3.weight", "bn3.running_var", "fc.weight"} <= set(sd)
    cfg = load_config("cwt_stage1", TINY + DEEP + [f"model.weights={tmp_path / 'b.pth'}"])
    s = build_setup(cfg, make_fabric(cfg))
    own = s.method.net.encoder.backbone.net.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items() if not k.startswith("fc."))
    trained = load_checkpoint(run)["model"]
    assert torch.equal(own["conv2.weight"], trained["encoder.backbone.net.conv2.weight"])
