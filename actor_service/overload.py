"""Bounded overload: admission control and the shed-request error.

Two bounds keep an overloaded node answering fast instead of queueing without limit:

* admission (:class:`Admission`): a /rank request is admitted only while the scoring work already
  in the node would keep it waiting at most ``serve_max_queue_wait_ms``: the requests in flight
  (from the first byte of the request to the last byte of the response) times the scorer's
  recent cost per list (:class:`ScoringCost`, an EWMA measured on the scoring thread). One
  request is always admitted into an empty node, and ``serve_max_in_flight`` caps the count
  whatever the estimate (before the first measurement, and for tiny lists). Past either bound,
  /rank answers 503 + ``Retry-After`` before its body is even read, so a rejection costs almost
  nothing; ``/healthz``, ``/readyz`` and ``/metrics`` are never limited.
* a deadline (``serve_request_deadline_ms`` after arrival): a request still waiting in the
  micro-batch queue at its deadline leaves the queue unscored and is answered 503
  (:class:`Shed`), see :mod:`actor_service.batcher`. Work whose answer would come too late to be
  useful is not done. Admission keeps the wait short, so this is the backstop for when the cost
  estimate is wrong (the scorer slowed down after the requests were admitted).

Why bound the expected wait rather than the count: an accepted request's latency is its wait
plus its own scoring, and the wait is (work ahead of it) x (cost per list). A count limit fits
one list size only: 32 in flight is ~30 ms of work at 20 candidates (0.9 ms a list in batches)
but ~320 ms at 200 (10 ms a list at any batch size, measured), so at 200 candidates an accepted
request waited ~15x its own scoring time. Bounding count x measured cost bounds the wait itself,
for any list size and any machine. How to set it from a p99 latency SLO: wait budget = SLO minus
the unloaded p99 of /rank (which already includes one list's scoring), deadline = SLO. The
defaults (500 ms, 2000 ms) are no SLO, only a guard against collapse that never sheds normal
load on a slow, loaded machine (why those numbers: base/settings.py).

Both are answered 503 with ``Retry-After`` in the API's error shape and counted in
``errors_total{kind}`` (``overloaded``, ``deadline_exceeded``).
"""

from __future__ import annotations

OVERLOADED = "overloaded"
DEADLINE_EXCEEDED = "deadline_exceeded"
RETRY_AFTER_S = 1  # HTTP wants whole seconds; long enough for the queue to drain


class Shed(Exception):
    """A /rank request refused for load (not scored); ``kind`` is its error type and metric label."""

    def __init__(self, kind: str, msg: str) -> None:
        super().__init__(msg)
        self.kind = kind
        self.msg = msg


class ScoringCost:
    """Recent scorer time per list: an exponentially weighted mean over scored batches.

    Fed with each batch's duration as measured on the scoring thread (the batcher's clock), so it
    is the scorer's own cost, not the event loop's delay in noticing a finished batch. Weighted by
    batch: a batch of 12 short lists and a batch of one long list each move it by ``alpha``.
    Read and written on the event loop thread only.
    """

    def __init__(self, alpha: float = 0.2) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.per_list_s = 0.0  # 0 until the first batch: nothing known, the count cap alone holds
        self.batches = 0

    def observe(self, seconds: float, lists: int) -> None:
        if lists < 1 or seconds < 0:
            raise ValueError("a scored batch has >= 1 list and a duration >= 0")
        cost = seconds / lists
        if self.batches == 0:
            self.per_list_s = cost
        else:
            self.per_list_s += self.alpha * (cost - self.per_list_s)
        self.batches += 1


class Admission:
    """Admits a /rank request while the expected wait ahead of it fits the budget.

    Expected wait = requests in flight x :attr:`ScoringCost.per_list_s`. Requests still having their
    body read count too: they will be queued before a later one. A request that arrives at an
    empty node is always admitted (else a budget below one list's cost would admit nothing), and
    at most ``limit`` are in flight whatever the estimate.

    Used only on the event loop thread (the middleware), so it needs no lock.
    """

    def __init__(
        self, limit: int, wait_budget_s: float = float("inf"), cost: ScoringCost | None = None
    ) -> None:
        if limit < 1:
            raise ValueError("the in-flight limit must be >= 1")
        if wait_budget_s < 0:
            raise ValueError("the wait budget must be >= 0")
        self.limit = limit
        self.wait_budget_s = wait_budget_s
        self.cost = cost if cost is not None else ScoringCost()
        self.in_flight = 0
        self.peak = 0  # most requests ever in flight at once (a check that the bound held)

    def expected_wait_s(self) -> float:
        """Scoring time of the work already admitted: what a request admitted now would wait."""
        return self.in_flight * self.cost.per_list_s

    def refusal(self) -> str | None:
        """Why a request arriving now would be refused, or None when it would be admitted."""
        if self.in_flight >= self.limit:
            return f"{self.limit} requests in flight (serve_max_in_flight); retry later"
        if self.in_flight > 0 and self.expected_wait_s() > self.wait_budget_s:
            return (
                f"{self.in_flight} requests in flight, expected wait {self.expected_wait_s() * 1e3:.0f} ms "
                f"over {self.wait_budget_s * 1e3:.0f} ms (serve_max_queue_wait_ms); retry later"
            )
        return None

    def try_enter(self) -> bool:
        """Admit one more request if :meth:`refusal` allows; the caller must :meth:`leave` once
        it has answered an admitted request."""
        if self.refusal() is not None:
            return False
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        return True

    def leave(self) -> None:
        if self.in_flight <= 0:
            raise RuntimeError("leave() without a matching try_enter()")
        self.in_flight -= 1
