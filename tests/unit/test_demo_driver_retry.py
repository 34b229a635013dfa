"""The demo's /rank client honours a 503 with Retry-After: it waits that long and sends the list
again, a bounded number of times (counted), and reports a 503 that outlasts the retries as a
failure instead of crashing the demo. No server: the HTTP transport and the sleep are injected."""

from __future__ import annotations

import functools
import time
from email.utils import formatdate
from typing import Any

import httpx
import orjson
import pytest

from base.settings import Settings
from paperec import demo_driver
from paperec.demo_driver import (
    RETRY_AFTER_MAX_S,
    DemoDriver,
    HttpPolicy,
    LocalStats,
    RankFailed,
    retry_after_s,
)
from simulator import OBJECTIVES, Candidate, ListRequest, SimulatorConfig

URL = "http://node.test"


def list_request(n: int = 3) -> ListRequest:
    return ListRequest(
        request_id="r-1",
        user_id="u-1",
        ts_ms=0,
        user_features=(0.0,),
        history=(),
        context=(0.0,),
        candidates=tuple(Candidate(f"i{k}", (float(k),)) for k in range(n)),
    )


def ranked(request: httpx.Request) -> httpx.Response:
    """A 200 that ranks the request's items in reverse."""
    items = orjson.loads(request.content)["items"]
    return httpx.Response(
        200,
        json={
            "items": [{"item_id": it["item_id"]} for it in reversed(items)],
            "weights": [1.0 / len(OBJECTIVES)] * len(OBJECTIVES),
            "noise": [0.0] * len(OBJECTIVES),
            "objectives": list(OBJECTIVES),
            "snapshot_version": 7,
        },
    )


def shed(retry_after: str | None = "1", status: int = 503) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    body = {"detail": [{"loc": ["$"], "msg": "expected wait over budget", "type": "overloaded"}]}
    return httpx.Response(status, json=body, headers=headers)


class Script:
    """A transport handler answering from a list of responses (the last one repeats)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        answer = self.answers[min(self.requests, len(self.answers) - 1)]
        self.requests += 1
        return answer(request) if callable(answer) else answer


def policy(script: Script, sleeps: list[float], retries: int = 3) -> HttpPolicy:
    return HttpPolicy(
        [URL],
        list_len=3,
        parallel=1,
        retries=retries,
        transport=httpx.MockTransport(script),
        sleep=sleeps.append,
    )


def test_a_503_with_retry_after_is_sent_again_after_that_delay_and_counted() -> None:
    script = Script(shed("2"), shed("2"), ranked)
    sleeps: list[float] = []
    p = policy(script, sleeps)
    try:
        [ranking] = p.rank([list_request()])
    finally:
        p.close()
    assert ranking.order == (2, 1, 0) and ranking.snapshot_version == 7
    assert script.requests == 3
    assert sleeps == [2.0, 2.0]
    assert (p.retries, p.failures) == (2, 0)


def test_a_503_that_outlasts_the_retries_is_a_failure() -> None:
    script = Script(shed("1"))
    sleeps: list[float] = []
    p = policy(script, sleeps, retries=3)
    try:
        with pytest.raises(RankFailed, match="after 3 retries"):
            p.rank([list_request()])
    finally:
        p.close()
    assert script.requests == 4  # the first try and 3 retries, no more
    assert sleeps == [1.0, 1.0, 1.0]
    assert (p.retries, p.failures) == (3, 1)


@pytest.mark.parametrize(
    "answer",
    [shed(retry_after=None), shed(retry_after="soon"), shed("1", status=422), shed("1", status=500)],
    ids=["503-without-retry-after", "503-unreadable-retry-after", "422", "500"],
)
def test_other_errors_are_raised_at_once_without_a_retry(answer: httpx.Response) -> None:
    script = Script(answer, ranked)
    sleeps: list[float] = []
    p = policy(script, sleeps)
    try:
        with pytest.raises(httpx.HTTPStatusError):
            p.rank([list_request()])
    finally:
        p.close()
    assert script.requests == 1 and sleeps == []
    assert (p.retries, p.failures) == (0, 0)


def test_a_long_retry_after_is_clipped() -> None:
    script = Script(shed("3600"), ranked)
    sleeps: list[float] = []
    p = policy(script, sleeps)
    try:
        p.rank([list_request()])
    finally:
        p.close()
    assert sleeps == [RETRY_AFTER_MAX_S]


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = time.time()
    assert retry_after_s("1") == 1.0
    assert retry_after_s(" 0 ") == 0.0
    assert retry_after_s(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert retry_after_s(formatdate(now - 30, usegmt=True), now=now) == 0.0  # already past
    assert retry_after_s("-1") is None
    assert retry_after_s("soon") is None
    assert retry_after_s(None) is None


class StandInSender:
    """KafkaSender's surface that drive() uses: records nothing, sends nothing."""

    def __init__(self) -> None:
        self.producer = self
        self.sent = 0

    def __call__(self, event: Any) -> None:
        self.sent += 1

    def flush(self) -> None:
        pass


class NoDeaths:
    def dead(self) -> list[Any]:
        return []


def test_the_demo_traffic_stops_and_reports_a_persistent_503_instead_of_crashing(monkeypatch: Any) -> None:
    script = Script(*[ranked] * 5, shed("1"))  # 5 lists answered, then refused for good
    sleeps: list[float] = []
    monkeypatch.setattr(
        demo_driver,
        "HttpPolicy",
        functools.partial(HttpPolicy, transport=httpx.MockTransport(script), sleep=sleeps.append),
    )
    driver = DemoDriver.__new__(DemoDriver)  # no Kafka: only the traffic loop
    driver.settings = Settings()
    driver.urls = [URL]
    driver.sim_cfg = SimulatorConfig(seed=3, n_users=4)
    driver.parallel = 1
    driver.stats = LocalStats()
    driver.click_times_ms = []
    driver.sender = StandInSender()  # type: ignore[assignment]
    stats = driver.drive(duration_s=60.0, supervisor=NoDeaths())  # type: ignore[arg-type]
    assert stats.lists == 5
    assert stats.rank_failures == 1
    assert stats.rank_retries == demo_driver.RANK_RETRIES
    assert script.requests == 5 + 1 + demo_driver.RANK_RETRIES
