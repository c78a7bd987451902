"""Configs are validated on load, with one-line errors that name the problem."""
import pytest

from contrastlab.config import ConfigError, load_config, list_recipes


def test_every_recipe_loads():
    names = list_recipes()
    assert {"simclr/digits", "moco/digits", "simclr/cifar10", "moco/cifar10"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.method["name"] in ("simclr", "moco", "cut", "dclgan", "simdcl", "looc", "looc_pp", "invp", "pixpro",
                                      "pixcontrast", "detco", "rocl", "stylegan2", "labels4free", "adv_rotation",
                                      "adv_jigsaw", "adv_ensemble", "adv_finetune", "protoseg", "cwt_stage1", "cwt", "rpnet")
        # the recipe's folder names its method (named seed methods are recipes over the core's axes)
        assert name.split("/")[0] == cfg.method["name"] or cfg.method["name"] in ("simclr", "moco")


def test_short_name_is_digits_preset_and_overrides_apply():
    cfg = load_config("simclr", ["optim.lr=0.5", "views.crop_scale=[0.3, 1.0]", "trainer.max_steps=7"])
    assert cfg.data.name == "digits"
    assert cfg.optim.lr == 0.5 and cfg.views.crop_scale == (0.3, 1.0) and cfg.trainer.max_steps == 7


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError) as e:
        load_config("simclr", ["optim.lrr=0.1"])
    msg = str(e.value)
    assert "optim.'lrr'" in msg and "did you mean 'lr'" in msg and "batch_size" in msg and "\n" not in msg


def test_unknown_section_and_method_key():
    with pytest.raises(ConfigError, match="unknown config key 'optimizer'.*valid keys: method, seed, data"):
        load_config("simclr", ["optimizer.lr=0.1"])
    with pytest.raises(ConfigError, match="method.'queue_size'.*valid keys: name, temperature"):
        load_config("simclr", ["method.queue_size=10"])


@pytest.mark.parametrize(
    "override,expected",
    [
        ("optim.lr=abc", "optim.lr: expected a number, got 'abc'"),
        ("optim.batch_size=1.5", "optim.batch_size: expected an integer, got 1.5"),
        ("trainer.progress=maybe", "trainer.progress: expected true or false, got 'maybe'"),
        ("optim.name=rmsprop", "optim.name: expected one of 'sgd', 'adam', 'adamw', 'lars'"),
        ("views.crop_scale=0.5", "views.crop_scale: expected a list [a number, a number]"),
        ("method.temperature=hot", "method.temperature: expected a number"),
    ],
)
def test_wrong_value_type(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config("simclr", [override])
    assert expected in str(e.value)


def test_numbers_in_scientific_notation():
    # YAML 1.1 reads "1e-06" (no dot) as a string; the schema still takes it as a float
    cfg = load_config("simclr", ["optim.weight_decay=1e-06", "method.temperature=5e-1", "optim.lr=2E-3"])
    assert cfg.optim.weight_decay == 1e-6 and cfg.method["temperature"] == 0.5 and cfg.optim.lr == 0.002


def test_view_option_ranges():
    with pytest.raises(ConfigError, match=r"views.invert_p=1.5: must be in \[0, 1\]"):
        load_config("simclr", ["views.invert_p=1.5"])
    with pytest.raises(ConfigError, match=r"views.rotation=-5.0: must be in \[0, 180\]; the largest angle in degrees"):
        load_config("simclr", ["views.rotation=-5"])
    assert load_config("simclr", ["views.rotation=30"]).views.rotation == 30.0


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="crop_scale"):
        load_config("simclr", ["views.crop_scale=[0.9, 0.2]"])
    with pytest.raises(ConfigError, match="max_steps or trainer.max_epochs"):
        load_config("simclr", ["trainer.max_steps=null"])
    with pytest.raises(ConfigError, match="unknown recipe 'simclrr'"):
        load_config("simclrr")
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config("simclr", ["optim.lr"])


@pytest.mark.parametrize("recipe", ["simclr", "moco"])
def test_negatives_options_are_checked(recipe):
    with pytest.raises(ConfigError, match=r"method.tau_plus=1.0: must be in \[0, 1\); DCL's class prior"):
        load_config(recipe, ["method.tau_plus=1.0"])
    with pytest.raises(ConfigError, match="no synthetic negatives"):
        load_config(recipe, ["method.mochi_n_hard=16"])
    with pytest.raises(ConfigError, match="method.beta=-1.0: must be >= 0"):
        load_config(recipe, ["method.beta=-1"])


def test_linear_schedule_is_constant_then_decays_linearly_to_the_floor():
    """CycleGAN / CUT / DCLGAN's schedule: full rate for decay_start of the steps (after warm-up),
    then a straight line to min_frac at the last step."""
    from contrastlab.engine.optim import lr_factor

    total = 100
    for s in range(total + 1):
        expect = 1.0 if s <= 50 else 1.0 - (s - 50) / 50
        assert abs(lr_factor(s, total, 0, "linear", 0.0, 0.5) - expect) < 1e-12, s
    assert abs(lr_factor(100, 100, 0, "linear", 0.1, 0.5) - 0.1) < 1e-12
    assert lr_factor(4, 100, 10, "linear") == 0.5  # warm-up first
    assert lr_factor(60, 100, 0, "linear", 0.0, 0.0) == 0.4  # decay from the first step


def test_variable_length_list_option_is_typed():
    cfg = load_config("cut", ["method.nce_layers=[0, 4, 8]"])
    assert cfg.method["nce_layers"] == (0, 4, 8)
    with pytest.raises(ConfigError, match=r"method.nce_layers\[1\]: expected an integer"):
        load_config("cut", ["method.nce_layers=[0, x]"])
    with pytest.raises(ConfigError, match=r"method.nce_layers: expected a list \(each an integer\), got 4"):
        load_config("cut", ["method.nce_layers=4"])
    with pytest.raises(ConfigError, match=r"nce_layers \[40\] out of range: the generator has modules 0..21"):
        load_config("cut", ["method.nce_layers=[0, 40]"])
