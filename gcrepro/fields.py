"""Typed fields of gcrepro's frozen config records (``ModelConfig``, ``TrainConfig``, ``RunSpec``).

One parser for every way a value arrives:

- ``parse_text(text, tp)``: a ``key=value`` string from the command line, ``table run --set`` or a
  notebook's ``overrides`` dict (``"50"``, ``"0.01"``, ``"true"``, ``"8,11"``, ``"none"``);
- ``coerce(value, tp)``: a Python or JSON value (``50``, ``[8, 11]``, ``None``) of that type.

Both raise ``ValueError`` whose text says what the type allows ("an int", "one of a|b", ...).
``to_plain`` / ``from_plain`` turn a record into JSON-able values and back (tuples <-> lists).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, get_args, get_origin

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def describe(tp: Any) -> str:
    """What a type allows, in words: "an int", "a float or none", "4 comma-separated bools"."""
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + "|".join(str(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in get_args(tp))
    if tp is type(None):
        return "none"
    if origin in (tuple, list):
        args = get_args(tp)
        inner = args[0] if args else str
        fixed = origin is tuple and len(args) > 1 and Ellipsis not in args
        count = f"{len(args)} " if fixed else ""
        plural = {bool: "bools (true|false)", int: "ints", float: "floats", str: "strings"}.get(inner, "values")
        return f"{count}comma-separated {plural}"
    if tp is bool:
        return "a bool (true|false)"
    if tp is int:
        return "an int"
    return f"a {getattr(tp, '__name__', str(tp))}"


def parse_text(text: str, tp: Any) -> Any:
    """Parse a command-line string as type ``tp``; ValueError says what is allowed."""
    text = text.strip()
    origin = get_origin(tp)
    if origin is Literal:
        for choice in get_args(tp):
            if text == str(choice):
                return choice
        raise ValueError(describe(tp))
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and text.lower() in ("none", "null", ""):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return parse_text(text, arg)
            except ValueError:
                continue
        raise ValueError(describe(tp))
    if origin in (tuple, list):
        args = get_args(tp)
        inner = args[0] if args else str
        parts = [p.strip() for p in text.strip("()[] ").split(",") if p.strip()]
        if get_origin(inner) in (tuple, list):
            raise ValueError(describe(tp) + " (nested: give it as a list value, not as text)")
        values = [parse_text(p, inner) for p in parts]
        return _sequence(values, tp)
    if tp is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(describe(tp))
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(describe(tp)) from None
    if tp is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(describe(tp)) from None
        if not math.isfinite(value):
            raise ValueError(describe(tp) + " (finite)")
        return value
    if tp is str:
        return text
    raise ValueError(describe(tp))


def coerce(value: Any, tp: Any) -> Any:
    """A Python/JSON value as type ``tp`` (int -> float, list -> tuple); strings are parsed as text."""
    if isinstance(value, str) and tp is not str and not (get_origin(tp) is Literal):
        if not (get_origin(tp) in (typing.Union, types.UnionType) and str in get_args(tp)):
            return parse_text(value, tp)
    origin = get_origin(tp)
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ValueError(describe(tp))
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        for arg in get_args(tp):
            if arg is type(None):
                continue
            try:
                return coerce(value, arg)
            except ValueError:
                continue
        raise ValueError(describe(tp))
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(describe(tp))
        args = get_args(tp)
        inner = args[0] if args else Any
        return _sequence([v if inner is Any else coerce(v, inner) for v in value], tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(describe(tp))
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(describe(tp))
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ValueError(describe(tp) + (" (finite)" if isinstance(value, float) else ""))
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(describe(tp))
    if tp is Any:
        return value
    raise ValueError(describe(tp))


def _sequence(values: list, tp: Any) -> tuple | list:
    origin, args = get_origin(tp), get_args(tp)
    fixed = origin is tuple and len(args) > 1 and Ellipsis not in args
    if fixed and len(values) != len(args):
        raise ValueError(describe(tp))
    return tuple(values) if origin is tuple else list(values)


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type of a dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def plain(value: Any) -> Any:
    """A value as JSON-able types: tuples become lists, mappings get string keys, recursively."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def to_plain(record: Any) -> dict[str, Any]:
    """A dataclass as JSON-able values (see ``plain``)."""
    return {f.name: plain(getattr(record, f.name)) for f in dataclasses.fields(record)}


def from_plain(cls: type, values: Any, *, where: str) -> tuple[Any, list[str]]:
    """Inverse of ``to_plain``: (record, names of fields the values lacked and that took today's default).

    An unknown field or a value of the wrong type raises ValueError naming ``where`` and the field.
    """
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(values).__name__}")
    types_ = field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ValueError(f"{where}: unknown {cls.__name__} field {unknown[0]!r} (a newer gcrepro wrote it?)")
    kwargs = {}
    for name, value in values.items():
        try:
            kwargs[name] = coerce(value, types_[name])
        except ValueError as err:
            raise ValueError(f"{where}: {cls.__name__}.{name}={value!r}: expected {err}") from None
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values]
    return cls(**kwargs), missing
