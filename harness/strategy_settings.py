"""Typed strategy settings built from their Hydra node: one builder for every strategy.

The values live in `configs/strategy/*.yaml` only; a settings dataclass declares the keys and their
types, without defaults (a default in code would compete with the YAML). `settings_from` checks the
node once — unknown keys, missing keys, types — and raises a one-line error naming the key and the fix.
Range checks that belong to the settings themselves go in the dataclass's `__post_init__`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from functools import lru_cache

from omegaconf import DictConfig, ListConfig, OmegaConf

from harness.config_checks import as_float, as_int
from harness.errors import HarnessError

REGISTRY_KEYS = ("name", "impl")  # every strategy node names itself and its implementation; the registry reads them


@lru_cache(maxsize=None)
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _plain(node) -> dict:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node)


def _arms(kind) -> tuple[tuple, bool]:
    """The non-None types of `kind` and whether None is allowed (`int | None`, `Optional[int]`)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = typing.get_args(kind)
        return tuple(a for a in args if a is not type(None)), type(None) in args
    return (kind,), False


def _value(kind, value, key: str):
    """`value` as the declared type `kind` of setting `key`, or a one-line HarnessError."""
    arms, optional = _arms(kind)
    if value is None:
        if optional:
            return None
        raise HarnessError(f"{key} must be set (got null): give it a value, e.g. in configs/strategy/")
    kind = arms[0]
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise HarnessError(f"{key} must be a group of settings (got {value!r}): restore it as in configs/strategy/")
        return _build(kind, value, key)
    if kind is bool:
        if not isinstance(value, bool):
            raise HarnessError(f"{key} must be true or false (got {value!r}): e.g. {key}=true")
        return value
    if kind is int:
        return as_int(value, key)
    if kind is float:  # an int is a float (PEP 484) and stays as written: records and keys keep `alpha: 16`
        return value if isinstance(value, int) and not isinstance(value, bool) else as_float(value, key)
    if kind is str:
        if not isinstance(value, str):
            raise HarnessError(f"{key} must be a name (got {value!r}): e.g. {key}=<name>")
        return value
    origin = typing.get_origin(kind)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise HarnessError(f"{key} must be a list (got {value!r}): e.g. {key}=[a,b]")
        item = typing.get_args(kind)[0]
        items = [_value(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    raise TypeError(f"{key}: settings type {kind!r} is not supported")  # a programming error, not the user's


def _build(cls, values: dict, where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    top = "." not in where
    unknown = [k for k in values if k not in fields and not (top and k in REGISTRY_KEYS)]
    if unknown:
        raise HarnessError(f"{where}.{unknown[0]} is not a setting of {where} (known: {', '.join(fields)}): "
                           f"remove it or fix its spelling")
    required = [n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in values]
    if missing:
        raise HarnessError(f"{where}.{missing[0]} is missing: add it to the strategy's YAML in configs/strategy/ "
                           f"(or pass +{where}.{missing[0]}=VALUE)")
    hints = _hints(cls)
    return cls(**{n: _value(hints[n], values[n], f"{where}.{n}") for n in fields if n in values})


def settings_from(cls, node, where: str = "strategy"):
    """An instance of the settings dataclass `cls` from the config node `node` (a DictConfig or a dict).

    The node may also hold the registry's `name` and `impl`; any other key `cls` does not declare is an error,
    as is a declared key without a default that the node lacks, or a value of the wrong type.
    """
    return _build(cls, _plain(node), where)
