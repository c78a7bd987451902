"""The prototype baseline and ``contrastlab eval fewshot``: masked average pooling, the cosine logits and
the episode prototypes against plain float64 loops, ProtoSeg's training loss recomputed from its parts,
its training steps (loss finite, weights change), the digits recipe end to end through the command line
(train, then ``eval fewshot`` 1- and 5-shot with the JSON on the last line), the baseline on a run without
``segment_episode`` (a SimCLR run's frozen encoder) and on the organ set (Dice per volume), the report's
pictures of the kept episodes, and one-line errors."""
import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

from contrastlab.cli import main
from contrastlab.config import load_config
from contrastlab.data import build_datasets
from contrastlab.methods import build_method
from contrastlab.methods.contract import segments_episodes
from contrastlab.nn import PrototypeSegmenter, cosine_logits, episode_prototypes, masked_average_pool


# ----------------------------------------------------------------------------- the math against loops
def _pool_loop(f, m, eps=1e-5):
    """f (C, H, W), m (H, W) float64 -> list of C: sum f m / (sum m + eps), pixel by pixel."""
    c, h, w = f.shape
    num = [0.0] * c
    den = 0.0
    for y in range(h):
        for x in range(w):
            den += float(m[y, x])
            for k in range(c):
                num[k] += float(f[k, y, x]) * float(m[y, x])
    return [v / (den + eps) for v in num]


def test_masked_average_pool_against_loop():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    m = (torch.rand(3, 5, 6, generator=g) > 0.5).double()
    out = masked_average_pool(f, m)
    for n in range(3):
        assert out[n].tolist() == pytest.approx(_pool_loop(f[n], m[n]), abs=1e-12)
    # an empty mask gives a zero prototype (eps), not NaN
    assert torch.equal(masked_average_pool(f, torch.zeros(3, 5, 6, dtype=torch.float64)), torch.zeros(3, 4, dtype=torch.float64))


def test_masked_average_pool_upsamples_features_to_the_mask():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    m = (torch.rand(2, 8, 8, generator=g) > 0.4).double()
    up = F.interpolate(f, size=(8, 8), mode="bilinear", align_corners=False)
    out = masked_average_pool(f, m)
    for n in range(2):
        assert out[n].tolist() == pytest.approx(_pool_loop(up[n], m[n]), abs=1e-12)


def test_cosine_logits_against_loop():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    p = torch.randn(2, 2, 4, generator=g, dtype=torch.float64)
    out = cosine_logits(f, p, scale=20.0)
    for b in range(2):
        for j in range(2):
            for y in range(3):
                for x in range(3):
                    fv = [float(f[b, k, y, x]) for k in range(4)]
                    pv = [float(p[b, j, k]) for k in range(4)]
                    dot = sum(a * c for a, c in zip(fv, pv))
                    cos = dot / (math.sqrt(sum(a * a for a in fv)) * math.sqrt(sum(c * c for c in pv)))
                    assert float(out[b, j, y, x]) == pytest.approx(20 * cos, abs=1e-10)


def test_episode_prototypes_mean_over_shots_and_ignore():
    g = torch.Generator().manual_seed(3)
    b, k, c, h, w = 2, 3, 4, 5, 5
    f = torch.randn(b, k, c, h, w, generator=g, dtype=torch.float64)
    masks = torch.randint(0, 2, (b, k, h, w), generator=g)
    masks[:, :, 0, :] = 255  # ignored pixels are in neither prototype
    out = episode_prototypes(f, masks)
    assert out.shape == (b, 2, c)
    for e in range(b):
        for j, code in ((0, 0), (1, 1)):
            shots = [_pool_loop(f[e, s], (masks[e, s] == code).double()) for s in range(k)]
            want = [sum(v[i] for v in shots) / k for i in range(c)]
            assert out[e, j].tolist() == pytest.approx(want, abs=1e-12)


class _Pixels(torch.nn.Module):
    """An 'encoder' whose feature map is the image itself: prototypes are mean colours."""

    def forward_features(self, x):
        return x


