"""Which arm of a guarded rollout serves a user: pure functions of (salt, user id, shares).

Every serving node, the rollout controller and the benchmarks assign arms with these functions,
so a user lands in the same arm on every node and in every process, across restarts:

    u = stable_unit(salt, user_id)      # the first 8 bytes of sha256(netstring(salt) +
                                        # netstring(user_id)), as an integer / 2**64: in [0, 1)
    u < holdout_share                   -> "holdout"
    while a canary runs:
      stable_unit(salt + "/canary", user_id) < canary_share -> "canary"
    otherwise                           -> "personalized"

Netstrings (``<byte length>:<bytes>,``) make the hashed bytes unambiguous: no (salt, user id)
pair hashes like another one split differently. The canary draw uses its own salt, so a canary's
users are a uniform share of the non-holdout users whatever the holdout share, and the holdout
stays the same users while canaries come and go. The holdout is assigned first: a holdout user is
never in a canary (its lists keep measuring the fixed-weight baseline).

Cost: one SHA-256 of a few dozen bytes per draw (about a microsecond), and the canary draw only
while a canary runs (``canary_share`` > 0) for non-holdout users.
"""

from __future__ import annotations

import hashlib
from typing import Final

HOLDOUT: Final = "holdout"
PERSONALIZED: Final = "personalized"
CANARY: Final = "canary"
ARMS: Final = (HOLDOUT, PERSONALIZED, CANARY)
"""every arm an impression may carry"""

CANARY_SALT_SUFFIX: Final = "/canary"
_SCALE: Final = float(1 << 64)


def netstring(text: str) -> bytes:
    """``<length of the UTF-8 bytes>:<bytes>,``."""
    data = text.encode()
    return b"%d:%s," % (len(data), data)


def stable_unit(salt: str, user_id: str) -> float:
    """A number in [0, 1), the same for the same (salt, user id) everywhere."""
    digest = hashlib.sha256(netstring(salt) + netstring(user_id)).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def assign_arm(user_id: str, salt: str, holdout_share: float, canary_share: float = 0.0) -> str:
    """The arm of ``user_id``: :data:`HOLDOUT`, :data:`CANARY` (only when ``canary_share`` > 0)
    or :data:`PERSONALIZED` (see the module docstring)."""
    if holdout_share > 0.0 and stable_unit(salt, user_id) < holdout_share:
        return HOLDOUT
    if canary_share > 0.0 and stable_unit(salt + CANARY_SALT_SUFFIX, user_id) < canary_share:
        return CANARY
    return PERSONALIZED


def check_share(name: str, value: float) -> float:
    """A share in [0, 1]; ValueError naming ``name`` otherwise (NaN included)."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


def parse_weights(name: str, text: str) -> tuple[float, ...] | None:
    """Comma-separated objective weights (``"0.5,0.5"``) normalized to sum 1; None for an empty
    string. ValueError naming ``name`` for a non-number, a negative or non-finite value, or an
    all-zero vector."""
    if not text.strip():
        return None
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if any(not 0.0 <= v < float("inf") for v in values):
        raise ValueError(f"{name} must be finite and >= 0, got {text!r}")
    total = sum(values)
    if total <= 0.0:
        raise ValueError(f"{name} must not be all zero, got {text!r}")
    return tuple(v / total for v in values)
