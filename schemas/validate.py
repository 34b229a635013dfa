"""Small reusable field validators, written once and shared by every record type.

Each validator takes the raw value (``MISSING`` when the field is absent) and the field's full path
for error messages, and returns the normalized value: lists become tuples, ints in float fields
become floats, JSON objects are deep-copied. They raise only :class:`SchemaError`, whatever the
input. ``bool`` is never accepted where an int or a float is expected.

The common case (well-formed input) is checked with C-level bulk operations (``set(map(type, v))``,
``all(map(isfinite, v))``); only when that fails does a per-element loop run to find the exact
offending index.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Final

from schemas.errors import SchemaError


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final[Any] = _Missing()
"""Sentinel for an absent field: ``src.get(name, MISSING)``."""

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
MAX_ID_LEN: Final = 128
"""Maximum length (characters) of every identifier: request, user, item, transition ids."""

MAX_ABS_NUMBER: Final = 1e15
"""Largest magnitude of every number field (features, weights, noise, rewards): |x| <= 1e15.

Why this bound: the learner and the serving nodes cast these values to float32 (max ~3.4e38)
and feed them to linear layers followed by LayerNorm. With |x| <= 1e15, a sum of up to 1024
such values times weights of magnitude <= 1 stays below ~1e18, and its square (a variance)
below ~1e36, so neither the cast nor the first layer of the ranker overflows to inf. Every
integer up to 1e15 (< 2**53) is exactly a float64, so integer inputs convert exactly. The API
(``actor_service.api``), the JSON Schema export and the streams' fast decoder use this constant.
"""

_isfinite = math.isfinite
_FLOAT: Final = frozenset({float})
_FLOAT_INT: Final = frozenset({float, int})
_STR: Final = frozenset({str})
_INT: Final = frozenset({int})

_JSON_NAMES: Final = {
    type(None): "null",
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    tuple: "array",
    dict: "object",
}


def type_name(value: Any) -> str:
    """JSON name of a value's type (``boolean``, ``array``, ...), else its Python class name."""
    return _JSON_NAMES.get(type(value)) or type(value).__name__


def type_error(value: Any, path: str, expected: str) -> SchemaError:
    if value is MISSING:
        return SchemaError(path, "required field is missing")
    return SchemaError(path, f"expected {expected}, got {type_name(value)}")


def check_length(n: int, expected: int, path: str, what: str) -> None:
    if n != expected:
        raise SchemaError(path, f"expected {expected} entries ({what}), got {n}")


def _check_max_len(n: int, max_len: int | None, min_len: int, path: str) -> None:
    if max_len is not None and n > max_len:
        raise SchemaError(path, f"too long: {n} entries, at most {max_len} allowed")
    if n < min_len:
        raise SchemaError(path, "must not be empty" if min_len == 1 else f"needs at least {min_len} entries")


# ---------------------------------------------------------------------------------------- scalars
def v_int(value: Any, path: str, lo: int = 0, hi: int = INT64_MAX) -> int:
    """An integer in [lo, hi]; bool and float (even 1.0) are rejected."""
    if type(value) is not int:
        if isinstance(value, int) and not isinstance(value, bool):  # IntEnum and other subclasses
            value = int(value)
        else:
            raise type_error(value, path, "integer")
    if value < lo:
        raise SchemaError(path, f"must be >= {lo}, got {value}")
    if value > hi:
        raise SchemaError(path, f"must be <= {hi}, got {value}")
    return value


def v_bool(value: Any, path: str) -> bool:
    if type(value) is not bool:
        raise type_error(value, path, "boolean")
    return value


def v_str(value: Any, path: str, max_len: int, min_len: int = 0) -> str:
    """A string of min_len..max_len characters (code points)."""
    if type(value) is not str:
        if not isinstance(value, str):
            raise type_error(value, path, "string")
        value = str(value)
    n = len(value)
    if n < min_len:
        raise SchemaError(path, "must not be empty" if min_len == 1 else f"shorter than {min_len} chars")
    if n > max_len:
        raise SchemaError(path, f"too long: {n} chars, at most {max_len} allowed")
    return value


def v_opt_str(value: Any, path: str, max_len: int) -> str | None:
    return None if value is None else v_str(value, path, max_len)


def v_id(value: Any, path: str) -> str:
    """An identifier: a non-empty string of at most MAX_ID_LEN characters."""
    if type(value) is str and 0 < len(value) <= MAX_ID_LEN:
        return value
    return v_str(value, path, MAX_ID_LEN, 1)


def v_const(value: Any, path: str, allowed: str) -> str:
    if value != allowed or type(value) is not str:
        if type(value) is not str:
            raise type_error(value, path, "string")
        raise SchemaError(path, f"must be {allowed!r}, got {value!r}")
    return value


_HEX: Final = frozenset("0123456789abcdef")


def v_hex64(value: Any, path: str) -> str:
    """64 lowercase hex digits (a SHA-256 digest)."""
    value = v_str(value, path, 64)
    if len(value) != 64 or not _HEX.issuperset(value):
        raise SchemaError(path, "must be 64 lowercase hex digits")
    return value


# ------------------------------------------------------------------------------------------ lists
def _as_list(value: Any, path: str, expected: str) -> list[Any] | tuple[Any, ...]:
    if type(value) is list or type(value) is tuple:
        return value
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise type_error(value, path, expected)


