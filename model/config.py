"""Dataclass configs <-> JSON-able dicts (checkpoints carry model args, nanoGPT style)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-able dict of a (possibly nested) config dataclass; tuples become lists."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    out = plain(cfg)
    assert isinstance(out, dict)
    return out


def config_from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Rebuild config ``cls`` from :func:`config_to_dict` output; unknown keys are an error."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = config_from_dict(hint, value)  # type: ignore[arg-type]
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def sub_config(cls: type[T], source: Any, **overrides: Any) -> T:
    """Build config ``cls`` from the same-named fields of ``source`` (one place for shared fields)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {n: getattr(source, n) for n in names if hasattr(source, n)}
    kwargs.update(overrides)
    return cls(**kwargs)
