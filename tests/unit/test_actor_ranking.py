"""Ranking one request or a micro-batch with a served model; the model slot and cold start."""

from __future__ import annotations

import json

import pytest
import torch

from actor_service.api import RankRequest
from actor_service.devtools import example_request, make_model
from actor_service.model_slot import ModelSlot, Served, check_servable, cold_start_model
from actor_service.ranking import Job, Ranked, rank, rank_batch
from model.featurize import FeatureError, ListView, list_inputs
from model.policy import ActorConfig
from model.ranker import RankerConfig
from model.scoring import ActorModel, score
from schemas import decode_impression

TINY = RankerConfig.tiny()


@pytest.fixture(scope="module")
def served() -> Served:
    return Served(make_model(0, TINY), version=3, objectives=TINY.objectives, created_at_ms=1)


def request(n: int, seed: int = 0, **fields: object) -> RankRequest:
    return RankRequest.model_validate(example_request(n, TINY, seed=seed, **fields))


def test_response_and_impression_list_items_in_served_order(served: Served) -> None:
    req = request(6, request_id="req-1")
    out = rank(served, req, "req-1", 1234, noise_std=0.0, generator=None)
    body = json.loads(out.body)
    assert body["request_id"] == "req-1" and body["snapshot_version"] == 3
    assert body["objectives"] == list(TINY.objectives)
    assert sum(body["weights"]) == pytest.approx(1.0, abs=1e-5)
    assert body["noise"] == [0.0, 0.0]
    items = body["items"]
    assert [it["position"] for it in items] == list(range(6))
    scores = [it["score"] for it in items]
    assert scores == sorted(scores, reverse=True)
    assert sorted(it["item_id"] for it in items) == sorted(it.item_id for it in req.items)
    assert all(set(it["objective_scores"]) == set(TINY.objectives) for it in items)

    # The same ranking as the bare scoring function on the same inputs.
    view = ListView(
        req.user_features,
        req.history,
        req.context,
        [i.item_id for i in req.items],
        [i.features for i in req.items],
    )
    ref = score(served.model, list_inputs([view], TINY), 0.0)
    assert [it["item_id"] for it in items] == [req.items[i].item_id for i in ref.ranking[0].tolist()]

    imp = decode_impression(out.impression)
    assert imp.request_id == "req-1" and imp.user_id == req.user_id and imp.ts_ms == 1234
    assert imp.snapshot_version == 3
    assert list(imp.weights) == body["weights"] and list(imp.noise) == body["noise"]
    assert [it.item_id for it in imp.items] == [it["item_id"] for it in items]  # served order
    features = {it.item_id: it.features for it in req.items}
    assert all(list(it.features) == features[it.item_id] for it in imp.items)
    assert list(imp.history) == req.history and list(imp.user_features) == req.user_features
    assert list(imp.context) == req.context


def test_exploration_noise_is_applied_and_logged(served: Served) -> None:
    gen = torch.Generator().manual_seed(0)
    body = json.loads(rank(served, request(4), "r", 0, noise_std=0.5, generator=gen).body)
    greedy = json.loads(rank(served, request(4), "r", 0, noise_std=0.0, generator=None).body)
    assert any(abs(x) > 0 for x in body["noise"])
    assert body["weights"] != greedy["weights"]
    assert sum(body["weights"]) == pytest.approx(1.0, abs=1e-5)


def test_a_batch_ranks_each_list_as_if_alone(served: Served) -> None:
    jobs = [Job(request(n, seed=n), f"r{n}", 0) for n in (3, 6, 1, 5)]
    batched = rank_batch(served, jobs, 0.0, None)
    for job, out in zip(jobs, batched, strict=True):
        assert isinstance(out, Ranked)
        alone = rank(served, job.req, job.request_id, 0, 0.0, None)
        got, want = json.loads(out.body), json.loads(alone.body)
        assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in want["items"]]
        assert [i["score"] for i in got["items"]] == pytest.approx(
            [i["score"] for i in want["items"]], abs=1e-5
        )
        assert got["weights"] == pytest.approx(want["weights"], abs=1e-6)


def test_a_bad_list_in_a_batch_fails_alone(served: Served) -> None:
    good = Job(request(3), "good", 0)
    bad_req = request(3)
    bad_req.items[1].features.append(0.0)  # one feature too many
    results = rank_batch(served, [good, Job(bad_req, "bad", 0)], 0.0, None)
    assert isinstance(results[0], Ranked)
    assert isinstance(results[1], FeatureError) and results[1].field == "items[1].features"


def test_feature_width_errors_name_the_field(served: Served) -> None:
    with pytest.raises(FeatureError) as err:
        rank(served, request(2, user_features=[0.0]), "r", 0, 0.0, None)
    assert err.value.field == "user_features"


def test_slot_only_takes_newer_versions(served: Served) -> None:
    slot = ModelSlot()
    assert slot.current is None and slot.version() is None
    cold = cold_start_model(0, json.dumps({"ranker": {"d_model": 16, "n_heads": 2, "hash_buckets": 101}}))
    assert cold.version == 0 and cold.cold_start and slot.offer(cold)
    assert slot.offer(served) and slot.version() == 3
    assert not slot.offer(Served(served.model, version=3, objectives=served.objectives))  # duplicate
    assert not slot.offer(Served(served.model, version=2, objectives=served.objectives))  # older
    assert slot.current is served and slot.created_at_ms() == 1


def test_cold_start_model_is_deterministic_per_seed() -> None:
    cfg = json.dumps({"ranker": {"d_model": 16, "n_heads": 2, "hash_buckets": 101, "user_dim": 4}})
    a, b, c = cold_start_model(7, cfg), cold_start_model(7, cfg), cold_start_model(8, cfg)
    assert a.model.ranker.cfg.user_dim == 4 and a.model.actor.cfg.obs_dim == 16
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    with pytest.raises(ValueError):
        cold_start_model(0, json.dumps({"learner": {}}))


def test_only_simplex_weight_generators_are_servable() -> None:
    tanh = ActorModel(TINY, ActorConfig(obs_dim=TINY.d_model, action_dim=2, head="tanh"))
    with pytest.raises(ValueError, match="simplex"):
        check_servable(tanh)


def test_top_k_returns_and_logs_only_the_shown_list(served: Served) -> None:
    full = rank(served, request(8, request_id="req-k"), "req-k", 1, noise_std=0.0, generator=None)
    top = rank(served, request(8, request_id="req-k", top_k=3), "req-k", 1, noise_std=0.0, generator=None)
    full_ids = [it["item_id"] for it in json.loads(full.body)["items"]]
    top_ids = [it["item_id"] for it in json.loads(top.body)["items"]]
    assert top_ids == full_ids[:3]
    logged = decode_impression(top.impression)
    assert [it.item_id for it in logged.items] == top_ids and top.n_items == 3