def v_floats(
    value: Any,
    path: str,
    *,
    max_len: int | None = None,
    length: int | None = None,
    what: str = "",
) -> tuple[float, ...]:
    """A list of finite numbers within +-MAX_ABS_NUMBER, as a tuple of floats. ``length``
    demands an exact length."""
    seq = _as_list(value, path, "an array of numbers")
    n = len(seq)
    if length is not None:
        check_length(n, length, path, what)
    else:
        _check_max_len(n, max_len, 0, path)
    if not seq:
        return ()
    # A finite sum proves every term finite (inf/nan propagate; bounded terms cannot overflow
    # it), and min/max bound them; anything else takes the slow path, which names the index.
    types = set(map(type, seq))
    if types <= _FLOAT:
        if _isfinite(sum(seq)) and in_bounds(seq):
            return tuple(seq)
    elif types <= _FLOAT_INT:
        try:
            out = tuple(map(float, seq))
        except OverflowError:
            pass
        else:
            if _isfinite(sum(out)) and in_bounds(out):
                return out
    return _floats_slow(seq, path)


def in_bounds(seq: Sequence[float]) -> bool:
    """All of the (non-empty, NaN-free) ``seq`` within +-MAX_ABS_NUMBER (C-level min and max)."""
    return min(seq) >= -MAX_ABS_NUMBER and max(seq) <= MAX_ABS_NUMBER


def v_number(x: Any, path: str) -> float:
    """One finite number within +-MAX_ABS_NUMBER, as a float (bool rejected)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise type_error(x, path, "number")
    if isinstance(x, float) and not _isfinite(x):
        raise SchemaError(path, "must be finite")
    # compared before float(): an int beyond float range is out of bounds, not an OverflowError
    if not -MAX_ABS_NUMBER <= x <= MAX_ABS_NUMBER:
        raise SchemaError(
            path, f"out of range: |x| must be <= {MAX_ABS_NUMBER:.0e} (float32-safe), got {_show(x)}"
        )
    return float(x)


def _show(x: float) -> str:
    try:
        return f"{float(x):.6g}"
    except OverflowError:  # an int with hundreds of digits: do not print them all
        return "an integer beyond float range"


def _floats_slow(seq: Iterable[Any], path: str) -> tuple[float, ...]:
    return tuple([v_number(x, f"{path}[{i}]") for i, x in enumerate(seq)])


SIMPLEX_TOLERANCE: Final = 1e-3


def v_simplex(value: Any, path: str, length: int, what: str) -> tuple[float, ...]:
    """K finite floats >= 0 summing to 1 within SIMPLEX_TOLERANCE."""
    w = v_floats(value, path, length=length, what=what)
    if w and min(w) < 0.0:
        i = next(i for i, x in enumerate(w) if x < 0.0)
        raise SchemaError(f"{path}[{i}]", f"must be >= 0, got {w[i]!r}")
    total = math.fsum(w)
    if abs(total - 1.0) > SIMPLEX_TOLERANCE:
        raise SchemaError(path, f"must sum to 1 (within {SIMPLEX_TOLERANCE}), sums to {total:.6g}")
    return w


def v_ids(
    value: Any,
    path: str,
    *,
    max_len: int | None = None,
    min_len: int = 0,
    unique: bool = False,
) -> tuple[str, ...]:
    """A list of identifiers (non-empty strings of at most MAX_ID_LEN chars)."""
    seq = _as_list(value, path, "an array of strings")
    _check_max_len(len(seq), max_len, min_len, path)
    if not seq or (set(map(type, seq)) <= _STR and all(seq) and max(map(len, seq)) <= MAX_ID_LEN):
        out = tuple(seq)
    else:
        out = tuple([v_id(x, f"{path}[{i}]") for i, x in enumerate(seq)])
    if unique and len(set(out)) != len(out):
        seen: dict[str, int] = {}
        for i, x in enumerate(out):
            if x in seen:
                raise SchemaError(f"{path}[{i}]", f"duplicate value {x!r} (also at index {seen[x]})")
            seen[x] = i
    return out


def v_ints(
    value: Any,
    path: str,
    *,
    lo: int,
    hi: int,
    length: int | None = None,
    max_len: int | None = None,
    what: str = "",
) -> tuple[int, ...]:
    """A list of integers in [lo, hi]; ``length`` demands an exact length."""
    seq = _as_list(value, path, "an array of integers")
    if length is not None:
        check_length(len(seq), length, path, what)
    else:
        _check_max_len(len(seq), max_len, 0, path)
    if not seq or (set(map(type, seq)) <= _INT and min(seq) >= lo and max(seq) <= hi):
        return tuple(seq)
    return tuple([v_int(x, f"{path}[{i}]", lo, hi) for i, x in enumerate(seq)])


# ------------------------------------------------------------------------------ free-form JSON
MAX_JSON_DEPTH: Final = 32


def v_json_object(value: Any, path: str, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """A JSON object (str keys; values null/bool/int64/finite float/str/array/object), deep-copied."""
    if not isinstance(value, dict):
        raise type_error(value, path, "object")
    return _json_value(value, path, max_depth)


def _json_value(value: Any, path: str, depth: int) -> Any:
    if value is None or type(value) is bool or type(value) is str:
        return value
    if type(value) is int:
        return v_int(value, path, INT64_MIN, INT64_MAX)
    if type(value) is float:
        if not _isfinite(value):
            raise SchemaError(path, "must be finite")
        return value
    if depth <= 0:
        raise SchemaError(path, "nested too deeply")
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if type(k) is not str:
                raise SchemaError(path, f"object keys must be strings, got {type_name(k)}")
            out[k] = _json_value(v, f"{path}.{k}", depth - 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_json_value(v, f"{path}[{i}]", depth - 1) for i, v in enumerate(value)]
    if isinstance(value, (bool, int, float, str)):  # subclasses: normalize to the base type
        base = bool if isinstance(value, bool) else next(t for t in (int, float, str) if isinstance(value, t))
        return _json_value(base(value), path, depth)
    raise SchemaError(path, f"not a JSON value: {type_name(value)}")
