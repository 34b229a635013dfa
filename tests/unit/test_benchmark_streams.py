"""The pure parts of the join benchmark's measurement (benchmarks/streams.py, used by
benchmarks/scale.py): which partitions each worker owns, read from a consumer group's description,
and where the steady state starts when the group's final split settles late."""

from __future__ import annotations

import math
from typing import Any

import pytest

from benchmarks.streams import format_shares, partition_split, steady_state

P = "paperec.bench.ab12cd34."


def member(assignment: Any) -> dict[str, Any]:
    """A member as kafka-python's ``KafkaAdminClient.describe_groups`` gives it (abridged)."""
    return {"member_id": "faust-0.15.3-x", "client_id": "faust-0.15.3", "member_assignment": assignment}


def assigned(*topics: tuple[str, list[int]]) -> dict[str, Any]:
    return {
        "assigned_partitions": [{"topic": P + t, "partitions": ps} for t, ps in topics],
        "user_data": b"x\x9c...",
    }


def test_partition_split_gives_each_members_partitions_of_the_topic_largest_share_first() -> None:
    group = {
        "group_state": "Stable",
        "protocol_type": "consumer",
        "members": [
            member(
                assigned(
                    ("clicks", [0, 1, 2]), ("impressions", [0, 1, 2]), ("streams-__assignor-__leader", [])
                )
            ),
            member(
                assigned(
                    ("impressions", [7, 3, 5, 4, 6]),  # Faust's order is not sorted
                    ("streams-__assignor-__leader", [0]),
                    ("streams-join-changelog", [3, 4, 5, 6, 7]),
                )
            ),
        ],
    }
    assert partition_split(group, P + "impressions") == [[3, 4, 5, 6, 7], [0, 1, 2]]
    assert partition_split(group, P + "clicks") == [[0, 1, 2], []]
    assert format_shares(partition_split(group, P + "impressions")) == "3,4,5,6,7 | 0,1,2"
    assert format_shares(None) == "unassigned"


def test_a_member_without_a_decoded_assignment_owns_nothing() -> None:
    group = {"members": [member(b"\x00\x04garbled"), member(assigned(("impressions", [1, 0])))]}
    assert partition_split(group, P + "impressions") == [[0, 1], []]
    assert partition_split({"members": []}, P + "impressions") == []


# Input records committed over time (s): slow, then fast, then slow again.
SAMPLES = [(0.0, 0), (1.0, 100), (2.0, 200), (3.0, 600), (4.0, 900), (5.0, 1000)]


def test_with_the_split_settled_before_the_first_commit_the_steady_state_is_10_to_90_percent() -> None:
    start, done, rate = steady_state(SAMPLES, 1000, settled=-0.5)
    assert (start, done) == (1.0, 100)  # 10% committed at 1 s
    assert rate == pytest.approx(800 / 3.0)  # 90% at 4 s


def test_a_split_settled_later_starts_the_steady_state_then() -> None:
    start, done, rate = steady_state(SAMPLES, 1000, settled=2.5)
    assert (start, done) == (2.5, 400)  # halfway between 200 at 2 s and 600 at 3 s
    assert rate == pytest.approx((900 - 400) / 1.5)


def test_no_steady_state_when_over_60_percent_was_committed_before_the_split_settled() -> None:
    start, done, rate = steady_state(SAMPLES, 1000, settled=3.5)
    assert (start, done) == (3.5, 750)
    assert math.isnan(rate)