def test_prototype_segmenter_separates_colours():
    # red squares on blue: the support's red prototype finds the query's red pixels exactly
    img = torch.zeros(1, 3, 8, 8)
    img[:, 2] = 1
    img[:, :, 2:5, 2:5] = torch.tensor([1.0, 0, 0])[:, None, None]
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[:, 2:5, 2:5] = 1
    q = torch.zeros(1, 3, 8, 8)
    q[:, 2] = 1
    q[:, :, 4:8, 0:3] = torch.tensor([1.0, 0, 0])[:, None, None]
    logits = PrototypeSegmenter(_Pixels()).segment_episode(img[:, None], mask[:, None], q)
    assert logits.shape == (1, 2, 8, 8)
    want = torch.zeros(8, 8, dtype=torch.long)
    want[4:8, 0:3] = 1
    assert torch.equal(logits.argmax(1)[0], want)
    assert float(logits.max()) == pytest.approx(20.0, abs=1e-4)


# ----------------------------------------------------------------------------- ProtoSeg training
def _protoseg(tiny, *extra):
    cfg = load_config("protoseg", [*tiny, *extra])
    torch.manual_seed(0)
    method = build_method(cfg)
    train, _ = build_datasets(cfg.data)
    method.setup_data(train)
    return cfg, method


def test_protoseg_loss_is_query_ce_plus_alignment(tiny):
    cfg, method = _protoseg(tiny, "method.shots=2")
    assert segments_episodes(method)
    method.eval()  # BatchNorm with running statistics: the same features in both computations
    b = 3
    batch = {"images": torch.zeros(b, 3, 32, 32, dtype=torch.uint8), "step": 5}
    out = method(batch)
    ep = method.episodes.batch(range(5 * b, 6 * b))
    seg = method.segmenter
    s_img, s_mask, q_img, q_mask = ep["support_images"], ep["support_masks"], ep["query_image"], ep["query_mask"]
    fs = torch.stack([seg.features(s_img[:, j]) for j in range(2)], 1)
    fq = seg.features(q_img)
    protos = episode_prototypes(fs, s_mask)
    logits = F.interpolate(20 * torch.stack([F.cosine_similarity(fq, protos[:, j, :, None, None], dim=1) for j in range(2)], 1),
                           size=(32, 32), mode="bilinear", align_corners=False)  # fmt: skip
    q_loss = F.cross_entropy(logits, q_mask, ignore_index=255)
    pred = logits.argmax(1)
    qp = torch.stack([masked_average_pool(fq, (pred == j).float()) for j in range(2)], 1)  # (B, 2, C)
    per_episode, kept = [], []
    for e in range(b):
        shots = []
        for j in range(2):
            sl = F.interpolate(20 * torch.stack([F.cosine_similarity(fs[e : e + 1, j], qp[e : e + 1, i, :, None, None], dim=1)
                                                 for i in range(2)], 1), size=(32, 32), mode="bilinear", align_corners=False)  # fmt: skip
            shots.append(F.cross_entropy(sl, s_mask[e : e + 1, j], ignore_index=255))
        per_episode.append(sum(shots) / 2)
        kept.append(bool((pred[e] == 1).any()))
    assert any(kept)
    align = sum(v for v, keep in zip(per_episode, kept) if keep) / sum(kept)
    want = q_loss + align
    assert float(out["loss"].detach()) == pytest.approx(float(want.detach()), rel=1e-4)
    assert float(out["query_loss"]) == pytest.approx(float(q_loss.detach()), rel=1e-4)


