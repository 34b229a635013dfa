"""The simulator's properties: seeding, position bias, click limit, dwell, leaving, control."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from schemas import Click, Dwell, Exploration, Impression
from simulator import HeuristicPolicy, RandomPolicy, Ranking, Simulator, SimulatorConfig, World
from simulator.behaviour import click_probability, examination, leave_probability, respond, satisfaction
from simulator.oracle import OraclePolicy

SMALL = SimulatorConfig(n_users=60, n_items=300, seed=3)


def _summary(results: list) -> list[tuple]:
    return [
        (
            r.impression.request_id,
            r.shown.tolist(),
            r.response.clicks.tolist(),
            r.response.dwell_ms.tolist(),
            r.done,
        )
        for r in results
    ]


def _run(cfg: SimulatorConfig, n: int = 40, policy: object | None = None, stream_id: int = 0) -> list:
    sim = Simulator(cfg, stream_id=stream_id)
    return list(sim.run(policy or RandomPolicy(seed=1), sim.random_sessions(n), parallel=16))  # type: ignore[arg-type]


def test_same_seed_same_world_and_sessions() -> None:
    a, b = World.build(SMALL), World.build(SMALL)
    assert np.array_equal(a.users.features, b.users.features)
    assert np.array_equal(a.items.features, b.items.features)
    assert _summary(_run(SMALL)) == _summary(_run(SMALL))


def test_other_seed_or_stream_differs() -> None:
    other = World.build(SMALL.replace(seed=4))
    assert not np.array_equal(World.build(SMALL).users.interest, other.users.interest)
    assert _summary(_run(SMALL)) != _summary(_run(SMALL, stream_id=1))


def test_sessions_use_common_random_numbers() -> None:
    """Session i meets the same user and candidates whatever the parallelism or other sessions."""
    sim = Simulator(SMALL)
    one = [r for r in sim.run(RandomPolicy(), sim.random_sessions(5), parallel=1)]
    sim2 = Simulator(SMALL)
    many = [r for r in sim2.run(RandomPolicy(), sim2.random_sessions(5), parallel=5)]
    first = {r.session: r.impression for r in one if r.impression.request_id.endswith("-0")}
    first2 = {r.session: r.impression for r in many if r.impression.request_id.endswith("-0")}
    for s in first:
        assert first[s].user_id == first2[s].user_id
        assert (
            sorted(i.item_id for i in first[s].items) != []
            and first[s].user_features == first2[s].user_features
        )


def test_position_bias_is_monotone() -> None:
    exam = examination(SMALL, 10)
    assert exam[0] == 1.0 and np.all(np.diff(exam) < 0)
    # empirically, on random lists, CTR falls with position
    cfg = SMALL.replace(max_clicks=10)
    world, rng = World.build(cfg), np.random.default_rng(0)
    clicks = np.zeros(10)
    for _ in range(3000):
        clicks += respond(
            world, int(rng.integers(cfg.n_users)), rng.choice(cfg.n_items, 10, replace=False), rng
        ).clicks
    assert clicks[0] > clicks[4] > clicks[9]


def test_clicks_limited_and_dwell_only_with_click() -> None:
    cfg = SMALL.replace(max_clicks=2, click_bias=2.0)  # very clicky users hit the limit
    results = _run(cfg, n=30)
    assert max(r.response.n_clicks for r in results) == 2
    for r in results:
        c, d = r.response.clicks, r.response.dwell_ms
        assert np.all(d[c == 0] == 0)
        assert np.all(d[c == 1] >= 1000 * cfg.min_dwell_s)


def test_leave_model() -> None:
    cfg = SimulatorConfig()
    probs = [leave_probability(cfg, s) for s in np.linspace(0, 1, 11)]
    assert np.all(np.diff(probs) < 0)  # the less satisfied, the likelier to leave
    assert satisfaction(cfg, 0.0, 3, 0.0) == 1.0 and satisfaction(cfg, 1.0, 3, 0.0) == 0.0
    # users shown what they like leave less often than users shown what they don't
    world, rng = World.build(SMALL), np.random.default_rng(0)
    left = {True: 0, False: 0}
    for _ in range(1500):
        user = int(rng.integers(SMALL.n_users))
        pool = rng.choice(SMALL.n_items, 40, replace=False)
        p = click_probability(world, user, pool)
        for best in (True, False):
            shown = pool[np.argsort(-p if best else p)[:10]]
            left[best] += respond(world, user, shown, rng).leave
    assert left[True] < 0.7 * left[False]
    # the session ends with the list the user left after
    results = _run(SMALL, 20)
    for r in results:
        assert r.done == (r is _last_of(results, r.session))
        assert r.done == (r.response.leave or r.impression.request_id.endswith(f"-{SMALL.max_lists - 1}"))


def _last_of(results: list, session: int) -> object:
    return [r for r in results if r.session == session][-1]


def test_oracle_ranks_by_the_true_click_probability() -> None:
    world = World.build(SMALL)
    sim = Simulator(SMALL, world)
    session = sim.start(sim.random_session(0))
    req = sim.request(session)
    order = OraclePolicy(world, lambda u: 1.0).rank([req])[0].order
    items = np.array([int(c.item_id.split("-")[1]) for c in req.candidates])
    p = click_probability(world, session.spec.user, items)
    assert np.all(np.diff(p[list(order)]) <= 0)


def test_control_setting_has_identical_preferences() -> None:
    default, control = World.build(SMALL), World.build(SMALL.control())
    assert np.std(default.users.alpha) > 0.2
    assert np.all(control.users.alpha == SMALL.pref_mean)
    # everything else is the same world
    assert np.array_equal(default.users.interest, control.users.interest)
    assert np.array_equal(default.items.features, control.items.features)


def test_respond_uses_a_fixed_number_of_draws() -> None:
    world = World.build(SMALL)
    items = np.arange(10)
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    respond(world, 0, items, rng_a)
    respond(world, 1, items[::-1], rng_b)
    assert rng_a.random() == rng_b.random()


def test_events_are_valid_and_ordered() -> None:
    for r in _run(SMALL, 30, HeuristicPolicy(SMALL)):
        events = r.events()
        assert isinstance(events[0], Impression)
        assert [e.ts_ms for e in events] == sorted(e.ts_ms for e in events)
        clicks = [e for e in events if isinstance(e, Click)]
        dwells = [e for e in events if isinstance(e, Dwell)]
        assert len(clicks) == len(dwells) == r.response.n_clicks
        for c in clicks:
            assert r.impression.items[c.position].item_id == c.item_id
            assert r.response.clicks[c.position] == 1


def test_features_have_the_configured_widths() -> None:
    r = _run(SMALL, 2)[0].impression
    assert len(r.user_features) == SMALL.user_dim
    assert len(r.context) == SMALL.context_dim
    assert all(len(i.features) == SMALL.item_dim for i in r.items)
    assert len(r.items) == SMALL.list_len


def test_ranking_is_validated() -> None:
    sim = Simulator(SMALL)
    session = sim.start(sim.random_session(0))
    req = sim.request(session)
    with pytest.raises(ValueError):
        sim.step(session, req, Ranking((0, 0, 1, 2, 3, 4, 5, 6, 7, 8), (0.5, 0.5), (0.0, 0.0)))


def test_state_dict_round_trip() -> None:
    sim = Simulator(SMALL)
    list(sim.run(RandomPolicy(), sim.random_sessions(20)))
    assert sim.histories
    other = Simulator(SMALL)
    other.load_state_dict(sim.state_dict())
    assert {u: list(h) for u, h in other.histories.items()} == {u: list(h) for u, h in sim.histories.items()}
    with pytest.raises(ValueError):
        Simulator(SMALL.replace(seed=9)).load_state_dict(sim.state_dict())


def test_config_round_trip_and_validation() -> None:
    assert SimulatorConfig.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(ValueError):
        SimulatorConfig(list_len=30, n_candidates=20)
    with pytest.raises(ValueError):
        SimulatorConfig.from_dict({**SMALL.to_dict(), "bogus": 1})
    assert dataclasses.replace(SMALL, heterogeneous=False) == SMALL.control()


def test_rank_request_body_is_what_the_serving_nodes_accept() -> None:
    from actor_service.api import RankRequest

    sim = Simulator(SMALL)
    req = sim.request(sim.start(sim.random_session(0)))
    parsed = RankRequest.model_validate(req.rank_request_body(top_k=SMALL.list_len))
    assert parsed.request_id == req.request_id and len(parsed.items) == SMALL.n_candidates
    assert parsed.items[3].features == list(req.candidates[3].features)


def test_exploring_policies_log_the_propensity_on_the_impression() -> None:
    """The heuristic (a logging policy for off-policy estimates) and a model policy log the
    log-propensity of the weights they served; fixed weights log none."""
    import torch

    from actor_service.devtools import make_model
    from model.policy import log_propensity
    from model.ranker import RankerConfig
    from simulator.model_policy import ModelPolicy

    wide = Exploration(noise_std=0.1, wide_std=1.0, wide_share=0.25)
    results = _run(SMALL, 20, HeuristicPolicy(SMALL, exploration=wide, seed=2))
    for r in results:
        imp = r.impression
        base = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
        expected = log_propensity(base, torch.tensor([imp.weights], dtype=torch.float64), wide)
        assert imp.log_propensity == pytest.approx(expected.item(), abs=1e-9)
        assert imp.log_propensity == pytest.approx(_mixture_k2(imp.noise, wide), abs=1e-9)
    assert all(r.impression.log_propensity is None for r in _run(SMALL, 5))  # RandomPolicy: fixed weights
    plain = _run(SMALL, 5, HeuristicPolicy(SMALL, exploration=0.0))
    assert all(r.impression.log_propensity is None for r in plain)
    # a model policy: the served weights' density, as serving computes it
    cfg = RankerConfig.tiny(user_dim=SMALL.user_dim, item_dim=SMALL.item_dim, context_dim=SMALL.context_dim)
    policy = ModelPolicy(make_model(0, cfg), wide, torch.Generator().manual_seed(0))
    logged = [r.impression.log_propensity for r in _run(SMALL, 10, policy)]
    assert all(x is not None and np.isfinite(x) for x in logged) and len(set(logged)) == len(logged)
    greedy = [r.impression.log_propensity for r in _run(SMALL, 5, ModelPolicy(make_model(0, cfg)))]
    assert greedy == [None] * len(greedy)


def _mixture_k2(noise: tuple[float, ...], e: Exploration) -> float:
    """Reference density of K = 2 logit noise at temperature 1: y - mu = n_1 - n_2 ~ N(0, 2 s^2)."""
    d = noise[0] - noise[1]
    terms = [
        share * np.exp(-(d * d) / (4 * s * s)) / np.sqrt(4 * np.pi * s * s)
        for share, s in ((1 - e.wide_share, e.noise_std), (e.wide_share, e.wide_std))
    ]
    return float(np.log(sum(terms)))
