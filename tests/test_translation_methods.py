"""CUT, DCLGAN and SimDCL through the one trainer: wiring, updates, checkpoints, resume, CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from contrastlab.config import load_config
from contrastlab.checkpoint import load_checkpoint
from contrastlab.engine.manual import ManualSteps, OptimizerSet
from contrastlab.engine.trainer import fit
from contrastlab.losses import patch_nce
from contrastlab.methods import build_method

# A tiny generator (8 channels, 1 residual block: modules 0..19, the encoder ends at 10) at 16 px
TINY_GAN = [
    "method.ngf=8", "method.n_blocks=1", "method.ndf=8", "method.n_layers_d=1", "method.nce_layers=[0,4,7,10]",
    "method.num_patches=16", "method.head_dim=16", "method.monitor_images=32", "method.grid_images=4",
    "data.n_train=64", "data.n_test=32", "data.image_size=16", "optim.batch_size=4",
    "trainer.progress=false", "trainer.knn_every=0", "trainer.accelerator=cpu",
]  # fmt: skip


class _Fabric:  # what ManualSteps needs of Fabric outside the trainer
    @staticmethod
    def backward(loss):
        loss.backward()


def _method(name, extra=()):
    torch.manual_seed(0)
    cfg = load_config(name, TINY_GAN + list(extra))
    return cfg, build_method(cfg)


def _pair(b=4, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g), torch.rand(b, 3, size, size, generator=g)


def test_dclgan_queries_come_from_the_other_generators_encoder():
    """NCE1 = PatchNCE(F2(G_B.enc(fake_B)), F1(G_A.enc(real_A))) at the same patch positions, and
    NCE2 = PatchNCE(F1(G_A.enc(fake_A)), F2(G_B.enc(real_B))): recomputed by hand, position by
    position, and different from the same-encoder (CUT-style) wiring."""
    cfg, m = _method("dclgan")
    a, b = _pair()
    real_a, real_b = a * 2 - 1, b * 2 - 1
    with torch.no_grad():
        fake_b, fake_a = m.G_A(real_a), m.G_B(real_b)
        nce1, nce2 = m.nce_losses(real_a, real_b, fake_a, fake_b, torch.Generator().manual_seed(5))
    layers, t, n = m.layers, cfg.method["nce_t"], cfg.method["num_patches"]
    g = torch.Generator().manual_seed(5)

    def by_hand(enc_k, head_k, src, enc_q, head_q, tgt):
        total = 0.0
        with torch.no_grad():
            keys, ids = head_k(enc_k.encode(src, layers), n, generator=g)
            for li, (fq, idx) in enumerate(zip(enc_q.encode(tgt, layers), ids)):
                flat = fq.permute(0, 2, 3, 1).reshape(fq.shape[0], -1, fq.shape[1])[:, idx]  # same positions
                q = F.normalize(head_q.mlps[li](flat), dim=2)
                total = total + patch_nce(q, keys[li], t)
        return total / len(layers)

    assert torch.allclose(nce1, by_hand(m.G_A, m.F1, real_a, m.G_B, m.F2, fake_b), atol=1e-6)
    assert torch.allclose(nce2, by_hand(m.G_B, m.F2, real_b, m.G_A, m.F1, fake_a), atol=1e-6)
    g = torch.Generator().manual_seed(5)
    same_encoder = by_hand(m.G_A, m.F1, real_a, m.G_A, m.F1, fake_b)
    assert not torch.allclose(nce1, same_encoder, atol=1e-4)


def test_dclgan_encoders_see_the_right_images(monkeypatch):
    """Hooks on encode(): G_A encodes real_A (keys) and fake_A (queries), G_B real_B and fake_B."""
    cfg, m = _method("dclgan")
    seen = {"G_A": [], "G_B": []}
    for name in seen:
        net = getattr(m, name)
        orig = net.encode
        monkeypatch.setattr(net, "encode", lambda x, layers, _o=orig, _n=name: seen[_n].append(x) or _o(x, layers))
    a, b = _pair()
    real_a, real_b = a * 2 - 1, b * 2 - 1
    fake_b, fake_a = m.G_A(real_a), m.G_B(real_b)
    m.nce_losses(real_a, real_b, fake_a, fake_b)
    assert [x is real_a for x in seen["G_A"]] == [True, False] and seen["G_A"][1] is fake_a
    assert [x is real_b for x in seen["G_B"]] == [False, True] and seen["G_B"][0] is fake_b


@pytest.mark.parametrize("name", ["cut", "dclgan", "simdcl"])
def test_one_step_updates_d_then_g_and_each_optimiser_touches_only_its_networks(name):
    cfg, m = _method(name)
    opts = OptimizerSet(m.configure_optimizers(cfg.optim))
    d_nets = [m.D] if name == "cut" else [m.D_A, m.D_B]
    g_nets = [m.G, m.F] if name == "cut" else [m.G_A, m.G_B, m.F1, m.F2] + ([m.H_A, m.H_B] if name == "simdcl" else [])
    snap = lambda nets: [p.detach().clone() for n in nets for p in n.parameters()]  # noqa: E731
    d0, g0 = snap(d_nets), snap(g_nets)
    calls = []

    class Recorder(ManualSteps):
        def step(self, which, loss):
            calls.append(which)
            if which == "D":  # the D loss sees detached translations: no gradient reaches G
                super().step(which, loss)
                assert all(p.grad is None for n in g_nets for p in n.parameters())
                self.d_after = snap(d_nets)
            else:
                super().step(which, loss)

    rec = Recorder(_Fabric(), opts, 0)
    a, b = _pair()
    out = m({"a": a, "b": b, "optim": rec, "generator": torch.Generator().manual_seed(0)})
    assert calls == ["D", "G"]
    assert all(torch.isfinite(v) for v in out.values())
    d1, g1 = snap(d_nets), snap(g_nets)
    assert all(torch.equal(x, y) for x, y in zip(rec.d_after, d1))  # the G step leaves D alone
    assert any(not torch.equal(x, y) for x, y in zip(d0, d1))
    changed = [not torch.equal(x, y) for x, y in zip(g0, g1)]
    assert sum(changed) > 0.9 * len(changed)  # every network of the G step moved (heads, both generators, H)
    assert all(p.requires_grad for n in d_nets for p in n.parameters())  # unfrozen again


def test_simdcl_adds_the_similarity_loss_and_dclgan_has_none():
    _, m = _method("simdcl")
    assert m.H_A is not None and m.cfg.lambda_sim == 10.0
    _, d = _method("dclgan")
    assert d.H_A is None


def test_cut_nce_idt_uses_the_identity_pair():
    cfg, m = _method("cut")
    a, b = _pair()
    real_a, real_b = a * 2 - 1, b * 2 - 1
    with torch.no_grad():
        fake_b, idt_b = m.G(torch.cat([real_a, real_b])).chunk(2)
        x = m.nce(real_a, fake_b, torch.Generator().manual_seed(3))
        y = m.nce(real_b, idt_b, torch.Generator().manual_seed(3))
        # same wiring as patch_nce_loss with one generator and one head
        keys, ids = m.F(m.G.encode(real_a, m.layers), cfg.method["num_patches"], generator=torch.Generator().manual_seed(3))
        qs, _ = m.F(m.G.encode(fake_b, m.layers), cfg.method["num_patches"], patch_ids=ids)
    ref = sum(patch_nce(q, k, cfg.method["nce_t"]) for q, k in zip(qs, keys)) / len(m.layers)
    assert torch.allclose(x, ref, atol=1e-6) and not torch.allclose(x, y)


def test_checkpoint_holds_every_network_optimiser_and_schedule(tmp_path):
    res = fit(load_config("dclgan", TINY_GAN + ["trainer.max_steps=3", f"trainer.out_dir={tmp_path}",
                                                  "method.pool_size=2"]))  # fmt: skip
    ck = load_checkpoint(tmp_path / "last.ckpt")
    prefixes = {k.split(".")[0] for k in ck["model"]}
    assert {"G_A", "G_B", "D_A", "D_B", "F1", "F2", "pool_A", "pool_B"} <= prefixes
    assert set(ck["optimizer"]) == {"D", "G"} and set(ck["scheduler"]) == {"D", "G"}
    assert all(ck["optimizer"][n]["state"] for n in ("D", "G"))  # Adam moments of both
    assert int(ck["model"]["pool_A.count"]) == 2  # the history buffer is filled and saved
    assert res.step == 3 and (tmp_path / "samples" / "latest.png").exists()
    assert {"fid_ab", "kid_ab", "fid_ba", "kid_ba"} <= set(res.metrics)


def test_interrupted_translation_run_resumes_to_identical_weights(tmp_path):
    """A run stopped after its first step (time budget 0: the trainer checkpoints and exits) and
    resumed to 12 steps ends with the same weights as an uninterrupted 12-step run: the image
    pools, both optimisers and schedules and the step-seeded B picks carry over."""
    common = TINY_GAN + ["method.pool_size=3", "optim.schedule=linear", "trainer.ckpt_every=100"]
    fit(load_config("dclgan", common + ["trainer.max_steps=12", f"trainer.out_dir={tmp_path / 'full'}"]))
    half = tmp_path / "half"
    fit(load_config("dclgan", common + ["trainer.max_steps=12", f"trainer.out_dir={half}", "trainer.max_minutes=0"]))
    assert load_checkpoint(half / "last.ckpt")["step"] == 1  # stopped by its time budget after one step
    fit(load_config("dclgan", common + ["trainer.max_steps=12", f"trainer.out_dir={half}"]))
    a, b = load_checkpoint(tmp_path / "full" / "last.ckpt"), load_checkpoint(half / "last.ckpt")
    assert a["step"] == b["step"] == 12
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["scheduler"] == b["scheduler"]


def test_translation_methods_refuse_several_processes():
    from contrastlab.errors import UserError

    with pytest.raises(UserError, match="runs in one process for now"):
        fit(load_config("cut", TINY_GAN + ["trainer.devices=2", "trainer.strategy=ddp_spawn", "trainer.max_steps=1"]))


def test_cli_eval_translation_and_translate(tmp_path):
    from PIL import Image

    run = tmp_path / "run"
    fit(load_config("cut", TINY_GAN + ["trainer.max_steps=2", f"trainer.out_dir={run}"]))
    cli = [sys.executable, "-m", "contrastlab.cli"]
    out = subprocess.run(cli + ["eval", "translation", str(run), "extractor=random", "device=cpu"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["extractor"] == "random_conv_seed0_w64" and set(r) >= {"AtoB"} and "BtoA" not in r
    assert r["AtoB"]["n_inputs"] == 32 and r["AtoB"]["fid"] >= 0 and r["AtoB"]["fid_untranslated"] > 0
    # translate a folder (nested, two sizes); a corrupt file is named
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.new("RGB", (20, 18), (200, 10, 10)).save(src / "x.png")
    Image.new("RGB", (16, 16), (10, 200, 10)).save(src / "sub" / "y.jpg")
    out = subprocess.run(cli + ["translate", str(run), str(src), str(tmp_path / "out"), "device=cpu"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["translated"] == 2
    assert Image.open(tmp_path / "out" / "x.png").size == (20, 16)  # rounded down to a multiple of 4
    assert Image.open(tmp_path / "out" / "sub" / "y.png").size == (16, 16)
    (src / "bad.png").write_bytes(b"not a png")
    out = subprocess.run(cli + ["translate", str(run), str(src), str(tmp_path / "out2")], capture_output=True, text=True)
    assert out.returncode == 2 and "bad.png" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(cli + ["translate", str(run), str(src), str(tmp_path / "o3"), "direction=BtoA"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2 and "learns AtoB only" in out.stderr
    out = subprocess.run(cli + ["eval", "knn", str(run)], capture_output=True, text=True)
    assert out.returncode == 2 and "use: contrastlab eval translation" in out.stderr


# ----------------------------------------------------------------------------- translate_folder's files
def _rgb_file(path, color=(200, 10, 10), size=(16, 16), fmt=None):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_translate_folder_refuses_output_overlapping_input(tmp_path):
    """OUT equal to IN, inside IN, containing IN, or reaching IN through a symbolic link: one line,
    and the input images are untouched."""
    from contrastlab.errors import UserError
    from contrastlab.eval.translation import translate_folder

    _, m = _method("cut")
    src = tmp_path / "data" / "in"
    _rgb_file(src / "a.png")
    before = (src / "a.png").read_bytes()
    (tmp_path / "link").symlink_to(src, target_is_directory=True)
    for out in (src, src / "out", tmp_path / "data", tmp_path / "link", tmp_path / "link" / "deeper"):
        with pytest.raises(UserError) as e:
            translate_folder(m, str(src), str(out), progress=False)
        msg = str(e.value)
        assert "choose an output folder outside the input folder" in msg and "\n" not in msg, out
        assert (src / "a.png").read_bytes() == before and _tree(src) == ["a.png"]
    r = translate_folder(m, str(tmp_path / "link"), str(tmp_path / "out"), progress=False)  # a link as IN is fine
    assert r["translated"] == 1 and _tree(tmp_path / "out") == ["a.png"]


def test_translate_folder_same_stem_inputs_keep_both(tmp_path):
    """a.jpg and a.png in one folder both get an output (a.jpg.png, a.png.png); a lone stem keeps
    STEM.png; names are compared ignoring case; a file never takes an output folder's name."""
    from pathlib import Path as P

    import numpy as np
    from PIL import Image

    from contrastlab.eval.translation import translate_folder

    _, m = _method("cut")
    src = tmp_path / "in"
    _rgb_file(src / "a.jpg", (200, 10, 10))
    _rgb_file(src / "a.png", (10, 10, 200))
    _rgb_file(src / "b.bmp")
    _rgb_file(src / "sub" / "a.png")
    r = translate_folder(m, str(src), str(tmp_path / "out"), progress=False)
    assert r["translated"] == 4
    assert _tree(tmp_path / "out") == ["a.jpg.png", "a.png.png", "b.png", "sub/a.png"]
    red = np.asarray(Image.open(tmp_path / "out" / "a.jpg.png"))
    blue = np.asarray(Image.open(tmp_path / "out" / "a.png.png"))
    assert not np.array_equal(red, blue)  # two translations, not one written twice
    from contrastlab.eval.translation import _output_names

    assert _output_names([P("A.png"), P("a.jpg"), P("c.tif")]) == [P("A.png.png"), P("a.jpg.png"), P("c.png")]
    assert _output_names([P("d.jpg"), P("d.png/e.png")]) == [P("d.jpg.png"), P("d.png/e.png")]
    from contrastlab.errors import UserError

    with pytest.raises(UserError, match="inputs a.jpg and a.jpg.png would both be written to a.jpg.png.png"):
        _output_names([P("a.jpg"), P("a.png"), P("a.jpg.png"), P("a.jpg.png/x.png")])


