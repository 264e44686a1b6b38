"""Frozen dataclasses from plain dicts (YAML), refusing what they do not know.

One mechanism for suite files and method parameters alike: an unknown key, a wrong type or a bad
value becomes one `UserError` line that names the file, the key path and the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from segbench.errors import UserError, did_you_mean

_MISSING = dataclasses.MISSING
MAX_INT = 2**63 - 1


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def from_dict(cls, data: Any, where: str):
    """Build dataclass `cls` from `data`, checking keys, types and the class's own __post_init__ checks."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise UserError(f"{where}: unknown key {key!r}{did_you_mean(key, fields)}; valid keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = coerce(data[name], hints[name], f"{where}.{name}")
        elif f.default is _MISSING and f.default_factory is _MISSING:
            raise UserError(f"{where}: missing required key {name!r}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise UserError(f"{where}: {e}") from None


def coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if len(errors) == 1 else f"{where}: {_short(value)} matches none of {_type_name(tp)}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise UserError(f"{where}: {_short(value)} is not one of {', '.join(map(repr, choices))}{did_you_mean(value, choices)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {_short(value)}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = tuple(coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
        return items if origin is tuple else list(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {_short(value)}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {_short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {_short(value)}")
        if abs(value) > MAX_INT:  # beyond int64 nothing downstream (torch, numpy, parquet) can hold it
            raise UserError(f"{where}: {_short(value)} is too large (at most {MAX_INT})")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {_short(value)}")
        if isinstance(value, int) and abs(value) > MAX_INT:
            raise UserError(f"{where}: {_short(value)} is too large (at most {MAX_INT})")
        if not math.isfinite(value):  # YAML's .nan/.inf: a NaN limit never trips, an infinite one overflows
            raise UserError(f"{where}: {value!r} is not a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {_short(value)}")
        return value
    return value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _type_name(tp) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(c) for c in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list[{_type_name(args[0])}]" if args else "list"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def to_dict(obj) -> dict:
    """Plain, JSON-ready dict of a dataclass (tuples become lists)."""
    return _plain(dataclasses.asdict(obj))


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def describe_fields(cls) -> list[tuple[str, str, Any]]:
    """(name, type, default) of each field, for `segbench methods`."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not _MISSING else (f.default_factory() if f.default_factory is not _MISSING else None)
        out.append((f.name, _type_name(hints[f.name]), default))
    return out
