"""Dataclass configs on the command line: one flag per field, its help the field's docstring.

The one configuration style of the project's hyperparameters (cleanrl-style: a dataclass, a
one-line doc under each field). :func:`add_config_flags` adds a flag per field (nested dataclasses
get a flag prefix of their own, e.g. ``--ranker-d-model``), :func:`build_config` builds the
dataclass back from the parsed flags, :func:`to_flags` is the inverse (what a parent process
passes to a child), and :func:`parse_assignments` reads ``FIELD=VALUE`` patches of the same
fields (``paperec evaluate --learner``, one patch for several policies' configs). Deployment
settings (endpoints, ports, topic names) are :class:`base.settings.Settings`, not these.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import json
import textwrap
import typing
from collections.abc import Collection, Iterable
from typing import Any, Literal


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass ``cls`` (PEP 257 attribute docstrings)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for stmt, nxt in itertools.pairwise(body):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise ValueError(f"field {f.name} has no default")


def add_config_flags(
    parser: argparse.ArgumentParser, cls: type, flag_prefix: str, dest_prefix: str, title: str
) -> None:
    """One flag per field of dataclass ``cls`` (nested dataclasses get their own group)."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            sub_title = f"{title}: {f.name} ({hint.__name__}; {docs.get(f.name, '')})"
            add_config_flags(parser, hint, f"{flag_prefix}{f.name}-", f"{dest_prefix}{f.name}__", sub_title)
            continue
        flag = "--" + (flag_prefix + f.name).replace("_", "-")
        kwargs: dict[str, Any] = {"dest": dest_prefix + f.name, "default": _default(f)}
        doc = docs.get(f.name, "")
        origin = typing.get_origin(hint)
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            kwargs["choices"] = list(typing.get_args(hint))
        elif origin is tuple:
            item = typing.get_args(hint)[0]
            kwargs.update(nargs="+", type=item, metavar=item.__name__.upper())
        elif hint in (int, float, str):
            kwargs.update(type=hint, metavar=hint.__name__.upper())
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag for type {hint}")
        default_text = " ".join(map(str, kwargs["default"])) if origin is tuple else kwargs["default"]
        kwargs["help"] = f"{doc} (default: {default_text!r})".replace("%", "%%")
        group.add_argument(flag, **kwargs)


def build_config(cls: type, args: argparse.Namespace, dest_prefix: str) -> Any:
    """The dataclass ``cls`` from the parsed flags of :func:`add_config_flags`."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            values[f.name] = build_config(hint, args, f"{dest_prefix}{f.name}__")  # type: ignore[arg-type]
            continue
        value = getattr(args, dest_prefix + f.name)
        values[f.name] = tuple(value) if typing.get_origin(hint) is tuple else value
    return cls(**values)


def to_flags(cfg: object, prefix: str) -> list[str]:
    """The flags that rebuild dataclass ``cfg`` through :func:`add_config_flags` (flag prefix
    ``prefix``, e.g. ``"ranker-"``)."""
    flags: list[str] = []
    for name, value in vars(cfg).items():
        flag = f"{prefix}{name}".replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{flag}" if value else f"--no-{flag}")
        elif isinstance(value, tuple):
            flags += [f"--{flag}", *map(str, value)]
        else:
            flags += [f"--{flag}", str(value)]
    return flags


def parse_assignments(
    cls: type, items: Iterable[str], option: str, exclude: Collection[str] = ()
) -> dict[str, Any]:
    """``["grad_normalize=loss", "gamma=0.5"]`` -> {"grad_normalize": "loss", "gamma": 0.5} for
    the fields of dataclass ``cls`` (not ``exclude``). A value is parsed as JSON, else taken as a
    string; a boolean field takes true or false only; a JSON list becomes a tuple. ``option``
    names the flag in error messages."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    known = set(fields) - set(exclude)
    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or name not in known:
            raise ValueError(f"{option} {item!r}: expected FIELD=VALUE with FIELD one of {sorted(known)}")
        is_bool = isinstance(fields[name].default, bool)
        try:
            value = json.loads(raw.lower() if is_bool else raw)
        except json.JSONDecodeError:
            value = raw
        if is_bool and not isinstance(value, bool):
            raise ValueError(f"{option} {item!r}: {name} is true or false")
        out[name] = tuple(value) if isinstance(value, list) else value
    return out
