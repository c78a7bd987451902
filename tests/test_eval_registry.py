"""Evaluation protocols are a registry: a new protocol is one module plus one PROTOCOLS line, and
the CLI (``contrastlab eval NAME``, ``eval --help``, ``list``) picks it up without an edit."""
import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

import contrastlab.eval as ev
from contrastlab.cli import main

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "checkpoints" / "simclr.ckpt"

PLUGIN = '''
"""Param count: the number of trainable parameters of a run's encoder (a test protocol)."""
from dataclasses import dataclass

from contrastlab.fields import option


@dataclass
class Options:
    scale: int = option(1, ge=1)


def run(checkpoint, opts, data_overrides=()):
    from contrastlab.eval.run import load_run

    cfg, method, ckpt = load_run(checkpoint, list(data_overrides))
    n = sum(p.numel() for p in method.encoder.parameters())
    return {"protocol": "params", "checkpoint": str(checkpoint), "step": int(ckpt["step"]), "label": "",
            "features": "model", "params": n * opts.scale}
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "my_params_protocol.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(ev.PROTOCOLS, "params", "my_params_protocol")
    yield
    sys.modules.pop("my_params_protocol", None)


def test_a_new_protocol_runs_through_the_cli(plugin, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FIXTURE, run / "last.ckpt")
    assert main(["eval", "params", str(run), "scale=2"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    from contrastlab.eval.run import load_run

    _, method, _ = load_run(str(run), [])
    assert res["params"] == 2 * sum(p.numel() for p in method.encoder.parameters())
    assert "params//model" in json.loads((run / "eval.json").read_text())
    # its options are typed and checked like the shipped protocols'
    assert main(["eval", "params", str(run), "scale=0"]) == 2
    assert "scale" in capsys.readouterr().err


def test_help_and_list_name_every_protocol(plugin, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    for name in ev.PROTOCOLS:
        assert name in out
    assert "Param count: the number of trainable parameters" in out
    assert main(["list"]) == 0
    assert "params" in capsys.readouterr().out.splitlines()[-1]


def test_every_shipped_protocol_has_options_and_run():
    for name in ev.PROTOCOLS:
        mod = ev.protocol(name)
        assert callable(mod.run) and hasattr(mod, "Options"), name
        assert ev.describe(name) and not ev.describe(name).endswith(("(", ",")), name


def test_unknown_protocol_is_refused_by_the_cli(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "nope", "somewhere"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("protocol", ["knn", "linear"])
def test_a_protocol_on_features_refuses_a_run_without_an_encoder(protocol, tmp_path, capsys):
    """The method contract decides: a translation run (no encoder) gets one line naming the
    protocol that fits it."""
    shutil.copy(FIXTURE.parent / "cut.ckpt", tmp_path / "last.ckpt")
    assert main(["eval", protocol, str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no encoder" in err and "contrastlab eval translation" in err


@pytest.mark.parametrize("name", sorted(ev.PROTOCOLS))
def test_eval_help_lists_every_option_of_every_protocol_with_its_default(name):
    """``contrastlab eval --help`` lists each protocol's options from its source (nothing imported): every
    field of its Options dataclass, with the default, and a choice's values default first."""
    import dataclasses
    import typing

    opts = ev.protocol(name).Options
    summary = dict(item.split("=", 1) for item in ev.option_summary(name).split())
    assert list(summary) == [f.name for f in dataclasses.fields(opts)]
    for f in dataclasses.fields(opts):
        default = f.default if f.default is not dataclasses.MISSING else None
        choices = typing.get_args(typing.get_type_hints(opts)[f.name])
        if typing.get_origin(typing.get_type_hints(opts)[f.name]) is typing.Literal:
            assert summary[f.name].split("|") == [default, *[c for c in choices if c != default]], f.name
        elif default is not None:  # as written in the source: 20, 0.1, 8/255, (8/255,)
            shown = summary[f.name]
            assert shown == str(default) or eval(shown, {"__builtins__": {}}) == default, f.name
