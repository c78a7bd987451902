"""Typed configuration: YAML recipes + ``key=value`` overrides, validated on load.

A config is a tree of dataclasses. Loading checks every key and value: an unknown key names
the valid ones (and the closest match), a value of the wrong type says what was expected.
Errors are :class:`ConfigError`, which the CLI prints as one line.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .data.views import ViewConfig


from .errors import ConfigError, UserError  # noqa: F401  (re-exported)


# ----------------------------------------------------------------------------- schema
@dataclass
class DataConfig:
    name: Literal["digits", "cifar10", "cifar100", "stl10", "imagefolder", "digit_domains", "unpaired"] = "digits"
    root: Optional[str] = None  # folder of the data set (CIFAR/STL-10: torchvision layout)
    download: bool = False  # torchvision sets only; nothing downloads unless asked
    image_size: int = 32  # side of the images the loader yields (and of the views)
    label: str = "digit"  # label used by the kNN monitor and evaluation (digits: digit|color|rotation)
    long_tail_ratio: Optional[float] = None  # exponential long-tail profile, e.g. 100
    num_workers: int = 0
    pin_memory: bool = True
    persistent_workers: bool = True
    # digit scenes only
    n_train: int = 10000
    n_test: int = 2000
    scene_seed: int = 0
    second_digit: bool = False
    clutter: int = 0
    texture: bool = False
    light_fraction: float = 0.5  # share of scenes with a light background and a dark digit
    # stl10: which split feeds pre-training
    stl_split: Literal["unlabeled", "train", "train+unlabeled"] = "train+unlabeled"
    # unpaired (translation): ROOT/trainA, trainB, testA, testB; images resized to load_size, cropped to image_size
    load_size: Optional[int] = None  # default round(image_size * 286 / 256), as CycleGAN
    # imagefolder: sub-folders for train/test (test optional)
    train_dir: str = "train"
    test_dir: Optional[str] = "val"


@dataclass
class ViewsConfig(ViewConfig):
    """The augmentation family's parameters (see :class:`contrastlab.data.views.ViewConfig`)
    and where the views are made: ``batched`` on the device, ``torchvision`` per image in the
    data-loader workers."""

    backend: Literal["batched", "torchvision"] = "batched"


@dataclass
class ModelConfig:
    backbone: Literal["small_cnn", "resnet18", "resnet34", "resnet50"] = "small_cnn"
    width: int = 32  # small_cnn only: channels of the first stage (x1, x2, x4, x4)
    depth: int = 1  # small_cnn only: conv layers per stage
    cifar_stem: bool = False
    norm: Literal["per_image", "imagenet", "cifar", "none"] = "per_image"
    proj_hidden: int = 512
    proj_dim: int = 128
    proj_layers: int = 2
    proj_bn: bool = True
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm when several processes run


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam", "adamw", "lars"] = "sgd"
    lr: float = 0.3  # base lr for batch_size 256; scaled linearly when scale_lr is true
    scale_lr: bool = True
    batch_size: int = 256  # per process
    weight_decay: float = 1e-6
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    lars_eta: float = 0.02
    exclude_bias_bn: bool = True  # no weight decay / LARS adaptation for biases and norms
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant", "linear"] = "cosine"  # linear: constant, then linear decay (CycleGAN)
    min_lr_frac: float = 0.0
    decay_start_frac: float = 0.5  # linear schedule: share of the steps at the full rate before the decay


@dataclass
class TrainerConfig:
    max_steps: Optional[int] = None
    max_epochs: Optional[int] = None
    max_minutes: Optional[float] = None  # stop (and checkpoint) after this wall-clock budget
    accelerator: str = "auto"  # cpu | cuda | gpu | mps | auto
    devices: Union[int, str] = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn ...
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed
    out_dir: Optional[str] = None  # default runs/<method>-<data>
    resume: str = "auto"  # auto (resume if out_dir has a checkpoint) | never | <path>
    ckpt_every: int = 500
    log_every: int = 10
    knn_every: int = 0  # 0: only at the end
    knn_k: int = 20
    knn_t: float = 0.1
    knn_max_train: int = 10000  # monitor bank size (a fixed subset of the training set)
    channels_last: bool = False
    compile: bool = False
    progress: bool = True
    threads: Optional[int] = None  # torch intra-op threads on CPU


@dataclass
class Config:
    method: dict = field(default_factory=lambda: {"name": "simclr"})
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


# ----------------------------------------------------------------------------- validation
def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        s = " or ".join(_type_name(a) for a in args)
        return s + (" or null" if len(args) < len(typing.get_args(tp)) else "")
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list (each {_type_name(args[0])})"
        return "a list [" + ", ".join(_type_name(a) for a in args) + "]"
    if origin is dict or tp is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(value, tp, where: str):
    """Check (and gently convert) one value against a type annotation."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise bad
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError:
                pass
        raise bad
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # a list of any length
            if not isinstance(value, (list, tuple)):
                raise bad
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise bad
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads 1e-6 (no dot) as a string; plain numbers in any notation are floats
            try:
                value = float(value.strip())
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if tp is dict:
        if isinstance(value, dict):
            return value
        raise bad
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, where)
    return value


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    near = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    prefix = f"{where}." if where else ""
    return ConfigError(f"unknown config key {prefix}{key!r}{hint}; valid keys: {', '.join(valid)}")


