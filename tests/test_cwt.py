"""CWT (issue 18): the classifier weight transformer against a hand computation with fixed weights,
the class-weighted CE against a loop, the per-episode classifier fit, the frozen stage-1 network,
and training of both stages via the real trainer."""
import math

import pytest
import torch

from contrastlab.config import from_dict
from contrastlab.losses import episode_weighted_ce
from contrastlab.methods import build_method
from contrastlab.nn import ClassifierWeightTransformer, PSPNet, PyramidPooling


def hand_transformer(t, w, f):
    """LayerNorm(W + FC(concat_h softmax(W P_h (F P_h)^T / sqrt(d)) F P_h)), loops, float64."""
    b, p, d = w.shape
    pix = f.flatten(2).transpose(1, 2)  # (B, N, d)
    n, heads = pix.shape[1], t.heads
    P = t.proj.weight.detach().double()  # (heads d, d): row j of head h is P[h d + j]
    out = torch.zeros(b, p, d, dtype=torch.float64)
    for i in range(b):
        for k in range(p):
            cat = []
            for h in range(heads):
                rows = P[h * d:(h + 1) * d]
                q = [sum(float(rows[j, c]) * float(w[i, k, c]) for c in range(d)) for j in range(d)]
                keys = [[sum(float(rows[j, c]) * float(pix[i, m, c]) for c in range(d)) for j in range(d)] for m in range(n)]
                s = [sum(q[j] * keys[m][j] for j in range(d)) / math.sqrt(d) for m in range(n)]
                z = max(s)
                e = [math.exp(v - z) for v in s]
                a = [v / sum(e) for v in e]
                cat += [sum(a[m] * keys[m][j] for m in range(n)) for j in range(d)]
            fc = [sum(float(t.fc.weight[j, c]) * cat[c] for c in range(heads * d)) + float(t.fc.bias[j]) for j in range(d)]
            r = [float(w[i, k, j]) + fc[j] for j in range(d)]
            mu = sum(r) / d
            var = sum((v - mu) ** 2 for v in r) / d
            for j in range(d):
                out[i, k, j] = (r[j] - mu) / math.sqrt(var + t.norm.eps) * float(t.norm.weight[j]) + float(t.norm.bias[j])
    return out


