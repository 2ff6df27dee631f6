"""Strict JSON-to-dataclass parsing for the stage config.

Unknown fields, wrong types and missing required fields are errors naming the field path
(`training.batch_size`), because a silently ignored typo in a training config costs a GPU-day.
The annotations of the dataclasses are the schema; nothing is declared twice.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from forgeline.jobs.errors import ConfigError


def _check_value(tp: Any, value: Any, path: str) -> Any:
    """Convert one JSON value to the annotated type, or raise ConfigError naming `path`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(path, "must not be null")
        (inner,) = [a for a in args if a is not type(None)]
        return _check_value(inner, value, path)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(path, f"must be one of {', '.join(map(str, allowed))}; got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(path, f"must be a list; got {type(value).__name__}")
        return [_check_value(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return build(typing.cast(type, tp), value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"must be true or false; got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"must be an integer; got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, f"must be a number; got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"must be a string; got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {path}")  # a bug here, not a user error


def build(cls: type, obj: Any, path: str) -> Any:
    if not isinstance(obj, dict):
        raise ConfigError(path or "<root>", f"must be an object; got {type(obj).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in obj:
        if key not in names:
            raise ConfigError(join_path(path, key), f"unknown field (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        fpath = join_path(path, f.name)
        if f.name in obj:
            kwargs[f.name] = _check_value(hints[f.name], obj[f.name], fpath)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(fpath, "is required")
    return cls(**kwargs)


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
