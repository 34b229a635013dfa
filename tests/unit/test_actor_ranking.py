"""Ranking one request or a micro-batch with a served model; the model slot and cold start."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from actor_service.api import RankRequest
from actor_service.devtools import example_request, make_model
from actor_service.model_slot import ModelSlot, Served, check_servable, cold_start_model, served_snapshot
from actor_service.ranking import Job, Ranked, rank, rank_batch
from model.featurize import FeatureError, ListView, list_inputs
from model.policy import ActorConfig
from model.ranker import RankerConfig
from model.scoring import ActorModel, score
from model.snapshot import encode_snapshot
from schemas import Exploration, SnapshotHeader, decode_impression

TINY = RankerConfig.tiny()
GREEDY = Exploration(noise_std=0.0)


@pytest.fixture(scope="module")
def served() -> Served:
    """Served without exploration (rankings comparable with the bare scoring function)."""
    return Served(
        make_model(0, TINY), version=3, objectives=TINY.objectives, exploration=GREEDY, created_at_ms=1
    )


def request(n: int, seed: int = 0, **fields: object) -> RankRequest:
    return RankRequest.model_validate(example_request(n, TINY, seed=seed, **fields))


def _view(req: RankRequest) -> ListView:
    return ListView(
        req.user_features,
        req.history,
        req.context,
        [i.item_id for i in req.items],
        [i.features for i in req.items],
    )


def test_response_and_impression_list_items_in_served_order(served: Served) -> None:
    req = request(6, request_id="req-1")
    out = rank(served, req, "req-1", 1234, generator=None)
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
    ref = score(served.model, list_inputs([_view(req)], TINY), 0.0)
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


def test_exploration_noise_is_the_served_models_and_is_logged(served: Served) -> None:
    exploring = dataclasses.replace(served, exploration=Exploration(noise_std=0.5))
    gen = torch.Generator().manual_seed(0)
    out = rank(exploring, request(4), "r", 0, generator=gen)
    body = json.loads(out.body)
    greedy = json.loads(rank(served, request(4), "r", 0, generator=torch.Generator().manual_seed(0)).body)
    assert any(abs(x) > 0 for x in body["noise"]) and greedy["noise"] == [0.0, 0.0]
    assert body["weights"] != greedy["weights"]
    assert sum(body["weights"]) == pytest.approx(1.0, abs=1e-5)
    # the noise drawn is exactly that of std 0.5 on the same stream, and the impression logs it
    ref = score(served.model, list_inputs([_view(request(4))], TINY), 0.5, torch.Generator().manual_seed(0))
    assert body["noise"] == pytest.approx(ref.noise[0].tolist(), abs=1e-6)
    assert list(decode_impression(out.impression).noise) == body["noise"]
    # and the log-propensity of the served weights (null when served without noise)
    logp = decode_impression(out.impression).log_propensity
    assert logp == body["log_propensity"] == pytest.approx(ref.log_propensity[0].item(), abs=1e-9)
    assert greedy["log_propensity"] is None


def test_a_snapshot_is_served_with_its_headers_exploration_else_the_nodes() -> None:
    model = make_model(0, TINY)

    def header(exploration: Exploration | None) -> SnapshotHeader:
        h, _ = encode_snapshot(
            model,
            snapshot_version=5,
            training_step=1,
            watermark_ms=0,
            exploration=Exploration(noise_std=0.3),
            key=b"k",
            max_message_bytes=1 << 24,
        )
        return dataclasses.replace(h, exploration=exploration)  # None: a header from before the field

    node_setting = Exploration(noise_std=0.05)
    recorded = served_snapshot(header(Exploration(noise_std=0.3)), model, node_setting)
    old = served_snapshot(header(None), model, node_setting)
    assert recorded.exploration == Exploration(noise_std=0.3) and recorded.version == 5
    assert old.exploration == node_setting
    cold = cold_start_model(0, node_setting, json.dumps({"ranker": {"d_model": 16, "n_heads": 2}}))
    assert cold.exploration == node_setting


def test_a_batch_ranks_each_list_as_if_alone(served: Served) -> None:
    jobs = [Job(request(n, seed=n), f"r{n}", 0) for n in (3, 6, 1, 5)]
    batched = rank_batch(served, jobs, None)
    for job, out in zip(jobs, batched, strict=True):
        assert isinstance(out, Ranked)
        alone = rank(served, job.req, job.request_id, 0, None)
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
    results = rank_batch(served, [good, Job(bad_req, "bad", 0)], None)
    assert isinstance(results[0], Ranked)
    assert isinstance(results[1], FeatureError) and results[1].field == "items[1].features"


def test_feature_width_errors_name_the_field(served: Served) -> None:
    with pytest.raises(FeatureError) as err:
        rank(served, request(2, user_features=[0.0]), "r", 0, None)
    assert err.value.field == "user_features"


def test_slot_only_takes_newer_versions(served: Served) -> None:
    slot = ModelSlot()
    assert slot.current is None and slot.version() is None
    cold = cold_start_model(
        0, GREEDY, json.dumps({"ranker": {"d_model": 16, "n_heads": 2, "hash_buckets": 101}})
    )
    assert cold.version == 0 and cold.cold_start and slot.offer(cold)
    assert slot.offer(served) and slot.version() == 3
    assert not slot.offer(dataclasses.replace(served, version=3))  # duplicate
    assert not slot.offer(dataclasses.replace(served, version=2))  # older
    assert slot.current is served and slot.created_at_ms() == 1


def test_cold_start_model_is_deterministic_per_seed() -> None:
    cfg = json.dumps({"ranker": {"d_model": 16, "n_heads": 2, "hash_buckets": 101, "user_dim": 4}})
    a, b, c = (
        cold_start_model(7, GREEDY, cfg),
        cold_start_model(7, GREEDY, cfg),
        cold_start_model(8, GREEDY, cfg),
    )
    assert a.model.ranker.cfg.user_dim == 4 and a.model.actor.cfg.obs_dim == 16
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    with pytest.raises(ValueError):
        cold_start_model(0, GREEDY, json.dumps({"learner": {}}))


def test_only_simplex_weight_generators_are_servable() -> None:
    tanh = ActorModel(TINY, ActorConfig(obs_dim=TINY.d_model, action_dim=2, head="tanh"))
    with pytest.raises(ValueError, match="simplex"):
        check_servable(tanh)


def test_top_k_returns_and_logs_only_the_shown_list(served: Served) -> None:
    full = rank(served, request(8, request_id="req-k"), "req-k", 1, generator=None)
    top = rank(served, request(8, request_id="req-k", top_k=3), "req-k", 1, generator=None)
    full_ids = [it["item_id"] for it in json.loads(full.body)["items"]]
    top_ids = [it["item_id"] for it in json.loads(top.body)["items"]]
    assert top_ids == full_ids[:3]
    logged = decode_impression(top.impression)
    assert [it.item_id for it in logged.items] == top_ids and top.n_items == 3