@pytest.mark.parametrize("heads", [1, 3])
def test_weight_transformer_matches_a_hand_computation_with_fixed_weights(heads):
    torch.manual_seed(heads)
    t = ClassifierWeightTransformer(4, heads=heads, dropout=0.5, attn_dropout=0.1).double().eval()
    with torch.no_grad():  # a non-trivial LayerNorm affine
        t.norm.weight.uniform_(0.5, 1.5)
        t.norm.bias.uniform_(-0.3, 0.3)
    w = torch.randn(2, 2, 4, dtype=torch.float64)
    f = torch.randn(2, 4, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        got = t(w, f)
        want = hand_transformer(t, w, f)
    assert got.shape == (2, 2, 4)
    torch.testing.assert_close(got, want)


def test_weight_transformer_is_residual_with_layer_norm():
    """With the FC zeroed the update is LayerNorm(W) exactly; dropout is active only in training."""
    t = ClassifierWeightTransformer(6, heads=2).double()
    with torch.no_grad():
        t.fc.weight.zero_()
        t.fc.bias.zero_()
    w = torch.randn(3, 2, 6, dtype=torch.float64)
    got = t.eval()(w, torch.randn(3, 6, 4, 4, dtype=torch.float64))
    torch.testing.assert_close(got, torch.nn.functional.layer_norm(w, (6,), eps=t.norm.eps))
    t.train()
    f = torch.randn(3, 6, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        t.fc.bias.fill_(1.0)
        outs = {tuple(t(w, f).flatten()[:4].tolist()) for _ in range(3)}
    assert len(outs) > 1  # training draws dropout masks


def loop_weighted_ce(logits, target, ignore=255):
    total = 0.0
    for e in range(logits.shape[0]):
        vals = [int(v) for v in target[e].flatten() if int(v) != ignore]
        fg, bg = max(sum(v == 1 for v in vals), 1), max(sum(v == 0 for v in vals), 1)
        wts = [1.0, bg / fg]
        num = den = 0.0
        for n in range(logits.shape[1]):
            for y in range(logits.shape[3]):
                for x in range(logits.shape[4]):
                    t = int(target[e, n, y, x])
                    if t == ignore:
                        continue
                    z = [float(logits[e, n, j, y, x]) for j in range(2)]
                    lse = max(z) + math.log(sum(math.exp(v - max(z)) for v in z))
                    num += wts[t] * (lse - z[t])
                    den += wts[t]
        total += num / den
    return total


def test_episode_weighted_ce_matches_a_loop_and_pytorchs_weighted_mean():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 2, 2, 4, 5, dtype=torch.float64, generator=g)
    target = (torch.rand(3, 2, 4, 5, generator=g) > 0.7).long()
    target[0, 0, 0] = 255
    target[2] = 0  # an episode without foreground: weight n_bg / 1
    got = episode_weighted_ce(logits, target)
    assert abs(float(got) - loop_weighted_ce(logits, target)) < 1e-10
    assert abs(float(episode_weighted_ce(logits, target, reduction="mean")) - float(got) / 3) < 1e-12
    t1 = target[1].flatten()
    w = torch.tensor([1.0, float((t1 == 0).sum()) / float((t1 == 1).sum())], dtype=torch.float64)
    ref = torch.nn.functional.cross_entropy(logits[1], target[1], weight=w, ignore_index=255)
    assert abs(float(episode_weighted_ce(logits[1:2], target[1:2])) - float(ref)) < 1e-12


def test_pyramid_pooling_concatenates_the_map_and_its_pooled_bins():
    ppm = PyramidPooling(8, (1, 2)).eval()
    x = torch.randn(2, 8, 5, 5)
    y = ppm(x)
    assert y.shape == (2, 16, 5, 5) and torch.equal(y[:, :8], x)
    # the bin-1 branch is constant over the map
    assert torch.allclose(y[:, 8:12], y[:, 8:12, :1, :1].expand(-1, -1, 5, 5))


# --------------------------------------------------------------------------- the method
def cwt_cfg(**method):
    m = {"name": "cwt", "bottleneck_dim": 8, "heads": 2, "adapt_steps": 30, "classifier_lr": 0.5} | method
    return from_dict({"method": m, "data": {"name": "digits"}, "model": {"backbone": "small_cnn", "width": 4},
                      "trainer": {"max_steps": 2}})  # fmt: skip


def episode_batch(e=2, k=1, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(e, k, size, size, dtype=torch.long)
    masks[..., 8:20, 10:24] = 1
    masks[..., 0, :] = 255
    images = torch.rand(e, k, 3, size, size, generator=g) * 0.3
    images[:, :, 0] += masks.float() * 0.7  # the class is a red square
    q = torch.rand(e, 3, size, size, generator=g) * 0.3
    qm = torch.zeros(e, size, size, dtype=torch.long)
    qm[:, 12:26, 4:16] = 1
    q[:, 0] += qm.float() * 0.7
    return {"support_images": images, "support_masks": masks, "query_image": q, "query_mask": qm}


def test_the_per_episode_classifier_fit_lowers_its_support_loss_and_each_episode_fits_alone():
    torch.manual_seed(0)
    m = build_method(cwt_cfg(adapt_steps=50, classifier_lr=0.5))
    g = torch.Generator().manual_seed(4)
    masks = (torch.rand(3, 2, 8, 8, generator=g) > 0.7).long()
    masks[0, 0, 0] = 255
    direction = torch.randn(8, generator=g)
    f_s = torch.randn(3, 2, 8, 8, 8, generator=g) * 0.3 + (masks == 1).float()[:, :, None] * direction[:, None, None]

    def support_loss(w):
        logits = torch.einsum("epd,ekdhw->ekphw", w, f_s)
        return float(episode_weighted_ce(logits, masks))

    m.cfg.adapt_steps = 0
    start = support_loss(m.fit_classifiers(f_s, masks, torch.Generator().manual_seed(5)))
    m.cfg.adapt_steps = 50
    w = m.fit_classifiers(f_s, masks, torch.Generator().manual_seed(5))
    assert w.shape == (3, 2, 8) and not w.requires_grad
    assert support_loss(w) < 0.5 * start
    # episode 1's weights follow its own loss only: other episodes' masks do not change them
    other = masks.clone()
    other[0] = 1 - other[0].clamp(max=1)
    other[2] = 0
    w2 = m.fit_classifiers(f_s, other, torch.Generator().manual_seed(5))
    torch.testing.assert_close(w2[1], w[1])
    assert not torch.allclose(w2[0], w[0])


def test_only_the_transformer_trains_and_the_network_stays_in_eval_mode():
    torch.manual_seed(0)
    m = build_method(cwt_cfg()).train()
    assert not m.net.training and m.transformer.training
    out = m(episode_batch())
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(p.grad is None and not p.requires_grad for p in m.net.parameters())
    assert all(p.grad is not None for p in m.transformer.parameters())
    m.eval()
    with torch.no_grad():
        b = episode_batch(k=2)
        logits = m.segment_episode(b["support_images"], b["support_masks"], b["query_image"])
    assert logits.shape == (2, 2, 32, 32)


def test_bad_options_fail_with_one_line():
    from contrastlab.errors import ConfigError

    for key, val, match in [("heads", 0, "heads"), ("bins", [], "bin sizes"), ("classifier_lr", 0, "classifier_lr")]:
        with pytest.raises(ConfigError, match=match) as e:
            cwt_cfg(**{key: val})
        assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- the real trainer
TINY_FS = ["data.n_train=200", "data.n_test=100", "model.width=4", "trainer.threads=1", "trainer.log_every=1",
           "trainer.knn_every=0"]  # fmt: skip


def _train(args, capsys):
    from contrastlab.cli import main

    assert main(["train", *args]) == 0, capsys.readouterr().err[-2000:]


def test_both_stages_train_via_the_trainer_and_stage2_leaves_the_stage1_network_bit_identical(tmp_path, capsys):
    import json

    from contrastlab.checkpoint import load_checkpoint
    from contrastlab.cli import main
    from contrastlab.config import load_config

    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    _train(["cwt_stage1", *TINY_FS, "method.bottleneck_dim=8", "optim.batch_size=8", "trainer.max_steps=3",
            f"trainer.out_dir={s1}"], capsys)  # fmt: skip
    stage2 = [*TINY_FS, "method.bottleneck_dim=8", "method.adapt_steps=5", "optim.batch_size=2", "trainer.max_steps=3",
              f"method.stage1={s1}"]  # fmt: skip
    _train(["cwt", *stage2, f"trainer.out_dir={s2}"], capsys)
    one, two = load_checkpoint(s1)["model"], load_checkpoint(s2)["model"]
    frozen = [k for k in one if k.startswith("net.") and not k.startswith("net.classifier.")]
    assert frozen and set(frozen) == {k for k in two if k.startswith("net.")}
    for k in frozen:  # weights and BatchNorm statistics, bit for bit
        assert torch.equal(one[k], two[k]), k
    assert not any(torch.equal(one[k], torch.zeros_like(one[k])) for k in frozen if k.endswith("conv.weight"))
    # the transformer trained: its weights left their initial values
    torch.manual_seed(0)
    init = build_method(load_config("cwt", stage2)).state_dict()
    assert any(not torch.equal(init[k], two[k]) for k in two if k.startswith("transformer."))
    rows = (s2 / "metrics.csv").read_text().splitlines()
    assert len(rows) >= 4 and all(math.isfinite(float(r.split(",")[1])) for r in rows[1:4])
    capsys.readouterr()
    assert main(["eval", "fewshot", str(s2), "episodes=4", "batch_size=2", "n_examples=0"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["segmenter"] == "cwt" and 0 <= r["miou"] <= 1 and r["episodes"] == 4


def test_stage2_refuses_a_run_that_is_not_stage1_and_another_network_with_one_line(tmp_path, capsys):
    from contrastlab.cli import main

    s1 = tmp_path / "s1"
    _train(["cwt_stage1", *TINY_FS, "method.bottleneck_dim=8", "optim.batch_size=8", "trainer.max_steps=1",
            f"trainer.out_dir={s1}"], capsys)  # fmt: skip
    capsys.readouterr()
    common = [*TINY_FS, "method.bottleneck_dim=8", "method.adapt_steps=1", "optim.batch_size=2", "trainer.max_steps=1"]
    assert main(["train", "cwt", *common, "model.width=6", f"method.stage1={s1}", f"trainer.out_dir={tmp_path / 'a'}"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert "model.width=4 there, 6 here" in err[-1]
    assert main(["train", "cwt", *common, f"method.stage1={tmp_path / 'none'}", f"trainer.out_dir={tmp_path / 'b'}"]) != 0
    assert "does not exist" in capsys.readouterr().err.strip().splitlines()[-1]


def test_stage1_refuses_a_class_count_that_is_not_the_datas_with_one_line(tmp_path, capsys):
    from contrastlab.cli import main

    assert main(["train", "cwt_stage1", *TINY_FS, "method.num_classes=4", "optim.batch_size=8", "trainer.max_steps=1",
                 f"trainer.out_dir={tmp_path / 'x'}"]) != 0  # fmt: skip
    assert "set method.num_classes=6" in capsys.readouterr().err.strip().splitlines()[-1]


def test_stage1_steps_draw_the_base_view_and_minimise_its_cross_entropy():
    from contrastlab.config import load_config
    from contrastlab.data import build_datasets
    from contrastlab.data.episodes import source_of

    cfg = load_config("cwt_stage1", ["data.n_train=120", "data.n_test=40", "model.width=4", "method.bottleneck_dim=8",
                                     "trainer.max_steps=2"])  # fmt: skip
    train, _ = build_datasets(cfg.data)
    m = build_method(cfg).eval()
    m.setup_data(train)
    base = source_of(train).base_view(0)
    images, masks = m.draw(3, 4)
    perm = torch.randperm(len(base), generator=torch.Generator().manual_seed(0 * 7_777 + 3 // (len(base) // 4)))
    idx = perm[(3 % (len(base) // 4)) * 4:(3 % (len(base) // 4)) * 4 + 4]
    assert torch.equal(images, base.images[idx]) and torch.equal(masks, base.masks[idx].long())
    assert set(masks.unique().tolist()) <= set(range(6)) | {255}
    with torch.no_grad():
        out = m({"images": images, "masks": masks})
        ref = torch.nn.functional.cross_entropy(m.net(images.float() / 255), masks, ignore_index=255)
        drawn = m({"images": torch.zeros(4, 3, 32, 32, dtype=torch.uint8), "step": 3})
    assert torch.allclose(out["loss"], ref) and torch.allclose(drawn["loss"], ref)
    # stage 1 alone segments episodes as a prototype segmenter of its features
    sup, smask = images[:2].unsqueeze(1).float() / 255, (masks[:2] == 1).long().unsqueeze(1)
    with torch.no_grad():
        logits = m.segment_episode(sup, smask, images[2:].float() / 255)
        f = m.net.features(images.float() / 255)
    fg = torch.nn.functional.interpolate(f[:2], (32, 32), mode="bilinear")
    w = smask[:, 0, None].float()
    proto = (fg * w).sum((2, 3)) / (w.sum((2, 3)) + 1e-5)
    cos = torch.nn.functional.cosine_similarity(f[2:], proto[:, :, None, None], dim=1)
    want = torch.nn.functional.interpolate((20 * cos)[:, None], (32, 32), mode="bilinear")[:, 0]
    assert logits.shape == (2, 2, 32, 32) and torch.allclose(logits[:, 1], want, atol=1e-5)


def test_a_training_step_takes_the_samplers_episodes_of_its_step():
    from contrastlab.methods.episodic import episode_batch

    class Sampler:
        def batch(self, indices):
            return {"query_image": torch.tensor(list(indices), dtype=torch.float)}

    got = episode_batch(Sampler(), {"images": torch.zeros(3, 3, 4, 4), "step": 5}, "x")
    assert got["query_image"].tolist() == [15.0, 16.0, 17.0]
    own = {"support_images": torch.zeros(1)}
    assert episode_batch(None, own, "x") is own
    with pytest.raises(RuntimeError, match="setup_data"):
        episode_batch(None, {"images": torch.zeros(1, 3, 4, 4)}, "x")


def test_pspnet_features_and_logits_sizes():
    from contrastlab.nn import Encoder, SmallCNN

    net = PSPNet(Encoder(SmallCNN(4)), 5, (1, 2), 8).eval()
    x = torch.rand(2, 3, 32, 32)
    assert net.features(x).shape == (2, 8, 4, 4) and net(x).shape == (2, 5, 32, 32)
    with pytest.raises(RuntimeError, match="no classifier"):
        PSPNet(Encoder(SmallCNN(4)), None, (1, 2), 8)(x)


def test_query_logits_are_the_updated_weights_on_the_normalised_query_features():
    import torch.nn.functional as F

    torch.manual_seed(0)
    m = build_method(cwt_cfg(adapt_steps=0)).eval()
    b = episode_batch()
    with torch.no_grad():
        got = m.query_logits(b["support_images"], b["support_masks"], b["query_image"], torch.Generator().manual_seed(3))
        w0 = (torch.rand(2, 2, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1) * 8 ** -0.5
        f_q = m.net.features(b["query_image"])
        f_q = f_q / f_q.norm(dim=1, keepdim=True).clamp_min(1e-12)
        w = m.transformer(w0, f_q)
        want = torch.stack([torch.stack([(w[e, p][:, None, None] * f_q[e]).sum(0) for p in range(2)]) for e in range(2)])
        want = F.interpolate(want, (32, 32), mode="bilinear", align_corners=True)
    torch.testing.assert_close(got, want)
