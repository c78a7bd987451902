"""``contrastlab eval robust``: the attacked accuracy of a linear classifier against its closed form (a two-class
linear model under an l_inf attack loses exactly eps * ||w_y - w_other||_1 of margin), the probe as a layer, the
robust linear probe (trains the layer, leaves the encoder as it was), a classifier method attacked directly, and
the command on a tiny run: the JSON's every part (clean / PGD / FGSM curve over eps, robust linear evaluation,
transfer from a second run, kept examples, eval.json) and one-line errors."""
import json
import math

import pytest
import torch
import torch.nn as nn

from contrastlab.cli import main
from contrastlab.eval import robust
from contrastlab.eval.linear import LinearClassifier
from contrastlab.eval.robust import ProbeClassifier, ProbeHead, attacked_accuracy, robust_linear_probe


def _linear_two_class(seed=0, n=40, shape=(3, 2, 2)):
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    w = torch.randn(2, d, generator=g, dtype=torch.float64)
    b = torch.randn(2, generator=g, dtype=torch.float64) * 0.1
    x = 0.3 + 0.4 * torch.rand(n, *shape, generator=g, dtype=torch.float64)  # 0.3 from the box's faces
    y = torch.randint(0, 2, (n,), generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 2)).double()
    with torch.no_grad():
        model[1].weight.copy_(w)
        model[1].bias.copy_(b)
    return model, x, y, w, b


def _closed_form_accuracy(x, y, w, b, eps):
    """A point stays correct iff its margin exceeds eps * sum_k |w_y,k - w_o,k|, one coordinate at a time."""
    right = 0
    for xi, yi in zip(x.flatten(1).tolist(), y.tolist()):
        o = 1 - yi
        margin = sum((w[yi, k] - w[o, k]).item() * v for k, v in enumerate(xi)) + (b[yi] - b[o]).item()
        l1 = sum(abs((w[yi, k] - w[o, k]).item()) for k in range(len(xi)))
        right += margin - eps * l1 > 0
    return right / len(y)


@pytest.mark.parametrize("eps", [0.0, 0.01, 0.05, 0.1])
def test_pgd_and_fgsm_accuracy_of_a_linear_model_match_the_closed_form(eps):
    model, x, y, w, b = _linear_two_class()
    expect = _closed_form_accuracy(x, y, w, b, eps)
    r = attacked_accuracy(model, x, y, eps, "pgd", steps=10, step_size=eps / 2 if eps else None, batch_size=16)
    assert r["top1"] == pytest.approx(expect)
    # FGSM is optimal for a two-class linear model (the gradient's sign is constant over the ball)
    assert attacked_accuracy(model, x, y, eps, "fgsm", batch_size=7)["top1"] == pytest.approx(expect)
    assert all(p.requires_grad for p in model.parameters()) and model.training


def test_the_accuracy_falls_with_eps_and_transfer_judges_score_the_same_images():
    model, x, y, w, b = _linear_two_class(seed=1, n=60)
    accs = [attacked_accuracy(model, x, y, e, steps=10, step_size=e / 2 if e else None)["top1"] for e in (0, 0.02, 0.06, 0.1)]
    assert accs == sorted(accs, reverse=True) and accs[0] > accs[-1]
    r = attacked_accuracy(model, x, y, 0.06, steps=10, step_size=0.03, judges=[model], keep=5)
    assert r["judges"][0] == pytest.approx(r["top1"])  # the source judging its own examples
    assert r["kept"]["adv"].shape == (5, *x.shape[1:]) and (r["kept"]["adv"] - r["kept"]["clean"]).abs().max() <= 0.06 + 1e-9


def test_the_probe_head_is_the_linear_classifier_as_a_layer():
    g = torch.Generator().manual_seed(2)
    clf = LinearClassifier(torch.randn(4, 6, generator=g), torch.randn(4, generator=g), torch.randn(6, generator=g),
                           torch.rand(6, generator=g) + 0.5)  # fmt: skip
    f = torch.randn(9, 6, generator=g)
    torch.testing.assert_close(ProbeHead.from_classifier(clf)(f), clf.logits(f))
    assert not any(p.requires_grad for p in ProbeHead.from_classifier(clf).parameters())


