"""Sessions -> transitions: done only when the user leaves; the session cap truncates and bootstraps."""

from __future__ import annotations

import dataclasses

import torch

from model.featurize import transition_batch
from schemas import Transition
from simulator import RandomPolicy, Simulator, SimulatorConfig, TransitionLinker

BASE = SimulatorConfig(n_users=10, n_items=80, seed=5, max_lists=3)


def _transitions(cfg: SimulatorConfig, sessions: int = 12) -> list[Transition]:
    sim = Simulator(cfg)
    linker, out = TransitionLinker(), []
    for r in sim.run(RandomPolicy(seed=1), sim.random_sessions(sessions)):
        out.extend(linker.add(r))
    assert len(linker) == 0  # every session closed
    return out


def test_a_user_who_leaves_ends_the_episode() -> None:
    # leave_bias high: every user leaves after the first list
    transitions = _transitions(dataclasses.replace(BASE, leave_bias=30.0))
    assert len(transitions) == 12
    assert all(t.done and t.next_state is None for t in transitions)
    assert transition_batch(transitions, BASE.ranker_config()).done.eq(1.0).all()


def test_the_session_cap_truncates_and_bootstraps_from_the_last_state() -> None:
    # leave_bias very low: nobody leaves, every session stops at the cap (max_lists = 3)
    transitions = _transitions(dataclasses.replace(BASE, leave_bias=-30.0))
    assert len(transitions) == 12 * 3 and not any(t.done for t in transitions)
    last = [t for t in transitions if t.next_state == t.state]
    assert len(last) == 12  # one per session: the capped list's next state is its own state
    for t in transitions:
        if t not in last:  # an inner list: its next state is the session's next list
            assert t.next_state is not None and t.next_state.request_id != t.state.request_id
    batch = transition_batch(last, BASE.ranker_config())
    assert batch.done.eq(0.0).all()
    assert torch.equal(batch.next_user_feats, batch.user_feats)  # bootstraps from the last state
    assert torch.equal(batch.next_item_ids, batch.item_ids)


def test_leaving_on_the_capped_list_is_a_leave() -> None:
    # the usual settings: some sessions end by a leave, some at the cap; the rule follows the response
    cfg = dataclasses.replace(BASE, max_lists=2)
    sim = Simulator(cfg)
    linker = TransitionLinker()
    seen = {"leave": 0, "cap": 0}
    for r in sim.run(RandomPolicy(seed=2), sim.random_sessions(60)):
        for t in linker.add(r):
            if t.state.request_id == r.impression.request_id and r.done:  # the session's last list
                assert t.done == r.response.leave
                seen["leave" if r.response.leave else "cap"] += 1
    assert seen["leave"] > 0 and seen["cap"] > 0
