"""The demo's traffic: simulated users ranked over HTTP by the serving nodes, feedback to Kafka.

``HttpPolicy`` is a simulator policy whose rankings come from ``POST /rank`` (alternating
between the nodes, ``top_k`` = the shown list, so the node logs exactly what the user saw). The
simulated user's clicks and dwell times are produced to Kafka with wall-clock event times; the
impression itself is logged by the serving node.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
from kafka import TopicPartition

from base import kafka as kafka_clients
from base.settings import TOPIC_TRANSITIONS, Settings
from paperec.replay import KafkaSender, Pacer, replay
from paperec.services import Supervisor
from simulator import ListRequest, Ranking, Simulator, SimulatorConfig
from simulator.logfile import LogLine, in_time_order, read_log

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 5.0
OFFSETS_TIMEOUT_MS = 2_000
"""How long the progress line waits for the broker's end offsets: it runs between the simulated
users' requests, so a broker outage must cost the traffic seconds, not kafka-python's 30 s."""
OFFSETS_RETRY_S = 10.0
"""After a failed offsets query the last known count is shown for this long before retrying."""


RANK_RETRIES = 5
"""How often one list is sent again after a 503 with ``Retry-After`` (shed for load, or no model
yet) before it counts as failed. With its default settings a node sheds only a flood, so a 503
that outlasts five ``Retry-After: 1`` waits is a real failure, not a blip."""
RETRY_AFTER_MAX_S = 10.0
"""A longer ``Retry-After`` is clipped: the simulated users run in lock step, so one list's wait
holds up its whole round."""


class RankFailed(RuntimeError):
    """A /rank that still answered 503 after :data:`RANK_RETRIES` retries."""


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` value asks to wait (delay-seconds or an HTTP-date, RFC 9110
    10.2.3), or None when absent or unreadable (then the 503 is not retried)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class HttpPolicy:
    def __init__(
        self,
        urls: Sequence[str],
        list_len: int,
        parallel: int,
        *,
        retries: int = RANK_RETRIES,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.urls = list(urls)
        self.list_len = list_len
        self.client = httpx.Client(
            timeout=10.0,
            limits=httpx.Limits(max_connections=2 * parallel),
            transport=transport,
            headers=headers,  # the nodes' bearer token, when one is set (Settings.serve_auth_headers)
        )
        self.pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="rank")
        self._next = itertools.count()
        self.max_retries = retries
        self.sleep = sleep  # injectable: the retry tests do not wait
        self._lock = threading.Lock()  # the counters are updated from the pool's threads
        self.retries = 0  # 503s answered by waiting Retry-After and sending again
        self.failures = 0  # lists that got a 503 after every retry

    def _post(self, url: str, body: dict[str, Any]) -> httpx.Response:
        """POST /rank; a 503 with ``Retry-After`` is sent again after that delay, at most
        ``max_retries`` times, then raises :class:`RankFailed`. Any other non-200 raises at once
        (a bad request does not get better by sending it again)."""
        for attempt in range(self.max_retries + 1):
            resp = self.client.post(f"{url}/rank", json=body)
            delay = retry_after_s(resp.headers.get("retry-after")) if resp.status_code == 503 else None
            if delay is None:
                resp.raise_for_status()
                return resp
            if attempt == self.max_retries:
                with self._lock:
                    self.failures += 1
                raise RankFailed(
                    f"{url}/rank still answered 503 after {self.max_retries} retries: {resp.text[:200]}"
                )
            with self._lock:
                self.retries += 1
            wait = min(delay, RETRY_AFTER_MAX_S)
            log.warning(
                "%s/rank answered 503 (%s); retry %d of %d in %.1f s",
                url, resp.text[:120], attempt + 1, self.max_retries, wait,
            )  # fmt: skip
            self.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _rank_one(self, req: ListRequest) -> Ranking:
        url = self.urls[next(self._next) % len(self.urls)]
        body = {
            "request_id": req.request_id,
            "user_id": req.user_id,
            "user_features": list(req.user_features),
            "history": list(req.history),
            "context": list(req.context),
            "items": [{"item_id": c.item_id, "features": list(c.features)} for c in req.candidates],
            "top_k": self.list_len,
        }
        out = self._post(url, body).json()
        index = {c.item_id: k for k, c in enumerate(req.candidates)}
        return Ranking(
            order=tuple(index[it["item_id"]] for it in out["items"]),
            weights=tuple(out["weights"]),
            noise=tuple(out["noise"]),
            objectives=tuple(out["objectives"]),
            snapshot_version=int(out["snapshot_version"]),
            log_propensity=out.get("log_propensity"),  # absent from nodes before schema version 2
        )

    def rank(self, requests: Sequence[ListRequest]) -> list[Ranking]:
        return list(self.pool.map(self._rank_one, requests))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()


@dataclass
class LocalStats:
    """What the simulated users did, per snapshot version that ranked their list."""

    lists: int = 0
    events: int = 0
    rank_retries: int = 0  # 503s with Retry-After answered by waiting and sending again
    rank_failures: int = 0  # lists still answered 503 after every retry (the traffic stopped)
    per_version: dict[int, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0.0]))

    def add(self, version: int, shown: int, clicks: int, dwell_s: float) -> None:
        row = self.per_version[version]  # lists, impressions, clicks, dwell seconds
        row[0] += 1
        row[1] += shown
        row[2] += clicks
        row[3] += dwell_s
        self.lists += 1

    def rows(self) -> list[dict[str, float]]:
        return [
            {"version": v, "lists": int(r[0]), "ctr": r[2] / max(r[1], 1), "dwell_s": r[3] / max(r[1], 1)}
            for v, r in sorted(self.per_version.items())
        ]

    def totals(self) -> tuple[float, float]:
        imps = sum(r[1] for r in self.per_version.values())
        clicks = sum(r[2] for r in self.per_version.values())
        dwell = sum(r[3] for r in self.per_version.values())
        return clicks / max(imps, 1), dwell / max(imps, 1)


class DemoDriver:
    def __init__(self, settings: Settings, urls: Sequence[str], users: int, seed: int, parallel: int) -> None:
        self.settings = settings
        self.urls = list(urls)
        self.sim_cfg = SimulatorConfig(seed=seed, n_users=users)
        self.parallel = parallel
        self.stats = LocalStats()
        self.click_times_ms: list[int] = []  # event (= send) time of every click sent
        self.sender = KafkaSender(settings)
        self.http = httpx.Client(timeout=5.0)
        self._offsets = kafka_clients.consumer(settings, client_id="paperec-demo")
        self._transitions = 0  # last known count (shown while the broker does not answer)
        self._offsets_failed_at = -OFFSETS_RETRY_S

    # ---------------------------------------------------------------- observation
    def served_versions(self) -> list[int | None]:
        out: list[int | None] = []
        for url in self.urls:
            try:
                out.append(self.http.get(f"{url}/readyz").json().get("snapshot_version"))
            except (httpx.HTTPError, ValueError):
                out.append(None)
        return out

    def _ready(self, url: str) -> bool:
        try:
            return self.http.get(f"{url}/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def transitions(self) -> int:
        """Records on the transitions topic; the last known count while the broker is away
        (monitoring is retried, never fatal: the loop it watches rides out the outage)."""
        if time.monotonic() - self._offsets_failed_at < OFFSETS_RETRY_S:
            return self._transitions
        topic = self.settings.topic(TOPIC_TRANSITIONS)
        try:
            parts = self._offsets.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in parts]
            ends = self._offsets.end_offsets(tps, timeout_ms=OFFSETS_TIMEOUT_MS)
        except Exception as exc:  # KafkaTimeoutError while the broker is down or restarting
            self._offsets_failed_at = time.monotonic()
            log.warning("transitions count unavailable (retrying in %.0f s): %r", OFFSETS_RETRY_S, exc)
            return self._transitions
        self._transitions = int(sum(ends.values()))
        return self._transitions

    def wait_ready(self, timeout_s: float, supervisor: Supervisor) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = supervisor.dead()
            if dead:
                raise RuntimeError(f"{dead[0].name} exited during start-up:\n{dead[0].tail()}")
            if all(self._ready(url) for url in self.urls):
                return
            time.sleep(0.5)
        raise TimeoutError(f"serving nodes not ready after {timeout_s:.0f} s")

    def wait_nodes_agree(self, timeout_s: float, stable_s: float = 2.0) -> None:
        """Wait until every node serves the same snapshot version for ``stable_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        agreed_since, last = time.monotonic(), None
        while time.monotonic() < deadline:
            versions = self.served_versions()
            if len(set(versions)) != 1 or versions != last:
                agreed_since, last = time.monotonic(), versions
            elif time.monotonic() - agreed_since >= stable_s:
                return
            time.sleep(0.25)
        log.warning("serving nodes did not settle on one snapshot version: %s", last)

    def progress(self, started: float) -> str:
        ctr, dwell = self.stats.totals()
        return (
            f"[{time.time() - started:6.0f} s] lists {self.stats.lists:>6}  events {self.stats.events:>7}  "
            f"transitions {self.transitions():>6}  snapshot {self.served_versions()}  "
            f"CTR {ctr:.4f}  dwell/imp {dwell:.2f} s"
        )

    # ---------------------------------------------------------------- traffic
    def drive(self, duration_s: float, supervisor: Supervisor) -> LocalStats:
        sim = Simulator(self.sim_cfg, stream_id=int(time.time()) % 100_000)
        policy = HttpPolicy(
            self.urls, self.sim_cfg.list_len, self.parallel, headers=self.settings.serve_auth_headers()
        )
        started = last = time.time()
        try:
            for result in sim.run(policy, sim.endless_sessions(), parallel=self.parallel):
                now_ms = int(time.time() * 1000)
                # the node logged the impression; send the user's feedback at wall-clock time
                for event in result.events()[1:]:
                    self.sender(dataclasses.replace(event, ts_ms=now_ms))
                    self.stats.events += 1
                    if event.type == "click":
                        self.click_times_ms.append(now_ms)
                r = result.response
                self.stats.add(
                    result.impression.snapshot_version, len(result.shown), r.n_clicks, r.total_dwell_s
                )
                if time.time() - last >= PROGRESS_EVERY_S:
                    last = time.time()
                    try:
                        print(self.progress(started), flush=True)
                    except Exception:  # a progress line is not worth the run
                        log.exception("progress line failed; continuing")
                    if supervisor.dead():
                        raise RuntimeError(
                            f"{supervisor.dead()[0].name} exited:\n{supervisor.dead()[0].tail()}"
                        )
                if time.time() - started >= duration_s:
                    break
        except RankFailed as exc:
            # A node that keeps shedding is reported in the summary (and the demo's exit code)
            # instead of ending the run without one.
            log.error("stopping the simulated traffic: %s", exc)
        finally:
            self.stats.rank_retries, self.stats.rank_failures = policy.retries, policy.failures
            policy.close()
            self.sender.producer.flush()
        return self.stats

    def drain(self, settings: Settings, timeout_s: float) -> None:
        """Wait until the join has emitted what the sent events allow (transitions stop growing)."""
        deadline, last, stable_since = time.monotonic() + timeout_s, -1, time.monotonic()
        while time.monotonic() < deadline:
            n = self.transitions()
            if n != last:
                last, stable_since = n, time.monotonic()
            elif time.monotonic() - stable_since > 8:
                return
            time.sleep(1)

    def summary(self, stats: LocalStats, started: float) -> dict[str, Any]:
        rows = stats.rows()
        out: dict[str, Any] = {
            "topic_prefix": self.settings.topic_prefix,
            "lists": stats.lists,
            "events": stats.events,
            "transitions": self.transitions(),
            "served_versions": self.served_versions(),
            "per_snapshot": rows,
            "rank_retries": stats.rank_retries,
            "rank_failures": stats.rank_failures,
            "duration_s": round(time.time() - started, 1),
        }
        measured = [r for r in rows if r["lists"] >= 20]
        if len(measured) >= 2:
            first, last = measured[0], measured[-1]
            out["first_vs_last"] = {
                "versions": [first["version"], last["version"]],
                "ctr": [first["ctr"], last["ctr"]],
                "dwell_s": [first["dwell_s"], last["dwell_s"]],
            }
        out["clickhouse_per_snapshot"] = clickhouse_per_snapshot(self.settings, started)
        return out

    def close(self) -> None:
        self.sender.close()
        self.http.close()
        self._offsets.close()


