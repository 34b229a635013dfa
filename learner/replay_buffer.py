"""The learner's replay buffer: a fixed-capacity FIFO ring of ListBatch rows, deduplicated by id.

- Storage: one preallocated tensor per ListBatch field, shape (capacity, ...), on the training
  device (CUDA when present), so sampling is an index_select on the device and never a copy of
  Python objects. Lists are stored at a fixed length L = ``max_list_len``: shorter lists are
  right-padded (mask False), longer ones are **truncated** to their first L positions (the top
  of the shown list, the part users examine; the schema orders items by position) and counted.
- Eviction: FIFO. When full, each new row overwrites the oldest one.
- Sampling: uniform with replacement over the rows present, from a seeded CPU generator (its
  state is part of ``state_dict``, so a resumed learner draws the same indices).
- Quarantine: rows the trainer found non-finite (:meth:`quarantine_nonfinite`, by the slots a
  :class:`Sample` reports) are never sampled again nor checkpointed; the ring overwrites them in
  turn. Ingest keeps such rows out in the first place; this is the second line of defence.
- Dedup: the last ``seen_capacity`` (>= capacity) distinct transition ids are remembered in an
  LRU; a transition whose id is among them is ignored, even if its row was evicted already.
  Under at-least-once delivery and replays the same transition may arrive twice.
- Thread safety: ``add``, ``sample`` and ``state_dict`` take one short lock, so one ingestion
  thread can write while the training thread samples.
- ``add`` never modifies its input; ``sample`` returns fresh tensors (not views of the ring).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from learner.numeric import nonfinite_rows
from model.batch import BatchDims, ListBatch

Tensor = torch.Tensor

# Fields whose dim 1 is the list length L (padded/truncated to max_list_len); every other field
# must match the storage shape exactly.
LIST_FIELDS = (
    "item_ids",
    "item_feats",
    "mask",
    "clicks",
    "dwell",
    "next_item_ids",
    "next_item_feats",
    "next_mask",
)
FIELDS = tuple(f.name for f in dataclasses.fields(ListBatch))
assert set(LIST_FIELDS) <= set(FIELDS), "ListBatch changed: update LIST_FIELDS"


@dataclass(frozen=True)
class AddResult:
    added: int
    duplicates: int
    truncated: int


@dataclass(frozen=True)
class Sample:
    batch: ListBatch
    max_ts_ms: int  # latest event time among the sampled rows (the input watermark)
    slots: Tensor | None = None  # (B,) ring slot of each row, for quarantine_nonfinite


@dataclass
class BufferStats:
    added: int = 0
    duplicates: int = 0
    truncated: int = 0
    evicted: int = 0
    quarantined: int = 0


def fit_list_len(t: Tensor, length: int) -> Tensor:
    """``t`` right-padded with zeros / cut along dim 1 to ``length`` (no copy when it fits)."""
    n = t.shape[1]
    if n == length:
        return t
    if n > length:
        return t[:, :length]
    pad = torch.zeros((t.shape[0], length - n, *t.shape[2:]), dtype=t.dtype, device=t.device)
    return torch.cat([t, pad], dim=1)


class ReplayBuffer:
    def __init__(
        self,
        dims: BatchDims,
        capacity: int,
        *,
        device: torch.device | str = "cpu",
        seed: int = 0,
        seen_capacity: int = 0,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.list_len = dims.max_list_len
        self.device = torch.device(device)
        self.seen_capacity = max(capacity, seen_capacity or 4 * capacity)
        # the layout (dtype, trailing shape) of each field comes from ListBatch itself
        template = ListBatch.synthetic(dims, 1, torch.Generator().manual_seed(0))
        self._storage: dict[str, Tensor] = {
            name: torch.zeros((capacity, *t.shape[1:]), dtype=t.dtype, device=self.device)
            for name, t in ((n, getattr(template, n)) for n in FIELDS)
        }
        self._ts_ms = torch.zeros(capacity, dtype=torch.int64)  # event time per row, on CPU
        self._bad = torch.zeros(capacity, dtype=torch.bool)  # quarantined slots, on CPU
        self._n_bad = 0
        self._pos = 0  # next slot to write
        self._size = 0
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._generator = torch.Generator().manual_seed(seed)
        self._lock = threading.Lock()
        self.stats = BufferStats()

    def __len__(self) -> int:
        """Rows that can be sampled (quarantined ones excluded)."""
        return self._size - self._n_bad

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._storage.values())

    # ------------------------------------------------------------------ writing
    def unseen(self, ids: Iterable[str]) -> list[bool]:
        """For each id: True if it is new (not remembered, and not earlier in ``ids``)."""
        out, batch_ids = [], set()
        with self._lock:
            for i in ids:
                out.append(i not in self._seen and i not in batch_ids)
                batch_ids.add(i)
        return out

    def add(self, batch: ListBatch, ids: Sequence[str], ts_ms: Sequence[int]) -> AddResult:
        """Append the rows of ``batch`` whose id is new; returns what happened. Input untouched."""
        n = batch.batch_size
        if len(ids) != n or len(ts_ms) != n:
            raise ValueError(f"batch has {n} rows, got {len(ids)} ids and {len(ts_ms)} timestamps")
        for name in FIELDS:
            have = tuple(getattr(batch, name).shape[2 if name in LIST_FIELDS else 1 :])
            want = tuple(self._storage[name].shape[2 if name in LIST_FIELDS else 1 :])
            if have != want:
                raise ValueError(f"field {name}: rows of shape {have}, the buffer stores {want}")
        with self._lock:
            keep = []
            for row, i in enumerate(ids):
                if i in self._seen:
                    self._seen.move_to_end(i)  # recently delivered again: keep remembering it
                    continue
                self._remember(i)
                keep.append(row)
            duplicates = n - len(keep)
            if not keep:
                self.stats.duplicates += duplicates
                return AddResult(0, duplicates, 0)
            index = torch.tensor(keep, dtype=torch.int64)
            rows = batch if len(keep) == n else batch.select(index)
            truncated = self._count_truncated(rows)
            self._write(rows, torch.tensor([int(ts_ms[r]) for r in keep], dtype=torch.int64))
            self.stats.added += len(keep)
            self.stats.duplicates += duplicates
            self.stats.truncated += truncated
            return AddResult(len(keep), duplicates, truncated)

    def _remember(self, i: str) -> None:
        self._seen[i] = None
        if len(self._seen) > self.seen_capacity:
            self._seen.popitem(last=False)

    def _count_truncated(self, rows: ListBatch) -> int:
        if rows.mask.shape[1] <= self.list_len:
            return 0
        cut = rows.mask[:, self.list_len :].any(1) | rows.next_mask[:, self.list_len :].any(1)
        return int(cut.sum())

    def _write(self, rows: ListBatch, ts_ms: Tensor) -> None:
        """Ring write of all ``rows`` (lock held). Only the newest ``capacity`` rows survive."""
        n = rows.batch_size
        if n > self.capacity:
            rows, ts_ms = rows.select(slice(n - self.capacity, n)), ts_ms[n - self.capacity :]
            self.stats.evicted += n - self.capacity
            n = self.capacity
        slots = (self._pos + torch.arange(n)) % self.capacity  # wraps around in one index_put
        dev_slots = slots.to(self.device)
        for name, store in self._storage.items():
            value = getattr(rows, name)
            if name in LIST_FIELDS:
                value = fit_list_len(value, self.list_len)
            store[dev_slots] = value.to(self.device, store.dtype)
        self._ts_ms[slots] = ts_ms
        if self._n_bad:  # a new row replaces a quarantined one
            self._bad[slots] = False
            self._n_bad = int(self._bad.sum())
        self.stats.evicted += max(0, self._size + n - self.capacity)
        self._pos = (self._pos + n) % self.capacity
        self._size = min(self.capacity, self._size + n)

    # ------------------------------------------------------------------ reading
    def sample(self, batch_size: int) -> Sample:
        """``batch_size`` rows drawn uniformly with replacement (seeded), on the buffer's device."""
        with self._lock:
            if self._size - self._n_bad == 0:
                raise ValueError("cannot sample from an empty buffer")
            if self._n_bad:  # only the good slots (rare: the usual draw below is unchanged)
                good = (~self._bad[: self._size]).nonzero().flatten()
                idx = good[torch.randint(0, len(good), (batch_size,), generator=self._generator)]
            else:
                idx = torch.randint(0, self._size, (batch_size,), generator=self._generator)
            # rows 0..size-1 are the filled slots whatever pos is: the ring fills 0.. first
            dev_idx = idx.to(self.device)
            fields = {name: store.index_select(0, dev_idx) for name, store in self._storage.items()}
            max_ts = int(self._ts_ms.index_select(0, idx).max())
        return Sample(ListBatch(**fields), max_ts, idx)

    def quarantine_nonfinite(self, slots: Tensor) -> int:
        """Exclude those of ``slots`` (as :class:`Sample` reports them) whose row holds a NaN or
        an infinity from sampling and checkpoints; returns how many were newly quarantined.

        The rows are checked again here, under the lock: ingestion may have overwritten a slot
        with a good row since it was sampled.
        """
        with self._lock:
            slots = slots.unique().cpu()
            slots = slots[(slots >= 0) & (slots < self._size)]
            slots = slots[~self._bad[slots]]
            if len(slots) == 0:
                return 0
            rows = ListBatch(
                **{n: s.index_select(0, slots.to(self.device)) for n, s in self._storage.items()}
            )
            bad = slots[nonfinite_rows(rows).cpu()]
            self._bad[bad] = True
            self._n_bad += len(bad)
            self.stats.quarantined += len(bad)
            return len(bad)

    def _chronological_slots(self) -> Tensor:
        start = (self._pos - self._size) % self.capacity
        return (start + torch.arange(self._size)) % self.capacity

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, contents: bool = True) -> dict[str, Any]:
        """Metadata (counters, seen ids, sampler state) and, if ``contents``, the rows (CPU
        tensors, oldest first, so they load into a buffer of any capacity)."""
        with self._lock:
            state: dict[str, Any] = {
                "capacity": self.capacity,
                "list_len": self.list_len,
                "size": self._size - self._n_bad,
                "seen_ids": list(self._seen),
                "generator": self._generator.get_state(),
                "stats": dataclasses.asdict(self.stats),
            }
            if contents:
                slots = self._chronological_slots()
                slots = slots[~self._bad[slots]]  # quarantined rows are not kept
                dev_slots = slots.to(self.device)
                state["rows"] = {n: s.index_select(0, dev_slots).cpu() for n, s in self._storage.items()}
                state["ts_ms"] = self._ts_ms.index_select(0, slots)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; rows beyond this buffer's capacity drop the oldest."""
        if state["list_len"] != self.list_len:
            raise ValueError(f"checkpoint buffer has list_len {state['list_len']}, this one {self.list_len}")
        with self._lock:
            self._pos = self._size = self._n_bad = 0
            self._bad.zero_()
            self._seen = OrderedDict.fromkeys(state["seen_ids"][-self.seen_capacity :])
            self._generator.set_state(state["generator"])
            self.stats = BufferStats(**state["stats"])
            rows = state.get("rows")
            if rows is not None and int(state["ts_ms"].shape[0]) > 0:
                self._write(ListBatch(**rows), state["ts_ms"])
                self.stats = BufferStats(**state["stats"])  # _write's eviction count is not news