def test_the_robust_linear_probe_trains_the_layer_and_leaves_the_encoder_alone():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten()).train()
    encoder[0].bias.requires_grad_(False)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    flags = [p.requires_grad for p in encoder.parameters()]
    images = torch.randint(0, 256, (24, 3, 6, 6), dtype=torch.uint8)
    labels = torch.arange(24) % 3
    head = ProbeHead(torch.zeros(3, 64), torch.zeros(3))
    trained = robust_linear_probe(encoder, head, images, labels, eps=8 / 255, steps=2, step_size=4 / 255, epochs=2,
                                  lr=0.1, weight_decay=0.0, batch_size=8)  # fmt: skip
    assert not torch.equal(trained.weight, head.weight) and torch.equal(head.weight, torch.zeros(3, 64))
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())  # BN statistics too
    assert [p.requires_grad for p in encoder.parameters()] == flags and encoder.training
    assert not trained.weight.requires_grad


# ----------------------------------------------------------------------------- the command on a tiny run
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from conftest import TINY

    out = {}
    for name, seed in (("a", 0), ("b", 1)):
        d = tmp_path_factory.mktemp("robust") / name
        assert main(["train", "rocl", *TINY, "trainer.max_steps=3", "trainer.threads=1", f"seed={seed}",
                     "method.attack_steps=2", f"trainer.out_dir={d}"]) == 0  # fmt: skip
        out[name] = d
    return out


FAST = ["n_train=96", "n_test=48", "steps=3", "probe_epochs=2", "train_steps=2", "epochs=30", "n_examples=4"]


def _last_json(capsys):
    return json.loads([line for line in capsys.readouterr().out.splitlines() if line.strip()][-1])


def test_eval_robust_prints_every_part_on_its_last_line(runs, capsys):
    capsys.readouterr()
    assert main(["eval", "robust", str(runs["a"]), *FAST, "eps=[0.01,0.0314]", f"source={runs['b']}"]) == 0
    r = _last_json(capsys)
    assert r["protocol"] == "robust" and r["classifier"] == "linear probe" and r["label"] == "digit"
    assert r["n_train"] == 96 and r["n_test"] == 48 and r["eps"] == [0.01, 0.0314] and r["steps"] == 3
    assert r["step_size"] == pytest.approx([0.01 / 4, 0.0314 / 4])
    for part in (r, r["robust_linear"]):
        curve = part["curve"]
        assert [p["eps"] for p in curve] == [0.0, 0.01, 0.0314]
        assert curve[0]["pgd"] == curve[0]["fgsm"] == part["top1"]
        assert part["pgd_top1"] == curve[1]["pgd"] and part["fgsm_top1"] == curve[1]["fgsm"]
        assert all(0 <= p["pgd"] <= part["top1"] and 0 <= p["fgsm"] <= 1 for p in curve)
    assert r["robust_linear"]["train_steps"] == 2 and r["robust_linear"]["epochs"] == 2
    t = r["transfer"]
    assert t["source"] == str(runs["b"]) and t["eps"] == 0.01 and t["source_classifier"] == "linear probe"
    assert 0 <= t["top1"] <= 1 and 0 <= t["robust_linear_top1"] <= 1 and 0 <= t["source_top1"] <= 1
    ex = torch.load(runs["a"] / r["examples"], weights_only=True)
    assert ex["clean"].shape == ex["adv"].shape == (4, 3, 32, 32) and ex["eps"] == 0.01
    assert (ex["adv"] - ex["clean"]).abs().max() <= 0.01 + 1e-6 and ex["labels"].shape == (4,)
    stored = json.loads((runs["a"] / "eval.json").read_text())["robust/digit/model"]
    assert stored["curve"] == r["curve"]


def test_eval_robust_defaults_are_8_over_255_and_20_steps(runs, capsys):
    capsys.readouterr()
    assert main(["eval", "robust", str(runs["a"]), "n_train=32", "n_test=16", "robust_linear=false", "fgsm=false",
                 "n_examples=0", "epochs=10"]) == 0  # fmt: skip
    r = _last_json(capsys)
    assert r["eps"] == [8 / 255] and r["steps"] == 20 and r["step_size"] == [2 / 255] and r["norm"] == "linf"
    assert "robust_linear" not in r and "transfer" not in r and "fgsm_top1" not in r and "examples" not in r


