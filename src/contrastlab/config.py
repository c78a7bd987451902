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

from .data.pair_transforms import SegAugConfig
from .data.views import ViewConfig
from .errors import ConfigError, UserError  # noqa: F401  (re-exported)
from .fields import check_bounds, is_resume_safe, option


# ----------------------------------------------------------------------------- schema
# Every option declares its range with the field (contrastlab.fields.option); build_dataclass
# checks it on load. resume_safe: changing the value when a run resumes does not change the
# trajectory of the weights (see resume_differences).
@dataclass
class DataConfig:
    name: str = "digits"  # a data set of contrastlab.data.DATASETS (checked with the config)
    root: Optional[str] = option(None, resume_safe=True)  # folder of the data set (CIFAR/STL-10: torchvision layout)
    download: bool = option(False, resume_safe=True)  # torchvision sets only; nothing downloads unless asked
    image_size: int = option(32, ge=1)  # side of the images the loader yields (and of the views)
    label: str = "digit"  # label used by the kNN monitor and evaluation (digits: digit|color|rotation)
    long_tail_ratio: Optional[float] = option(None, ge=1)  # exponential long-tail profile, e.g. 100
    # Fixed subsets of the training split (SDCLR's protocol: a 45k/5k train / validation split of CIFAR's
    # train set, five fixed long-tailed subsets of the 45k). An index file lists indices into the data
    # set's train split: .npy (numpy, as SDCLR's split/*.npy) or text (integers separated by spaces,
    # commas or new lines). See contrastlab.data.splits.
    # the long-tailed subset k (>= 1; SDCLR's five: 1..5): each class's kept images drawn at random, fixed
    # by k; null: each class's first images. Needs long_tail_ratio.
    long_tail_split: Optional[int] = option(None, ge=1)
    long_tail_file: Optional[str] = None  # the long-tailed subset as an index file (SDCLR's split1_D_i.npy); needs long_tail_ratio
    # a validation hold-out of val_per_class images of each class, drawn at random fixed by val_seed, or listed
    # in val_file (SDCLR's valIdxList.npy); never trained on. The long-tailed profile draws from the rest.
    val_per_class: Optional[int] = option(None, ge=1)
    val_seed: int = option(0, unbounded="any integer seed")
    val_file: Optional[str] = None
    train_file: Optional[str] = None  # the training images as an index file (SDCLR's trainIdxList.npy); null: all but the hold-out
    # imagefolder: decode every image once at the start (at image_size) and keep them in memory as one uint8
    # tensor, as the embedded sets are; for folders of small images (N x 3 x image_size^2 bytes) with the
    # batched views: the same batches and views, without decoding files every step
    in_memory: bool = option(False, resume_safe=True)
    num_workers: int = option(0, ge=0, resume_safe=True)
    pin_memory: bool = option(True, resume_safe=True)
    persistent_workers: bool = option(True, resume_safe=True)
    # digit scenes only
    n_train: int = option(10000, ge=1)
    n_test: int = option(2000, ge=1)
    scene_seed: int = option(0, unbounded="any integer seed")
    second_digit: bool = False
    clutter: int = option(0, ge=0, doc="clutter strokes per scene")
    texture: bool = False
    light_fraction: float = option(0.5, ge=0, le=1)  # share of scenes with a light background and a dark digit
    # stl10: which split feeds pre-training
    stl_split: Literal["unlabeled", "train", "train+unlabeled"] = "train+unlabeled"
    # unpaired (translation): ROOT/trainA, trainB, testA, testB; images resized to load_size, cropped to image_size
    load_size: Optional[int] = option(None, ge=1)  # default round(image_size * 286 / 256), as CycleGAN
    # imagefolder: sub-folders for train/test (test optional)
    train_dir: str = "train"
    test_dir: Optional[str] = "auto"  # auto: val/ or else test/; null: none
    # pascal5i / coco20i: stretch the images to image_size squared, or pad: keep the aspect ratio, the longer side to
    # image_size (cut to a multiple of 8), at the top-left, the rest 0 / 255 (ignore), the official Resize of
    # PFENet / RePRI / CWT (contrastlab.data.fewshot_sets.letterbox_size)
    resize: Literal["stretch", "pad"] = "stretch"
    # segmentation training (cwt_stage1's base-class images and masks): random scale / rotation / flips applied to
    # image and mask together, padded with 0 / 255 (ignore) and cropped back (contrastlab.data.pair_transforms)
    seg_aug: SegAugConfig = field(default_factory=SegAugConfig)


