"""Consecutive lists of one session -> RL transitions (s, a, labels, r, s', done).

In process, what the stream processors do over Kafka: the state is the shown list, the action
the logged weights, the labels the per-position clicks and dwell, ``reward`` the list-level
feedback per objective (clicks, dwell seconds; the learner computes PAPERec's own reward), and
the next state is the session's next list.

Continuation: ``done`` only when the user left (``response.leave``). A session the simulator ended
at its cap (``max_lists``) with the user still there is a *truncation*, not an ending: its last
transition bootstraps (done = False). The simulator has no list after the cap, so its next state
is the state that last list was shown in: the value after the cap is approximated by the value of
the last state (Q(s', mu(s')) ~ Q(s, mu(s)); a user who would have stayed keeps earning). The
streams (online) close a session by inactivity, which is a leave: done there.
"""

from __future__ import annotations

from schemas import Labels, ListState, Transition, transition_id
from simulator.session import ListResult


def make_transition(result: ListResult, next_result: ListResult | None) -> Transition:
    """The transition of ``result``'s list to ``next_result``'s; ``None``: the session ended after it
    (a leave: done; the cap: truncated, next state = this state, see the module docstring)."""
    imp, r = result.impression, result.response
    nxt = None if next_result is None else next_result.impression
    if nxt is not None:
        next_state: ListState | None = nxt.list_state()
    elif r.leave:
        next_state = None  # the user left: done
    else:
        next_state = imp.list_state()  # truncated at the cap: bootstrap from the last state
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
        next_state=next_state,
        done=next_state is None,
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
