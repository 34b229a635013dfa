"""Rank requests with one served model: the response bodies and the impression records.

Runs on the scoring worker thread (never the event loop). Featurizing and scoring are the
learner's own functions (``model.featurize.list_inputs``, ``model.scoring.score``), so the
node ranks exactly as the learner evaluates. Several concurrent requests are scored as one
batch (see :mod:`actor_service.batcher`): a list's outputs depend on that list only (the
ranker has no cross-list interaction, right padding only trails), so batching changes speed,
not results.

The impression lists the items in SERVED order (position 0 = top) with their features, and
user features/history/context as the request gave them: the stream join and the learner then
featurize the very list the user saw.

Exploration is the served model's (``Served.exploration``: the snapshot header's, all of it:
plain and wide noise; see :mod:`actor_service.model_slot`), so a micro-batch, which never mixes
two models, explores with one setting. Every impression logs the noise actually drawn and the
log-propensity of the served weights (``model.policy.log_propensity``; null when the weights
were served without noise), which off-policy estimators need.

Arms (:mod:`actor_service.routing`): a job of the holdout arm carries fixed objective weights;
its list is ranked by the same ranker predictions with those weights instead of the weight
generator's, without noise (log-propensity null: a deterministic policy). Holdout and
personalized lists of one model share a micro-batch. Every impression and response names the
arm that served it (None in direct mode without a holdout, as before arms existed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
import torch

from actor_service.api import RankRequest
from actor_service.model_slot import Served
from model.batch import ListInputs
from model.featurize import FeatureError, ListView, list_inputs
from model.scoring import ActorModel, ScoreResult, normalized_values, score
from schemas import SCHEMA_VERSION, Impression, SchemaError, encode


@dataclass(frozen=True)
class Job:
    req: RankRequest
    request_id: str
    ts_ms: int
    arm: str | None = None  # logged with the impression (actor_service.arms); None: no arms
    fixed_weights: torch.Tensor | None = None  # (K,): the holdout's weights; None: the generator's


@dataclass(frozen=True)
class Ranked:
    body: bytes  # the JSON response
    impression: bytes  # the encoded schemas.Impression
    version: int
    n_items: int


def _view(req: RankRequest) -> ListView:
    return ListView(
        req.user_features,
        req.history,
        req.context,
        [it.item_id for it in req.items],
        [it.features for it in req.items],
    )


def rank_batch(
    served: Served,
    jobs: Sequence[Job],
    generator: torch.Generator | None,
) -> list[Ranked | FeatureError | SchemaError]:
    """One result per job: a Ranked, or the error that names the offending field (feature widths
    that do not fit the model; an impression that would be invalid, which the API prevents)."""
    cfg = served.model.ranker.cfg
    views = [_view(j.req) for j in jobs]
    try:
        inputs = list_inputs(views, cfg)
    except FeatureError as exc:
        if len(jobs) == 1:
            return [exc]
        # Only some lists are bad: score each alone so the others are served.
        out: list[Ranked | FeatureError | SchemaError] = []
        for job in jobs:
            out.extend(rank_batch(served, [job], generator))
        return out
    result = score(served.model, inputs, served.exploration, generator)
    fixed = [b for b, job in enumerate(jobs) if job.fixed_weights is not None]
    if fixed:
        result = with_fixed_weights(
            served.model, inputs, result, fixed, [jobs[b].fixed_weights for b in fixed]
        )
    results: list[Ranked | FeatureError | SchemaError] = []
    for b, job in enumerate(jobs):
        try:
            results.append(_one(served, job, views[b], result, b))
        except SchemaError as exc:
            results.append(exc)
    return results


def with_fixed_weights(
    model: ActorModel,
    inputs: ListInputs,
    result: ScoreResult,
    rows: list[int],
    weights: Sequence[torch.Tensor | None],
) -> ScoreResult:
    """``result`` with the lists at ``rows`` ranked by fixed ``weights`` (one (K,) tensor each)
    instead of the weight generator's: the same predictions, combined as ``model.scoring.score``
    combines them, without noise and without a density (log-propensity NaN)."""
    idx = torch.tensor(rows)
    w = result.weights.clone()
    w[idx] = torch.stack([x for x in weights if x is not None]).to(w.dtype)
    noise = result.noise.clone()
    noise[idx] = 0.0
    logp = result.log_propensity.clone()
    logp[idx] = math.nan
    scores = (normalized_values(model, result.preds, inputs.mask) * w.unsqueeze(1)).sum(-1)  # (B, L)
    scores = scores.masked_fill(~inputs.mask, -torch.inf)
    ranking = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (B, L)
    return ScoreResult(
        weights=w, noise=noise, log_propensity=logp, preds=result.preds, scores=scores, ranking=ranking
    )


def _one(served: Served, job: Job, view: ListView, result: ScoreResult, b: int) -> Ranked:
    n = len(view.item_ids)
    order: list[int] = result.ranking[b, :n].tolist()  # padding (-inf) sorts last
    order = order[: job.req.top_k]  # the shown list only (top_k None keeps all)
    scores: list[float] = result.scores[b, :n].tolist()
    preds: list[list[float]] = result.preds[b, :n].tolist()
    weights: list[float] = result.weights[b].tolist()
    noise: list[float] = result.noise[b].tolist()
    logp = float(result.log_propensity[b])
    log_propensity = None if math.isnan(logp) else logp  # NaN: served deterministically
    objectives = list(served.objectives)
    item_ids, item_features = view.item_ids, view.item_features

    ranked_items = []
    logged_items = []
    for position, i in enumerate(order):
        ranked_items.append(
            {
                "item_id": item_ids[i],
                "position": position,
                "score": scores[i],
                "objective_scores": dict(zip(objectives, preds[i], strict=True)),
            }
        )
        logged_items.append({"item_id": item_ids[i], "position": position, "features": item_features[i]})

    body = orjson.dumps(
        {
            "request_id": job.request_id,
            "snapshot_version": served.version,
            "objectives": objectives,
            "weights": weights,
            "noise": noise,
            "log_propensity": log_propensity,
            "arm": job.arm,
            "items": ranked_items,
        }
    )
    # from_dict validates (fast path for well-formed lists) and builds the record the way a
    # consumer decoding it will: a record that would fail the join's decoder never leaves here.
    req = job.req
    impression = Impression.from_dict(
        {
            "type": "impression",
            "schema_version": SCHEMA_VERSION,
            "request_id": job.request_id,
            "user_id": req.user_id,
            "ts_ms": job.ts_ms,
            "snapshot_version": served.version,
            "objectives": objectives,
            "weights": weights,
            "noise": noise,
            "user_features": req.user_features,
            "history": req.history,
            "context": req.context,
            "items": logged_items,
            "log_propensity": log_propensity,
            "arm": job.arm,
        }
    )
    return Ranked(body=body, impression=encode(impression), version=served.version, n_items=len(order))


def rank(
    served: Served,
    req: RankRequest,
    request_id: str,
    ts_ms: int,
    generator: torch.Generator | None,
    arm: str | None = None,
    fixed_weights: torch.Tensor | None = None,
) -> Ranked:
    """Rank one request; raises FeatureError/SchemaError naming the field."""
    (out,) = rank_batch(served, [Job(req, request_id, ts_ms, arm, fixed_weights)], generator)
    if isinstance(out, Exception):
        raise out
    return out
