"""Driving a running loop (serving nodes, streams, learner) with seeded simulated users: the
settings as the services' environment, free ports for the nodes, and :class:`Traffic`, users
ranked through ``POST /rank`` with their feedback sent to Kafka at wall time. The integration
tests' loops (tests/integration/loop_run.py) and the rollout benchmark (benchmarks/rollout.py)
use it; ``paperec demo`` drives its loop with :mod:`paperec.demo_driver`, on the same pieces."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Sequence

from actor_service.devtools import free_port
from base.settings import Settings
from paperec.demo_driver import HttpPolicy
from paperec.replay import KafkaSender
from paperec.replay_reader import EncodedEvent
from schemas import encode
from simulator import ListRequest, Ranking, Simulator, SimulatorConfig


def as_env(s: Settings) -> dict[str, str]:
    """Every setting as its PAPEREC_* variable: the services see this stack, whatever the
    environment of the test run says."""
    return {"PAPEREC_" + f.name.upper(): str(getattr(s, f.name)) for f in dataclasses.fields(Settings)}


def serve_base_port() -> int:
    """A port p with p + 1 to p + 3 free (demo_services puts the nodes and the rollout
    controller's /metrics there)."""
    while True:
        p = free_port()
        if all(port_is_free(p + k) for k in (1, 2, 3)):
            return p


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class _Stopped(Exception):
    pass  # not StopIteration: raised inside a generator it would become a RuntimeError


class Traffic:
    """Seeded simulated users ranked by ``POST /rank`` (alternating nodes; a non-200 raises in
    HttpPolicy), their feedback sent to Kafka as ``settings`` (its principal, if any) at wall
    time, at about ``lists_per_s``; in a thread. Records every answered list and every feedback
    event handed to the sender (``sender.errors`` counts those the brokers did not acknowledge)."""

    def __init__(
        self,
        settings: Settings,
        urls: list[str],
        *,
        seed: int,
        users: int,
        parallel: int,
        lists_per_s: float,
    ) -> None:
        cfg = SimulatorConfig(seed=seed, n_users=users)
        self.sim = Simulator(cfg, stream_id=1)
        self.policy = HttpPolicy(urls, cfg.list_len, parallel)
        self.sender = KafkaSender(settings)
        self.parallel, self.lists_per_s = parallel, lists_per_s
        self.answered: list[tuple[str, str]] = []  # (user_id, request_id)
        self.feedback: list[EncodedEvent] = []  # clicks and dwells handed to the sender
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def rank(self, requests: Sequence[ListRequest]) -> list[Ranking]:
        """The simulator's policy: one round of lists, all recorded once answered (stopping
        between rounds, so no answered list goes unrecorded)."""
        if self._stop.is_set():
            raise _Stopped
        rankings = self.policy.rank(requests)
        self.answered.extend((r.user_id, r.request_id) for r in requests)
        return rankings

    def _run(self) -> None:
        next_at = time.monotonic()
        try:
            for result in self.sim.run(self, self.sim.endless_sessions(), parallel=self.parallel):
                now_ms = int(time.time() * 1000)
                for event in result.events()[1:]:  # the node logged the impression itself
                    value = encode(dataclasses.replace(event, ts_ms=now_ms))
                    self.feedback.append(EncodedEvent(event.type, now_ms, event.request_id, value))
                    self.sender(self.feedback[-1])
                next_at += 1.0 / self.lists_per_s
                time.sleep(max(0.0, next_at - time.monotonic()))
        except _Stopped:
            pass
        except BaseException as exc:  # a failed /rank: the test reports it
            self.error = exc

    def stop(self) -> None:
        """Stop sending and deliver the feedback still buffered (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        self.policy.close()
        self.sender.close(timeout_s=60)
