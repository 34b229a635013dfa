"""Builders of valid input events (JSON bytes) for tests, benchmarks and demos of the join."""

from __future__ import annotations

import random

import orjson


def impression(
    request_id: str,
    user_id: str,
    ts_ms: int,
    n_items: int = 3,
    n_features: int = 2,
    rng: random.Random | None = None,
    objectives: tuple[str, ...] = ("click", "dwell"),
) -> dict:
    rng = rng or random.Random(hash(request_id) & 0xFFFF)
    k = len(objectives)
    return {
        "type": "impression",
        "schema_version": 1,
        "request_id": request_id,
        "user_id": user_id,
        "ts_ms": ts_ms,
        "snapshot_version": 1,
        "objectives": list(objectives),
        "weights": [1 / k] * k,
        "noise": [0.0] * k,
        "user_features": [round(rng.uniform(-1, 1), 4) for _ in range(4)],
        "history": [f"h{j}" for j in range(3)],
        "context": [1.0, 0.5],
        "items": [
            {
                "item_id": item_id(request_id, j),
                "position": j,
                "features": [round(rng.uniform(-1, 1), 4) for _ in range(n_features)],
            }
            for j in range(n_items)
        ],
    }


def item_id(request_id: str, position: int) -> str:
    return f"{request_id}-i{position}"


def click(request_id: str, user_id: str, position: int, ts_ms: int) -> dict:
    return {
        "type": "click",
        "schema_version": 1,
        "request_id": request_id,
        "user_id": user_id,
        "item_id": item_id(request_id, position),
        "position": position,
        "ts_ms": ts_ms,
    }


def dwell(request_id: str, user_id: str, position: int, ts_ms: int, dwell_ms: int) -> dict:
    return {**click(request_id, user_id, position, ts_ms), "type": "dwell", "dwell_ms": dwell_ms}


def dumps(event: dict) -> bytes:
    return orjson.dumps(event)
