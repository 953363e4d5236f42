"""Typed, closed configuration.

Every config in this project is a dataclass built through :func:`from_dict`, which refuses a key
the dataclass does not declare and lists the valid ones. A typo in a sweep file or a run config
therefore fails before any work starts instead of being silently ignored.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """Bad user input (a config, a flag, a file). The message is one line, shown as is by the CLI."""


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a plain dict, recursing into nested dataclass fields.

    Unknown keys raise :class:`ConfigError` naming the valid keys; lists become tuples where the
    field is a tuple. Validation beyond keys belongs in each dataclass's ``__post_init__``.
    """
    where = where or cls.__name__
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in {where}; valid keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as err:  # a missing required field
        raise ConfigError(f"{where}: {err}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        hint, origin = args[0], typing.get_origin(args[0])
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value, where)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """The JSON-ready dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(config)


def replace(config: T, **changes: Any) -> T:
    """``dataclasses.replace`` that validates keys like :func:`from_dict`."""
    merged = to_dict(config)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return from_dict(type(config), merged)
