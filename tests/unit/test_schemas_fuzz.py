"""Seeded fuzzing: random mutations of valid encodings never make the decoder raise anything but
SchemaError, and whatever it accepts round-trips."""

from __future__ import annotations

import contextlib
import copy
import math
import random
from typing import Any

import orjson
import pytest

import schemas
from schemas import SchemaError
from schemas.events import _items_fast, _items_slow
from schemas.examples import EXAMPLES, make_impression

SEEDS = {
    **{t: schemas.encode(r) for t, r in EXAMPLES.items()},
    "impression_20x8": schemas.encode(make_impression(20, 8, seed=3)),
}

_JSON_JUNK: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -(2**63),
    1.5,
    -0.0,
    1e308,
    -1e-308,
    1e15,  # schemas.MAX_ABS_NUMBER: accepted in number fields
    -1.0000001e15,  # just beyond it: rejected
    3.5e38,  # beyond float32
    "",
    "x",
    "1",
    "\u0000",
    "é" * 200,
    "click",
    "impression",
    [],
    [1],
    [1.0, 2.0],
    ["a"],
    [None],
    [[]],
    {},
    {"type": "click"},
    {"item_id": "a", "position": 0, "features": []},
]
_PY_JUNK: list[Any] = [
    float("nan"),
    float("inf"),
    -float("inf"),
    10**400,
    -(10**400),
    (1.0, 2.0),
    {1, 2},
    frozenset(),
    b"bytes",
    object(),
    1 + 2j,
    {1: "int key"},
    {(1,): "tuple key"},
    range(3),
]


def _containers(value: Any, out: list[tuple[Any, Any]]) -> None:
    """Every (container, key/index) pair inside a JSON value."""
    if isinstance(value, dict):
        for k, v in value.items():
            out.append((value, k))
            _containers(v, out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.append((value, i))
            _containers(v, out)


def _mutate_structure(rng: random.Random, data: Any, junk: list[Any]) -> Any:
    data = copy.deepcopy(data)
    for _ in range(rng.randint(1, 3)):
        spots: list[tuple[Any, Any]] = []
        _containers(data, spots)
        if not spots:
            return data
        container, key = rng.choice(spots)
        op = rng.random()
        if op < 0.25:
            del container[key]
        elif op < 0.75:
            container[key] = copy.deepcopy(rng.choice(junk))
        elif op < 0.85:  # swap with another value of the record
            other, okey = rng.choice(spots)
            with contextlib.suppress(IndexError, KeyError):  # the other spot may be gone
                container[key], other[okey] = copy.deepcopy(other[okey]), copy.deepcopy(container[key])
        elif op < 0.95:  # numeric nudge / type swap
            v = container[key]
            if isinstance(v, bool):
                container[key] = int(v)
            elif isinstance(v, int):
                container[key] = rng.choice([v + 1, v - 1, -v, float(v), str(v), v != 0])
            elif isinstance(v, float):
                container[key] = rng.choice([int(v) if math.isfinite(v) else v, -v, v * 1e300, str(v)])
            elif isinstance(v, str):
                container[key] = rng.choice([v + "x", v[:-1], v * 200, v.upper()])
            elif isinstance(v, list):
                container[key] = v[:-1] if v and rng.random() < 0.5 else v + v[:1]
        elif isinstance(container, dict):
            container[f"extra{rng.randint(0, 9)}"] = copy.deepcopy(rng.choice(junk))
    return data


def _mutate_bytes(rng: random.Random, raw: bytes) -> bytes:
    b = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        if not b:
            b.extend(rng.randbytes(3))
            continue
        i = rng.randrange(len(b))
        op = rng.random()
        if op < 0.3:
            b[i] = rng.randrange(256)
        elif op < 0.45:
            b[i] ^= 1 << rng.randrange(8)
        elif op < 0.6:
            del b[i : i + rng.randint(1, 16)]
        elif op < 0.75:
            b[i:i] = rng.choice(
                [b"\xff", b"\xc3", b"NaN", b"Infinity", b"-", b"1e999", b'"', b"[", b"{", b","]
            )
        elif op < 0.85:
            del b[i:]
        else:
            j = rng.randrange(len(b))
            b[i:i] = b[j : j + rng.randint(1, 32)]
    return bytes(b)


def _check(raw: Any, decode: Any = schemas.decode) -> bool:
    try:
        rec = decode(raw)
    except SchemaError as e:
        assert not e.reason.startswith("internal error"), str(e)
        assert isinstance(e.field, str) and e.field and isinstance(e.reason, str) and e.reason
        assert str(e) == f"{e.field}: {e.reason}"
        return False
    # anything accepted is a valid record that round-trips
    assert schemas.decode(schemas.encode(rec)) == rec
    # ... and every number it holds is float32-safe (model_config is free-form, not featurized)
    if not isinstance(rec, schemas.SnapshotHeader):
        assert all(abs(x) <= schemas.MAX_ABS_NUMBER for x in _floats(rec.to_dict()))
    return True


def _floats(value: Any) -> list[float]:
    """Every float inside a JSON value (the fields that hold numbers)."""
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [f for v in value for f in _floats(v)]
    return []


@pytest.mark.parametrize("seed_name", sorted(SEEDS))
def test_fuzz_bytes(seed_name: str) -> None:
    rng = random.Random(f"bytes-{seed_name}")
    raw = SEEDS[seed_name]
    for _ in range(600):
        _check(_mutate_bytes(rng, raw))


@pytest.mark.parametrize("seed_name", sorted(SEEDS))
def test_fuzz_structure(seed_name: str) -> None:
    rng = random.Random(f"structure-{seed_name}")
    data = orjson.loads(SEEDS[seed_name])
    accepted = 0
    for _ in range(600):
        mutated = _mutate_structure(rng, data, _JSON_JUNK)
        try:
            raw = orjson.dumps(mutated)
        except orjson.JSONEncodeError:  # e.g. ints beyond 64 bits
            continue
        accepted += _check(raw)
    assert accepted < 600  # the mutations do hit


@pytest.mark.parametrize("seed_name", sorted(SEEDS))
def test_fuzz_from_dict_python_values(seed_name: str) -> None:
    """from_dict gets Python values JSON cannot carry (NaN, inf, huge ints, sets, bytes ...)."""
    rng = random.Random(f"python-{seed_name}")
    data = orjson.loads(SEEDS[seed_name])
    for _ in range(400):
        mutated = _mutate_structure(rng, data, _JSON_JUNK + _PY_JUNK)
        _check(mutated, schemas.from_dict)


def test_items_fast_path_agrees_with_slow_path() -> None:
    """The bulk-validating fast path only ever accepts what the exact slow path accepts, and
    builds the same items."""
    rng = random.Random("items")
    items = orjson.loads(schemas.encode(make_impression(6, 3, seed=1)))["items"]
    fast_hits = 0
    for _ in range(2000):
        mutated = _mutate_structure(rng, items, _JSON_JUNK + _PY_JUNK) if rng.random() < 0.8 else items
        if not isinstance(mutated, list) or not mutated:
            continue
        fast = _items_fast(mutated)
        try:
            slow = _items_slow(mutated, "items")
        except SchemaError:
            assert fast is None
            continue
        if fast is not None:
            fast_hits += 1
            assert fast == slow
    assert fast_hits > 100
