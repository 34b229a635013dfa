"""``paperec learner``: the continuous learner service (see learner/service.py, docs/learner_service.md).

Every knob is a flag generated from a config dataclass, its help text being the field's
docstring: the service knobs (:class:`LearnerServiceConfig`), the training hyperparameters
(:class:`PAPERecConfig`: learning rates, gamma, tau, noise, device, seed ...) and the ranker's
model args (:class:`RankerConfig`, flags ``--ranker-*``). One place to add a knob: the dataclass.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import logging
import signal
import sys
import textwrap
import typing
from collections.abc import Sequence
from types import FrameType
from typing import Any, Literal

from base.settings import Settings

log = logging.getLogger(__name__)

# (flag prefix, dest prefix) of each config; nested dataclasses extend both
SERVICE = ("", "svc__")
TRAIN = ("", "train__")


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


def configure(parser: argparse.ArgumentParser) -> None:
    from learner.service import LearnerServiceConfig
    from learner.training import PAPERecConfig

    parser.description = (
        "Consume the transitions topic into a replay buffer, train PAPERec continuously, publish "
        "signed actor snapshots and checkpoint (resumable after a crash). Stops cleanly on SIGTERM."
    )
    add_config_flags(parser, LearnerServiceConfig, *SERVICE, "learner service (LearnerServiceConfig)")
    add_config_flags(parser, PAPERecConfig, *TRAIN, "training (PAPERecConfig)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from learner.service import LearnerService, LearnerServiceConfig
    from learner.training import PAPERecConfig

    cfg = build_config(LearnerServiceConfig, args, SERVICE[1])
    train_cfg = build_config(PAPERecConfig, args, TRAIN[1])
    try:
        service = LearnerService(settings, cfg, train_cfg)
    except ValueError as exc:  # unusable settings, e.g. the dev snapshot key outside dev mode
        print(f"paperec learner: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping after the current step", signal.Signals(signum).name)
        service.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return service.run()
    except Exception:
        log.exception("learner failed")
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m learner.cli``: ``paperec learner``."""
    from paperec.cli import main as paperec_main

    return paperec_main(["learner", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
