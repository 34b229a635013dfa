"""A policy backed by a learner model: featurize requests, score with :func:`model.scoring.score`
(the serving nodes' code path), rank by score.

Every contender of the evaluation is served this way. Policies without a weight generator get
an actor that outputs constant weights (:func:`set_constant_weights`), so exploration noise,
normalization and ranking are literally the same code for all of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from model.featurize import ListView, list_inputs
from model.policy import Actor, as_exploration
from model.scoring import ActorModel, score
from schemas import Exploration
from simulator.session import ListRequest, Ranking

# log(weight) of a zero weight: exp(-30) ~ 1e-13, far below anything noise of scale ~0.1 moves
_ZERO_LOGIT = -30.0


def set_constant_weights(actor: Actor, weights: Sequence[float]) -> None:
    """Make ``actor`` output ``weights`` (on the simplex) for every state: last layer's weight 0,
    bias log(w) (softmax(log w) = w; temperature-scaled)."""
    total = float(sum(weights))
    if len(weights) != actor.cfg.action_dim or total <= 0 or min(weights) < 0:
        raise ValueError(f"need {actor.cfg.action_dim} non-negative weights, got {weights}")
    last = actor.net[-1]
    assert isinstance(last, torch.nn.Linear)
    logits = [actor.cfg.temperature * (math.log(w / total) if w > 0 else _ZERO_LOGIT) for w in weights]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(logits))


class ModelPolicy:
    """Ranks requests with ``model``; weights explored with ``exploration`` (a float: plain logit
    noise of that std), their log-propensity logged as serving logs it."""

    def __init__(
        self,
        model: ActorModel,
        exploration: Exploration | float = 0.0,
        generator: torch.Generator | None = None,
        snapshot_version: int = 0,
    ) -> None:
        self.model = model
        self.exploration = as_exploration(exploration)
        self.generator = generator
        self.snapshot_version = snapshot_version

    def rank(self, requests: Sequence[ListRequest]) -> list[Ranking]:
        if not requests:
            return []
        cfg = self.model.ranker.cfg
        views = [
            ListView(
                r.user_features,
                r.history,
                r.context,
                [c.item_id for c in r.candidates],
                [c.features for c in r.candidates],
            )
            for r in requests
        ]
        device = next(self.model.parameters()).device
        inputs = list_inputs(views, cfg).to(device)
        result = score(self.model, inputs, self.exploration, self.generator)
        ranking = result.ranking.cpu().tolist()
        w64 = result.weights.double().cpu()
        weights = (w64 / w64.sum(-1, keepdim=True)).tolist()  # exact simplex after float32
        noise = result.noise.cpu().tolist()
        logp = [None if math.isnan(x) else x for x in result.log_propensity.cpu().tolist()]
        objectives = tuple(cfg.objectives)
        return [
            Ranking(
                order=tuple(ranking[b][: len(r.candidates)]),
                weights=tuple(weights[b]),
                noise=tuple(noise[b]),
                objectives=objectives,
                snapshot_version=self.snapshot_version,
                log_propensity=logp[b],
            )
            for b, r in enumerate(requests)
        ]