@dataclass
class ViewsConfig(ViewConfig):
    """The augmentation family's parameters (see :class:`contrastlab.data.views.ViewConfig`)
    and where the views are made: ``batched`` on the device, ``torchvision`` per image in the
    data-loader workers."""

    backend: Literal["batched", "torchvision"] = "batched"


def _backbone_allowed(v) -> str | None:
    """A backbone that build_backbone knows; timm:NAME needs timm installed and NAME a timm model."""
    from .nn.backbones import backbone_problem

    return backbone_problem(v)


def _timm_kwargs_allowed(v) -> str | None:
    """Options for timm.create_model: names (str) with YAML values (scalars or lists)."""
    def plain(x):
        return x is None or isinstance(x, (bool, int, float, str)) or (
            isinstance(x, (list, tuple)) and all(plain(y) for y in x))

    if not isinstance(v, dict):
        return "a mapping of timm.create_model options, e.g. {img_size: 32, patch_size: 4}"
    bad = [k for k, x in v.items() if not isinstance(k, str) or not plain(x)]
    if bad:
        return f"option names with numbers, strings, booleans or lists as values (not {bad[0]!r})"
    reserved = sorted(set(v) & {"pretrained", "num_classes", "model_name"})
    return f"options other than {', '.join(reserved)} (set by contrastlab: no head, no download)" if reserved else None


@dataclass
class ModelConfig:
    backbone: str = option("small_cnn", check=_backbone_allowed)  # small_cnn | resnet18|34|50 | timm:NAME
    # timm:NAME only: options for timm.create_model, e.g. {img_size: 32, patch_size: 4} for a ViT on 32 px
    timm_kwargs: dict = option(default_factory=dict, check=_timm_kwargs_allowed)
    width: int = option(32, ge=1)  # small_cnn only: channels of the first stage (x1, x2, x4, x4)
    depth: int = option(1, ge=1)  # small_cnn only: conv layers per stage
    cifar_stem: bool = False
    # torchvision ResNets only: the dilated ResNet of segmentation networks (PSPNet, DeepLab): output stride 8 or
    # 16 instead of 32 (layer3 / layer4 at stride 1, their 3x3 convs dilated; same weights' shapes)
    output_stride: Optional[int] = option(None, check=lambda v: None if v in (None, 8, 16, 32) else "8, 16, 32 or null")
    # torchvision ResNets only: PSPNet's deep stem (three 3x3 convs, 64-64-128 channels, then max-pool)
    deep_stem: bool = False
    # a backbone weights file loaded when a run starts (not on resume, not at evaluation: the run's checkpoint holds
    # them): torchvision's resnet key names, the official PSPNet / RePRI deep-stem names with deep_stem, a small_cnn's
    # own (see contrastlab.nn.backbones.load_backbone_weights); nothing downloads
    weights: Optional[str] = option(None, resume_safe=True)
    norm: Literal["per_image", "imagenet", "cifar", "none"] = "per_image"
    proj_hidden: int = option(512, ge=1)
    proj_dim: int = option(128, ge=1)
    proj_layers: int = option(2, ge=1)
    proj_bn: bool = True  # BatchNorm after each hidden linear layer of the projector
    # an affine BatchNorm after the projector's last linear layer too (which then has no bias): SDCLR's
    # official head (models/resnet_prune_multibn.py proj_head: 512-512-512-128, BN after every linear layer)
    proj_bn_last: bool = False
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm when several processes run


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam", "adamw", "lars"] = "sgd"
    lr: float = option(0.3, gt=0)  # base lr for batch_size 256; scaled linearly when scale_lr is true
    scale_lr: bool = True
    # the global batch (images per step over all processes, the number papers state); each of the
    # W processes takes batch_size / W (it must divide evenly), so a recipe trains the same on any device count
    batch_size: int = option(256, ge=1, doc="images per step over all processes")
    weight_decay: float = option(1e-6, ge=0)
    momentum: float = option(0.9, ge=0, lt=1)  # sgd and lars
    nesterov: bool = False  # sgd only: Nesterov momentum (torch.optim.SGD nesterov=True; needs momentum > 0)
    betas: tuple[float, float] = option((0.9, 0.999), ge=0, lt=1)  # adam and adamw
    lars_eta: float = option(0.02, gt=0)
    exclude_bias_bn: bool = True  # no weight decay / LARS adaptation for biases and norms
    warmup_steps: int = option(0, ge=0)
    # the warm-up in epochs of the training set (as papers write it), instead of warmup_steps
    warmup_epochs: Optional[float] = option(None, ge=0)
    schedule: Literal["cosine", "constant", "linear"] = "cosine"  # linear: constant, then linear decay (CycleGAN)
    min_lr_frac: float = option(0.0, ge=0, le=1)
    # linear schedule: share of the steps at the full rate before the decay
    decay_start_frac: float = option(0.5, ge=0, le=1)


