"""Every option declares its range with its field (contrastlab.fields.option), and loading checks it.

The first tests are generated over the fields themselves: every numeric field of every config
section, of every registered method's config and of the eval options must declare bounds (or
say explicitly that it has none); a value just outside each bound must fail at load with a
one-line ConfigError naming the key and the value; the defaults must lie inside; every closed
set of strings must reject a stranger and list its choices. The tests after them are the
examples of issue 11 and the resume comparison."""
from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from contrastlab import fields
from contrastlab.cli import main
from contrastlab.config import Config, ConfigError, build_dataclass, load_config, resume_differences, to_dict
from contrastlab.eval.knn import KnnOptions
from contrastlab.eval.linear import LinearOptions
from contrastlab.eval.linear_sgd import LinearSgdOptions
from contrastlab.eval.translation import TranslateOptions, TranslationOptions
from contrastlab.methods import REGISTRY, method_config_class

EVAL_OPTIONS = {"eval knn": KnnOptions, "eval linear": LinearOptions, "eval linear_sgd": LinearSgdOptions,
                "eval translation": TranslationOptions, "translate": TranslateOptions}  # fmt: skip


def _leaves():
    """(owner, path, field, type): owner is the recipe that loads the path, or an options class."""
    out = [("simclr", p, f, tp) for p, f, tp in fields.walk_fields(Config) if p != "method"]
    for name in sorted(REGISTRY):  # each method's section, loaded through its own digits recipe
        out += [(name, p, f, tp) for p, f, tp in fields.walk_fields(method_config_class(name), "method")]
    for cls in EVAL_OPTIONS.values():
        out += [(cls, p, f, tp) for p, f, tp in fields.walk_fields(cls)]
    return out


LEAVES = _leaves()
NUMERIC = [leaf for leaf in LEAVES if fields.numeric_leaf(leaf[3])]
BOUNDED = [leaf for leaf in NUMERIC if fields.bounds_of(leaf[2])]


def _id(leaf) -> str:
    owner = leaf[0] if isinstance(leaf[0], str) else leaf[0].__name__
    return f"{owner}:{leaf[1]}"


def _number_type(tp):
    """int or float: the number a (possibly Optional / tuple / Union) annotation holds."""
    args = typing.get_args(tp) if typing.get_origin(tp) is not None else (tp,)
    for a in args:
        if a in (int, float):
            return a
        if typing.get_origin(a) is not None:
            return _number_type(a)
    return None


def _is_tuple(tp) -> bool:
    return typing.get_origin(tp) is tuple


def _default(f):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _just_outside(bounds: dict, kind) -> list:
    eps = 1 if kind is int else 1e-3
    out = []
    if "ge" in bounds:
        out.append(bounds["ge"] - eps)
    if "gt" in bounds:
        out.append(bounds["gt"])
    if "le" in bounds:
        out.append(bounds["le"] + eps)
    if "lt" in bounds:
        out.append(bounds["lt"])
    return [kind(v) for v in out]


def _load(owner, path: str, value):
    """Load ``path=value`` for a config owner (recipe) or an options class; the error's text."""
    with pytest.raises(ConfigError) as e:
        if isinstance(owner, str):
            load_config(owner, [f"{path}={json.dumps(value)}"])
        else:
            build_dataclass(owner, {path: value})
    return str(e.value)


# ----------------------------------------------------------------------------- generated
def test_the_field_walk_sees_every_section():
    paths = {p for _, p, _, _ in LEAVES}
    assert {"data.n_train", "views.crop_scale", "model.width", "optim.lr", "trainer.knn_k", "seed", "method.temperature",
            "method.queue_size", "method.nce_t", "method.sim_dim", "k", "epochs", "max_images", "size"} <= paths
    assert len(NUMERIC) > 80 and len(BOUNDED) > 70


def test_every_numeric_field_declares_its_range():
    missing = [_id(leaf) for leaf in NUMERIC if not fields.declared(leaf[2])]
    assert not missing, f"numeric options without option(..., ge/gt/le/lt or unbounded=...): {missing}"


@pytest.mark.parametrize("leaf", LEAVES, ids=_id)
def test_defaults_lie_inside_their_bounds(leaf):
    owner, path, f, tp = leaf
    fields.check_bounds(_default(f), f, path)  # raises when a default is out of its own range


