"""Config dataclasses to and from plain dicts and TOML: one generic helper for every nesting.

    to_dict(config)            nested dict of plain values (tuples become lists)
    from_dict(Cls, data)       Cls, each nested dataclass built from its own table
    to_toml(config)            TOML text (None values are left out: TOML has no null)
    from_toml(Cls, text)       Cls from TOML text
    take_tables(config)        in a dataclass's __post_init__: its nested tables given as dicts
                               (as Python callers write them) built like from_dict would
    ConfigFile                 a mixin giving a config class these as methods: to_dict,
                               from_dict, to_toml, from_toml(path) for a file and
                               from_toml_text(text)

Types come from the dataclasses' annotations: int, float, str, bool, None, unions of those,
tuple[X, ...], fixed tuples, list[X], dict[str, Any], Any and nested dataclasses. A field
whose class depends on another field (e.g. a strategy's config class chosen by the strategy's
name) is resolved by the dataclass's own `_field_type(name, data)` hook, which returns
a type or None for the annotated one.

Every error is a `ConfigError` naming the dotted key, the bad value and what is accepted; the
dataclasses' own validation (`__post_init__`) is reported under the key of their table.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project runs on 3.11 in CI
    import tomli as tomllib

import tomli_w

T = TypeVar("T")
_NONE = type(None)


class ConfigError(ValueError):
    """A config value that does not fit: `key` is its dotted path ("" for the whole config)."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"{key}: {detail}" if key else detail)
        self.key = key
        self.detail = detail


def _join(key: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{key}[{name}]"
    return f"{key}.{name}" if key else name


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(tp: Any) -> str:
    """A short human name for an annotation, for error messages."""
    if dataclasses.is_dataclass(tp):
        return f"a table ({tp.__name__})"
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("nothing (leave the key out)" if a is _NONE else describe(a)
                           for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe(args[0])}"
        return f"a list of {len(args)} values ({', '.join(describe(a) for a in args)})"
    if origin is list:
        return f"a list of {describe(args[0]) if args else 'values'}"
    if origin is dict or tp is dict:
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _convert(tp: Any, value: Any, key: str) -> Any:
    """`value` as annotation `tp`, or a ConfigError naming `key`."""
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key=key)
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and _NONE in args:
            return None
        for option in (a for a in args if a is not _NONE):
            try:
                return _convert(option, value, key)
            except ConfigError:
                continue
        raise ConfigError(key, f"got {_show(value)}, expected {describe(tp)}")
    if origin in (tuple, list):
        return _sequence(tp, origin, args, value, key)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"got {_show(value)}, expected a table")
        return dict(value)
    return _scalar(tp, value, key)


def _sequence(tp: Any, origin: Any, args: tuple, value: Any, key: str) -> Any:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(key, f"got {_show(value)}, expected {describe(tp)}")
    if origin is list or (len(args) == 2 and args[1] is Ellipsis):
        item = args[0] if args else Any
        out = [_convert(item, v, _join(key, i)) for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if len(value) != len(args):
        raise ConfigError(key, f"got {len(value)} values {_show(value)}, expected "
                               f"{describe(tp)}")
    pairs = enumerate(zip(args, value, strict=True))
    return tuple(_convert(a, v, _join(key, i)) for i, (a, v) in pairs)


def _scalar(tp: Any, value: Any, key: str) -> Any:
    ok = {
        bool: lambda v: type(v) is bool,
        int: lambda v: isinstance(v, int) and type(v) is not bool,
        float: lambda v: isinstance(v, (int, float)) and type(v) is not bool,
        str: lambda v: isinstance(v, str),
    }.get(tp)
    if ok is None:
        raise TypeError(f"{key}: annotation {tp!r} is not supported by configio")
    if not ok(value):
        raise ConfigError(key, f"got {_show(value)}, expected {describe(tp)}")
    return float(value) if tp is float else value


def from_dict(cls: type[T], data: Any, *, key: str = "") -> T:
    """Build dataclass `cls` from a (nested) mapping; unknown keys and bad values raise
    ConfigError naming the key."""
    if not isinstance(data, Mapping):
        raise ConfigError(key, f"got {_show(data)}, expected a table ({cls.__name__})")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in data if k not in names)
    if unknown:
        raise ConfigError(_join(key, unknown[0]), f"unknown key; {cls.__name__} accepts "
                                                  f"{names}")
    resolve = getattr(cls, "_field_type", None)
    kwargs = {}
    for name in names:
        if name in data:
            tp = (resolve(name, data) if resolve else None) or hints[name]
            kwargs[name] = _convert(tp, data[name], _join(key, name))
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(key, str(e)) from None