# Lightning Fabric's precision values (lightning_fabric.connector._PRECISION_INPUT, as strings)
Precision = Literal["32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true", "64-true", "64",
                    "transformer-engine", "transformer-engine-float16"]  # fmt: skip


def _devices_allowed(v) -> str | None:
    """Fabric's devices: a count >= 1, -1 (all), 'auto', or device indices such as '0,1'."""
    text = str(v).strip()
    if text in ("auto", "-1"):
        return None
    if isinstance(v, int) and v >= 1:
        return None
    if isinstance(v, str):
        parts = [p.strip() for p in text.split(",")]
        if len(parts) == 1 and parts[0].isdigit() and int(parts[0]) >= 1:
            return None
        if len(parts) > 1 and all(p.isdigit() for p in parts if p) and any(parts):
            return None
    return "a number of devices >= 1, -1 (all), 'auto', or device indices such as '0,1'"


def _strategy_allowed(v) -> str | None:
    """'auto' or a strategy of Lightning Fabric's registry (checked only when Fabric is there)."""
    if v.lower() == "auto":
        return None
    try:
        from lightning_fabric.strategies import STRATEGY_REGISTRY
    except ImportError:  # pragma: no cover - Fabric is a dependency
        return None
    names = sorted(STRATEGY_REGISTRY.available_strategies())
    if v.lower() in names:
        return None
    near = difflib.get_close_matches(v.lower(), names, n=1)
    return ("'auto' or a Fabric strategy" + (f" (did you mean {near[0]!r}?)" if near else "") + ": " + ", ".join(names))


@dataclass
class TrainerConfig:
    max_steps: Optional[int] = option(None, ge=1)
    max_epochs: Optional[int] = option(None, ge=1)
    # stop (and checkpoint) after this wall-clock budget
    max_minutes: Optional[float] = option(None, ge=0, resume_safe=True)  # 0: stop after the first step
    accelerator: Literal["auto", "cpu", "cuda", "gpu", "mps"] = option("auto", resume_safe=True)
    devices: Union[int, str] = option(1, check=_devices_allowed)
    num_nodes: int = option(1, ge=1)
    strategy: str = option("auto", check=_strategy_allowed)  # auto | ddp | ddp_spawn ...
    precision: Precision = "32-true"  # 32-true | bf16-mixed | 16-mixed ...
    out_dir: Optional[str] = option(None, resume_safe=True)  # default runs/<method>-<data>
    resume: str = option("auto", resume_safe=True)  # auto (resume if out_dir has a checkpoint) | never | <path>
    overwrite: bool = option(False, resume_safe=True)  # starting into an existing run folder replaces it
    ckpt_every: int = option(500, ge=1, resume_safe=True)
    log_every: int = option(10, ge=1, resume_safe=True)
    knn_every: int = option(0, ge=0, resume_safe=True)  # 0: only at the end
    knn_k: int = option(20, ge=1, resume_safe=True)
    knn_t: float = option(0.1, gt=0, resume_safe=True)
    knn_max_train: int = option(10000, ge=1, resume_safe=True)  # monitor bank size (a fixed subset of the training set)
    channels_last: bool = option(False, resume_safe=True)
    compile: bool = option(False, resume_safe=True)
    progress: bool = option(True, resume_safe=True)
    threads: Optional[int] = option(None, ge=1, resume_safe=True)  # torch intra-op threads on CPU


