"""Consecutive lists of one session -> RL transitions (s, a, labels, r, s', done).

In process, what the stream processors do over Kafka: the state is the shown list, the action
the logged weights, the labels the per-position clicks and dwell, ``reward`` the list-level
feedback per objective (clicks, dwell seconds; the learner computes PAPERec's own reward), and
the next state is the session's next list, or none when the user left (done).
"""

from __future__ import annotations

from schemas import Labels, Transition, transition_id
from simulator.session import ListResult


def make_transition(result: ListResult, next_result: ListResult | None) -> Transition:
    imp, r = result.impression, result.response
    nxt = None if next_result is None else next_result.impression
    return Transition(
        transition_id=transition_id(imp.user_id, imp.request_id, None if nxt is None else nxt.request_id),
        user_id=imp.user_id,
        ts_ms=imp.ts_ms,
        snapshot_version=imp.snapshot_version,
        state=imp.list_state(),
        action=imp.weights,
        objectives=imp.objectives,
        labels=Labels(clicks=tuple(int(c) for c in r.clicks), dwell_ms=tuple(int(d) for d in r.dwell_ms)),
        reward=(float(r.n_clicks), r.total_dwell_s),
        next_state=None if nxt is None else nxt.list_state(),
        done=nxt is None,
    )


class TransitionLinker:
    """Holds each open session's last list until its successor (or the session end) arrives."""

    def __init__(self) -> None:
        self.pending: dict[int, ListResult] = {}

    def add(self, result: ListResult) -> list[Transition]:
        out = []
        prev = self.pending.pop(result.session, None)
        if prev is not None:
            out.append(make_transition(prev, result))
        if result.done:
            out.append(make_transition(result, None))
        else:
            self.pending[result.session] = result
        return out

    def __len__(self) -> int:
        return len(self.pending)
