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

    Unknown keys raise :class:`ConfigError` naming the valid keys. Every value is checked against
    its field's declared type (int, float, bool, str, tuples, lists and dicts of those, nested
    configs), naming the key: ``steps = 20.5`` or ``batch_size = "4"`` is refused, not run. Lists
    become tuples where the field is a tuple; an int is accepted (as a float) where a float is
    declared. Validation beyond types belongs in each dataclass's ``__post_init__``.
    """
    where = where or cls.__name__
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where} must be a table of keys and values (a JSON object / TOML table), "
                          f"got {type(data).__name__}")
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
    """``value`` checked against the type ``hint`` (see :func:`from_dict`); ConfigError naming ``where``."""
    if hint is Any or hint is typing.Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            if len(args) < len(typing.get_args(hint)):
                return None
            raise ConfigError(f"{where} may not be null")
        errors = []
        for arg in args:
            try:
                return _coerce(arg, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return from_dict(hint, value, where)
        raise ConfigError(f"{where} must be a table of keys and values, got {value!r}")
    if origin is tuple or hint is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if args:
            if len(value) != len(args):
                raise ConfigError(f"{where} must be a list of {len(args)} values, got {value!r}")
            return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        return tuple(value)
    if origin is list or hint is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (arg,) = typing.get_args(hint) or (Any,)
        return [_coerce(arg, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table of keys and values, got {value!r}")
        key_type, value_type = typing.get_args(hint) or (Any, Any)
        return {k: _coerce(value_type, v, f"{where}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
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
