"""Bounded overload: admission control and the shed-request error.

Two bounds keep an overloaded node answering fast instead of queueing without limit:

* admission (:class:`Admission`): at most ``serve_max_in_flight`` /rank requests are inside the
  node at once (from the first byte of the request to the last byte of the response). Past it,
  /rank answers 503 + ``Retry-After`` before its body is even read, so a rejection costs almost
  nothing; ``/healthz``, ``/readyz`` and ``/metrics`` are never limited.
* a deadline (``serve_request_deadline_ms`` after arrival): a request still waiting in the
  micro-batch queue at its deadline leaves the queue unscored and is answered 503
  (:class:`Shed`), see :mod:`actor_service.batcher`. Work whose answer would come too late to be
  useful is not done.

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


class Admission:
    """A counter of /rank requests in flight with an upper bound.

    Used only on the event loop thread (the middleware), so it needs no lock.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the in-flight limit must be >= 1")
        self.limit = limit
        self.in_flight = 0
        self.peak = 0  # most requests ever in flight at once (a check that the bound held)

    def try_enter(self) -> bool:
        """Admit one more request if under the limit; the caller must :meth:`leave` once it
        has answered an admitted request."""
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        return True

    def leave(self) -> None:
        if self.in_flight <= 0:
            raise RuntimeError("leave() without a matching try_enter()")
        self.in_flight -= 1