def clickhouse_per_snapshot(settings: Settings, since: float) -> dict[int, int]:
    """Rows of list_outcomes per snapshot version written since ``since`` (the join's view)."""
    from base.metrics_store import client

    try:
        ch = client(settings)
        rows = ch.execute(
            f"SELECT snapshot_version, count() FROM {settings.clickhouse_database}.list_outcomes "
            "WHERE ts >= toDateTime(%(since)s) GROUP BY snapshot_version ORDER BY snapshot_version",
            {"since": int(since) - 5},
        )
        ch.disconnect()
        return {int(v): int(n) for v, n in rows}
    except Exception as exc:  # the summary must not fail on a metrics problem
        log.warning("ClickHouse summary query failed: %s", exc)
        return {}


def replay_log(
    settings: Settings, path: str, speed: float | None, driver: DemoDriver, supervisor: Supervisor
) -> LocalStats:
    """Publish a recorded log with its timestamps shifted to now (the join runs on event time)."""
    items = list(in_time_order(read_log(Path(path))))
    first = next((it.event.ts_ms for it in items if isinstance(it, LogLine)), 0)
    shift = int(time.time() * 1000) - first

    def shifted(it: Any) -> Any:
        if isinstance(it, LogLine):
            return dataclasses.replace(it, event=dataclasses.replace(it.event, ts_ms=it.event.ts_ms + shift))
        return it

    stats = replay((shifted(it) for it in items), driver.sender, Pacer(speed))
    driver.sender.producer.flush()
    driver.stats.events = stats.total
    print(f"replayed {path}: {stats.summary()}")
    return driver.stats