@dataclass
class Config:
    method: dict = field(default_factory=lambda: {"name": "simclr"})
    seed: int = option(0, unbounded="any integer seed")
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
        choices = typing.get_args(tp)
        if value in choices and type(value) in {type(c) for c in choices}:
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and str(value) in choices:
            return str(value)  # trainer.precision=32 (YAML reads a number) -> "32"
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
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            own = cls.__dict__.get("__annotations__", {})  # a class's own keys first, then inherited ones
            raise _unknown_key(key, [n for n in names if n in own] + [n for n in names if n not in own], where)
        path = f"{where}.{key}" if where else key
        kwargs[key] = _coerce(value, hints[key], path)
        # the range declared with the field (contrastlab.fields.option)
        check_bounds(kwargs[key], fields[key], path, nullable=_nullable(hints[key]))
    return cls(**kwargs)


def _nullable(tp) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def parse_option(text: str, tp):
    """The value of a ``key=value`` option for a field of type ``tp``: parsed as YAML, except
    that a field that only holds strings keeps the text as written (``weights=123``)."""
    value = _parse_value(text)
    if isinstance(value, str) or (value is None and _nullable(tp)):
        return value
    args = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType, Literal) else (tp,)
    if all(a is str or a is type(None) or isinstance(a, str) for a in args):
        return text
    return value


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
    """Checks that involve several fields (the range of each field is declared with it and
    checked by build_dataclass), then the method's own: its config class may define
    ``check(cfg)`` (a classmethod that sees the whole Config, e.g. SimCLR's batch size)."""
    t, d, v = cfg.trainer, cfg.data, cfg.views
    from .data import dataset_problem

    problem = dataset_problem(d.name)
    if problem:
        raise ConfigError(f"data.name={d.name!r}: {problem}")
    if t.max_steps is None and t.max_epochs is None:
        raise ConfigError("trainer.max_steps=null and trainer.max_epochs=null: set trainer.max_steps or "
                          "trainer.max_epochs (the length of the run)")
    if d.resize != "stretch" and d.name not in ("pascal5i", "coco20i"):
        raise ConfigError(f"data.resize={d.resize} applies to data.name=pascal5i or coco20i (the official letterbox), "
                          f"not to {d.name}; remove it")  # fmt: skip
    for name in ("scale", "rotate"):
        lo, hi = getattr(d.seg_aug, name)
        if lo > hi:
            raise ConfigError(f"data.seg_aug.{name}={[lo, hi]}: must be [min, max] with min <= max")
    for name in ("crop_scale", "crop_ratio", "blur_sigma"):
        lo, hi = getattr(v, name)
        if lo > hi:
            raise ConfigError(f"views.{name}={[lo, hi]}: must be [min, max] with min <= max")
    if cfg.optim.warmup_steps and cfg.optim.warmup_epochs is not None:
        raise ConfigError(f"optim.warmup_steps={cfg.optim.warmup_steps} and optim.warmup_epochs={cfg.optim.warmup_epochs}: "
                          "give the warm-up once, in steps or in epochs")  # fmt: skip
    if cfg.optim.nesterov and (cfg.optim.name != "sgd" or cfg.optim.momentum == 0):
        raise ConfigError(f"optim.nesterov=true needs optim.name=sgd with optim.momentum > 0 (got optim.name="
                          f"{cfg.optim.name}, optim.momentum={cfg.optim.momentum}); set optim.nesterov=false or use SGD "
                          "with momentum")  # fmt: skip
    _check_resnet_options(cfg.model)
    if cfg.model.timm_kwargs and not cfg.model.backbone.startswith("timm:"):
        raise ConfigError(f"model.timm_kwargs applies to timm:NAME backbones, not to model.backbone="
                          f"{cfg.model.backbone}; remove it or choose a timm backbone")  # fmt: skip
    _check_data_splits(d)
    if d.in_memory and d.name != "imagefolder":
        raise ConfigError(f"data.in_memory=true applies to data.name=imagefolder (the other sets are in memory or "
                          f"read their own way), not to {d.name}; remove it")  # fmt: skip
    if d.in_memory and v.backend != "batched":
        raise ConfigError("data.in_memory=true keeps images at data.image_size for the batched views; "
                          "views.backend=torchvision crops each file at its full size: set one or the other")
    if d.load_size is not None and d.load_size < d.image_size:
        raise ConfigError(f"data.load_size={d.load_size}: must be >= data.image_size={d.image_size} "
                          "(the random crop is cut from the resized image)")  # fmt: skip
    from .methods import method_config_class

    mcls = method_config_class(cfg.method["name"])
    if hasattr(mcls, "check"):
        mcls.check(cfg)


