"""The simulator settings the evaluation runs in, declared here before any result.

| setting   | change to the simulator                       | what it tests                              |
|-----------|-----------------------------------------------|--------------------------------------------|
| default   | none                                          | heterogeneous users (alpha_u ~ Beta(0.7, 0.7)) |
| control   | ``cfg.control()``: every alpha_u = pref_mean   | no heterogeneity: personalization cannot help |
| readers   | ``dwell_satisfied_s = 300``                   | continuation that keeps rising with dwell   |

*readers*: a user's reading utility is U_d = 1 - exp(-dwell seconds of the list /
dwell_satisfied_s), and satisfaction (1 - alpha) U_click + alpha U_d sets P(leave). At the
default 60 s, U_d saturates after about one long read, so a reader's continuation hardly depends
on how much more they read; at 300 s it keeps rising over the whole range of a list's dwell
(tens to a few hundred seconds), so serving readers long reads keeps them in the session: the
setting where a personal dwell weight can pay off in lists per session, not only per list.

``paperec evaluate --setting NAME`` picks one; ``--simulator FIELD=VALUE`` (repeatable) patches
single fields after the setting (:func:`parse_simulator_overrides`).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from base.config_flags import parse_assignments
from simulator.config import SimulatorConfig

READERS_DWELL_SATISFIED_S = 300.0
"""the readers setting's dwell_satisfied_s (default 60 s): fixed before any result"""


def _default(cfg: SimulatorConfig) -> SimulatorConfig:
    return cfg


def _readers(cfg: SimulatorConfig) -> SimulatorConfig:
    return cfg.replace(dwell_satisfied_s=READERS_DWELL_SATISFIED_S)


SETTINGS: dict[str, Callable[[SimulatorConfig], SimulatorConfig]] = {
    "default": _default,
    "control": SimulatorConfig.control,
    "readers": _readers,
}


def simulator_config(
    base: SimulatorConfig, setting: str, overrides: Mapping[str, Any] | None = None
) -> SimulatorConfig:
    """``base`` in ``setting``, then the field ``overrides`` (they win over the setting)."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; one of {sorted(SETTINGS)}")
    return SETTINGS[setting](base).replace(**dict(overrides or {}))


def parse_simulator_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["dwell_satisfied_s=300", "n_users=1000"]`` -> {"dwell_satisfied_s": 300.0, "n_users": 1000}.

    Typed by the :class:`SimulatorConfig` field: a float field takes any number, an int field an
    integer, a bool field true or false; anything else, an unknown field or ``seed`` (that is
    ``--seed``) is a ValueError naming it. The patched config is validated as a whole."""
    items = list(items)
    raw = parse_assignments(SimulatorConfig, items, "--simulator", exclude={"seed"})
    hints = typing.get_type_hints(SimulatorConfig)
    out: dict[str, Any] = {}
    for name, value in raw.items():
        hint = hints[name]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if hint is float and number:
            out[name] = float(value)
        elif hint is int and number and float(value).is_integer():
            out[name] = int(value)
        elif hint is bool and isinstance(value, bool):
            out[name] = value
        else:
            raise ValueError(f"--simulator {name}={value!r}: {name} is {hint.__name__}")
    try:
        dataclasses.replace(SimulatorConfig(), **out)
    except ValueError as e:
        raise ValueError(f"--simulator {', '.join(items)}: {e}") from e
    return out
