"""Arms of the guarded rollout: the stable user hash, the routing of a request, the holdout's
fixed weights in ranking, and the model slot in guarded mode (held snapshots, decisions)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any

import pytest
import torch

from actor_service.api import RankRequest
from actor_service.arms import (
    CANARY,
    HOLDOUT,
    PERSONALIZED,
    assign_arm,
    netstring,
    parse_weights,
    stable_unit,
)
from actor_service.devtools import example_request, make_model, signed_decision
from actor_service.model_slot import ArmSettings, ModelSlot, Served
from actor_service.ranking import Job, rank, rank_batch
from actor_service.routing import Routing, resolve_holdout_weights
from base.settings import Settings
from model.featurize import ListView, list_inputs
from model.ranker import RankerConfig
from model.scoring import score
from schemas import Exploration, RolloutDecision, decode_impression

TINY = RankerConfig.tiny()
GREEDY = Exploration(noise_std=0.0)
SETTINGS = Settings()
USERS = [f"user-{i}" for i in range(20_000)]


def served(version: int, seed: int | None = None, **fields: Any) -> Served:
    model = make_model(version if seed is None else seed, TINY)
    return Served(model, version=version, objectives=TINY.objectives, exploration=GREEDY, **fields)


def decide(kind: str, version: int, at: int, **fields: Any) -> RolloutDecision:
    return signed_decision(SETTINGS, kind, version, decided_at_ms=at, **fields)


# ------------------------------------------------------------------------ the hash
def test_stable_unit_is_the_documented_sha256_of_netstrings() -> None:
    assert netstring("ab") == b"2:ab," and netstring("é") == b"2:\xc3\xa9,"
    digest = hashlib.sha256(b"7:paperec,6:user-1,").digest()
    assert stable_unit("paperec", "user-1") == int.from_bytes(digest[:8], "big") / 2**64
    # netstrings: moving a character between salt and user id changes the draw
    assert stable_unit("a", "bc") != stable_unit("ab", "c")
    assert all(0.0 <= stable_unit("s", u) < 1.0 for u in USERS[:1000])


def test_arm_shares_match_the_settings_and_the_holdout_never_joins_a_canary() -> None:
    arms = [assign_arm(u, "paperec", 0.1, 0.5) for u in USERS]
    n = len(USERS)
    holdout = arms.count(HOLDOUT) / n
    canary = arms.count(CANARY) / n
    assert holdout == pytest.approx(0.1, abs=0.01)
    assert canary == pytest.approx(0.9 * 0.5, abs=0.015)  # a share of the non-holdout users
    # the holdout is the same users whatever the canary does
    without = [assign_arm(u, "paperec", 0.1) for u in USERS]
    assert [a == HOLDOUT for a in arms] == [a == HOLDOUT for a in without]
    assert CANARY not in without and set(without) == {HOLDOUT, PERSONALIZED}
    # another salt reshuffles
    other = [assign_arm(u, "other", 0.1) for u in USERS]
    assert other != without


def test_parse_weights_normalizes_and_names_the_setting() -> None:
    assert parse_weights("holdout_weights", "") is None
    assert parse_weights("holdout_weights", "1, 3") == (0.25, 0.75)
    for bad in ("a,b", "-1,2", "0,0", "inf,1", "nan,1"):
        with pytest.raises(ValueError, match="holdout_weights"):
            parse_weights("holdout_weights", bad)


# ------------------------------------------------------------------------ routing
def test_routing_routes_by_arm_and_falls_back_without_a_candidate() -> None:
    inc, cand = served(1), served(2)
    routing = Routing(inc, cand, 0.5, 0.1, "paperec", (0.2, 0.8), log_arms=True)
    for u in USERS[:500]:
        route = routing.route(u)
        expected = assign_arm(u, "paperec", 0.1, 0.5)
        assert route.arm == expected
        assert route.served is (cand if expected == CANARY else inc)
        assert (route.fixed_weights is not None) == (expected == HOLDOUT)
    assert routing.holdout.fixed_weights is not None
    assert routing.holdout.fixed_weights.tolist() == pytest.approx([0.2, 0.8])
    # the candidate not held: canary users get the incumbent, logged as personalized, flagged
    no_cand = Routing(inc, None, 0.5, 0.1, "paperec")
    canary_user = next(u for u in USERS if assign_arm(u, "paperec", 0.1, 0.5) == CANARY)
    route = no_cand.route(canary_user)
    assert (route.served, route.arm, route.fallback) == (inc, PERSONALIZED, True)
    assert no_cand.holdout.fixed_weights is not None
    assert no_cand.holdout.fixed_weights.tolist() == pytest.approx([0.5, 0.5])  # uniform


def test_holdout_weights_come_from_the_setting_else_the_header_else_uniform() -> None:
    learned = served(1, global_weights=(1.0, 3.0))
    assert resolve_holdout_weights(learned, (0.6, 0.4)) == (0.6, 0.4)
    assert resolve_holdout_weights(learned, None) == (0.25, 0.75)
    assert resolve_holdout_weights(learned, (0.2, 0.3, 0.5)) == (0.25, 0.75)  # wrong length: skipped
    assert resolve_holdout_weights(served(2), None) == ()


# ------------------------------------------------------------------------ ranking with arms
def test_holdout_lists_rank_with_the_fixed_weights_without_noise() -> None:
    s = dataclasses.replace(served(3), exploration=Exploration(noise_std=0.5))
    req = RankRequest.model_validate(example_request(8, TINY, seed=1))
    fixed = torch.tensor([0.3, 0.7])
    out = rank(s, req, "r-1", 1, torch.Generator().manual_seed(0), HOLDOUT, fixed)
    imp = decode_impression(out.impression)
    assert imp.arm == HOLDOUT and imp.log_propensity is None
    assert imp.weights == pytest.approx((0.3, 0.7)) and imp.noise == (0.0, 0.0)
    # the ranking is score()'s with those weights: same predictions, same combination
    view = ListView(req.user_features, req.history, req.context, [i.item_id for i in req.items],
                    [i.features for i in req.items])  # fmt: skip
    inputs = list_inputs([view], TINY)
    preds = score(s.model, inputs).preds[0]  # (L, K)
    norm = torch.stack([preds[:, 0], preds[:, 1] / preds[:, 1].max()], -1)
    expected = torch.sort((norm * fixed).sum(-1), descending=True, stable=True).indices.tolist()
    assert [it.item_id for it in imp.items] == [req.items[i].item_id for i in expected]


def test_a_batch_mixing_holdout_and_personalized_lists_ranks_each_as_alone() -> None:
    s = served(4)
    reqs = [RankRequest.model_validate(example_request(6, TINY, seed=i)) for i in range(4)]
    fixed = torch.tensor([0.9, 0.1])
    jobs = [
        Job(r, f"r-{i}", 1, HOLDOUT if i % 2 else PERSONALIZED, fixed if i % 2 else None)
        for i, r in enumerate(reqs)
    ]
    together = rank_batch(s, jobs, None)
    for job, out in zip(jobs, together, strict=True):
        (alone,) = rank_batch(s, [job], None)
        assert not isinstance(out, Exception) and not isinstance(alone, Exception)
        a, b = decode_impression(out.impression), decode_impression(alone.impression)
        assert a.arm == job.arm and [i.item_id for i in a.items] == [i.item_id for i in b.items]
        assert a.weights == pytest.approx(b.weights, abs=1e-6)
    holdout = decode_impression(together[1].impression)  # type: ignore[union-attr]
    assert holdout.weights == pytest.approx((0.9, 0.1))


def test_without_arms_the_impression_has_no_arm() -> None:
    req = RankRequest.model_validate(example_request(3, TINY))
    out = rank(served(1), req, "r", 1, None)
    assert decode_impression(out.impression).arm is None
    assert b'"arm":null' in out.body


# ------------------------------------------------------------------------ the slot, guarded
def guarded_slot(**kw: Any) -> tuple[ModelSlot, list[Served]]:
    stored: list[Served] = []
    slot = ModelSlot(guarded=True, arms=ArmSettings(0.1, "paperec"), on_incumbent=stored.append, **kw)
    return slot, stored


def test_guarded_slot_serves_its_base_until_a_decision_names_a_snapshot() -> None:
    slot, stored = guarded_slot()
    cold = served(0)
    assert slot.offer(cold) and slot.version() == 0
    assert slot.hold(served(1)) and slot.version() == 0  # held, not served
    assert slot.held_versions() == [1] and not slot.wants(1) and slot.wants(2)
    assert slot.apply(decide("bootstrap", 1, 10, incumbent=1)).status == "applied"
    assert slot.version() == 1 and [s.version for s in stored] == [0, 1]
    assert slot.routing is not None and slot.routing.log_arms


def test_canary_then_rollback_never_serves_the_rejected_version_again() -> None:
    slot, _ = guarded_slot()
    slot.offer(served(0))
    slot.hold(served(1))
    slot.hold(served(2))
    slot.apply(decide("bootstrap", 1, 10, incumbent=1))
    slot.apply(decide("canary", 2, 20, incumbent=1, candidate=2, canary_share=0.5))
    assert (slot.version(), slot.candidate_version()) == (1, 2)
    routing = slot.routing
    assert routing is not None
    versions = {u: routing.route(u).served.version for u in USERS[:2000]}
    assert 0.4 < sum(v == 2 for v in versions.values()) / len(versions) < 0.5  # 0.9 * 0.5
    applied = slot.apply(decide("rollback", 2, 30, incumbent=1, rejected=[2]))
    assert applied.status == "applied" and applied.unheld == {}
    assert (slot.version(), slot.candidate_version()) == (1, None)
    assert 2 not in slot.held_versions() and not slot.wants(2)
    assert not slot.hold(served(2))  # e.g. the topic read again: refused
    # even a (valid, newer) decision naming it does not serve it
    slot.apply(decide("canary", 2, 40, incumbent=1, candidate=2, canary_share=1.0))
    assert slot.candidate_version() is None


def test_a_decision_naming_an_unheld_snapshot_keeps_the_incumbent_until_it_arrives() -> None:
    slot, stored = guarded_slot()
    slot.offer(served(0))
    slot.hold(served(1))
    slot.apply(decide("bootstrap", 1, 10, incumbent=1))
    applied = slot.apply(decide("canary", 3, 20, incumbent=1, candidate=3, canary_share=0.2))
    assert applied.unheld == {"candidate": 3} and slot.candidate_version() is None
    assert slot.wants(3)
    slot.hold(served(3))
    assert slot.candidate_version() == 3  # served as soon as it arrives
    applied = slot.apply(decide("promote", 5, 30, incumbent=5))
    assert applied.unheld == {"incumbent": 5} and slot.version() == 1  # the old one keeps serving
    assert slot.candidate_version() is None
    slot.hold(served(5))
    assert slot.version() == 5 and [s.version for s in stored] == [0, 1, 5]


def test_stale_and_duplicate_decisions_are_ignored() -> None:
    slot, _ = guarded_slot()
    slot.offer(served(0))
    for v in (1, 2):
        slot.hold(served(v))
    newer = decide("bootstrap", 2, 20, incumbent=2)
    assert slot.apply(newer).status == "applied"
    assert slot.apply(newer).status == "duplicate"
    assert slot.apply(decide("bootstrap", 1, 10, incumbent=1)).status == "stale"
    assert slot.version() == 2


def test_held_snapshots_are_bounded_and_the_served_ones_are_never_evicted() -> None:
    slot, _ = guarded_slot(capacity=3)
    slot.offer(served(0))
    slot.hold(served(1, seed=0))
    slot.apply(decide("bootstrap", 1, 10, incumbent=1))
    for v in range(2, 8):
        slot.hold(served(v, seed=0))
    held = slot.held_versions()
    assert len(held) == 3 and 1 in held and 7 in held
    assert slot.version() == 1


def test_direct_slot_ignores_nothing_it_did_before() -> None:
    slot = ModelSlot(arms=ArmSettings(0.0))
    one = served(1)
    assert slot.hold(one) and slot.version() == 1  # hold is offer in direct mode
    assert not slot.hold(served(1, seed=5)) and slot.current is one
    assert slot.routing is not None and not slot.routing.log_arms
    assert slot.routing.route("user-1").arm == PERSONALIZED


def test_fixed_weights_leave_no_nan_in_scores() -> None:
    s = served(1)
    req = RankRequest.model_validate(example_request(5, TINY))
    out = rank(s, req, "r", 1, None, HOLDOUT, torch.tensor([1.0, 0.0]))
    scores = [it["score"] for it in json.loads(out.body)["items"]]
    assert all(math.isfinite(x) for x in scores)