def take_tables(obj: Any) -> None:
    """Build, in place, the nested tables of dataclass `obj` that were given as plain dicts.

    For `__post_init__`: a field annotated as a dataclass (or a union holding one) that holds a
    mapping is built with `from_dict`, and a tuple-annotated field given as a list becomes a
    tuple whose mapping items are built likewise; errors name the dotted key, as from TOML.
    Other values are left to the dataclass's own checks."""
    cls = type(obj)
    hints = get_type_hints(cls)
    resolve = getattr(cls, "_field_type", None)
    data = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    for name, value in data.items():
        tp = (resolve(name, data) if resolve else None) or hints[name]
        built = _tables(tp, value, name)
        if built is not value:
            object.__setattr__(obj, name, built)


def _tables(tp: Any, value: Any, key: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key=key) if isinstance(value, Mapping) else value
    if origin in (Union, types.UnionType) and isinstance(value, Mapping):
        tables = [a for a in args if dataclasses.is_dataclass(a)]
        return from_dict(tables[0], value, key=key) if len(tables) == 1 else value
    if origin is tuple and args[-1:] == (Ellipsis,) and isinstance(value, (list, tuple)):
        items = tuple(_tables(args[0], v, _join(key, i)) for i, v in enumerate(value))
        same = isinstance(value, tuple) and all(a is b for a, b in zip(items, value, strict=True))
        return value if same else items
    return value


def to_dict(obj: Any) -> Any:
    """A dataclass (or container of them) as plain dicts, lists and scalars."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def _drop_none(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    if isinstance(d, list):
        if any(v is None for v in d):
            raise ConfigError("", f"a list holding None cannot be written as TOML: {_show(d)}")
        return [_drop_none(v) for v in d]
    return d


def to_toml(obj: Any) -> str:
    """TOML text for a dataclass; `from_toml(type(obj), to_toml(obj)) == obj` when every None
    value is its field's default."""
    return tomli_w.dumps(_drop_none(to_dict(obj)))


def from_toml(cls: type[T], text: str, *, key: str = "") -> T:
    """Build `cls` from TOML text (a TOML syntax error is a ConfigError too)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(key, f"not valid TOML: {e}") from None
    return from_dict(cls, data, key=key)


class ConfigFile:
    """Mixin for config dataclasses: to_dict / from_dict / to_toml, from_toml(path) for a TOML
    file and from_toml_text(text); every error a ConfigError naming the key (and the file)."""

    def to_dict(self) -> dict[str, Any]:
        """The config as nested plain dicts (what from_dict takes back)."""
        return to_dict(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        """Build the config from a (nested) dict, as TOML gives it: unknown keys and bad values
        raise ConfigError naming the dotted key."""
        return from_dict(cls, data)

    def to_toml(self) -> str:
        """The config as TOML text (what from_toml_text takes back)."""
        return to_toml(self)

    @classmethod
    def from_toml_text(cls: type[T], text: str) -> T:
        """Build the config from TOML text."""
        return from_toml(cls, text)

    @classmethod
    def from_toml(cls: type[T], path: str | Path) -> T:
        """Build the config from a TOML file."""
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise ConfigError("", f"cannot read config {p}: {e.strerror}") from None
        try:
            return from_toml(cls, text)
        except ConfigError as e:
            raise ConfigError(e.key, f"{e.detail} (in {p})") from None
