"""The replay ring buffer: FIFO eviction, dedup by transition id, seeded sampling, state_dict."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from learner.replay_buffer import FIELDS, ReplayBuffer
from model.batch import ListBatch
from model.ranker import RankerConfig

CFG = RankerConfig.tiny()  # max_list_len 6


def rows(
    n: int, start: int = 0, list_len: int | None = None, seed: int = 0
) -> tuple[ListBatch, list[str], list[int]]:
    """n rows whose user_feats[:, 0] and ts are ``start..start+n-1`` (identifies them later)."""
    cfg = CFG if list_len is None else dataclasses.replace(CFG, max_list_len=list_len)
    batch = ListBatch.synthetic(cfg, n, torch.Generator().manual_seed(seed + start))
    batch.user_feats[:, 0] = torch.arange(start, start + n, dtype=torch.float32)
    return batch, [f"id-{i}" for i in range(start, start + n)], list(range(start, start + n))


def contents(buf: ReplayBuffer) -> list[int]:
    """The marker of each row, oldest first."""
    return [int(x) for x in buf.state_dict()["rows"]["user_feats"][:, 0]]


def test_fifo_eviction_keeps_the_newest_in_order() -> None:
    buf = ReplayBuffer(CFG, 5)
    buf.add(*rows(3, 0))
    assert contents(buf) == [0, 1, 2]
    buf.add(*rows(4, 3))  # wraps around: 0 and 1 are evicted
    assert len(buf) == 5 and contents(buf) == [2, 3, 4, 5, 6]
    assert buf.stats.evicted == 2
    buf.add(*rows(12, 7))  # more than the capacity in one add: only the newest 5 survive
    assert contents(buf) == [14, 15, 16, 17, 18]
    assert buf.stats.added == 19


def test_duplicate_ids_are_ignored_within_and_across_adds() -> None:
    buf = ReplayBuffer(CFG, 10)
    batch, ids, ts = rows(4, 0)
    assert buf.add(batch, ids, ts).added == 4
    result = buf.add(batch, ids, ts)  # a replay of the same transitions
    assert (result.added, result.duplicates) == (0, 4)
    again, _, _ = rows(3, 10)
    result = buf.add(again, ["new-1", "new-1", "id-2"], [1, 2, 3])  # dup inside the batch, and an old id
    assert (result.added, result.duplicates) == (1, 2)
    assert len(buf) == 5 and buf.stats.duplicates == 6
    assert buf.unseen(["id-0", "x", "x"]) == [False, True, False]


def test_dedup_outlives_eviction_up_to_the_seen_horizon() -> None:
    buf = ReplayBuffer(CFG, 2, seen_capacity=4)
    buf.add(*rows(4, 0))  # rows 0, 1 evicted from the ring but remembered
    assert buf.add(*rows(1, 0)).duplicates == 1  # a re-delivery refreshes id-0 (LRU)
    buf.add(*rows(2, 4))  # ids 4, 5 push the least recently seen ids 1, 2 out of the horizon
    assert buf.unseen(["id-0", "id-1", "id-2", "id-3"]) == [False, True, True, False]
    assert buf.add(*rows(1, 1)).added == 1
    assert buf.seen_capacity == 4 and ReplayBuffer(CFG, 8, seen_capacity=3).seen_capacity == 8


def test_sampling_is_seeded_and_uniform_over_present_rows() -> None:
    a, b, c = ReplayBuffer(CFG, 50, seed=7), ReplayBuffer(CFG, 50, seed=7), ReplayBuffer(CFG, 50, seed=8)
    for buf in (a, b, c):
        buf.add(*rows(30, 0))
    sa, sb, sc = a.sample(64), b.sample(64), c.sample(64)
    for name in FIELDS:
        assert torch.equal(getattr(sa.batch, name), getattr(sb.batch, name))
    assert not torch.equal(sa.batch.user_feats, sc.batch.user_feats)
    markers = sa.batch.user_feats[:, 0]
    assert set(markers.long().tolist()) <= set(range(30))
    assert sa.max_ts_ms == int(markers.max())
    # uniform: over many draws every row shows up with roughly equal frequency
    counts = torch.bincount(
        torch.cat([a.sample(300).batch.user_feats[:, 0].long() for _ in range(20)]), minlength=30
    )
    assert counts.min() > 100 and counts.max() < 300  # expected 200 each


def test_empty_buffer_refuses_to_sample() -> None:
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(CFG, 4).sample(2)


def test_add_does_not_modify_its_input_and_sample_is_not_a_view() -> None:
    buf = ReplayBuffer(CFG, 8)
    batch, ids, ts = rows(5, 0, list_len=9)  # longer lists: truncation must not touch the input
    before = batch.clone()
    ids_before = list(ids)
    buf.add(batch, ids, ts)
    for name in FIELDS:
        assert torch.equal(getattr(batch, name), getattr(before, name))
    assert ids == ids_before
    sample = buf.sample(4)
    sample.batch.user_feats.fill_(-1.0)
    assert contents(buf) == [0, 1, 2, 3, 4]


def test_lists_are_padded_or_truncated_to_max_list_len() -> None:
    buf = ReplayBuffer(CFG, 8)
    short, ids, ts = rows(2, 0, list_len=3)
    short.mask[:] = True
    buf.add(short, ids, ts)
    long, ids, ts = rows(2, 2, list_len=9)
    long.mask[:] = True
    long.next_mask[:] = False
    result = buf.add(long, ids, ts)
    assert result.truncated == 2 and buf.stats.truncated == 2
    stored = buf.state_dict()["rows"]
    assert stored["mask"].shape == (4, 6)
    assert stored["mask"][:2].tolist() == [[True] * 3 + [False] * 3] * 2  # right-padded
    assert stored["mask"][2:].all()
    assert torch.equal(stored["item_ids"][2:], long.item_ids[:, :6])  # the first L positions kept


def test_shape_mismatch_is_an_error() -> None:
    buf = ReplayBuffer(CFG, 4)
    other = dataclasses.replace(CFG, user_dim=CFG.user_dim + 1)
    batch = ListBatch.synthetic(other, 2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="user_feats"):
        buf.add(batch, ["a", "b"], [0, 0])
    with pytest.raises(ValueError, match="2 rows"):
        buf.add(rows(2)[0], ["a"], [0])


def test_state_dict_round_trip_restores_rows_ids_counters_and_sampler() -> None:
    buf = ReplayBuffer(CFG, 6, seed=3)
    buf.add(*rows(9, 0))  # wrapped
    buf.sample(5)  # advance the sampler
    state = buf.state_dict()
    clone = ReplayBuffer(CFG, 6, seed=99)
    clone.load_state_dict(state)
    assert contents(clone) == contents(buf) == [3, 4, 5, 6, 7, 8]
    assert clone.stats == buf.stats and len(clone) == 6
    assert clone.unseen(["id-0", "id-8", "id-9"]) == [False, False, True]
    sa, sb = buf.sample(16), clone.sample(16)
    assert torch.equal(sa.batch.user_feats, sb.batch.user_feats)
    # the same buffer continues identically after the round trip
    buf.add(*rows(2, 9))
    clone.add(*rows(2, 9))
    assert contents(clone) == contents(buf)


def test_state_dict_loads_into_another_capacity_and_without_contents() -> None:
    buf = ReplayBuffer(CFG, 6)
    buf.add(*rows(6, 0))
    small = ReplayBuffer(CFG, 4)
    small.load_state_dict(buf.state_dict())
    assert contents(small) == [2, 3, 4, 5]  # the newest rows
    meta = buf.state_dict(contents=False)
    assert "rows" not in meta
    empty = ReplayBuffer(CFG, 6)
    empty.load_state_dict(meta)
    assert len(empty) == 0 and empty.unseen(["id-5"]) == [False]
    with pytest.raises(ValueError, match="list_len"):
        ReplayBuffer(dataclasses.replace(CFG, max_list_len=3), 6).load_state_dict(buf.state_dict())


def test_concurrent_add_and_sample() -> None:
    buf = ReplayBuffer(CFG, 64)
    buf.add(*rows(8, 0))
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for k in range(50):
                buf.add(*rows(8, 100 + 8 * k))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    while t.is_alive():
        s = buf.sample(16)
        assert s.batch.user_feats.shape == (16, CFG.user_dim)
    t.join()
    assert not errors and len(buf) == 64 and buf.stats.added == 408
