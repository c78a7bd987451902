"""Options declared with their checks: a config field says what values it allows.

``option(default, ge=..., gt=..., le=..., lt=...)`` is a ``dataclasses.field`` whose metadata
holds the field's bounds (or, for a number with no bound, ``unbounded="why"``), a custom
check when bounds cannot say it (``check=fn``: returns None or what is allowed), whether a
change of the value on resume leaves the trained weights' trajectory unchanged
(``resume_safe``) and a short ``doc``. :func:`check_bounds` applies them to one value with a
one-line :class:`ConfigError` that names the key, the value and what is allowed;
``contrastlab.config.build_dataclass`` calls it for every value it builds. Bounds apply to
numbers, to Optional numbers when not None, and to each element of a tuple.

Bottom layer: imports only the standard library and ``contrastlab.errors``.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Iterator, Optional

from .errors import ConfigError

__all__ = ["option", "check_bounds", "bounds_of", "allowed_text", "declared", "is_resume_safe", "walk_fields",
           "numeric_leaf"]  # fmt: skip

_KEY = "contrastlab"  # the metadata entry that holds the declaration
_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    *,
    default_factory: Any = _MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    unbounded: str | None = None,
    check: Optional[Callable[[Any], Optional[str]]] = None,
    resume_safe: bool = False,
    doc: str = "",
) -> Any:
    """A dataclass field with its declared range.

    ``ge``/``gt``/``le``/``lt``: inclusive / exclusive lower and upper bounds (numbers; for a
    tuple, of each element). ``unbounded``: why a number has no bound (so that every numeric
    field declares something). ``check``: ``fn(value) -> None | str``, for what bounds cannot
    express (the string says what is allowed). ``resume_safe``: changing this value when a
    run is resumed does not change what is trained. ``doc``: appended to error messages."""
    if ge is not None and gt is not None or le is not None and lt is not None:
        raise TypeError("option: give at most one lower bound (ge or gt) and one upper bound (le or lt)")
    has_bound = any(b is not None for b in (ge, gt, le, lt))
    if unbounded is not None and has_bound:
        raise TypeError("option: unbounded= and a bound exclude each other")
    meta = {"bounds": {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None},
            "unbounded": unbounded, "check": check, "resume_safe": bool(resume_safe), "doc": doc}  # fmt: skip
    kw: dict = {"metadata": {_KEY: meta}}
    if default_factory is not _MISSING:
        kw["default_factory"] = default_factory
    else:
        kw["default"] = default
    return dataclasses.field(**kw)


def _meta(f: dataclasses.Field) -> dict:
    return f.metadata.get(_KEY, {}) if f.metadata else {}


def bounds_of(f: dataclasses.Field) -> dict:
    """The declared bounds of a field: {"ge"|"gt"|"le"|"lt": number}, empty when none."""
    return dict(_meta(f).get("bounds", {}))


def declared(f: dataclasses.Field) -> bool:
    """Whether the field declares its range (bounds, a check, or an explicit ``unbounded``)."""
    m = _meta(f)
    return bool(m.get("bounds")) or m.get("check") is not None or m.get("unbounded") is not None


def is_resume_safe(f: dataclasses.Field) -> bool:
    return bool(_meta(f).get("resume_safe", False))


def _num(x) -> str:
    return repr(int(x)) if isinstance(x, float) and x.is_integer() and abs(x) < 1e15 else repr(x)


def allowed_text(bounds: dict) -> str:
    """'>= 1', '> 0', 'in [0, 1)', ... for a bounds dict."""
    lo = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    hi = ("]", bounds["le"]) if "le" in bounds else (")", bounds["lt"]) if "lt" in bounds else None
    if lo and hi:
        return f"in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {_num(lo[1])}"
    if hi:
        return f"{'<=' if hi[0] == ']' else '<'} {_num(hi[1])}"
    return "any value"


def _inside(x, bounds: dict) -> bool:
    return (("ge" not in bounds or x >= bounds["ge"]) and ("gt" not in bounds or x > bounds["gt"])
            and ("le" not in bounds or x <= bounds["le"]) and ("lt" not in bounds or x < bounds["lt"]))  # fmt: skip


def check_bounds(value: Any, f: dataclasses.Field, where: str, nullable: bool = False) -> None:
    """Raise a one-line ConfigError when ``value`` of field ``f`` (at key ``where``) is outside
    the declared range: ``trainer.max_steps=0: must be >= 1 (or null)``. None passes (the type
    check decides whether None is allowed; ``nullable`` only adds "or null" to the message);
    a tuple is checked element by element (``views.crop_scale[0]=0.0: ...``); booleans and
    strings are not bounded."""
    m = _meta(f)
    if not m or value is None:
        return
    doc = f"; {m['doc']}" if m.get("doc") else ""
    bounds = m.get("bounds") or {}
    if bounds:
        items = list(enumerate(value)) if isinstance(value, (tuple, list)) else [(None, value)]
        for i, x in items:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                continue
            if not _inside(x, bounds):
                key = where if i is None else f"{where}[{i}]"
                tail = " (or null)" if nullable and i is None else ""
                raise ConfigError(f"{key}={x!r}: must be {allowed_text(bounds)}{tail}{doc}")
    fn = m.get("check")
    if fn is not None:
        allowed = fn(value)
        if allowed:
            raise ConfigError(f"{where}={value!r}: must be {allowed}{doc}")


def numeric_leaf(tp) -> bool:
    """Whether a type annotation holds a number somewhere (int, float, Optional / Union / tuple
    of them); bool does not count."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return False
    if origin is not None:
        return any(numeric_leaf(a) for a in typing.get_args(tp) if a is not Ellipsis)
    return tp in (int, float)


def walk_fields(cls, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(path, field, type) of every leaf of a dataclass tree (nested dataclass fields are
    entered, their own field is not yielded); for tests and tools."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from walk_fields(tp, path)
        else:
            yield path, f, tp
