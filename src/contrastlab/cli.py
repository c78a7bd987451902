"""The ``contrastlab`` command: train | eval | translate | export | report | list."""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from .errors import ConfigError, Interrupted, UserError


def _parse_kv(items, cls, what: str):
    """Split ``key=value`` items into an instance of the options dataclass ``cls`` (typed and
    range-checked by config.build_dataclass, defaults filled in) and the run overrides: data.*,
    method.name and the method's options that do not change training (see eval.run.load_run)."""
    import dataclasses
    import typing

    from .config import build_dataclass, parse_option

    hints, names = typing.get_type_hints(cls), [f.name for f in dataclasses.fields(cls)]
    values, data_overrides = {}, []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{what}: argument {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        if key.startswith(("data.", "method.")):  # where the data is; what evaluation sees (load_run checks them)
            data_overrides.append(item)
            continue
        if key not in names:
            raise ConfigError(f"{what}: unknown option {key!r}; valid options: {', '.join(names)}, data.<key>, method.name, "
                              "method.<key> (an option that does not change training)")
        values[key] = parse_option(text, hints[key])
    try:
        return build_dataclass(cls, values), data_overrides
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


def cmd_eval(args) -> int:
    from .eval import protocol
    from .eval.run import write_eval

    mod = protocol(args.protocol)
    opts, data_overrides = _parse_kv(args.options, mod.Options, f"eval {args.protocol}")
    result = mod.run(args.checkpoint, opts, data_overrides)
    named = [o.split("=", 1)[1] for o in data_overrides if o.startswith("method.name=")]
    if named:  # the run's weights seen as another name of its method: kept beside the run's own result
        result["method"] = named[-1]
        result["variant"] = "-".join(filter(None, [result.get("variant"), named[-1]]))
    write_eval(args.checkpoint, args.protocol, result)
    print(json.dumps(result))
    return 0


def cmd_translate(args) -> int:
    import dataclasses

    from .eval.run import device, load_run
    from .eval.translation import TranslateOptions, translate_folder

    opts, data_overrides = _parse_kv(args.options, TranslateOptions, "translate")
    if data_overrides:
        names = ", ".join(f.name for f in dataclasses.fields(opts))
        raise ConfigError(f"translate takes no data.* options; valid options: {names}")
    cfg, method, ckpt = load_run(args.checkpoint, [])
    r = translate_folder(method, args.input_dir, args.out_dir, direction=opts.direction, size=opts.size,
                         device=device(opts.device), overwrite=opts.overwrite)  # fmt: skip
    print(json.dumps({"checkpoint": str(args.checkpoint), "step": int(ckpt["step"]), **r}))
    return 0


def cmd_export(args) -> int:
    from .eval.export import export_torchvision

    print(json.dumps(export_torchvision(args.checkpoint, args.out, fc=args.fc)))
    return 0


def cmd_report(args) -> int:
    from .eval.run import device
    from .report.run import build_run_report

    path = build_run_report(Path(args.run_dir), device=device("auto"))
    print(json.dumps({"report": str(path)}))
    return 0


def cmd_list(args) -> int:
    from .config import list_recipes
    from .eval import PROTOCOLS
    from .methods import REGISTRY

    print("methods: " + ", ".join(sorted(REGISTRY)))
    print("recipes: " + ", ".join(list_recipes()))
    print("evaluation protocols: " + ", ".join(sorted(PROTOCOLS)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="contrastlab", description="Contrastive and self-supervised representation learning.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="pre-train a recipe: contrastlab train simclr trainer.max_steps=100")
    t.add_argument("recipe", help="recipe name (simclr, moco, simclr/cifar10, ...) or a YAML file")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.1")
    t.set_defaults(fn=cmd_train)
    from .eval import PROTOCOLS, describe, option_summary

    e = sub.add_parser("eval", help="evaluate a checkpoint with a protocol: " + ", ".join(sorted(PROTOCOLS)),
                       description="Evaluate a run with one of the protocols below; the result is the JSON of the "
                       "last line and is kept in the run folder's eval.json. Options: key=value (see each protocol's "
                       "options in its error message or docs), data.key=value to read the data elsewhere, method.key=value "
                       "for a method option that does not change training (e.g. method.t_test of RP-Net).",
                       epilog="protocols (options: key=default, a|b a choice):\n" + "\n".join(
                           f"  {n:<12} {describe(n)}\n" + textwrap.fill(option_summary(n), 110, initial_indent=" " * 15,
                                                           subsequent_indent=" " * 15, break_on_hyphens=False)
                           for n in sorted(PROTOCOLS)),
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    e.add_argument("protocol", choices=sorted(PROTOCOLS))
    e.add_argument("checkpoint", help="a checkpoint file or a run folder (uses its last.ckpt)")
    e.add_argument("options", nargs="*", help="key=value: the protocol's options listed below (label=color, k=20, "
                   "features=random|pixels, ...), and data.key=value (data.root=...) to read the data elsewhere")
    e.set_defaults(fn=cmd_eval)
    tr = sub.add_parser("translate", help="translate a folder of images with a cut / dclgan / simdcl checkpoint")
    tr.add_argument("checkpoint", help="a checkpoint file or a run folder")
    tr.add_argument("input_dir")
    tr.add_argument("out_dir")
    tr.add_argument("options", nargs="*", help="key=value: direction=AtoB|BtoA, size=0 (keep) | N, device=auto")
    tr.set_defaults(fn=cmd_translate)
    ex = sub.add_parser("export", help="write a ResNet run's backbone in torchvision's resnet key format (for detection)")
    ex.add_argument("checkpoint", help="a checkpoint file or a run folder")
    ex.add_argument("out", help="the file to write, e.g. backbone.pth")
    ex.add_argument("--fc", choices=("zeros", "none"), default="zeros",
                    help="zeros (default): an all-zero, untrained 1000-class fc so that torchvision's "
                         "resnet loads the file with strict=True; none: no fc keys")
    ex.set_defaults(fn=cmd_export)
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
