"""Evaluation protocols, one file each, in a registry like the methods'.

A protocol is a module with

- ``Options``: a dataclass of its ``key=value`` options (typed, with ranges: ``fields.option``),
- ``run(checkpoint, opts, data_overrides=()) -> dict``: the result, with at least ``protocol``,
  ``checkpoint``, ``step``, ``label`` and ``features`` (``contrastlab eval NAME RUN`` prints it as
  the JSON of its last line and keeps it in ``RUN/eval.json``),
- optionally ``monitor(method, train_set, test_set, cfg, device, run_dir, step) -> dict``: the
  trainer's periodic check of a method whose ``monitor_protocol`` names the protocol (default
  ``knn``),

and its module docstring's first line describes it (``contrastlab eval --help``). Adding one is
a new file plus one line in ``PROTOCOLS``; see docs/architecture.md.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util

from ..errors import ConfigError

PROTOCOLS = {
    "knn": "contrastlab.eval.knn",
    "linear": "contrastlab.eval.linear",
    "linear_sgd": "contrastlab.eval.linear_sgd",
    "seg": "contrastlab.eval.seg",
    "translation": "contrastlab.eval.translation",
    "robust": "contrastlab.eval.robust",
    "masks": "contrastlab.eval.masks",
    "fewshot": "contrastlab.eval.fewshot",
}


def protocol(name: str):
    """The module of protocol ``name`` (a one-line ConfigError for an unknown name)."""
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown evaluation protocol {name!r}; available: {', '.join(sorted(PROTOCOLS))}")
    return importlib.import_module(PROTOCOLS[name])


def describe(name: str) -> str:
    """The first line of protocol ``name``'s module docstring (read from its file: nothing is
    imported, so ``contrastlab eval --help`` stays fast)."""
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown evaluation protocol {name!r}; available: {', '.join(sorted(PROTOCOLS))}")
    spec = importlib.util.find_spec(PROTOCOLS[name])
    with open(spec.origin, encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read())) or name
    return doc.strip().splitlines()[0]


def _default(value: ast.expr | None) -> str:
    """The default of one dataclass field as written in the source: ``option(20, ge=1)`` -> ``20``."""
    if isinstance(value, ast.Call) and value.args:
        value = value.args[0]
    if value is None or isinstance(value, ast.Call):
        return "?"
    s = ast.unparse(value).replace(" ", "")  # ``8 / 255`` -> ``8/255``: one word in the list
    return s[1:-1] if isinstance(value, ast.Constant) and isinstance(value.value, str) else s


def _choices(annotation: ast.expr) -> list[str] | None:
    """The values of a ``Literal["a", "b"]`` annotation, else None."""
    if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value).endswith("Literal"):
        elts = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
        return [str(e.value) for e in elts if isinstance(e, ast.Constant)]
    return None


def option_summary(name: str) -> str:
    """Protocol ``name``'s options as ``key=default`` (``key=a|b`` for a choice, default first), read from
    its ``Options`` dataclass in the source without importing it (for ``contrastlab eval --help``)."""
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown evaluation protocol {name!r}; available: {', '.join(sorted(PROTOCOLS))}")
    with open(importlib.util.find_spec(PROTOCOLS[name]).origin, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    target = "Options"
    for node in tree.body:  # ``Options = SegOptions``
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "Options" for t in node.targets):
            target = getattr(node.value, "id", target)
    out = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == target:
            for f in node.body:
                if isinstance(f, ast.AnnAssign) and isinstance(f.target, ast.Name):
                    d, choices = _default(f.value), _choices(f.annotation)
                    if choices and d in choices:
                        choices = [d, *[c for c in choices if c != d]]
                    out.append(f"{f.target.id}={'|'.join(choices) if choices else d}")
    return " ".join(out)


def monitor_for(method):
    """The periodic check the trainer runs for ``method``: its own ``monitor`` method if it has
    one, else the ``monitor`` of the protocol its ``monitor_protocol`` names (default ``knn``)."""
    from ..methods.contract import monitors

    if monitors(method):
        def own(method, train_set, test_set, cfg, device, run_dir, step):
            return method.monitor(train_set, test_set, run_dir=run_dir, step=step, device=device)

        return own
    name = getattr(method, "monitor_protocol", "knn")
    mod = protocol(name)
    if not hasattr(mod, "monitor"):
        raise ConfigError(f"{type(method).__name__}.monitor_protocol={name!r}: that protocol has no monitor")
    return mod.monitor


_LAZY = {  # the functions of the protocols, importable from here (imported on first use)
    "topk_neighbours": "contrastlab.nn.neighbours",
    "knn_predict": "contrastlab.eval.knn",
    "knn_eval": "contrastlab.eval.knn",
    "knn_accuracy": "contrastlab.eval.knn",
    "linear_probe": "contrastlab.eval.linear",
    "LinearClassifier": "contrastlab.eval.linear",
    "per_class_accuracy": "contrastlab.eval.linear",
    "long_tail_groups": "contrastlab.eval.linear",
    "fraction_subset": "contrastlab.eval.labels",
    "holdout_split": "contrastlab.eval.labels",
    "read_class_counts": "contrastlab.eval.labels",
    "train_linear_on_crops": "contrastlab.eval.linear_sgd",
    "confusion_matrix": "contrastlab.eval.seg",
    "segmentation_scores": "contrastlab.eval.seg",
    "dense_probe": "contrastlab.eval.seg",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PROTOCOLS",
    "protocol",
    "describe",
    "option_summary",
    "monitor_for",
    "topk_neighbours",
    "knn_predict",
    "knn_eval",
    "knn_accuracy",
    "linear_probe",
    "LinearClassifier",
    "per_class_accuracy",
    "long_tail_groups",
    "fraction_subset",
    "holdout_split",
    "read_class_counts",
    "train_linear_on_crops",
    "confusion_matrix",
    "segmentation_scores",
    "dense_probe",
]