def build_dataclass(cls, values: Any, where: str = ""):
    """Build dataclass ``cls`` from a mapping, validating every key and value."""
    if values is None:
        values = {}
    if dataclasses.is_dataclass(values):
        values = dataclasses.asdict(values)
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            own = cls.__dict__.get("__annotations__", {})  # a class's own keys first, then inherited ones
            raise _unknown_key(key, [n for n in names if n in own] + [n for n in names if n not in own], where)
        path = f"{where}.{key}" if where else key
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def _parse_value(text: str):
    """Parse the value of a ``key=value`` override with YAML (numbers, bools, lists, null)."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=0.1)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key")
        node = tree
        for p in parts[:-1]:
            if not isinstance(node.get(p, {}), dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_value(text)
    return tree


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


def list_recipes() -> list[str]:
    return sorted(str(p.relative_to(CONFIGS_DIR).with_suffix("")) for p in CONFIGS_DIR.rglob("*.yaml"))


def resolve_recipe(recipe: str) -> Path:
    """A recipe is a YAML path, or a name under configs/: 'simclr' (= simclr/digits), 'simclr/cifar10'."""
    p = Path(recipe)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise ConfigError(f"recipe file {recipe} does not exist")
        return p
    name = recipe if "/" in recipe else f"{recipe}/digits"
    q = CONFIGS_DIR / f"{name}.yaml"
    if not q.exists():
        raise ConfigError(f"unknown recipe {recipe!r}; available: {', '.join(list_recipes())}")
    return q


def read_yaml(path: Path) -> dict:
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = tree.pop("base", None)  # a recipe may extend another one
    if base:
        tree = deep_merge(read_yaml(resolve_recipe(base)), tree)
    return tree


def load_config(recipe: str | None = None, overrides: list[str] | None = None) -> Config:
    """Load a recipe (path or name) and apply ``key=value`` overrides; validated."""
    tree = read_yaml(resolve_recipe(recipe)) if recipe else {}
    tree = apply_overrides(tree, list(overrides or []))
    return from_dict(tree)


def from_dict(tree: dict) -> Config:
    """A validated Config from a plain tree (a recipe, or the config stored in a checkpoint):
    keys added to the schema after the tree was written take their defaults."""
    cfg = build_dataclass(Config, tree)
    # the method section is validated by the method's own config class
    from .methods import method_config_class

    name = cfg.method.get("name")
    mcls = method_config_class(name)
    cfg.method = dataclasses.asdict(build_dataclass(mcls, cfg.method, "method"))
    check_config(cfg)
    return cfg


def check_config(cfg: Config) -> None:
    """Cross-field checks that a type cannot express."""
    t, o, d = cfg.trainer, cfg.optim, cfg.data
    if t.max_steps is None and t.max_epochs is None:
        raise ConfigError("set trainer.max_steps or trainer.max_epochs")
    for name, v in (("optim.batch_size", o.batch_size), ("data.image_size", d.image_size)):
        if v <= 0:
            raise ConfigError(f"{name} must be positive, got {v}")
    if o.lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {o.lr}")
    lo, hi = cfg.views.crop_scale
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"views.crop_scale must satisfy 0 < min <= max <= 1, got {cfg.views.crop_scale}")
    v = cfg.views
    for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "channel_perm_p", "invert_p"):
        if not 0 <= getattr(v, name) <= 1:
            raise ConfigError(f"views.{name} is a probability in [0, 1], got {getattr(v, name)}")
    if not 0 <= v.rotation <= 180:
        raise ConfigError(f"views.rotation is a maximum angle in degrees in [0, 180], got {v.rotation}")
    if d.long_tail_ratio is not None and d.long_tail_ratio < 1:
        raise ConfigError(f"data.long_tail_ratio must be >= 1, got {d.long_tail_ratio}")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)

