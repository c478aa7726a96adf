"""JSON records as typed dataclasses: the dataclass is the schema.

`read_record(cls, values, what, remedy)` builds a dataclass from a JSON object and refuses, in one line naming
the field, a value of another JSON type than the field declares; `record_json(record)` is the JSON object it came
from. A field declares `T | None` where a record may leave it empty, and a dataclass with a field named `other`
keeps there, as read, the keys it does not declare (a record written by a later version); any other
undeclared key is refused. Standard library only (the CLI reads records before torch is imported).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from iti.errors import UsageError

R = TypeVar("R")
EXTRA_FIELD = "other"


def read_record(cls: type[R], values: Any, what: str, remedy: str) -> R:
    """`values` (parsed JSON) as a `cls`; UsageError `"{what}: {problem}; {remedy}"` when it does not fit."""
    problem = _problem(cls, values, "")
    if problem:
        raise UsageError(f"{what}: {problem}; {remedy}")
    return _build(cls, values)


def record_json(record) -> dict:
    """The JSON object of a record: declared fields in order, then what `other` kept."""
    values = {f.name: _json(getattr(record, f.name)) for f in dataclasses.fields(record) if f.name != EXTRA_FIELD}
    return {**values, **getattr(record, EXTRA_FIELD, {})}


def _json(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return record_json(value)
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {key: _json(v) for key, v in value.items()}
    return value


def _problem(cls, values, path: str) -> str | None:
    if not isinstance(values, dict):
        return f"{path[:-1] or 'the record'} is a JSON {_json_type(values)}, not an object"
    hints = typing.get_type_hints(cls)
    declared = [f for f in dataclasses.fields(cls) if f.name != EXTRA_FIELD]
    if EXTRA_FIELD not in cls.__dataclass_fields__:
        extra = sorted(set(values) - {f.name for f in declared})
        if extra:
            return f"{path}{extra[0]} is not a field of this record"
    for f in declared:
        name = f"{path}{f.name}"
        if f.name not in values:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                return f"{name} is missing"
            continue
        problem = _value_problem(hints[f.name], values[f.name], name)
        if problem:
            return problem
    return None


def _value_problem(declared, value, name: str) -> str | None:
    """Why `value` is not of the JSON type `declared`; None when it is."""
    if declared is Any:
        return None
    origin, args = typing.get_origin(declared), typing.get_args(declared)
    if origin in (typing.Union, types.UnionType):
        problems = [_value_problem(arg, value, name) for arg in args]
        return None if None in problems else next(p for p in problems if p)
    if declared is type(None):
        return None if value is None else f"{name} is a JSON {_json_type(value)}, not null"
    if dataclasses.is_dataclass(declared):
        return _problem(declared, value, f"{name}.")
    if origin in (list, tuple) or declared in (list, tuple):
        if not isinstance(value, list):
            return f"{name} is a JSON {_json_type(value)}, not a list"
        inner = args[0] if args else Any
        return next((p for i, v in enumerate(value) if (p := _value_problem(inner, v, f"{name}[{i}]"))), None)
    if origin is dict or declared is dict:
        if not isinstance(value, dict):
            return f"{name} is a JSON {_json_type(value)}, not an object"
        inner = args[1] if len(args) == 2 else Any
        return next((p for k, v in value.items() if (p := _value_problem(inner, v, f"{name}.{k}"))), None)
    if declared is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif declared is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, declared)
    return None if ok else f"{name} is a JSON {_json_type(value)}, not {_json_name(declared)}"


def _build(cls, values: dict):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - {EXTRA_FIELD}
    kwargs = {name: _built(hints[name], value) for name, value in values.items() if name in names}
    if EXTRA_FIELD in cls.__dataclass_fields__:
        kwargs[EXTRA_FIELD] = {key: value for key, value in values.items() if key not in names}
    return cls(**kwargs)


def _built(declared, value):
    """Nested records become their dataclasses; everything else stays as JSON gave it."""
    if value is None:
        return None
    candidates = typing.get_args(declared) if typing.get_origin(declared) in (typing.Union, types.UnionType) \
        else (declared,)
    for candidate in candidates:
        if dataclasses.is_dataclass(candidate):
            return _build(candidate, value)
        origin, args = typing.get_origin(candidate), typing.get_args(candidate)
        if origin in (list, tuple) and args and dataclasses.is_dataclass(args[0]):
            return [_build(args[0], v) for v in value]
    return value


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "object"


def _json_name(declared) -> str:
    return {str: "a string", int: "a whole number", float: "a number", bool: "a boolean"}.get(
        declared, getattr(declared, "__name__", str(declared)))