def test_translate_folder_nonempty_output_needs_overwrite(tmp_path):
    from contrastlab.errors import UserError
    from contrastlab.eval.translation import translate_folder

    _, m = _method("cut")
    src, out = tmp_path / "in", tmp_path / "out"
    _rgb_file(src / "x.png")
    r = translate_folder(m, str(src), str(out), progress=False)  # a new folder
    assert r["translated"] == 1
    first = (out / "x.png").read_bytes()
    with pytest.raises(UserError) as e:
        translate_folder(m, str(src), str(out), progress=False)
    msg = str(e.value)
    assert f"output folder {out} is not empty" in msg and "overwrite=true" in msg and "\n" not in msg
    (out / "notes.txt").write_text("mine")
    r = translate_folder(m, str(src), str(out), progress=False, overwrite=True)
    assert r["translated"] == 1 and (out / "notes.txt").read_text() == "mine"
    assert (out / "x.png").read_bytes() == first  # same net, same input
    (tmp_path / "empty").mkdir()
    assert translate_folder(m, str(src), str(tmp_path / "empty"), progress=False)["translated"] == 1
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        translate_folder(m, str(src), str(tmp_path / "afile"), progress=False, overwrite=True)


def test_translate_folder_writes_each_png_atomically(tmp_path, monkeypatch):
    """A translate killed while writing an image leaves no partial PNG under its name (and no
    temporary file when the interruption is an exception)."""
    import os

    from PIL import Image

    from contrastlab.eval.translation import translate_folder

    _, m = _method("cut")
    src, out = tmp_path / "in", tmp_path / "out"
    _rgb_file(src / "a.png")
    _rgb_file(src / "b.png")
    real_save = Image.Image.save
    calls = []

    def dying_save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 2:  # the second image: half written, then killed
            if isinstance(fp, (str, bytes, os.PathLike)):
                with open(fp, "wb") as f:
                    f.write(b"\x89PNG\r\n\x1a\n half")
            else:
                fp.write(b"\x89PNG\r\n\x1a\n half")
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        translate_folder(m, str(src), str(out), progress=False)
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]  # no b.png, no temporary
    Image.open(out / "a.png").load()  # the first one is complete
