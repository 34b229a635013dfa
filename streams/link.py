"""Stage 2: link each user's consecutive list outcomes into transitions (s, a, r, s', done).

List outcomes of one user reach this stage out of event-time order: they close in different
stage-1 partitions, which progress at different speeds (very different while catching up on a
backlog). Stage 1 therefore announces, on every list-outcomes partition, how far each of its
partitions has closed (``UpstreamProgress``); an outcome is *settled* once every stage-1
partition has closed through its event time, because then no earlier list of the user can still
come. Each user keeps the unsettled outcomes sorted by (ts, request_id); settled ones are linked
in order:

* the first settled outcome of a chain becomes the chain's ``last``;
* the next one x emits the transition (last -> x), or, when x.ts - last.ts > session_gap, the
  terminal transition (last, done) and starts a new chain with x;
* once stage 1 has closed through last.ts + session_gap without a successor, (last, done) is
  emitted: the user's session ended.

Transition ids are ``schemas.transition_id(user, request, next request or None)``: replaying the
same outcomes gives the same ids. A repeated outcome (a request among the user's recently linked
ones, or already buffered) is ignored and counted; an outcome older than what the chain already
linked (only possible for lists stage 1 re-emits after a restart, or from an idle stage-1
partition that woke up with old data) is rejected as ``streams.link.late``. A finished chain is
remembered for ``retention_ms`` so that outcomes replayed after a restart are still recognised.

Pure, like the join: time comes from the announcements; changes are returned by
``take_changes`` as changelog records (user_id -> encoded chain, or None to delete).
"""

from __future__ import annotations

import bisect
import heapq
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from schemas import SchemaError
from streams.records import Outcome, read_outcome
from streams.types import STAGE_LINK_LATE, Rejected, Source
from streams.watermark import UpstreamProgress

log = logging.getLogger(__name__)

RECENT = 16
"""Request ids of the last settled lists kept per user, to recognise repeated outcomes."""
CHAIN = b"u:"  # changelog key prefix of a user's chain
OUTCOME = b"o:"  # changelog key prefix of an outcome a chain holds


def _outcome_key(uid: str, rid: str) -> bytes:
    u = uid.encode()
    return b"%s%d:%s%s" % (OUTCOME, len(u), u, rid.encode())


@dataclass(frozen=True, slots=True)
class LinkConfig:
    session_gap_ms: int
    retention_ms: int
    upstream_partitions: int  # number of stage-1 partitions announcing their progress

    @classmethod
    def from_settings(cls, s: Any) -> LinkConfig:
        return cls(
            session_gap_ms=s.session_gap_ms,
            retention_ms=s.join_closed_retention_ms,
            upstream_partitions=s.event_partitions,
        )


class Link(NamedTuple):
    """One transition to emit: from list ``prev`` to ``next`` (None: done)."""

    partition: int
    prev: Outcome
    next: Outcome | None


class _Pending(NamedTuple):
    ts_ms: int
    request_id: str
    outcome: Outcome


@dataclass(slots=True)
class _Chain:
    partition: int
    last: _Pending | None = None
    pending: list[_Pending] = field(default_factory=list)  # sorted by (ts, request_id)
    horizon: tuple[int, str] | None = None  # (ts, request_id) of the newest settled list
    recent: list[str] = field(default_factory=list)
    expires_ms: int | None = None  # set once the chain ended: forget the user at this watermark
    due: int | None = None  # time of this chain's live entry in the due heap (others are stale)


def _key(p: _Pending) -> tuple[int, str]:
    return (p.ts_ms, p.request_id)


