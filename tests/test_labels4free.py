"""Labels4Free: the mask losses against loops, the alpha network's wiring, one step's loss as the
sum of its weighted terms with G frozen, the recipe trained end to end through the CLI on a
generator checkpoint written here in the public format, the config errors, and ``eval masks``:
IoUs against hand computations, its baselines, and the JSON of its last line."""
import csv
import json
import math

import pytest
import torch

from contrastlab.checkpoint import load_checkpoint
from contrastlab.cli import main
from contrastlab.eval.masks import centred_box, mask_ious
from contrastlab.losses import background_coverage_loss, binarization_loss, min_coverage_loss
from contrastlab.nn import AlphaNetwork
from contrastlab.nn.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator, save_stylegan2


# ----------------------------------------------------------------------------- losses


def _masks(seed, b=3, h=4, w=5):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(b, 1, h, w, generator=g, dtype=torch.float64)
    m[0, 0, 0, 0], m[0, 0, 0, 1] = 0.0, 1.0  # the binary ends
    m[1] = m[1] * 0.1  # a nearly empty mask: under any coverage
    return m


@pytest.mark.parametrize("seed", [0, 1])
def test_the_binarisation_loss_is_the_mean_of_min_m_one_minus_m(seed):
    m = _masks(seed)
    vals = [min(v, 1 - v) for v in m.flatten().tolist()]
    assert abs(binarization_loss(m).item() - sum(vals) / len(vals)) < 1e-12
    assert binarization_loss(torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])).item() == 0.0


@pytest.mark.parametrize("phi", [0.0, 0.1, 0.25, 0.9])
def test_the_coverage_losses_match_loops_over_images(phi):
    m = _masks(int(phi * 10))
    b, _, h, w = m.shape
    means = [sum(m[i].flatten().tolist()) / (h * w) for i in range(b)]
    want_fg = sum(max(0.0, phi - mu) for mu in means) / b
    want_bg = sum(max(0.0, phi - (1 - mu)) for mu in means) / b
    assert abs(min_coverage_loss(m, phi).item() - want_fg) < 1e-12
    assert abs(background_coverage_loss(m, phi).item() - want_bg) < 1e-12


# ----------------------------------------------------------------------------- alpha network


