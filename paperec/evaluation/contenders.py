"""The policies the evaluation compares, each a learner Trainer plus the serving model it feeds.

| name          | learner strategy                          | serving weights                             |
|---------------|-------------------------------------------|---------------------------------------------|
| ctr_only      | single (click)                            | (1, 0)                                      |
| dwell_only    | single (dwell)                            | (0, 1)                                      |
| fixed_<w>     | fixed (w, 1 - w)                          | (w, 1 - w)                                  |
| peltr         | peltr as published (raw gradients)        | running mean of its per-step min-norm weights |
| peltr_running | peltr, gradients scaled like paperec's    | the same                                    |
| paperec_<mode> | paperec, reward pareto / engagement / hybrid | the generator's w(s), per user, state |

Serving shares the trainer's modules (no copy): the policy always ranks with the latest model,
as a serving node that hot-loads every snapshot would. :meth:`Contender.constant_weight_policy`
serves the same trained ranker with global constant weights from an actor shell of its own
(the matched-mean-weight comparison of the personalized contenders).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from learner.training import REWARDS, PAPERecConfig, PAPERecStrategy, Trainer
from model.policy import ActorConfig
from model.scoring import ActorModel
from schemas import Exploration
from simulator.model_policy import ModelPolicy, set_constant_weights

PELTR_WEIGHT_MOMENTUM = 0.95
"""serving weights of PE-LTR: exponential moving average of its per-step weights"""


@dataclass(frozen=True)
class PolicySpec:
    name: str
    strategy: str  # learner.training strategy
    weights: tuple[float, ...] | None = None  # constant serving weights (single, fixed)
    single_objective: str = "click"
    learner: tuple[tuple[str, Any], ...] = ()  # PAPERecConfig fields this policy always uses

    @property
    def is_fixed_weight(self) -> bool:
        """A member of the global fixed-weight family (single objectives included)."""
        return self.strategy in ("single", "fixed")

    @property
    def is_personalized(self) -> bool:
        """Serves per-state weights from a weight generator (the paperec_* contenders)."""
        return self.strategy == "paperec"


def default_specs(grid: Sequence[float]) -> list[PolicySpec]:
    """CTR-only, the fixed click weights in ``grid`` (dwell weight 1 - w), dwell-only, PE-LTR, and
    PAPERec in each reward mode."""
    specs = [PolicySpec("ctr_only", "single", (1.0, 0.0), "click")]
    specs += [PolicySpec(f"fixed_{w:.2f}", "fixed", (w, 1.0 - w)) for w in grid]
    specs += [
        PolicySpec("dwell_only", "single", (0.0, 1.0), "dwell"),
        # PE-LTR twice: as published (min-norm of the raw gradients), and with the same running
        # per-objective gradient scale as PAPERec's default, so that neither the baseline nor
        # the normalization alone can explain a difference
        PolicySpec("peltr", "peltr", learner=(("grad_normalize", "none"),)),
        PolicySpec("peltr_running", "peltr", learner=(("grad_normalize", "running"),)),
    ]
    # PAPERec once per reward mode (learner.training.REWARDS): pareto, engagement, hybrid
    specs += [PolicySpec(f"paperec_{mode}", "paperec", learner=(("reward", mode),)) for mode in REWARDS]
    return specs


class Contender:
    """One policy under evaluation: its trainer and its serving model."""

    def __init__(self, spec: PolicySpec, learner: PAPERecConfig) -> None:
        k = len(learner.ranker.objectives)
        cfg = dataclasses.replace(
            learner, strategy=spec.strategy, single_objective=spec.single_objective, **dict(spec.learner)
        )
        if spec.strategy == "fixed":
            assert spec.weights is not None
            cfg = dataclasses.replace(cfg, fixed_weights=spec.weights)
        self.spec = spec
        self.trainer = Trainer(cfg)
        strategy = self.trainer.strategy
        if isinstance(strategy, PAPERecStrategy):
            self.model = self._shell(strategy.ddpg.actor.cfg)
            self.model.actor = strategy.ddpg.actor
        else:
            self.model = self._shell(None)
        self.serving_weights: tuple[float, ...] | None = spec.weights or tuple([1.0 / k] * k)
        if not isinstance(strategy, PAPERecStrategy):
            set_constant_weights(self.model.actor, self.serving_weights)
        else:
            self.serving_weights = None  # per state
        self.model.eval()

    def _shell(self, actor_cfg: ActorConfig | None) -> ActorModel:
        """A serving model around the trainer's ranker (shared, not copied); ``None``: an actor
        for constant weights (reads the ranker state; its last layer is zeroed anyway)."""
        ranker_cfg = self.trainer.cfg.ranker
        if actor_cfg is None:
            k = len(ranker_cfg.objectives)
            actor_cfg = ActorConfig(obs_dim=ranker_cfg.d_model, action_dim=k, hidden=8, head="simplex")
        with torch.random.fork_rng():  # building the shell must not move the global RNG
            model = ActorModel(ranker_cfg, actor_cfg).eval()
        model.ranker = self.trainer.ranker
        return model

    @property
    def name(self) -> str:
        return self.spec.name

    def step(self, batch: object) -> dict[str, float]:
        metrics = self.trainer.step(batch)  # type: ignore[arg-type]
        if self.spec.strategy == "peltr":
            objectives = self.trainer.cfg.ranker.objectives
            new = [metrics[f"weight/{o}"] for o in objectives]
            old = self.serving_weights or new
            m = PELTR_WEIGHT_MOMENTUM if self.trainer.num_steps > 1 else 0.0
            w = [m * a + (1.0 - m) * b for a, b in zip(old, new, strict=True)]
            self.serving_weights = tuple(x / sum(w) for x in w)
            set_constant_weights(self.model.actor, self.serving_weights)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"trainer": self.trainer.state_dict(), "serving_weights": self.serving_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state["trainer"])
        self.serving_weights = state["serving_weights"]
        if self.serving_weights is not None:
            set_constant_weights(self.model.actor, self.serving_weights)

    def policy(self, exploration: Exploration | float, generator: torch.Generator | None) -> ModelPolicy:
        return ModelPolicy(self.model, exploration, generator)

    def constant_weight_policy(self, weights: Sequence[float]) -> ModelPolicy:
        """The trained ranker served with global constant ``weights`` and no exploration, from an
        actor shell of its own: the trained weight generator is neither used nor touched."""
        model = self._shell(None)
        set_constant_weights(model.actor, weights)
        return ModelPolicy(model, 0.0, None)