@pytest.mark.parametrize("leaf", BOUNDED, ids=_id)
def test_a_value_just_outside_each_bound_fails_at_load(leaf):
    owner, path, f, tp = leaf
    kind = _number_type(tp)
    for bad in _just_outside(fields.bounds_of(f), kind):
        if _is_tuple(tp):  # the first element out of range, the others as by default
            value, key = [bad, *list(_default(f))[1:]], f"{path}[0]"
        else:
            value, key = bad, path
        msg = _load(owner, path, value)
        assert f"{key}={bad!r}" in msg and "must be" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("leaf", [leaf for leaf in LEAVES if "Literal" in str(leaf[3]) and leaf[1] != "method.name"],
                         ids=_id)  # fmt: skip
def test_every_closed_set_rejects_a_stranger_and_lists_its_choices(leaf):
    owner, path, f, tp = leaf
    msg = _load(owner, path, "no-such-choice")
    choices = typing.get_args(tp)
    assert path in msg and "'no-such-choice'" in msg and "\n" not in msg
    assert all(repr(c) in msg for c in choices), msg


def test_resume_safe_fields_are_the_ones_that_do_not_change_training():
    safe = {p for owner, p, f, _ in LEAVES if isinstance(owner, str) and fields.is_resume_safe(f)}
    assert safe == {
        "trainer.out_dir", "trainer.resume", "trainer.overwrite", "trainer.ckpt_every", "trainer.log_every",
        "trainer.knn_every", "trainer.knn_k", "trainer.knn_t", "trainer.knn_max_train", "trainer.max_minutes",
        "trainer.progress", "trainer.threads", "trainer.compile", "trainer.channels_last", "trainer.accelerator",
        "data.root", "data.download", "data.in_memory", "data.num_workers", "data.pin_memory", "data.persistent_workers",
        "method.monitor_images", "method.grid_images",
        "method.threshold",  # labels4free: the mask threshold at test time
        "method.t_test",  # rpnet: the refinement steps at evaluation
        "method.truncation_samples",  # stylegan2: z drawn for the exported latent_avg (not used in training)
        "model.weights",  # read when a run starts; a resumed run's weights are its checkpoint's
    }  # fmt: skip


def test_check_bounds_messages():
    T = dataclasses.make_dataclass("T", [("a", float, fields.option(0.5, ge=0, lt=1, doc="a share")),
                                         ("b", int, fields.option(1, gt=0)),
                                         ("c", tuple, fields.option((1.0, 2.0), gt=0))])  # fmt: skip
    f = {x.name: x for x in dataclasses.fields(T)}
    with pytest.raises(ConfigError, match=r"^x.a=1.0: must be in \[0, 1\); a share$"):
        fields.check_bounds(1.0, f["a"], "x.a")
    with pytest.raises(ConfigError, match=r"^x.b=0: must be > 0 \(or null\)$"):
        fields.check_bounds(0, f["b"], "x.b", nullable=True)
    with pytest.raises(ConfigError, match=r"^x.c\[1\]=-2.0: must be > 0$"):
        fields.check_bounds((1.0, -2.0), f["c"], "x.c")
    fields.check_bounds(None, f["b"], "x.b")  # None is the type check's business
    with pytest.raises(TypeError):
        fields.option(1, ge=0, gt=0)
    with pytest.raises(TypeError):
        fields.option(1, ge=0, unbounded="any")


