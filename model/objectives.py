"""Objective registry: one prediction head output, one loss and one serving value per objective.

Adding an objective = one subclass with ``@register``; the ranker builds one head per name in
``RankerConfig.objectives`` and nothing else in the learner assumes K=2.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    OBJECTIVES[cls.name] = cls
    return cls


def build_objective(name: str, cfg: Any) -> Objective:
    """The objective ``name``, parametrized from the fields of ``cfg`` (a RankerConfig)."""
    try:
        return OBJECTIVES[name](cfg)
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; registered: {sorted(OBJECTIVES)}") from None


class Objective(ABC):
    name: ClassVar[str]
    label: ClassVar[str]  # the ListBatch field holding the target, (B, L)
    bounded: ClassVar[bool]  # value in [0, 1] and used as is in the score; else divided by the list max

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    @abstractmethod
    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Elementwise loss (B, L) of the raw head output ``pred`` (B, L)."""

    @abstractmethod
    def value(self, pred: Tensor) -> Tensor:
        """The prediction in natural units (B, L): what serving logs and scores with."""


@register
class Click(Objective):
    """P(click): a logit trained with binary cross-entropy."""

    name = "click"
    label = "clicks"
    bounded = True

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(pred, target, reduction="none")

    def value(self, pred: Tensor) -> Tensor:
        return torch.sigmoid(pred)


@register
class Dwell(Objective):
    """Expected dwell seconds per impression, log link, Tweedie deviance (1 < power < 2).

    Dwell is zero-inflated (0 without a click) and right-skewed when positive. The Tweedie
    compound Poisson-gamma family models exactly that with one output mu = E[dwell], so:
    - the head predicts what ranking needs (expected dwell of showing the item) on its own,
      without coupling to the click head as a hurdle model P(click) * E[dwell | click] would;
    - every list gives a dwell gradient, also lists without clicks (zeros push mu down). With
      a hurdle's "MSE on log1p(dwell) of clicked items" such lists have a zero dwell gradient,
      and min-norm MGDA then puts all weight on dwell for them (a zero vector has minimal norm).
    The target is divided by ``cfg.dwell_scale`` seconds so that the output is O(1).
    """

    name = "dwell"
    label = "dwell"
    bounded = False

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        p = float(self.cfg.tweedie_power)
        y = target / self.cfg.dwell_scale
        f = pred.clamp(-20.0, 20.0)  # log mu; the clamp only guards exp() against overflow
        # unit deviance: 2 * (y^(2-p)/((1-p)(2-p)) - y mu^(1-p)/(1-p) + mu^(2-p)/(2-p)), >= 0
        saturated = y.clamp_min(0).pow(2 - p) / ((1 - p) * (2 - p))
        fitted = -y * torch.exp((1 - p) * f) / (1 - p) + torch.exp((2 - p) * f) / (2 - p)
        return 2.0 * (saturated + fitted)

    def value(self, pred: Tensor) -> Tensor:
        return torch.exp(pred.clamp(-20.0, 20.0)) * self.cfg.dwell_scale
