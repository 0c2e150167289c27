"""Dataclass configs: load from TOML, override with dotted flags, save beside every run and checkpoint.

A config is a (nested) dataclass. ``load_config(Cls, path, ["optim.lr=3e-4", "data.sizes=[[64,64]]"])``
reads the TOML file, applies the overrides and type-checks every field; an unknown key or a value of the
wrong type is a ConfigError naming it. ``to_dict`` gives the fully resolved config for saving.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key that does not exist or a value of the wrong type."""


def to_dict(cfg: Any) -> dict:
    """The config as plain JSON-ready data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build a dataclass from a dict, recursively; unknown keys and wrong types are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key {where + unknown[0]!r}; known keys: {', '.join(sorted(fields))}")
    kwargs = {name: _convert(hints[name], value, where + name) for name, value in data.items()}
    return cls(**kwargs)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        out = [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 0.0003). Values are read as TOML (so lists, numbers and
    booleans work) and fall back to a plain string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Defaults of ``cls``, updated from a TOML file, then from dotted overrides; validated."""
    data = to_dict(cls())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            _merge(data, tomllib.loads(path.read_text()), "")
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    for ov in overrides:
        keys, value = parse_override(ov)
        node = data
        for i, k in enumerate(keys[:-1]):
            if k not in node:
                raise ConfigError(f"unknown config key {'.'.join(keys[:i + 1])!r}; known keys here: "
                                  f"{', '.join(sorted(node))}")
            if not isinstance(node[k], dict):
                raise ConfigError(f"{'.'.join(keys[:i + 1])!r} is a setting, not a section: "
                                  f"give --{'.'.join(keys[:i + 1])}=VALUE")
            node = node[k]
        if keys[-1] not in node:
            raise ConfigError(f"unknown config key {'.'.join(keys)!r}; known keys here: {', '.join(sorted(node))}")
        if isinstance(node[keys[-1]], dict) and node[keys[-1]] and not isinstance(value, dict):
            raise ConfigError(f"{'.'.join(keys)!r} is a section: set one of its keys "
                              f"({', '.join(sorted(node[keys[-1]]))}), e.g. --{'.'.join(keys)}.KEY=VALUE")
        node[keys[-1]] = value
    return from_dict(cls, data)


def _merge(base: dict, new: dict, where: str) -> None:
    for k, v in new.items():
        if k not in base:
            raise ConfigError(f"unknown config key {where + k!r}; known keys: {', '.join(sorted(base))}")
        if isinstance(base[k], dict) and isinstance(v, dict) and base[k]:
            _merge(base[k], v, where + k + ".")
        else:
            base[k] = v


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as JSON, atomically."""
    from moviola.video_io import atomic_write_bytes

    atomic_write_bytes(Path(path), (json.dumps(to_dict(cfg), indent=2) + "\n").encode())
