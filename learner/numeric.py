"""Numeric safety of the learner: finding non-finite rows, and never keeping non-finite weights.

Inputs are bounded by the schemas (``schemas.MAX_ABS_NUMBER``), so featurized rows are finite;
these checks are the second line of defence, for whatever gets past the first (a producer that
bypasses validation, a model that overflows on finite inputs):

- :func:`nonfinite_rows` / :func:`nonfinite_fields`: rows of a batch holding NaN or inf, and
  which fields; ingest dead-letters such rows, ``Trainer.step`` refuses a batch with any, and
  the service quarantines them in the replay buffer;
- :func:`all_finite`: one device sync for a whole set of tensors (parameters, gradients);
- :class:`FiniteGuard`: before a snapshot is published or a checkpoint written, the trainer's
  weights are checked; non-finite ones are never saved or published: the trainer goes back to
  the last state that passed the check, and training goes on.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Iterable
from typing import Any, Protocol

import torch

from model.batch import ListBatch

log = logging.getLogger(__name__)
Tensor = torch.Tensor


def nonfinite_rows(batch: ListBatch) -> Tensor:
    """(B,) bool: rows with a NaN or an infinity in any floating-point field."""
    bad = torch.zeros(batch.batch_size, dtype=torch.bool, device=batch.user_feats.device)
    for f in dataclasses.fields(batch):
        t = getattr(batch, f.name)
        if t.is_floating_point():
            bad |= ~torch.isfinite(t).reshape(t.shape[0], -1).all(1)
    return bad


def nonfinite_fields(batch: ListBatch, row: int) -> list[str]:
    """Names of the fields of ``row`` that hold a non-finite value (for a dead letter)."""
    return [
        f.name
        for f in dataclasses.fields(batch)
        if getattr(batch, f.name).is_floating_point()
        and not bool(getattr(batch, f.name)[row].isfinite().all())
    ]


def all_finite(tensors: Iterable[Tensor | None]) -> bool:
    """True if every tensor (``None`` skipped, e.g. a missing gradient) is finite: one sync."""
    flags = [torch.isfinite(t).all() for t in tensors if t is not None]
    return bool(torch.stack(flags).all()) if flags else True


def grads_finite(params: Iterable[torch.nn.Parameter]) -> bool:
    """The gradients of ``params`` are all finite (checked before an ``optimizer.step()``)."""
    return all_finite(p.grad for p in params)


class GuardedTrainer(Protocol):
    """What :class:`FiniteGuard` needs of ``learner.training.Trainer`` (which imports this
    module, so it is named here by what it does, not imported)."""

    cfg: Any
    num_steps: int
    nonfinite_steps: int

    def __init__(self, cfg: Any) -> None: ...

    def weights_finite(self) -> bool: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class FiniteGuard:
    """Keeps a copy of the trainer's last finite state and restores it when the weights go bad.

        guard = FiniteGuard(trainer)        # copies the (finite) starting state
        if guard.verify("snapshot"):        # finite: the copy is refreshed, go ahead
            publish(...)
        # else: logged, counted, the trainer restored to the copy; nothing was published

    The copy lives in memory (a deep copy of ``Trainer.state_dict()``, taken at each check that
    passes, i.e. at each snapshot and checkpoint), so recovery needs no disk and no restart.
    ``num_steps`` and the counters keep their current values: step counts and snapshot versions
    never go back.
    """

    def __init__(self, trainer: GuardedTrainer) -> None:
        self.trainer = trainer
        self.refused = 0  # checks that found non-finite weights (each one restored)
        self._last_good: dict[str, Any] | None = None
        self._last_good_step = -1
        if trainer.weights_finite():
            self._remember()
        else:  # a checkpoint with non-finite weights: nothing to go back to but a fresh model
            log.error("the starting trainer state has non-finite weights")

    def verify(self, what: str) -> bool:
        """True if the weights are finite (and remembered as the last good state); else log,
        count, restore the last good state and return False (``what`` is for the log)."""
        if self.trainer.weights_finite():
            self._remember()
            return True
        self.refused += 1
        log.error(
            "non-finite weights at step %d: not used for the %s; restoring the state of step %d",
            self.trainer.num_steps,
            what,
            self._last_good_step,
        )
        self._restore()
        return False

    def _remember(self) -> None:
        self._last_good = copy.deepcopy(self.trainer.state_dict())
        self._last_good_step = self.trainer.num_steps

    def _restore(self) -> None:
        t = self.trainer
        num_steps, nonfinite_steps = t.num_steps, t.nonfinite_steps
        # nothing good yet: the seeded initial model; else a copy (loading must not alias it)
        good = self._last_good
        state = type(t)(t.cfg).state_dict() if good is None else copy.deepcopy(good)
        t.load_state_dict(state)
        t.num_steps, t.nonfinite_steps = num_steps, nonfinite_steps
