"""The ``contrastlab`` command: train | eval | report | list."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import ConfigError, Interrupted, UserError

# the options of each command: a dataclass (module:class, imported when used) whose fields declare
# their types, defaults and ranges, parsed by _parse_kv through config.build_dataclass
EVAL_DEFAULTS = {
    "knn": "contrastlab.eval.knn:KnnOptions",
    "linear": "contrastlab.eval.linear:LinearOptions",
    "translation": "contrastlab.eval.translation:TranslationOptions",
}
TRANSLATE_DEFAULTS = "contrastlab.eval.translation:TranslateOptions"
FEATURE_KINDS = ("model", "random", "pixels")


def _parse_kv(items, spec: str, what: str) -> tuple[dict, list[str]]:
    """Split ``key=value`` items into the options of dataclass ``spec`` ("module:class"; typed and
    range-checked by config.build_dataclass, defaults filled in) and data.* overrides."""
    import dataclasses
    import importlib
    import typing

    from .config import build_dataclass, parse_option

    module, name = spec.split(":")
    cls = getattr(importlib.import_module(module), name)
    hints, names = typing.get_type_hints(cls), [f.name for f in dataclasses.fields(cls)]
    values, data_overrides = {}, []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{what}: argument {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        if key.startswith("data."):
            data_overrides.append(item)
            continue
        if key not in names:
            raise ConfigError(f"{what}: unknown option {key!r}; valid options: {', '.join(names)}, data.<key>")
        values[key] = parse_option(text, hints[key])
    try:
        return dataclasses.asdict(build_dataclass(cls, values)), data_overrides
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from None


def cmd_train(args) -> int:
    from .config import load_config
    from .engine.trainer import fit

    cfg = load_config(args.recipe, args.overrides)
    res = fit(cfg)
    if res.interrupted is not None:  # stopped by SIGINT / SIGTERM: not a finished run (exit 130 / 143)
        if res.is_main:
            import signal

            print(f"contrastlab: {signal.Signals(res.interrupted).name}: stopped at step {res.step} of "
                  f"{res.metrics.get('total_steps')}, checkpoint kept in {res.run_dir}; rerun the same command "
                  "to continue", file=sys.stderr)  # fmt: skip
        return 128 + res.interrupted
    if res.metrics and res.is_main:
        print(json.dumps({"run_dir": str(res.run_dir), **res.metrics}))
    return 0


def load_run(checkpoint: str, data_overrides: list[str]):
    """(cfg, method with weights) from a checkpoint path or run folder."""
    from .config import apply_overrides, from_dict
    from .engine.checkpoint import load_checkpoint, load_weights
    from .methods import build_method

    ckpt = load_checkpoint(checkpoint)
    tree = apply_overrides(ckpt["config"], data_overrides)
    cfg = from_dict(tree)  # defaults for keys newer than the checkpoint
    method = build_method(cfg)
    load_weights(method, ckpt["model"], checkpoint)
    if cfg.trainer.channels_last:  # evaluate with the memory layout the run used (same numbers)
        from .nn import Encoder

        for m in method.modules():
            if isinstance(m, Encoder):
                m.to_channels_last()
    return cfg, method, ckpt


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def eval_features(cfg, method, opts):
    """Features of train and test for an eval protocol: the model's, a random-init model's of the
    same architecture, or raw pixels (baselines)."""
    import torch

    from .data import build_datasets
    from .eval.features import extract_features
    from .methods import build_method

    train, test = build_datasets(cfg.data)
    if test is None:
        raise UserError(f"the {cfg.data.name} data set has no test split (data.test_dir) to evaluate on")
    label = opts["label"] or train.default_label
    if label not in train.labels:
        raise UserError(f"label={label!r} is not a label of {cfg.data.name}; available: {', '.join(train.labels)}")
    kind = opts["features"]
    if kind not in FEATURE_KINDS:
        raise ConfigError(f"features must be one of {', '.join(FEATURE_KINDS)}, got {kind!r}")
    device = _device(opts["device"])
    if kind == "pixels":
        encoder = torch.nn.Flatten()
        encoder.out_dim = 3 * cfg.data.image_size**2
    else:
        if kind == "random":
            torch.manual_seed(cfg.seed + 1)
            method = build_method(cfg)
        encoder = method.encoder.to(device)
    ftr = extract_features(encoder, train, device=device, batch_size=opts["batch_size"])
    fte = extract_features(encoder, test, device=device, batch_size=opts["batch_size"])
    ytr, yte = train.labels[label], test.labels[label]
    n_classes = len(train.classes.get(label, [])) or int(ytr.max()) + 1
    return train, test, label, ftr, fte, ytr, yte, n_classes


def cmd_eval(args) -> int:
    protocol = args.protocol
    opts, data_overrides = _parse_kv(args.options, EVAL_DEFAULTS[protocol], f"eval {protocol}")
    cfg, method, ckpt = load_run(args.checkpoint, data_overrides)
    if protocol == "translation":
        return _eval_translation(args, cfg, method, ckpt, opts)
    if not hasattr(method, "encoder"):
        raise UserError(f"{args.checkpoint} is a {cfg.method['name']} run (image translation), which has no encoder "
                        f"to probe; use: contrastlab eval translation {args.checkpoint}")  # fmt: skip
    lt_counts = None
    if protocol == "linear" and cfg.data.long_tail_ratio is not None:
        # long-tailed pre-training (SDCLR's protocol): groups by the pre-training set's class counts,
        # the probe trained on the balanced set (probe_data=balanced) or on the long-tailed one
        if opts["probe_data"] not in ("balanced", "pretrain"):
            raise ConfigError(f"probe_data must be balanced or pretrain, got {opts['probe_data']!r}")
        import dataclasses

        from .data import build_datasets

        lt_train, _ = build_datasets(cfg.data)
        lt_label = opts["label"] or lt_train.default_label
        lt_counts = lt_train.labels[lt_label]
        if opts["probe_data"] == "balanced":
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, long_tail_ratio=None))
    train, test, label, ftr, fte, ytr, yte, n_classes = eval_features(cfg, method, opts)
    result = {"protocol": protocol, "checkpoint": str(args.checkpoint), "step": int(ckpt["step"]),
              "label": label, "features": opts["features"], "n_train": len(ftr), "n_test": len(fte)}  # fmt: skip
    if protocol == "knn":
        from .eval.knn import knn_eval

        keep = ytr >= 0
        r = knn_eval(ftr[keep], ytr[keep], fte, yte, n_classes, k=opts["k"], temperature=opts["temperature"])
        result.update({"k": opts["k"], "temperature": opts["temperature"], **r})  # r's k: the k used, if clamped
    else:
        from .eval.linear import linear_probe, long_tail_groups

        r = linear_probe(ftr, ytr, fte, yte, n_classes, epochs=opts["epochs"], weight_decay=opts["weight_decay"],
                         device=_device(opts["device"]))  # fmt: skip
        result.update({k: r[k] for k in ("top1", "top5", "train_top1") if k in r})
        if lt_counts is not None:
            counts = [int((lt_counts == c).sum()) for c in range(n_classes)]
            result.update({"probe_data": opts["probe_data"], "pretrain_class_counts": counts})
            result.update(long_tail_groups(r["per_class_acc"], counts, scheme=opts["groups"]))
        result["per_class_acc"] = [round(float(a), 4) for a in r["per_class_acc"]]
    _write_eval(Path(args.checkpoint), protocol, result)
    print(json.dumps(result))
    return 0


def _eval_translation(args, cfg, method, ckpt, opts) -> int:
    from .data import build_datasets
    from .eval.translation import evaluate_translation

    train, test = build_datasets(cfg.data)
    r = evaluate_translation(method, test, extractor=opts["extractor"], weights=opts["weights"], direction=opts["direction"],
                             device=_device(opts["device"]), batch_size=opts["batch_size"], max_images=opts["max_images"],
                             train_set=train)  # fmt: skip
    result = {"protocol": "translation", "checkpoint": str(args.checkpoint), "step": int(ckpt["step"]),
              "method": cfg.method["name"], "label": "translation", "features": r["extractor"], **r}  # fmt: skip
    _write_eval(Path(args.checkpoint), "translation", result)
    print(json.dumps(result))
    return 0


def cmd_translate(args) -> int:
    from .eval.translation import translate_folder

    opts, data_overrides = _parse_kv(args.options, TRANSLATE_DEFAULTS, "translate")
    if data_overrides:
        raise ConfigError("translate takes no data.* options; valid options: " + ", ".join(opts))
    cfg, method, ckpt = load_run(args.checkpoint, [])
    r = translate_folder(method, args.input_dir, args.out_dir, direction=opts["direction"], size=opts["size"],
                         device=_device(opts["device"]), overwrite=opts["overwrite"])  # fmt: skip
    print(json.dumps({"checkpoint": str(args.checkpoint), "step": int(ckpt["step"]), **r}))
    return 0


def _write_eval(checkpoint: Path, protocol: str, result: dict):
    """Keep eval results next to the run (eval.json, one entry per protocol/label/features)."""
    run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
    path = run_dir / "eval.json"
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except (json.JSONDecodeError, OSError):
        data = {}
    data[f"{protocol}/{result['label']}/{result['features']}"] = result
    from .files import atomic_write

    try:
        atomic_write(path, json.dumps(data, indent=2), kept="the previous eval.json is kept")
    except UserError as e:  # the result is still printed
        print(f"contrastlab: warning: {e}", file=sys.stderr)


def cmd_report(args) -> int:
    from .report.run import build_run_report

    path = build_run_report(Path(args.run_dir), device=_device("auto"))
    print(json.dumps({"report": str(path)}))
    return 0


def cmd_list(args) -> int:
    from .config import list_recipes
    from .methods import REGISTRY

    print("methods: " + ", ".join(sorted(REGISTRY)))
    print("recipes: " + ", ".join(list_recipes()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="contrastlab", description="Contrastive and self-supervised representation learning.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="pre-train a recipe: contrastlab train simclr trainer.max_steps=100")
    t.add_argument("recipe", help="recipe name (simclr, moco, simclr/cifar10, ...) or a YAML file")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.1")
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("eval", help="evaluate frozen features of a checkpoint")
    e.add_argument("protocol", choices=sorted(EVAL_DEFAULTS))
    e.add_argument("checkpoint", help="a checkpoint file or a run folder (uses its last.ckpt)")
    e.add_argument("options", nargs="*", help="key=value: label=color, k=20, features=random|pixels, data.root=...; "
                   "translation: extractor=auto|inception|random, weights=PATH, direction=AtoB|BtoA|both")
    e.set_defaults(fn=cmd_eval)
    tr = sub.add_parser("translate", help="translate a folder of images with a cut / dclgan / simdcl checkpoint")
    tr.add_argument("checkpoint", help="a checkpoint file or a run folder")
    tr.add_argument("input_dir")
    tr.add_argument("out_dir")
    tr.add_argument("options", nargs="*", help="key=value: direction=AtoB|BtoA, size=0 (keep) | N, device=auto")
    tr.set_defaults(fn=cmd_translate)
    r = sub.add_parser("report", help="write an HTML report with plots for a run folder")
    r.add_argument("run_dir")
    r.set_defaults(fn=cmd_report)
    li = sub.add_parser("list", help="list methods and recipes")
    li.set_defaults(fn=cmd_list)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, UserError) as e:
        print(f"contrastlab: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"contrastlab: stopped by signal {e.signum}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("contrastlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