# ----------------------------------------------------------------------------- the issue's examples
@pytest.mark.parametrize(
    "recipe,override,needle",
    [
        ("simclr", "method.temperature=0", "method.temperature=0.0: must be > 0"),
        ("simclr", "method.temperature=-1", "method.temperature=-1.0: must be > 0"),
        ("moco", "method.temperature=0", "method.temperature=0.0: must be > 0"),
        ("simclr", "trainer.max_steps=0", "trainer.max_steps=0: must be >= 1 (or null)"),
        ("simclr", "trainer.max_steps=-1", "trainer.max_steps=-1: must be >= 1"),
        ("simclr", "trainer.max_epochs=0", "trainer.max_epochs=0: must be >= 1"),
        ("simclr", "optim.weight_decay=-1", "optim.weight_decay=-1.0: must be >= 0"),
        ("simclr", "trainer.ckpt_every=0", "trainer.ckpt_every=0: must be >= 1"),
        ("simclr", "trainer.log_every=0", "trainer.log_every=0: must be >= 1"),
        ("simclr", "trainer.knn_k=0", "trainer.knn_k=0: must be >= 1"),
        ("simclr", "optim.batch_size=1", "optim.batch_size=1: SimCLR needs at least 2 images per batch for negatives"),
        ("moco", "method.queue_size=0", "method.queue_size=0: must be >= 1"),
        ("simclr", "data.n_train=0", "data.n_train=0: must be >= 1"),
        ("simclr", "trainer.precision=abc", "trainer.precision: expected one of '32-true'"),
        ("simclr", "trainer.accelerator=tpu", "trainer.accelerator: expected one of 'auto', 'cpu', 'cuda', 'gpu', 'mps'"),
        ("simclr", "trainer.threads=-2", "trainer.threads=-2: must be >= 1 (or null)"),
        ("simclr", "trainer.devices=0", "trainer.devices=0: must be a number of devices >= 1, -1 (all), 'auto'"),
        ("simclr", "trainer.devices=-3", "trainer.devices=-3: must be"),
        ("simclr", "trainer.strategy=dpp", "trainer.strategy='dpp': must be 'auto' or a Fabric strategy (did you mean"),
        ("moco", "method.momentum=1", "method.momentum=1.0: must be in [0, 1)"),
        ("simclr", "views.crop_scale=[0, 1]", "views.crop_scale[0]=0.0: must be in (0, 1]"),
        ("simclr", "views.crop_scale=[0.9, 0.2]", "views.crop_scale=[0.9, 0.2]: must be [min, max] with min <= max"),
        ("simclr", "data.load_size=16", "data.load_size=16: must be >= data.image_size=32"),
        ("moco", "optim.batch_size=1", "optim.batch_size=1: the projector's BatchNorm (model.proj_bn=true)"),
    ],
)
def test_issue_examples_fail_at_load_with_one_line(recipe, override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(recipe, [override])
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_values_that_are_allowed():
    cfg = load_config("simclr", ["trainer.precision=16", "trainer.devices=-1", "trainer.strategy=ddp",
                                 "trainer.max_steps=null", "trainer.max_epochs=1", "trainer.threads=null"])  # fmt: skip
    assert cfg.trainer.precision == "16" and cfg.trainer.devices == -1 and cfg.trainer.max_epochs == 1
    assert load_config("simclr", ["trainer.devices='0,1'"]).trainer.devices == "0,1"
    assert load_config("simclr", ["trainer.precision=bf16-mixed"]).trainer.precision == "bf16-mixed"
    # MoCo trains with one image per batch (the queue holds the negatives) when no BatchNorm needs two
    assert load_config("moco", ["optim.batch_size=1", "model.proj_bn=false"]).optim.batch_size == 1
    assert load_config("simclr", ["optim.batch_size=2"]).optim.batch_size == 2
    assert load_config("simclr").data.test_dir == "auto"


@pytest.mark.parametrize("recipe,overrides,needle", [
    ("simclr", ["method.mochi_n_hard=255", "method.mochi_s=4", "optim.batch_size=128"],
     "method.mochi_n_hard=255: more than the 254 negatives of an anchor in a batch of optim.batch_size=128"),
    ("moco", ["method.mochi_n_hard=2048", "method.mochi_s=4", "method.queue_size=1024"],
     "method.mochi_n_hard=2048: more than the method.queue_size=1024 negatives"),
    ("moco", ["method.mochi_n_hard=16"], "method.mochi_n_hard=16 but method.mochi_s=0 and method.mochi_s_prime=0"),
    ("simclr", ["method.mochi_s=4"], "method.mochi_s=4 and method.mochi_s_prime=0 but method.mochi_n_hard=0"),
])  # fmt: skip
def test_mochi_pool_and_mixes_are_checked_at_load(recipe, overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(recipe, overrides)
    assert needle in str(e.value), str(e.value)
    ok = {"simclr": ["method.mochi_n_hard=254", "method.mochi_s=4", "optim.batch_size=128"],
          "moco": ["method.mochi_n_hard=1024", "method.mochi_s=4", "method.queue_size=1024"]}[recipe]  # fmt: skip
    assert load_config(recipe, ok).method["mochi_n_hard"] in (254, 1024)


# ----------------------------------------------------------------------------- eval options
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import TINY

    out = tmp_path_factory.mktemp("fields") / "run"
    assert main(["train", "simclr", *TINY, "trainer.max_steps=2", f"trainer.out_dir={out}"]) == 0
    return out


@pytest.mark.parametrize("option,needle", [("k=0", "eval knn: k=0: must be >= 1"),
                                           ("temperature=0", "eval knn: temperature=0.0: must be > 0"),
                                           ("k=2.5", "eval knn: k: expected an integer, got 2.5"),
                                           ("features=pixel", "eval knn: features: expected one of 'model', 'random'")])
def test_eval_knn_options_fail_with_one_line(run_dir, capsys, option, needle):
    capsys.readouterr()
    assert main(["eval", "knn", str(run_dir), option]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_eval_knn_reports_the_k_it_used(run_dir, capsys):
    capsys.readouterr()
    assert main(["eval", "knn", str(run_dir), "k=100000"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["k"] == r["n_train"] == 256 and r["k_requested"] == 100000
    assert main(["eval", "knn", str(run_dir), "k=7"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["k"] == 7 and "k_requested" not in r


def test_knn_eval_clamps_k_to_the_labelled_bank():
    import torch

    from contrastlab.eval.knn import knn_eval

    train = torch.randn(10, 4)
    labels = torch.tensor([0, 1] * 4 + [-1, -1])  # 8 labelled rows in the bank
    r = knn_eval(train, labels, train[:4], labels[:4], 2, k=50)
    assert r["k"] == 8 and r["k_requested"] == 50
    assert set(knn_eval(train, labels, train[:4], labels[:4], 2, k=8)) == {"top1", "top5"}


@pytest.mark.parametrize("argv,needle", [
    (["eval", "linear", "/nonexistent", "epochs=0"], "eval linear: epochs=0: must be >= 1"),
    (["eval", "linear", "/nonexistent", "weight_decay=-1"], "eval linear: weight_decay=-1.0: must be >= 0"),
    (["eval", "linear", "/nonexistent", "groups=halves"], "eval linear: groups: expected one of 'thirds', 'imagenet'"),
    (["eval", "translation", "/nonexistent", "max_images=-1"], "eval translation: max_images=-1: must be >= 0"),
    (["eval", "translation", "/nonexistent", "direction=AtoC"], "eval translation: direction: expected one of"),
    (["translate", "/nonexistent", "in", "out", "size=-1"], "translate: size=-1: must be >= 0"),
    (["translate", "/nonexistent", "in", "out", "direction=both"], "translate: direction: expected one of 'AtoB', 'BtoA'"),
    (["translate", "/nonexistent", "in", "out", "data.root=x"], "translate takes no data.* options; valid options: direction"),
])  # fmt: skip
def test_eval_and_translate_options_are_checked_before_the_run_is_read(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_string_options_keep_their_text():
    import dataclasses

    from contrastlab.cli import _parse_kv
    from contrastlab.eval.translation import TranslationOptions

    opts, data = _parse_kv(["weights=123", "data.n_test=7"], TranslationOptions, "x")
    assert opts.weights == "123" and data == ["data.n_test=7"]
    opts, _ = _parse_kv(["label=null", "k=3"], KnnOptions, "eval knn")
    assert dataclasses.asdict(opts) == {"label": None, "k": 3, "temperature": 0.1, "features": "model", "device": "auto",
                                        "batch_size": 512}  # fmt: skip


# ----------------------------------------------------------------------------- resume_differences
def test_resume_differences():
    run = load_config("simclr")
    assert resume_differences(to_dict(run), load_config("simclr")) == []
    assert resume_differences(run, run) == []
    safe = ["trainer.knn_k=3", "trainer.out_dir=/tmp/x", "trainer.overwrite=true", "data.num_workers=2",
            "trainer.threads=1", "trainer.max_minutes=5", "trainer.accelerator=cpu", "trainer.resume=never"]
    assert resume_differences(to_dict(run), load_config("simclr", safe)) == []
    now = load_config("simclr", ["optim.lr=0.2"])
    assert resume_differences(to_dict(run), now) == [f"optim.lr: {run.optim.lr} in the run, 0.2 now"]
    now = load_config("simclr", ["method.temperature=0.3", "views.crop_scale=[0.2, 1.0]", "trainer.max_steps=5"])
    lo, hi = run.views.crop_scale
    assert resume_differences(to_dict(run), now) == [
        f"method.temperature: {run.method['temperature']} in the run, 0.3 now",
        f"views.crop_scale: [{lo}, {hi}] in the run, [0.2, 1.0] now",
        f"trainer.max_steps: {run.trainer.max_steps} in the run, 5 now"]  # fmt: skip
    diff = resume_differences(to_dict(run), load_config("moco"))
    assert diff[0] == "method.name: simclr in the run, moco now" and not any(d.startswith("method.t") for d in diff)


def test_resume_differences_of_an_older_tree_missing_newer_keys():
    run = load_config("simclr")
    old = to_dict(run)
    del old["trainer"]["overwrite"], old["method"]["tau_plus"], old["method"]["beta"], old["model"]["sync_bn"]
    assert resume_differences(old, run) == []
    # a key missing from the run's tree ran with its default, whatever the recipe says now
    del old["views"]["invert_p"]
    assert resume_differences(old, run) == [f"views.invert_p: 0.0 in the run, {run.views.invert_p} now"]
    assert resume_differences(old, load_config("simclr", ["method.tau_plus=0.1", "views.invert_p=0"])) == [
        "method.tau_plus: 0.0 in the run, 0.1 now"]  # fmt: skip