def test_a_classifier_method_is_attacked_directly(runs, capsys, monkeypatch):
    """A method with classify(x) (adversarial fine-tuning) is scored as it is: no probe is fitted."""
    from contrastlab.eval import run as run_mod

    real = run_mod.load_run
    seen = {}

    def with_classify(checkpoint, overrides):
        cfg, method, ckpt = real(checkpoint, overrides)
        torch.manual_seed(0)
        fc = nn.Linear(method.encoder.out_dim, 10)

        def classify(x):
            seen["called"] = True
            return fc(method.encoder(x))

        method.classify = classify
        seen["model"] = lambda x: fc(method.encoder(x))
        return cfg, method, ckpt

    monkeypatch.setattr(run_mod, "load_run", with_classify)
    capsys.readouterr()
    assert main(["eval", "robust", str(runs["a"]), "n_train=16", "n_test=24", "steps=2", "n_examples=0"]) == 0
    r = _last_json(capsys)
    assert r["classifier"] == "method" and "robust_linear" not in r and seen["called"]
    from contrastlab.data import build_datasets
    from contrastlab.config import load_config
    from contrastlab.eval.features import bank_indices

    cfg = real(str(runs["a"]), [])[0]
    _, test = build_datasets(cfg.data)
    idx = bank_indices(len(test), 24, 1)
    with torch.no_grad():
        pred = seen["model"](test.images[idx].float() / 255).argmax(1)
    assert r["top1"] == pytest.approx(float((pred == test.labels["digit"][idx]).float().mean()))


@pytest.mark.parametrize("args,needle", [
    (["eps=-0.1"], "eps"),
    (["eps=[]"], "eps=[] gives no attack radius"),
    (["steps=0"], "steps"),
    (["norm=l1"], "norm"),
    (["label=colour"], "label='colour'"),
])  # fmt: skip
def test_bad_options_fail_with_one_line(runs, capsys, args, needle):
    capsys.readouterr()
    assert main(["eval", "robust", str(runs["a"]), "n_train=8", "n_test=8", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_robust_is_a_registered_protocol():
    from contrastlab.eval import PROTOCOLS, describe

    assert PROTOCOLS["robust"] == "contrastlab.eval.robust" and describe("robust").startswith("Robust: clean, PGD-k")
    assert robust.Options().eps == (8 / 255,)


# ----------------------------------------------------------------------------- the report of a robust run
def test_the_perturbation_tile_is_the_difference_magnified_to_the_eps_range():
    from contrastlab.report.pictures import adversarial_picture, perturbation_tile

    g = torch.Generator().manual_seed(4)
    clean = torch.rand(3, 4, 5, generator=g)
    adv = (clean + (torch.rand(3, 4, 5, generator=g) - 0.5) * 0.2).clamp(0, 1)
    eps = 0.1
    tile = perturbation_tile(clean, adv, eps)
    for k, (c, a) in enumerate(zip(clean.flatten().tolist(), adv.flatten().tolist())):
        assert tile.flatten()[k].item() == pytest.approx(min(1.0, max(0.0, 0.5 + (a - c) / (2 * eps))), abs=1e-6)
    pic = adversarial_picture(torch.stack([clean, clean]), torch.stack([adv, clean]), eps, ["a", "b"])
    assert pic["grid"].shape == (2 * (4 * 13 + 4) + 4, 3 * (5 * 13 + 4) + 4, 3) and pic["row_names"] == ["a", "b"]


def test_the_report_of_a_robust_run_draws_examples_and_the_eps_curve(runs, capsys):
    assert main(["eval", "robust", str(runs["b"]), *FAST, "eps=[0.01,0.02,0.0314]"]) == 0
    capsys.readouterr()
    assert main(["report", str(runs["b"])]) == 0
    html = (runs["b"] / "report.html").read_text()
    assert "Robustness: adversarial examples" in html and "Robustness: accuracy against eps" in html
    for name in ("adversarial.png", "robust_curve.png"):
        assert (runs["b"] / "report" / name).stat().st_size > 1000


def test_the_transfer_attack_is_made_on_the_source_and_scored_on_this_run(runs, capsys, monkeypatch):
    """The source's classifier makes the examples; this run's probe (the one of the clean scores) and its r-LE
    layer judge them."""
    calls = []
    real = robust.attacked_accuracy

    def spy(model, *args, **kwargs):
        calls.append((model, list(kwargs.get("judges", ()))))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(robust, "attacked_accuracy", spy)
    capsys.readouterr()
    assert main(["eval", "robust", str(runs["a"]), *FAST, "fgsm=false", f"source={runs['b']}"]) == 0
    own = calls[0][0]  # the clean score of this run's probe
    judged = [(m, j) for m, j in calls if j]
    assert len(judged) == 1
    source, judges = judged[0]
    assert source is not own and judges[0] is own and len(judges) == 2 and judges[1] is not own
    assert source.encoder is not own.encoder
    r = _last_json(capsys)
    assert r["transfer"]["source_step"] == 3
