"""Serving-side scoring: pure functions of (model, label-free batch); no I/O, no training code.

Imports only model modules (ranker, policy), never the trainer, the critic or optimizers.

score = sum_k w_k * normalized value_k per item, where the weights come from the weight
generator (plus optional logged exploration noise) and values are per-objective predictions
in natural units. Normalization puts objectives on comparable [0, 1] scales, so that the
weights mean the same thing for every list:
- bounded objectives (click probability) are used as is;
- unbounded ones (expected dwell seconds) are divided by their maximum over the list's valid
  items, so the best item per objective scores 1. Per-list, not a global scale: needs no
  tuning, does not drift as the dwell distribution shifts, and (being a positive rescaling)
  leaves the single-objective ranking unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from model.batch import ListInputs
from model.config import config_from_dict, config_to_dict
from model.policy import Actor, ActorConfig
from model.ranker import Ranker, RankerConfig
from schemas import Exploration

Tensor = torch.Tensor


@dataclass
class ScoreResult:
    weights: Tensor  # (B, K) objective weights used (after exploration noise): the logged action
    noise: Tensor  # (B, K) exploration noise applied (logit space; zeros when not exploring)
    log_propensity: Tensor  # (B,) float64 log density of the served weights given the state
    # (model.policy.log_propensity); NaN where the weights were served deterministically
    preds: Tensor  # (B, L, K) predictions in natural units (click probability, dwell seconds)
    scores: Tensor  # (B, L) final scores, -inf at padding
    ranking: Tensor  # (B, L) item positions by score, descending; padding last


class ActorModel(nn.Module):
    """What serving runs: the ranker and the weight generator (state_dict is tensors only)."""

    def __init__(self, ranker_cfg: RankerConfig, actor_cfg: ActorConfig) -> None:
        super().__init__()
        if actor_cfg.action_dim != len(ranker_cfg.objectives):
            raise ValueError("actor must map its observation to K objective weights (one per objective)")
        if actor_cfg.obs_dim != policy_obs_dim(ranker_cfg, actor_cfg.obs):
            raise ValueError(
                f"actor obs={actor_cfg.obs!r} has width {policy_obs_dim(ranker_cfg, actor_cfg.obs)}, "
                f"not obs_dim={actor_cfg.obs_dim}"
            )
        self.ranker = Ranker(ranker_cfg)
        self.actor = Actor(actor_cfg)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ActorModel:
        """Rebuild from :meth:`model_config` output (e.g. a snapshot's JSON header), in eval mode."""
        ranker_cfg = config_from_dict(RankerConfig, cfg["ranker"])
        return cls(ranker_cfg, config_from_dict(ActorConfig, cfg["actor"])).eval()

    def model_config(self) -> dict[str, Any]:
        """JSON-able model args: ``from_config(model_config())`` rebuilds the architecture."""
        return {"ranker": config_to_dict(self.ranker.cfg), "actor": config_to_dict(self.actor.cfg)}


POLICY_OBS = ("ranker", "features")
"""what the weight generator may read: see :func:`policy_obs`"""


def policy_obs_dim(ranker_cfg: RankerConfig, obs: str) -> int:
    """Width S of :func:`policy_obs` for ``obs``."""
    if obs == "ranker":
        return ranker_cfg.d_model
    if obs == "features":
        return ranker_cfg.user_dim + ranker_cfg.context_dim
    raise ValueError(f"unknown policy obs {obs!r}; one of {list(POLICY_OBS)}")


def policy_obs(
    ranker: Ranker,
    obs: str,
    user_feats: Tensor,
    history: Tensor,
    context: Tensor,
    *,
    user_state: Tensor | None = None,
) -> Tensor:
    """The weight generator's observation (B, S) of a state.

    "ranker": the ranker's user state (as published): it moves whenever the ranker trains, so the
    critic's inputs drift under it. "features": the user features and the context as logged,
    which do not depend on any trained network (a stable state for the critic and the actor).
    ``user_state``: the ranker's state of these inputs when the caller has it already (not recomputed).
    """
    if obs == "ranker":
        return ranker.user_state(user_feats, history, context) if user_state is None else user_state  # (B, D)
    if obs == "features":
        return torch.cat([user_feats, context], dim=-1)  # (B, Fu + Fc)
    raise ValueError(f"unknown policy obs {obs!r}; one of {list(POLICY_OBS)}")


def normalized_values(model: ActorModel, values: Tensor, mask: Tensor) -> Tensor:
    """Per-objective values (B, L, K) on comparable [0, 1] scales (see the module docstring)."""
    out = []
    for k, objective in enumerate(model.ranker.objectives):
        v = torch.where(mask, values[..., k], 0.0)  # (B, L)
        if not objective.bounded:
            v = v / v.amax(dim=1, keepdim=True).clamp_min(1e-12)
        out.append(v)
    return torch.stack(out, dim=-1)  # (B, L, K)


@torch.no_grad()
def score(
    model: ActorModel,
    batch: ListInputs,
    exploration: Exploration | float = 0.0,
    generator: torch.Generator | None = None,
) -> ScoreResult:
    """Weights from the actor (explored with ``exploration``; a float is plain logit noise of
    that std), their log-propensity, predictions, scores and the ranking."""
    ranker = model.ranker
    state = ranker.user_state(batch.user_feats, batch.history, batch.context)  # (B, D)
    obs = model.actor.cfg.obs
    actor_in = policy_obs(ranker, obs, batch.user_feats, batch.history, batch.context, user_state=state)
    # weights (B, K), noise (B, K), logp (B,): the served weights' log-propensity
    weights, noise, logp = model.actor.explore(actor_in, exploration, generator)
    preds = ranker.values(ranker.heads(ranker.encode(batch, user_state=state)))  # (B, L, K)
    scores = (normalized_values(model, preds, batch.mask) * weights.unsqueeze(1)).sum(-1)  # (B, L)
    scores = scores.masked_fill(~batch.mask, -torch.inf)
    ranking = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (B, L)
    return ScoreResult(
        weights=weights, noise=noise, log_propensity=logp, preds=preds, scores=scores, ranking=ranking
    )
