"""Deduplication of transitions for consumers of the transitions topic (the replay buffer).

The streams worker delivers transitions at least once: after a crash it replays uncommitted
input and may emit some transitions a second time, with the same ``transition_id`` (a
deterministic hash of user, request and next request). Consumers drop the repeats:

* ``SeenIds``: a bounded set of recently seen ids for a long-running consumer. Repeats arrive
  within seconds of the original (the replay covers what was uncommitted at the crash), so a
  capacity of a few minutes of transitions is plenty.
* ``dedup_transitions``: the first occurrence of each id in an iterable, e.g. a batch read back
  from the topic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def _transition_id(record: Any) -> Hashable:
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        return record["transition_id"]
    return record.transition_id


def dedup_transitions(records: Iterable[T], key: Callable[[T], Hashable] = _transition_id) -> Iterator[T]:
    """Yield each record whose transition id was not seen before in ``records`` (first wins).
    Records may be ids, decoded dicts or ``schemas.Transition`` objects."""
    seen: set[Hashable] = set()
    for record in records:
        k = key(record)
        if k not in seen:
            seen.add(k)
            yield record


class SeenIds:
    """The most recent ``capacity`` distinct ids; ``first_time`` says whether an id is new."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._ids: OrderedDict[Hashable, None] = OrderedDict()
        self.repeats = 0

    def first_time(self, transition_id: Hashable) -> bool:
        if transition_id in self._ids:
            self.repeats += 1
            return False
        self._ids[transition_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True

    def __contains__(self, transition_id: Hashable) -> bool:
        return transition_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)
