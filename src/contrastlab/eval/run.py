"""A run folder as the evaluation protocols see it: its config and method with the trained
weights (:func:`load_run`), features of its encoder or of a baseline on the run's data
(:func:`probe_features`), and ``eval.json``, where each protocol's result is kept beside the
checkpoint (:func:`write_eval`)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ..errors import ConfigError, UserError

FEATURE_KINDS = ("model", "random", "pixels")


def load_run(checkpoint: str, data_overrides: list[str]):
    """(cfg, method with weights, checkpoint dict) from a checkpoint path or run folder;
    ``data_overrides`` (``data.key=value``) change where and how the data is read, and
    ``method.name=NAME`` what evaluation sees, where NAME is another name of the run's own method
    (``looc`` evaluates the backbone, ``looc_pp`` the concatenated spaces of the same weights), and
    ``method.KEY=VALUE`` an option of the method that does not change training (one marked
    resume-safe: RP-Net's ``t_test``, Labels4Free's mask ``threshold``); any other is refused, since
    the weights were trained with the run's value."""
    import dataclasses

    from ..config import apply_overrides, from_dict
    from ..checkpoint import load_checkpoint, load_weights
    from ..fields import is_resume_safe
    from ..methods import REGISTRY, build_method, method_class

    ckpt = load_checkpoint(checkpoint)
    trained = ckpt["config"].get("method", {}).get("name")
    for item in data_overrides:
        key, name = item.split("=", 1)
        if key == "method.name" and (name not in REGISTRY or REGISTRY[name] != REGISTRY.get(trained)):
            same = sorted(n for n, c in REGISTRY.items() if c == REGISTRY.get(trained) and n != trained)
            raise UserError(f"method.name={name}: {checkpoint} is a {trained} run; evaluation can only name the same "
                            f"method another way ({', '.join(same) or 'it has no other name'})")  # fmt: skip
        if key.startswith("method.") and key != "method.name":
            fields = {f.name: f for f in dataclasses.fields(method_class(trained).Config)} if trained in REGISTRY else {}
            safe = sorted(n for n, f in fields.items() if is_resume_safe(f))
            if key[len("method."):] not in safe:
                raise UserError(f"{key}: evaluation can set only the {trained} options that do not change training "
                                f"({', '.join('method.' + n for n in safe) or 'it has none'}); the weights were trained "
                                "with the run's value")  # fmt: skip
    tree = apply_overrides(ckpt["config"], data_overrides)
    cfg = from_dict(tree)  # defaults for keys newer than the checkpoint
    method = build_method(cfg)
    load_weights(method, ckpt["model"], checkpoint)
    if cfg.trainer.channels_last:  # evaluate with the memory layout the run used (same numbers)
        from ..nn import Encoder

        for m in method.modules():
            if isinstance(m, Encoder):
                m.to_channels_last()
    return cfg, method, ckpt


def device(name: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def probe_sets(cfg, opts):
    """The data a protocol probes: (train, test, label, number of classes) of the run's data set,
    with one-line errors for a set without a test split, an unknown label or features kind.
    ``opts`` has ``label`` and ``features``. ``label=quarter_turn`` probes the orientation: both
    sets with each image turned by 0, 90, 180 or 270 degrees (:func:`.labels.quarter_turned`)."""
    from ..data import build_datasets

    from .labels import QUARTER_TURN, quarter_turned

    train, test = build_datasets(cfg.data)
    if test is None:
        raise UserError(f"the {cfg.data.name} data set has no test split (data.test_dir) to evaluate on")
    label = opts.label or train.default_label
    if label == QUARTER_TURN and QUARTER_TURN not in train.labels:  # any set, each image turned by k x 90 degrees
        train, test = quarter_turned(train, seed=0), quarter_turned(test, seed=1)
    if label not in train.labels:
        raise UserError(f"label={label!r} is not a label of {cfg.data.name}; available: "
                        f"{', '.join([*train.labels, QUARTER_TURN])}")  # fmt: skip
    if opts.features not in FEATURE_KINDS:
        raise ConfigError(f"features must be one of {', '.join(FEATURE_KINDS)}, got {opts.features!r}")
    ytr = train.labels[label]
    n_classes = len(train.classes.get(label, [])) or int(ytr.max()) + 1
    return train, test, label, n_classes


def probe_encoder(cfg, method, features: str, dev):
    """The network whose features are probed, on ``dev``: the run's encoder (``model``), a
    random-init encoder of the same architecture (``random``, seeded with ``cfg.seed + 1``) or
    the flattened pixels (``pixels``); it has ``out_dim``."""
    from ..methods import build_method

    if features == "pixels":
        encoder = torch.nn.Flatten()
        encoder.out_dim = 3 * cfg.data.image_size**2
        return encoder
    if features == "random":
        torch.manual_seed(cfg.seed + 1)
        method = build_method(cfg)
    return method.encoder.to(dev)


def probe_features(cfg, method, opts):
    """Features of train and test for a protocol on frozen features: the model's, a random-init
    model's of the same architecture, or raw pixels (the baselines). ``opts`` has ``label``,
    ``features``, ``device`` and ``batch_size``. Returns (train, test, label, train features,
    test features, train labels, test labels, number of classes)."""
    from .features import feature_bank

    train, test, label, n_classes = probe_sets(cfg, opts)
    dev = device(opts.device)
    encoder = probe_encoder(cfg, method, opts.features, dev)
    ftr, _ = feature_bank(encoder, train, device=dev, batch_size=opts.batch_size)
    fte, _ = feature_bank(encoder, test, device=dev, batch_size=opts.batch_size)
    ytr, yte = train.labels[label], test.labels[label]
    return train, test, label, ftr, fte, ytr, yte, n_classes


def require_encoder(cfg, method, checkpoint) -> None:
    """One line for a protocol on frozen features given a run without an encoder."""
    from ..methods.contract import encodes

    if not encodes(method):
        raise UserError(f"{checkpoint} is a {cfg.method['name']} run (image translation), which has no encoder "
                        f"to probe; use: contrastlab eval translation {checkpoint}")  # fmt: skip


def write_eval(checkpoint, protocol: str, result: dict) -> None:
    """Keep a result next to the run (``eval.json``, one entry per protocol / label / features,
    and per ``variant`` when the result names one).
    A write error is a warning: the result is still printed."""
    from ..files import atomic_write

    checkpoint = Path(checkpoint)
    run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
    path = run_dir / "eval.json"
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except (json.JSONDecodeError, OSError):
        data = {}
    key = f"{protocol}/{result.get('label', '')}/{result.get('features', '')}"
    if result.get("variant"):  # e.g. a preset or a label fraction: kept beside the default result
        key += f"/{result['variant']}"
    data[key] = result
    try:
        atomic_write(path, json.dumps(data, indent=2), kept="the previous eval.json is kept")
    except UserError as e:
        print(f"contrastlab: warning: {e}", file=sys.stderr)
