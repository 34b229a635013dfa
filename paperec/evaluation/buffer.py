"""A FIFO replay buffer of featurized transitions, stored as preallocated tensors.

Transitions are featurized once, when they arrive (with :func:`model.featurize.transition_batch`,
the learner's own schema -> tensor code), and a training batch is an index_select: re-featurizing
every sampled transition would cost more than the training step itself on a CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from learner.replay_buffer import LIST_FIELDS, fit_list_len
from model.batch import ListBatch
from model.featurize import transition_batch
from model.ranker import RankerConfig
from schemas import Transition


class TensorReplay:
    def __init__(self, capacity: int, cfg: RankerConfig, list_len: int) -> None:
        self.capacity, self.cfg, self.list_len = capacity, cfg, list_len
        self.storage: dict[str, torch.Tensor] | None = None
        self.users = np.empty(capacity, dtype=object)  # each row's user_id (diagnostics)
        self.size = 0
        self.next = 0  # ring position of the next write

    def add(self, transitions: Sequence[Transition]) -> None:
        if not transitions:
            return
        batch = transition_batch(transitions, self.cfg)
        fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
        for name in LIST_FIELDS:
            if fields[name].shape[1] > self.list_len:
                raise ValueError(f"list of {fields[name].shape[1]} items, buffer holds {self.list_len}")
            fields[name] = fit_list_len(fields[name], self.list_len)
        if self.storage is None:
            self.storage = {
                k: torch.zeros((self.capacity, *v.shape[1:]), dtype=v.dtype) for k, v in fields.items()
            }
        n = len(transitions)
        rows = (self.next + torch.arange(n)) % self.capacity
        for k, v in fields.items():
            self.storage[k][rows] = v
        self.users[rows.numpy()] = [t.user_id for t in transitions]
        self.next = (self.next + n) % self.capacity
        self.size = min(self.capacity, self.size + n)

    def __len__(self) -> int:
        return self.size

    def sample(self, batch_size: int, rng: np.random.Generator) -> ListBatch:
        """``batch_size`` distinct transitions, uniformly."""
        if self.size < batch_size:
            raise ValueError(f"buffer holds {self.size} transitions, need {batch_size}")
        return self.rows(torch.from_numpy(rng.choice(self.size, size=batch_size, replace=False)))

    def rows(self, idx: torch.Tensor) -> ListBatch:
        """The transitions at ring positions ``idx``."""
        if self.storage is None:
            raise ValueError("empty buffer")
        return ListBatch(**{k: v.index_select(0, idx) for k, v in self.storage.items()})

    def state_dict(self) -> dict[str, Any]:
        return {"storage": self.storage, "users": self.users.copy(), "size": self.size, "next": self.next}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.storage, self.size, self.next = state["storage"], int(state["size"]), int(state["next"])
        self.users = state["users"].copy()