def _check_resnet_options(m: ModelConfig) -> None:
    """The torchvision ResNets' own options (output stride, deep stem) with another backbone or the CIFAR stem
    are one-line errors at load (the same checks as contrastlab.nn.build_backbone's)."""
    from .nn.backbones import resnet_options_problem

    problem = resnet_options_problem(m.backbone, cifar_stem=m.cifar_stem, output_stride=m.output_stride,
                                     deep_stem=m.deep_stem)  # fmt: skip
    if problem:
        raise ConfigError(problem)


def _check_data_splits(d: DataConfig) -> None:
    """The fixed subsets of the training split: each given once, the long-tailed ones with a ratio,
    and only for labelled data sets (the files' contents are checked when the data is read)."""
    from .data import DOMAIN_SETS

    given = [k for k in ("long_tail_split", "long_tail_file", "val_per_class", "val_file", "train_file")
             if getattr(d, k) is not None]
    if given and d.name in DOMAIN_SETS:
        raise ConfigError(f"data.{given[0]}={getattr(d, given[0])!r}: subsets of the training split apply to labelled "
                          f"data sets, not to the unpaired domains of data.name={d.name}")  # fmt: skip
    if d.long_tail_split is not None and d.long_tail_file is not None:
        raise ConfigError(f"data.long_tail_split={d.long_tail_split} and data.long_tail_file={d.long_tail_file!r}: "
                          "give the long-tailed subset once, drawn here or read from a file")  # fmt: skip
    for key in ("long_tail_split", "long_tail_file"):
        if getattr(d, key) is not None and d.long_tail_ratio is None:
            raise ConfigError(f"data.{key}={getattr(d, key)!r} chooses the long-tailed subset, but data.long_tail_ratio="
                              f"null; set the ratio (e.g. 100) or data.{key}=null")  # fmt: skip
    if d.val_per_class is not None and d.val_file is not None:
        raise ConfigError(f"data.val_per_class={d.val_per_class} and data.val_file={d.val_file!r}: give the "
                          "validation hold-out once, drawn here or read from a file")  # fmt: skip


def resume_differences(old: dict | Config, new: Config) -> list[str]:
    """What differs between the config of a run (``old``: its Config, or the tree stored in its
    checkpoint, perhaps written before keys were added: they take their defaults) and ``new``,
    leaving out the options whose change does not alter what is trained (``resume_safe``).
    One short text per difference: ``"optim.lr: 0.1 in the run, 0.2 now"``; a different method
    is one entry (``"method.name: simclr in the run, moco now"``)."""
    if not isinstance(old, Config):
        old = from_dict(old)
    out: list[str] = []

    def diff(path: str, a, b, f) -> None:
        if f is not None and is_resume_safe(f):
            return
        if a != b:
            out.append(f"{path}: {_show(a)} in the run, {_show(b)} now")

    for f in dataclasses.fields(Config):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if f.name == "method":
            if a.get("name") != b.get("name"):
                diff("method.name", a.get("name"), b.get("name"), None)
                continue
            from .methods import method_config_class

            for mf in dataclasses.fields(method_config_class(b["name"])):
                diff(f"method.{mf.name}", a.get(mf.name), b.get(mf.name), mf)
        elif dataclasses.is_dataclass(a):
            for sf in dataclasses.fields(a):
                diff(f"{f.name}.{sf.name}", getattr(a, sf.name), getattr(b, sf.name), sf)
        else:
            diff(f.name, a, b, f)
    return out


def _show(v) -> str:
    """A value as a YAML override would write it."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return str(v)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)