class UserLinker:
    """The stage-2 state of the list-outcomes partitions one worker owns."""

    def __init__(self, config: LinkConfig) -> None:
        self.config = config
        self.progress = UpstreamProgress(config.upstream_partitions)
        self._chains: dict[str, _Chain] = {}
        self._due: dict[int, list[tuple[int, str]]] = {}
        self._dirty: dict[str, int] = {}  # user_id -> partition: chain changed
        self._dirty_outcomes: dict[tuple[str, str], int] = {}  # (user, request) -> partition
        self.counts: Counter[tuple[str, str]] = Counter()

    # ------------------------------------------------------------------------------- input
    def announce(self, partition: int, upstream_partition: int, closed_through_ms: int | None) -> None:
        """Stage-1 partition ``upstream_partition`` emitted, into ``partition``, every list with
        ts <= ``closed_through_ms`` (None: it is idle and has never seen a record)."""
        self.progress.announce(partition, upstream_partition, closed_through_ms)

    def add_outcome(self, o: Outcome, src: Source) -> Rejected | None:
        p = src.partition
        uid, rid = o.user_id, o.request_id
        chain = self._chains.get(uid)
        if chain is None:
            chain = self._chains[uid] = _Chain(p)
        elif rid in chain.recent or any(x.request_id == rid for x in chain.pending):
            self.counts["duplicates", "list_outcome"] += 1
            return None
        elif chain.horizon is not None and (o.ts_ms, rid) <= chain.horizon:
            return Rejected(
                src,
                o.raw,
                STAGE_LINK_LATE,
                f"list {rid!r} at {o.ts_ms} is older than the last linked list {chain.horizon[1]!r} "
                f"at {chain.horizon[0]}",
            )
        item = _Pending(o.ts_ms, rid, o)
        bisect.insort(chain.pending, item, key=_key)
        self._dirty[uid] = self._dirty_outcomes[uid, rid] = p
        self._schedule(uid, chain, o.ts_ms)
        return None

    # ------------------------------------------------------------------------------- linking
    def link_due(self) -> list[Link]:
        """Settle, link and end whatever stage 1's progress allows; returns the transitions."""
        out: list[Link] = []
        for p, heap in self._due.items():
            wm = self.progress.get(p)
            if wm is None:
                continue
            chains = self._chains
            while heap and heap[0][0] <= wm:
                due, uid = heapq.heappop(heap)
                chain = chains.get(uid)
                if chain is not None and chain.due == due:
                    chain.due = None
                    out += self._advance(uid, chain, wm)
        return out

    def _advance(self, uid: str, chain: _Chain, wm: int) -> list[Link]:
        cfg = self.config
        links: list[Link] = []
        changed = False
        while chain.pending and chain.pending[0].ts_ms <= wm:
            x = chain.pending.pop(0)
            changed = True
            last = chain.last
            if last is not None:
                self._release(uid, last, chain.partition)  # no longer needed
                gap = x.ts_ms - last.ts_ms
                links.append(
                    Link(chain.partition, last.outcome, None if gap > cfg.session_gap_ms else x.outcome)
                )
            chain.last = x
            chain.expires_ms = None
            chain.horizon = _key(x)
            chain.recent = [*chain.recent[-(RECENT - 1) :], x.request_id]
        last = chain.last
        if last is not None and not chain.pending and last.ts_ms + cfg.session_gap_ms <= wm:
            links.append(Link(chain.partition, last.outcome, None))
            self._release(uid, last, chain.partition)
            chain.last = None
            chain.expires_ms = wm + cfg.retention_ms
            changed = True
        if (
            chain.last is None
            and not chain.pending
            and chain.expires_ms is not None
            and chain.expires_ms <= wm
        ):
            del self._chains[uid]
            self._dirty[uid] = chain.partition
            return links
        if changed:
            self._dirty[uid] = chain.partition
        self._schedule(uid, chain, self._next_due(chain))
        return links

    def _release(self, uid: str, x: _Pending, partition: int) -> None:
        """The chain no longer needs outcome ``x``: delete its changelog entry, or, if it was
        never written (linked within the step that added it), just do not write it."""
        if x.outcome.logged:
            self._dirty_outcomes[uid, x.request_id] = partition
        else:
            self._dirty_outcomes.pop((uid, x.request_id), None)

    def _next_due(self, chain: _Chain) -> int | None:
        cfg = self.config
        if chain.pending:
            return chain.pending[0].ts_ms
        if chain.last is not None:
            return chain.last.ts_ms + cfg.session_gap_ms
        return chain.expires_ms

    def _schedule(self, uid: str, chain: _Chain, due: int | None) -> None:
        """Make sure the chain is looked at once the watermark reaches ``due``: one live heap
        entry per chain (a later one would only be popped to find nothing to do)."""
        if due is None or (chain.due is not None and chain.due <= due):
            return
        chain.due = due
        heap = self._due.get(chain.partition)
        if heap is None:
            heap = self._due[chain.partition] = []
        heapq.heappush(heap, (due, uid))

    # ------------------------------------------------------------------------------- state
    def __len__(self) -> int:
        return len(self._chains)

    def sizes(self) -> dict[str, int]:
        return {
            "users": len(self._chains),
            "buffered": sum(len(c.pending) + (c.last is not None) for c in self._chains.values()),
        }

    def take_changes(self) -> list[tuple[bytes, int, bytes | None]]:
        """(changelog key, partition, value or None for a delete) of everything changed since the
        last call. A user's chain is under ``u:<user_id>`` (small: request ids and times); each
        outcome it still needs (pending, or its last list) under its own key, written once."""
        out = [(CHAIN + uid.encode(), p, self._encoded(uid)) for uid, p in self._dirty.items()]
        for (uid, rid), p in self._dirty_outcomes.items():
            held = self._held_outcome(uid, rid)
            if held is not None:
                held.logged = True
            out.append((_outcome_key(uid, rid), p, None if held is None else held.raw))
        self._dirty.clear()
        self._dirty_outcomes.clear()
        return out

    def _held_outcome(self, uid: str, rid: str) -> Outcome | None:
        chain = self._chains.get(uid)
        if chain is None:
            return None
        if chain.last is not None and chain.last.request_id == rid:
            return chain.last.outcome
        return next((x.outcome for x in chain.pending if x.request_id == rid), None)

    def _encoded(self, uid: str) -> bytes | None:
        chain = self._chains.get(uid)
        if chain is None:
            return None
        return orjson.dumps(
            {
                "p": chain.partition,
                "last": None if chain.last is None else chain.last.request_id,
                "pend": [x.request_id for x in chain.pending],
                "h": chain.horizon,
                "r": chain.recent,
                "x": chain.expires_ms,
            }
        )

    def state_dict(self) -> dict[bytes, bytes]:
        """The whole state in its changelog form (changelog key -> value)."""
        out = {}
        for uid, chain in self._chains.items():
            value = self._encoded(uid)
            assert value is not None
            out[CHAIN + uid.encode()] = value
            for x in ([chain.last] if chain.last is not None else []) + chain.pending:
                out[_outcome_key(uid, x.request_id)] = x.outcome.raw
        return out

    def load_state_dict(
        self, entries: dict[bytes, bytes], now_ms: int, partitions: set[int] | None = None
    ) -> None:
        """Replace the state by ``entries`` (as written by ``take_changes``), e.g. after recovery,
        keeping only the given partitions (None: all). Stage 1's progress is learnt again from
        its next announcements."""
        self.__init__(self.config)  # type: ignore[misc]
        for key, value in entries.items():
            if not key.startswith(CHAIN):
                continue
            uid = key[len(CHAIN) :].decode()
            try:
                d = orjson.loads(value)
                if partitions is not None and d["p"] not in partitions:
                    continue
                chain = self._load_chain(uid, d, entries)
            except (SchemaError, ValueError, KeyError, TypeError) as exc:
                log.error("dropping unreadable link state for user %r: %s", uid, exc)
                continue
            self._chains[uid] = chain
            self._schedule(uid, chain, self._next_due(chain))

    def _load_chain(self, uid: str, d: dict[str, Any], entries: dict[bytes, bytes]) -> _Chain:
        def pending(rid: str) -> _Pending:
            o = read_outcome(entries[_outcome_key(uid, rid)])
            o.logged = True
            return _Pending(o.ts_ms, o.request_id, o)

        return _Chain(
            partition=int(d["p"]),
            last=None if d["last"] is None else pending(d["last"]),
            pending=[pending(rid) for rid in d["pend"]],
            horizon=None if d["h"] is None else (int(d["h"][0]), str(d["h"][1])),
            recent=[str(r) for r in d["r"]],
            expires_ms=d["x"],
        )

    def forget_partitions(self, partitions: set[int]) -> None:
        for uid in [u for u, c in self._chains.items() if c.partition in partitions]:
            del self._chains[uid]
        for p in partitions:
            self._due.pop(p, None)
        self.progress.forget(partitions)