def test_protoseg_steps_change_weights(tiny):
    cfg, method = _protoseg(tiny)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    for step in range(3):
        out = method({"images": torch.zeros(4, 3, 32, 32, dtype=torch.uint8), "step": step})
        assert math.isfinite(float(out["loss"]))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    changed = [k for k, v in method.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any("encoder" in k for k in changed)


def test_protoseg_bad_fold_is_one_line(tiny):
    from contrastlab.errors import ConfigError, UserError

    with pytest.raises(ConfigError, match="method.fold=2: there are method.folds=2"):
        load_config("protoseg", [*tiny, "method.folds=2", "method.fold=2"])
    cfg = load_config("protoseg", [*tiny, "method.fold=3"])
    method = build_method(cfg)
    with pytest.raises(UserError, match="fold=3: digits-train has folds 0..1"):
        method.setup_data(build_datasets(cfg.data)[0])


# ----------------------------------------------------------------------------- through the command line
def _last_json(capsys):
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    return json.loads(lines[-1])


def test_recipe_trains_and_evaluates_1_and_5_shot(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "protoseg", *tiny, "trainer.max_steps=4", "trainer.log_every=2", "trainer.threads=1",
            "optim.batch_size=4", f"trainer.out_dir={out}"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in rows if r["loss"]]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    capsys.readouterr()
    assert main(["eval", "fewshot", str(out), "episodes=30", "shots=1"]) == 0
    r1 = _last_json(capsys)
    assert r1["protocol"] == "fewshot" and r1["segmenter"] == "protoseg" and r1["fold"] == 0
    assert r1["novel_classes"] == ["0", "1", "2", "3", "4"] and sum(r1["episodes_per_class"].values()) == 30
    assert 0 <= r1["miou"] <= 1 and 0 <= r1["fb_iou"] <= 1 and "dice" not in r1
    scored = [v for v in r1["per_class_iou"].values() if v is not None]
    assert r1["miou"] == pytest.approx(sum(scored) / len(scored), abs=1e-3)
    assert main(["eval", "fewshot", str(out), "episodes=30", "shots=5"]) == 0
    r5 = _last_json(capsys)
    assert r5["shots"] == 5 and r5["variant"] == "5shot/fold0"
    evals = json.loads((out / "eval.json").read_text())
    assert {"fewshot/mask/model/1shot/fold0", "fewshot/mask/model/5shot/fold0"} <= set(evals)
    # the same seed gives the same episodes and the same numbers; the kept episodes are those of the seed
    assert main(["eval", "fewshot", str(out), "episodes=30", "shots=1"]) == 0
    assert _last_json(capsys)["miou"] == r1["miou"]
    from contrastlab.data.episodes import source_of

    test_set = build_datasets(load_config("protoseg", tiny).data)[1]
    for seed in (0, 3):
        assert main(["eval", "fewshot", str(out), "episodes=8", "shots=1", f"seed={seed}", "n_examples=4"]) == 0
        kept = torch.load(out / _last_json(capsys)["examples"], weights_only=True)
        want = source_of(test_set).novel_episodes(0, 1, seed=seed).batch(range(4))
        assert torch.equal(kept["query_index"], want["query_index"]) and torch.equal(kept["support_index"], want["support_index"])
    # the report draws the kept episodes
    from contrastlab.report.run import fewshot_figure

    fig = fewshot_figure(out, evals, tmp_path / "img")
    assert fig is not None and (tmp_path / "img" / fig[1]).is_file() and "mIoU" in fig[2]


def test_baseline_on_a_simclr_encoder_and_organs(tiny, tmp_path, capsys):
    out = tmp_path / "simclr"
    assert main(["train", "simclr", *tiny, "trainer.max_steps=1", "trainer.threads=1", f"trainer.out_dir={out}"]) == 0
    capsys.readouterr()
    assert main(["eval", "fewshot", str(out), "episodes=20", "stage=2"]) == 0
    r = _last_json(capsys)
    assert r["segmenter"] == "prototype baseline on the model encoder" and 0 <= r["miou"] <= 1
    assert main(["eval", "fewshot", str(out), "episodes=20", "data=organs", "fold=2", "features=random"]) == 0
    r = _last_json(capsys)
    assert r["novel_classes"] == ["left_kidney"] and r["data"] == "organs"
    assert 0 <= r["dice"] <= 1 and r["per_volume_dice"] and all(k.endswith("/left_kidney") for k in r["per_volume_dice"])
    # encoder_from: ProtoSeg's meta-training starts from the SimCLR run's encoder
    from contrastlab.checkpoint import load_checkpoint

    _, method = _protoseg(tiny, f"method.encoder_from={out}")
    state = load_checkpoint(out)["model"]
    for k, v in method.encoder.state_dict().items():
        assert torch.equal(v, state[f"encoder.{k}"]), k


def test_eval_errors_are_one_line(tiny, tmp_path, capsys):
    out = tmp_path / "simclr"
    assert main(["train", "simclr", *tiny, "trainer.max_steps=1", "trainer.threads=1", f"trainer.out_dir={out}"]) == 0
    capsys.readouterr()
    for args, text in ((["fold=4"], "fold=4: digits-test has folds 0..1"),
                       (["shots=20"], "fewer than the 21"),
                       (["data=nosuch"], "data=nosuch: not a registered data set")):  # fmt: skip
        assert main(["eval", "fewshot", str(out), "episodes=5", *args]) != 0
        err = capsys.readouterr().err.strip()
        assert text in err and len(err.splitlines()) == 1, err


def _colour_source():
    """Each class a colour of its own: class c's pixels are (c / 8, 1 - c / 8, 0.5), background black."""
    from contrastlab.data.episodes import EpisodeSource

    n, s = 12, 8
    g = torch.Generator().manual_seed(4)
    masks = torch.zeros(n, s, s, dtype=torch.uint8)
    for i in range(n):
        c = 1 + i % 3
        y, x = (int(v) for v in torch.randint(0, s - 3, (2,), generator=g))
        masks[i, y : y + 3, x : x + 3] = c
    masks[:, 0, 0] = 255
    col = torch.zeros(4, 3)
    for c in range(1, 4):
        col[c] = torch.tensor([c / 8, 1 - c / 8, 0.5])
    images = (col[masks.long().clamp(max=3)].permute(0, 3, 1, 2) * 255).round().to(torch.uint8)
    return EpisodeSource(images, masks, ["bg", "a", "b", "c"], [[1], [2], [3]], name="colours")


def test_evaluate_episodes_scores_a_perfect_and_an_inverted_segmenter():
    from contrastlab.eval.fewshot import evaluate_episodes

    src = _colour_source()
    sampler = src.sampler([1, 2, 3], 2, seed=0)
    scores, ex = evaluate_episodes(PrototypeSegmenter(_Pixels()), sampler, 12, batch_size=5, keep=3)
    r = scores.result()
    assert r["miou"] == pytest.approx(1.0) and r["fb_iou"] == pytest.approx(1.0)
    assert ex["pred"].shape == (3, 8, 8) and torch.equal(ex["query_index"], sampler.batch(range(3))["query_index"])

    class Inverted(torch.nn.Module):
        def segment_episode(self, s, m, q):
            return -PrototypeSegmenter(_Pixels()).segment_episode(s, m, q)

    r = evaluate_episodes(Inverted(), sampler, 12, batch_size=5)[0].result()
    # every class pixel predicted background; black pixels (cosine 0 to both prototypes: a tie) stay background
    assert r["miou"] == pytest.approx(0.0) and r["fg_iou"] == pytest.approx(0.0) and r["fb_iou"] < 0.5


def test_episode_picture_tints_the_masks():
    from contrastlab.report.pictures import episode_picture, overlay

    img = torch.full((3, 4, 4), 100, dtype=torch.uint8)
    m = torch.zeros(4, 4, dtype=torch.long)
    m[1, 1], m[0, 0] = 1, 255
    o = overlay(img, m)
    assert o.shape == (4, 4, 3) and o[2, 2].tolist() == [35, 35, 35]  # outside the mask: dimmed
    assert o[1, 1, 0] > 100 and o[1, 1, 1] < 100  # red tint
    assert o[0, 0].tolist() == [130, 130, 130]  # ignore: halfway to grey 160
    pic = episode_picture(img[None, None].expand(2, 3, 3, 4, 4), m[None, None].expand(2, 3, 4, 4), img[None].expand(2, 3, 4, 4),
                          m[None].expand(2, 4, 4), m[None].expand(2, 4, 4), row_names=["a", "b"])  # fmt: skip
    assert pic["grid"].shape[0] == 2 * (64 + 4) + 4 and pic["row_names"] == ["a", "b"]
