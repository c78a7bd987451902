"""Checkpoints written by an earlier commit (tests/fixtures/checkpoints, made by its make.py at the
commit named in expected.json) still load and give the same outputs: the package may be
reorganised, its checkpoints may not break."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from contrastlab.cli import main
from contrastlab.eval.run import load_run

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def _make_module():
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", sorted(EXPECTED["cases"]))
def test_old_checkpoint_loads_with_the_same_outputs(name):
    _, method, ckpt = load_run(str(FIXTURES / f"{name}.ckpt"), [])
    assert int(ckpt["step"]) == 2
    got = _make_module().outputs(method)
    want = EXPECTED["cases"][name]["outputs"]
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(torch.tensor(got[key]), torch.tensor(want[key]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["simclr", "combined"])
def test_old_checkpoint_evaluates(name, capsys, tmp_path):
    shutil.copy(FIXTURES / f"{name}.ckpt", tmp_path / "last.ckpt")  # eval writes eval.json beside it
    assert main(["eval", "knn", str(tmp_path)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["step"] == 2 and res["n_test"] == 32 and 0.0 <= res["top1"] <= 1.0
