"""Helpers for the learner's tests and benchmark: synthetic transitions and in-memory sources.

Not used by the service itself.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Sequence
from typing import Any

import orjson

from base.settings import Settings
from learner.ingest import RawRecord
from model.ranker import RankerConfig
from schemas import Item, Labels, ListState, Transition, encode

T0_MS = 1_732_795_200_000  # 2024-11-28T12:00:00Z


def _list_state(rng: random.Random, cfg: RankerConfig, user: int, ts_ms: int, n_items: int) -> ListState:
    items = rng.sample(range(5_000), n_items)
    return ListState(
        request_id=f"req-{user}-{ts_ms}-{rng.randrange(1 << 30)}",
        ts_ms=ts_ms,
        user_features=tuple(math.sin(user * (j + 1)) for j in range(cfg.user_dim)),
        history=tuple(f"item-{rng.randrange(5_000)}" for _ in range(rng.randrange(cfg.history_len + 1))),
        context=tuple(rng.random() for _ in range(cfg.context_dim)),
        items=tuple(
            Item(
                item_id=f"item-{i}",
                position=p,
                features=tuple(math.cos(i * (j + 1)) for j in range(cfg.item_dim)),
            )
            for p, i in enumerate(items)
        ),
    )


def synthetic_transitions(
    cfg: RankerConfig,
    n: int,
    *,
    seed: int = 0,
    n_users: int = 50,
    start_ts_ms: int = T0_MS,
    max_items: int | None = None,
    id_prefix: str = "t",
) -> list[Transition]:
    """``n`` valid transitions fitting ``cfg`` (feature widths, objectives), ids ``<prefix><seed>-<i>``.

    Clicks follow a fixed user x item affinity, so a ranker can learn something; event times
    increase by one second per transition.
    """
    rng = random.Random(seed)
    longest = max_items or cfg.max_list_len
    out = []
    for i in range(n):
        user, ts = rng.randrange(n_users), start_ts_ms + 1000 * i
        state = _list_state(rng, cfg, user, ts, rng.randint(max(1, longest // 2), longest))
        clicks, dwell = [], []
        for it in state.items:
            affinity = sum(u * f for u, f in zip(state.user_features, it.features, strict=False))
            c = int(rng.random() < 1 / (1 + math.exp(-affinity + 1.0)))
            clicks.append(c)
            dwell.append(int(c * rng.lognormvariate(9.5, 0.5)))
        done = rng.random() < 0.1
        w = rng.random()
        k = len(cfg.objectives)
        action = (w, 1.0 - w) if k == 2 else tuple([1.0 / k] * k)
        out.append(
            Transition(
                transition_id=f"{id_prefix}{seed}-{i:08d}",
                user_id=f"user-{user}",
                ts_ms=ts,
                snapshot_version=1,
                state=state,
                action=action,
                objectives=tuple(cfg.objectives),
                labels=Labels(clicks=tuple(clicks), dwell_ms=tuple(dwell)),
                reward=tuple([float(sum(clicks))] + [sum(dwell) / 1000.0] * (k - 1)),
                next_state=None if done else _list_state(rng, cfg, user, ts + 60_000, len(state.items)),
                done=done,
            )
        )
    return out


class MemorySource:
    """A RecordSource over encoded records in memory (one partition).

    ``repeat``: cycle forever, giving each pass's transitions fresh ids (``<id>~<pass>``) so the
    buffer's dedup does not skip them: an endless stream for benchmarks. Picklable, so
    ``partial(MemorySource, values, ids, repeat, topic)`` is a ProcessSource factory.
    """

    def __init__(
        self,
        values: Sequence[bytes],
        ids: Sequence[str] | None = None,
        repeat: bool = False,
        topic: str = "mem",
        start: dict[int, int] | None = None,
        commit_log: str | None = None,
        fail_once_at: int | None = None,
    ) -> None:
        if repeat and ids is None:
            raise ValueError("repeat needs the transition ids")
        self.values, self.ids, self.repeat, self.topic = list(values), ids, repeat, topic
        self.offset = (start or {}).get(0, 0)
        self.commit_log = commit_log  # a file each commit and the close are appended to (JSON lines)
        self.fail_once_at = fail_once_at  # poll raises once on reaching this offset (error paths)
        self.committed: dict[int, int] = {}
        self.closed = False

    def start_positions(self) -> dict[int, int]:
        return {0: self.offset}

    def poll(self, timeout_s: float, max_records: int) -> list[RawRecord]:
        if self.fail_once_at is not None and self.offset >= self.fail_once_at:
            self.fail_once_at = None
            raise ConnectionError("simulated broker outage")
        out: list[RawRecord] = []
        n = len(self.values)
        while len(out) < max_records and (self.repeat or self.offset < n):
            i, rnd = self.offset % n, self.offset // n
            value = self.values[i]
            if rnd and self.ids is not None:
                old = self.ids[i].encode()
                value = value.replace(b'"' + old + b'"', b'"' + old + b"~%d" % rnd + b'"', 1)
            out.append(RawRecord(self.topic, 0, self.offset, None, value))
            self.offset += 1
        if not out:
            threading.Event().wait(min(timeout_s, 0.05))
        return out

    def lag(self) -> int | None:
        return None if self.repeat else len(self.values) - self.offset

    def seek(self, offsets: dict[int, int]) -> None:
        self.offset = offsets.get(0, self.offset)

    def commit(self, offsets: dict[int, int]) -> None:
        self.committed = dict(offsets)
        self._log({"commit": offsets})

    def close(self) -> None:
        self.closed = True
        self._log({"closed": True})

    def _log(self, entry: dict[str, object]) -> None:
        """What a test in another process (the ingest worker's parent) can observe."""
        if self.commit_log is not None:
            with open(self.commit_log, "ab") as f:
                f.write(orjson.dumps(entry, option=orjson.OPT_NON_STR_KEYS) + b"\n")


class ListDeadLetters:
    """A DeadLetterSink that keeps what it gets."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes | None]] = []

    def send(self, value: bytes, key: bytes | None) -> None:
        self.sent.append((value, key))

    def flush(self) -> None:
        pass


def encoded(transitions: Sequence[Transition]) -> list[bytes]:
    return [encode(t) for t in transitions]


def produce(
    settings: Settings, topic: str, values: Sequence[bytes], keys: Sequence[bytes | None] | None = None
) -> None:
    """Write ``values`` to ``topic`` (acks=all) and wait until all are acknowledged."""
    from base import kafka as kafka_clients

    producer = kafka_clients.producer(settings, acks="all", linger_ms=20)
    try:
        for i, v in enumerate(values):
            producer.send(topic, key=None if keys is None else keys[i], value=v)
        producer.flush(timeout=60)
    finally:
        producer.close()


class _Sent:
    """What ``FakeProducer.send`` returns: kafka-python's future, already resolved."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def get(self, timeout: float | None = None) -> None:
        if self.error is not None:
            raise self.error

    def add_errback(self, fn: Any) -> _Sent:
        if self.error is not None:
            fn(self.error)
        return self


class FakeProducer:
    """A kafka-python ``KafkaProducer`` stand-in that keeps what it is sent (``sent``: topic,
    key, value, headers); while ``down`` every send fails, as with the broker away."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]] = []
        self.down = False
        self.closed = False
        self._lock = threading.Lock()  # the snapshot publisher sends from its own thread

    def send(
        self,
        topic: str,
        key: bytes | None = None,
        value: bytes = b"",
        headers: list[tuple[str, bytes]] | None = None,
    ) -> _Sent:
        if self.down:
            return _Sent(ConnectionError("broker down"))
        with self._lock:
            self.sent.append((topic, key, value, headers))
        return _Sent(None)

    def flush(self, timeout: float | None = None) -> None:
        if self.down:
            raise TimeoutError("broker down")

    def close(self, timeout: float | None = None) -> None:
        self.closed = True