def test_the_alpha_network_reads_every_level_and_outputs_a_full_resolution_mask():
    torch.manual_seed(0)
    chans = [8, 8, 6, 6, 4, 4]  # three levels: 4, 8, 16 px
    net = AlphaNetwork(chans).double()
    feats = [torch.randn(2, c, 4 * 2 ** (i // 2), 4 * 2 ** (i // 2), dtype=torch.float64, requires_grad=True)
             for i, c in enumerate(chans)]  # fmt: skip
    m = net(feats)
    assert m.shape == (2, 1, 16, 16) and bool(((m > 0) & (m < 1)).all())
    m.sum().backward()
    assert all(f.grad.abs().sum() > 0 for f in feats)
    # the official wiring: the last level is added to the merged, upsampled lower levels before the 1x1 and sigmoid
    with torch.no_grad():
        lvl = [torch.cat([net.reduce0[i](feats[2 * i]), net.reduce1[i](feats[2 * i + 1])], 1) for i in range(3)]
        up = lambda x: torch.nn.functional.interpolate(x, scale_factor=2, mode="bicubic", align_corners=True)  # noqa: E731
        out = up(torch.nn.functional.leaky_relu(net.merge[0](torch.cat([lvl[1], up(lvl[0])], 1)), 0.2))
        torch.testing.assert_close(m.detach(), torch.sigmoid(net.out(lvl[2] + out)))
    with pytest.raises(ValueError, match="takes 6 feature maps"):
        net(feats[:4])


# ----------------------------------------------------------------------------- the method

GEN = dict(size=16, style_dim=16, n_mlp=2, channel_multiplier=1, max_channels=16, channel_base=128)
TINY_L4F = ["data.n_train=64", "data.n_test=32", "data.image_size=16", "method.size=16", "method.style_dim=16",
            "method.n_mlp=2", "method.max_channels=16", "method.channel_base=128", "method.alpha_levels=2",
            "method.truncation=0.7", "method.truncation_samples=64", "method.bg_coverage_weight=1.0",
            "method.d_reg_every=2", "optim.batch_size=8", "trainer.progress=false", "trainer.accelerator=cpu",
            "trainer.threads=1", "trainer.log_every=1", "trainer.knn_every=0"]  # fmt: skip


@pytest.fixture
def public_generator(tmp_path):
    torch.manual_seed(3)
    g = StyleGAN2Generator(GEN["size"], GEN["style_dim"], GEN["n_mlp"], 1, GEN["max_channels"], GEN["channel_base"])
    d = StyleGAN2Discriminator(GEN["size"], 1, GEN["max_channels"], GEN["channel_base"])
    path = tmp_path / "gen.pt"
    save_stylegan2(path, g, g, d, g.mean_latent(64))
    return path


def test_a_step_is_the_weighted_sum_of_its_terms_and_leaves_g_frozen(public_generator):
    from contrastlab.config import load_config
    from contrastlab.engine.manual import OptimizerSet
    from contrastlab.methods import build_method

    cfg = load_config("labels4free", [*TINY_L4F, f"method.generator_checkpoint={public_generator}", "method.loss_multiplier=2.5",
                                      "method.sat_weight=0.7", "method.bg_coverage_weight=3", "method.fg_coverage=0.4"])  # fmt: skip
    m = build_method(cfg)
    g_before = {k: v.clone() for k, v in m.G.state_dict().items()}
    a_before = {k: v.clone() for k, v in m.A.state_dict().items()}
    opts = OptimizerSet(m.configure_optimizers(cfg.optim))

    class Steps:  # the trainer's ManualSteps without Fabric
        def step(self, name, loss):
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()

    out = m({"images": torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8), "optim": Steps(), "step": 0,
             "generator": torch.Generator().manual_seed(0)})  # fmt: skip
    want = 0.7 * out["adv"] + 2.5 * (out["binarization"] + out["coverage"]) + 3 * out["bg_coverage"]
    assert abs(out["loss"].item() - want.item()) < 1e-5 and "r1" in out
    assert all(torch.equal(v, m.G.state_dict()[k]) for k, v in g_before.items())
    assert any(not torch.equal(v, m.A.state_dict()[k]) for k, v in a_before.items())
    assert all(not p.requires_grad for p in m.G.parameters())
    # the mask extraction: A_ema's soft masks thresholded at method.threshold
    imgs, soft, hard = m.sample_masks(5, torch.Generator().manual_seed(1))
    assert imgs.shape == (5, 3, 16, 16) and soft.shape == (5, 1, 16, 16)
    assert torch.equal(hard, soft[:, 0] > 0.9)


def test_the_recipe_trains_end_to_end_and_eval_masks_scores_it(public_generator, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "labels4free", *TINY_L4F, f"method.generator_checkpoint={public_generator}", "trainer.max_steps=3",
            f"trainer.out_dir={out}"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in rows if r.get("loss")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert {"adv", "binarization", "coverage", "bg_coverage", "mask_mean", "loss_d"} <= set(rows[0])
    model = load_checkpoint(str(out))["model"]
    src = torch.load(public_generator, weights_only=True)["g_ema"]
    torch.testing.assert_close(model["G.const"], src["input.input"])  # G: the checkpoint's, untouched
    fresh = AlphaNetwork([16, 16, 16, 16])  # the alpha network's out bias moved from any init by training
    assert model["A.out.weight"].shape == fresh.out.weight.shape
    assert not torch.equal(model["A.out.bias"], model["A_ema.out.bias"])  # EMA lags the trained network
    assert (out / "samples" / "latest.png").is_file()
    capsys.readouterr()
    assert main(["eval", "masks", str(out), "n_generated=16", "steps=2", "batch_size=8", "n_examples=2"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    r = json.loads(lines[-1])
    assert r["protocol"] == "masks" and r["n_test"] == 32
    for k in ("labels4free", "all_foreground", "centred_box", "supervised"):
        assert set(r[k]) == {"fg_iou", "bg_iou", "miou"} and 0 <= r[k]["miou"] <= 1
    # the baselines against the truth computed here
    from contrastlab.data.digits import DigitScenesSpec, digit_scenes

    _, test = digit_scenes(DigitScenesSpec(n_train=64, n_test=32, image_size=16))
    truth = test.masks > 0
    assert abs(r["all_foreground"]["fg_iou"] - truth.float().mean().item()) < 1e-6
    assert r["all_foreground"]["bg_iou"] == 0.0
    box = torch.zeros_like(truth)
    box[:, 4:12, 4:12] = True
    inter, union = (box & truth).sum().item(), (box | truth).sum().item()
    assert abs(r["centred_box"]["fg_iou"] - inter / union) < 1e-9
    assert (out / "masks_overlay.png").is_file() and r["examples"] == "masks_overlay.png"
    assert json.load(open(out / "eval.json"))  # kept beside the run
    # the report shows the sample grids and the mask overlays
    assert main(["report", str(out)]) == 0
    assert (out / "report" / "samples_masks.png").is_file() and (out / "report" / "samples_latest.png").is_file()
    assert "Masks on real test scenes" in (out / "report.html").read_text()


def test_config_errors_are_one_line(public_generator, capsys, tmp_path):
    assert main(["train", "labels4free", *TINY_L4F, "method.generator_checkpoint=null", "trainer.max_steps=1", f"trainer.out_dir={tmp_path / 'run'}"]) != 0
    err = capsys.readouterr().err.strip()
    assert "method.generator_checkpoint is required" in err and "\n" not in err
    assert main(["train", "labels4free", *TINY_L4F, f"method.generator_checkpoint={public_generator}",
                 "method.alpha_levels=4", "trainer.max_steps=1", f"trainer.out_dir={tmp_path / 'run'}"]) != 0  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "alpha_levels <= 2" in err and "\n" not in err
    assert main(["train", "labels4free", *TINY_L4F, f"method.generator_checkpoint={public_generator}",
                 "method.channel_multiplier=2", "method.max_channels=64", "trainer.max_steps=1", f"trainer.out_dir={tmp_path / 'run'}"]) != 0  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "g_ema key" in err and "channel multiplier" in err and "\n" not in err


# ----------------------------------------------------------------------------- eval masks metrics


def test_mask_ious_match_hand_counts():
    truth = torch.tensor([[[1, 1, 0], [0, 0, 0]], [[0, 0, 0], [0, 1, 1]]], dtype=torch.bool)
    pred = torch.tensor([[[1, 0, 0], [0, 0, 0]], [[0, 0, 0], [1, 1, 0]]], dtype=torch.bool)
    # foreground: intersection 2 (one per image), union 2 + 4 (truth 4, pred 3, intersection 2 -> 5)
    r = mask_ious(pred, truth)
    assert r["fg_iou"] == pytest.approx(2 / 5)
    # background: truth bg 8, pred bg 9, both bg 7 -> union 10
    assert r["bg_iou"] == pytest.approx(7 / 10)
    assert r["miou"] == pytest.approx((2 / 5 + 7 / 10) / 2)
    assert mask_ious(truth, truth) == {"fg_iou": 1.0, "bg_iou": 1.0, "miou": 1.0}
    empty = torch.zeros(1, 2, 2, dtype=torch.bool)
    assert mask_ious(empty, empty)["fg_iou"] == 1.0  # nothing to find, nothing found
    with pytest.raises(ValueError, match="differ in shape"):
        mask_ious(pred[:1], truth)


def test_the_centred_box():
    b = centred_box(2, 8, 6, 0.5)
    assert b.shape == (2, 8, 6) and b.sum().item() == 2 * 4 * 3
    assert bool(b[0, 2:6, 1:4].all()) and not bool(b[0, :2].any()) and not bool(b[0, :, 4:].any())


def test_eval_masks_refuses_a_run_without_masks_in_one_line(tmp_path, capsys):
    from test_stylegan2 import train_tiny_stylegan2

    out = tmp_path / "gan"
    train_tiny_stylegan2(out, steps=1)
    capsys.readouterr()
    assert main(["eval", "masks", str(out), "n_generated=4", "steps=1"]) != 0
    err = capsys.readouterr().err.strip()
    assert "makes no masks" in err and "\n" not in err


# ----------------------------------------------------------------------------- the official release's files


def _official_forward(state: dict, prefix_convs: list, merges: list, out: str, feats: list) -> torch.Tensor:
    """bg_extractor(_repro).forward of RameenAbdal/Labels4Free model_new.py written over the official
    key names: conv pairs per level, a merge per middle level, upsampling to fixed sizes, conv_n."""
    F = torch.nn.functional

    def conv(name, x):
        return F.conv2d(x, state[f"{name}.weight"], state[f"{name}.bias"])

    def level(i):
        a, b = prefix_convs[i]
        return torch.cat([conv(a, feats[2 * i]), conv(b, feats[2 * i + 1])], 1)

    def up(x):
        s = 2 * x.shape[-1]
        return F.interpolate(x, size=(s, s), mode="bicubic", align_corners=True)

    o = up(level(0))
    for i, m in enumerate(merges, start=1):
        o = up(F.leaky_relu(conv(m, torch.cat([level(i), o], 1)), 0.2))
    return torch.sigmoid(conv(out, level(len(prefix_convs) - 1) + o))


def _official_state(layout, chans, seed=0):
    g = torch.Generator().manual_seed(seed)
    levels = len(chans) // 2
    if layout == "repro":
        pairs = [(f"conv{2 * i + 1}", f"conv{2 * i + 2}") for i in range(levels)]
        merges = ["conv_next"] + [f"conv_next{j}" for j in range(2, levels - 1)]
    else:
        pairs = [(f"conv_fns0.{i}", f"conv_fns1.{i}") for i in range(levels)]
        merges = [f"conv_merge_fns.{j}" for j in range(levels - 2)]
    state = {}
    for i, (a, b) in enumerate(pairs):
        for name, c in ((a, chans[2 * i]), (b, chans[2 * i + 1])):
            state[f"{name}.weight"] = torch.randn(3, c, 1, 1, generator=g, dtype=torch.float64) * 0.3
            state[f"{name}.bias"] = torch.randn(3, generator=g, dtype=torch.float64) * 0.1
    for m in merges:
        state[f"{m}.weight"] = torch.randn(6, 12, 1, 1, generator=g, dtype=torch.float64) * 0.3
        state[f"{m}.bias"] = torch.randn(6, generator=g, dtype=torch.float64) * 0.1
    state["conv_n.weight"] = torch.randn(1, 6, 1, 1, generator=g, dtype=torch.float64)
    state["conv_n.bias"] = torch.randn(1, generator=g, dtype=torch.float64)
    return state, pairs, merges


@pytest.mark.parametrize("layout", ["repro", "lists"])
def test_an_official_alpha_network_file_loads_and_computes_the_official_forward(layout, tmp_path):
    from contrastlab.nn.alpha_network import load_alpha_network

    chans = [8, 8, 8, 8, 8, 8, 6, 6, 4, 4, 4, 4] if layout == "repro" else [8, 8, 6, 6, 4, 4, 4, 4]
    state, pairs, merges = _official_state(layout, chans)
    path = tmp_path / "alpha.pt"
    torch.save({"bg_extractor_ema": state, "bg_extractor": {}}, path)
    net = AlphaNetwork(chans).double()
    assert load_alpha_network(path, net) == layout
    torch.manual_seed(1)
    feats = [torch.randn(2, c, 2 * 2 ** (i // 2), 2 * 2 ** (i // 2), dtype=torch.float64) for i, c in enumerate(chans)]
    with torch.no_grad():
        torch.testing.assert_close(net(feats), _official_forward(state, pairs, merges, "conv_n", feats))


def test_a_wrong_official_alpha_file_fails_in_one_line_naming_the_key(tmp_path):
    from contrastlab.errors import UserError
    from contrastlab.nn.alpha_network import load_alpha_network

    chans = [8, 8, 8, 8, 8, 8, 6, 6, 4, 4, 4, 4]
    state, _, _ = _official_state("repro", chans)
    net = AlphaNetwork(chans).double()
    bad = dict(state, **{"conv9.weight": torch.zeros(3, 7, 1, 1, dtype=torch.float64)})
    torch.save({"bg_extractor_ema": bad}, tmp_path / "shape.pt")
    with pytest.raises(UserError, match=r"key 'conv9.weight' has shape \(3, 7, 1, 1\) where the configured alpha "
                                        r"network has \(3, 4, 1, 1\)") as e:  # fmt: skip
        load_alpha_network(tmp_path / "shape.pt", net)
    assert "\n" not in str(e.value)
    missing = {k: v for k, v in state.items() if not k.startswith("conv_next3")}
    torch.save({"bg_extractor_ema": missing}, tmp_path / "missing.pt")
    with pytest.raises(UserError, match=r"2 missing key\(s\) \['conv_next3.weight', 'conv_next3.bias'\]"):
        load_alpha_network(tmp_path / "missing.pt", net)
    torch.save({"g_ema": {}}, tmp_path / "entry.pt")
    with pytest.raises(UserError, match="no 'bg_extractor_ema' state dict"):
        load_alpha_network(tmp_path / "entry.pt", net)
    with pytest.raises(UserError, match="has 6 levels"):
        load_alpha_network(tmp_path / "missing.pt", AlphaNetwork([8, 8, 6, 6, 4, 4]).double())


def test_labels4free_starts_its_alpha_network_from_an_official_file(public_generator, tmp_path):
    from contrastlab.config import load_config
    from contrastlab.methods import build_method

    base = build_method(load_config("labels4free", [*TINY_L4F, f"method.generator_checkpoint={public_generator}"]))
    chans = [base.A.reduce0[i].in_channels if j == 0 else base.A.reduce1[i].in_channels
             for i in range(len(base.A.reduce0)) for j in (0, 1)]  # fmt: skip
    state, _, _ = _official_state("lists", chans, seed=5)
    torch.save({"bg_extractor_ema": {k: v.float() for k, v in state.items()}}, tmp_path / "a.pt")
    m = build_method(load_config("labels4free", [*TINY_L4F, f"method.generator_checkpoint={public_generator}",
                                                 f"method.alpha_checkpoint={tmp_path / 'a.pt'}"]))  # fmt: skip
    for net in (m.A, m.A_ema):
        torch.testing.assert_close(net.reduce1[1].weight, state["conv_fns1.1.weight"].float())
        torch.testing.assert_close(net.out.bias, state["conv_n.bias"].float())


def _table_by_loops(truth, pred, eps=1e-4):
    t, p = truth.reshape(-1).tolist(), pred.reshape(-1).tolist()
    rows = {}
    for c in (0, 1):
        tp = sum(1 for a, b in zip(t, p) if a == c and b == c)
        fp = sum(1 for a, b in zip(t, p) if a != c and b == c)
        fn = sum(1 for a, b in zip(t, p) if a == c and b != c)
        prec, rec = tp / (eps + tp + fp), tp / (eps + tp + fn)
        rows[str(c)] = {"iou": tp / (eps + tp + fp + fn), "precision": prec, "recall": rec,
                        "f1": 2 * prec * rec / (eps + prec + rec), "accuracy": (len(t) - fp - fn) / len(t)}  # fmt: skip
    return rows


@pytest.mark.parametrize("seed", [0, 1])
def test_the_official_mask_table_matches_loops_over_pixels(seed):
    from contrastlab.eval.masks import official_table

    g = torch.Generator().manual_seed(seed)
    truth = torch.rand(3, 5, 6, generator=g) < 0.3
    pred = torch.rand(3, 5, 6, generator=g) < 0.4
    got, want = official_table(truth, pred), _table_by_loops(truth.long(), pred.long())
    for c in ("0", "1"):
        for k, v in want[c].items():
            assert got[c][k] == pytest.approx(v, abs=1e-12), (c, k)
    assert got["total"]["iou"] == pytest.approx((want["0"]["iou"] + want["1"]["iou"]) / 2)
    empty = official_table(torch.zeros(2, 3, 3, dtype=torch.bool), torch.zeros(2, 3, 3, dtype=torch.bool))
    assert empty["1"]["iou"] == 0.0 and empty["0"]["iou"] == pytest.approx(18 / (18 + 1e-4))


def _png(path, array, mode):
    from PIL import Image

    Image.fromarray(array, mode=mode).save(path)


def test_mask_folders_are_read_and_paired_as_the_official_test_does(tmp_path, capsys):
    import numpy as np

    from contrastlab.errors import UserError
    from contrastlab.eval.masks import official_table, score_mask_folders

    gt, pred = tmp_path / "Mask_car_gt", tmp_path / "Mask_car_pred"
    gt.mkdir(), pred.mkdir()
    rng = np.random.default_rng(0)
    truths, preds = [], []
    for i in (1, 2, 10):  # natural order 1, 2, 10 (a plain sort would put 10 second)
        t = (rng.random((6, 7)) < 0.4).astype(np.uint8) * 255
        t[0, 0] = 173  # a grey pixel: luminance below 255, so not the object (as the official int(x / 255))
        p = (rng.random((6, 7)) < 0.4).astype(np.uint8) * 255
        rgba = np.stack([t, t, t, np.full_like(t, 255)], -1)  # the released truths are RGBA, the predictions RGB
        _png(gt / f"Car{i}.png", rgba, "RGBA")
        _png(pred / f"{i}.png", np.stack([p, p, p], -1), "RGB")
        truths.append(t == 255), preds.append(p == 255)
    r = score_mask_folders(gt, pred)
    assert r["pairs"] == [["Car1.png", "1.png"], ["Car2.png", "2.png"], ["Car10.png", "10.png"]]
    want = _table_by_loops(torch.from_numpy(np.stack(truths)).long(), torch.from_numpy(np.stack(preds)).long())
    assert r["official_table"]["1"]["iou"] == pytest.approx(want["1"]["iou"], abs=1e-12)
    assert r["official_table"] == official_table(torch.from_numpy(np.stack(truths)), torch.from_numpy(np.stack(preds)))
    _png(pred / "11.png", np.zeros((6, 7, 3), np.uint8), "RGB")
    with pytest.raises(UserError, match="holds 3 masks and .* 4; the official test pairs them one to one"):
        score_mask_folders(gt, pred)
    (pred / "11.png").unlink()
    _png(pred / "10.png", np.zeros((6, 8, 3), np.uint8), "RGB")
    with pytest.raises(UserError, match=r"10.png: a 8 x 6 mask where 1.png is 7 x 6"):
        score_mask_folders(gt, pred)
    # the script over a checkout's custom_dataset/ layout, JSON with provenance
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location("l4f_official", pathlib.Path(__file__).parents[1] / "scripts" / "labels4f"
                                                  "ree_official_masks.py")  # fmt: skip
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(SystemExit, match="no custom_dataset/ folder"):
        mod.main(["--official", str(tmp_path), "--out", str(tmp_path / "o.json")])


@pytest.mark.parametrize("recipe", ["stylegan2", "labels4free"])
@pytest.mark.parametrize("override,needle", [("optim.batch_size=6", "groups of 4 need a batch divisible by 4"),
                                             ("method.size=24", "sizes are powers of two"),
                                             ("method.size=32", "but data.image_size=16")])  # fmt: skip
def test_both_gan_methods_check_size_and_batch_in_one_line(recipe, override, needle, public_generator, capsys, tmp_path):
    own = ["method.alpha_levels", "method.truncation", "method.bg_coverage", "method.generator_checkpoint"]
    overrides = [o for o in TINY_L4F if recipe == "labels4free" or not o.startswith(tuple(own))]
    if recipe == "labels4free":
        overrides.append(f"method.generator_checkpoint={public_generator}")
    assert main(["train", recipe, *overrides, override, "trainer.max_steps=1", f"trainer.out_dir={tmp_path / 'run'}"]) != 0
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err
