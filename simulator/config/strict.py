"""Strict YAML -> frozen dataclass conversion with key-path errors.

``build(cls, data, key="cache", source="run.yaml")`` checks every key against the dataclass
fields (unknown keys are errors that list the allowed ones), converts and checks types, and
recurses into nested dataclasses. Field metadata ``help`` documents meaning and unit; ``min``
and ``max`` bound numbers. Dataclasses only validate in ``__post_init__`` (no I/O).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
from typing import Any, Union, get_args, get_origin, get_type_hints

from ..errors import ConfigError


def field(default=dataclasses.MISSING, *, help: str, min: float | None = None,
          max: float | None = None, default_factory=dataclasses.MISSING, choices=None):
    """A dataclass field with documentation and bounds."""
    md = {"help": help, "min": min, "max": max, "choices": choices}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)


@functools.lru_cache(maxsize=None)
def _type_hints(cls) -> dict:
    """get_type_hints per dataclass, once (it re-evaluates every annotation on each call: a
    sweep validates its points' configs thousands of times)."""
    return get_type_hints(cls)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(tp, value, key: str, source: str | None, md: dict):
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            if type(None) in get_args(tp):
                return None
            raise ConfigError("must not be null", source=source, key=key)
        errors = []
        for a in args:
            try:
                return _convert(a, value, key, source, md)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key=key, source=source)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"must be a list, got {value!r}", source=source, key=key)
        (item_tp, *_rest) = get_args(tp) or (Any,)
        items = [_convert(item_tp, v, f"{key}[{i}]", source, {}) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"must be a mapping, got {value!r}", source=source, key=key)
        kt, vt = get_args(tp) or (Any, Any)
        return {str(k): _convert(vt, v, f"{key}.{k}", source, {}) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"must be true or false, got {value!r}", source=source, key=key)
        return value
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"must be a number, got {value!r}", source=source, key=key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"must be finite, got {value}", source=source, key=key)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ConfigError(f"must be an integer, got {value!r}", source=source, key=key)
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"must be finite, got {value}", source=source, key=key)
        lo, hi = md.get("min"), md.get("max")
        if lo is not None and value < lo:
            raise ConfigError(f"must be >= {lo:g}, got {value:g}", source=source, key=key)
        if hi is not None and value > hi:
            raise ConfigError(f"must be <= {hi:g}, got {value:g}", source=source, key=key)
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"must be a string, got {value!r}", source=source, key=key)
        value = str(value)
        choices = md.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"must be one of {', '.join(choices)}; got '{value}'",
                              source=source, key=key)
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")


def build(cls, data: Any, *, key: str = "", source: str | None = None, ignore: tuple = ()):
    """Instantiate dataclass ``cls`` from a mapping, strictly."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"must be a mapping, got {data!r}", source=source, key=key or None)
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields and k not in ignore]
    if unknown:
        where = f"{key}.{unknown[0]}" if key else unknown[0]
        raise ConfigError(f"unknown key; allowed: {', '.join(sorted(fields))}",
                          source=source, key=where)
    kw = {}
    for name, f in fields.items():
        sub = f"{key}.{name}" if key else name
        if name in data:
            kw[name] = _convert(hints[name], data[name], sub, source, dict(f.metadata))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError("is required", source=source, key=sub)
    try:
        return cls(**kw)
    except ConfigError as exc:
        if exc.source is None and exc.key and key and not exc.key.startswith(key):
            raise ConfigError(str(exc).split(": ", 1)[-1], source=source,
                              key=f"{key}.{exc.key}") from None
        if exc.source is None:
            raise ConfigError(str(exc).split(": ", 1)[-1] if exc.key else str(exc),
                              source=source, key=exc.key or key or None) from None
        raise


def describe(cls, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) rows for documentation and ``moesim policies``."""
    rows = []
    hints = _type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = (f.default if f.default is not dataclasses.MISSING else
                   (f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)"))
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, prefix=f"{prefix}{f.name}.")
            continue
        rows.append((f"{prefix}{f.name}", _type_name(tp), default, f.metadata.get("help", "")))
    return rows


def check_arg(value, key: str, *, integer: bool = False, min: float | None = None,
              above: float | None = None, optional: bool = False):
    """Check one function argument (``key`` names the parameter, e.g. ``iterations``) at
    a library entry point, so a bad value is a ConfigError there and
    not an exception from deep inside numpy. ``min``: value >= min; ``above``: value > above.
    Returns the value (None passes when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"must be {'an integer' if integer else 'a number'}, got {value!r}",
                          key=key)
    if not math.isfinite(value):
        raise ConfigError(f"must be finite, got {value}", key=key)
    if integer and float(value) != int(value):
        raise ConfigError(f"must be an integer, got {value!r}", key=key)
    if min is not None and value < min:
        raise ConfigError(f"must be >= {min:g}, got {value:g}", key=key)
    if above is not None and not value > above:
        raise ConfigError(f"must be > {above:g}, got {value:g}", key=key)
    return int(value) if integer else value
