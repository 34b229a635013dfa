"""The topic plan and the co-partitioning check, without a broker."""

import pytest

from base.settings import ALL_TOPICS, Settings
from base.topics import check_copartitioned, topic_plan


def test_plan_covers_every_topic_behind_the_prefix() -> None:
    settings = Settings.from_env({}, topic_prefix="x.")
    names = {s.name for s in topic_plan(settings)}
    assert names == {f"x.{t}" for t in ALL_TOPICS}


def test_join_inputs_share_partition_count_and_snapshots_are_compacted() -> None:
    settings = Settings.from_env({}, event_partitions=6)
    plan = {s.name: s for s in topic_plan(settings)}
    for t in ("impressions", "clicks", "dwells"):
        assert plan[f"paperec.{t}"].partitions == 6
    snapshots = plan["paperec.actor-snapshots"]
    assert snapshots.configs["cleanup.policy"] == "compact"
    assert snapshots.configs["max.message.bytes"] == str(settings.max_message_bytes)


def test_copartitioning_check_reports_unequal_and_missing_topics() -> None:
    settings = Settings.from_env({})
    ok = {"paperec.impressions": 4, "paperec.clicks": 4, "paperec.dwells": 4}
    assert check_copartitioned(ok, settings) == []
    bad = dict(ok, **{"paperec.dwells": 3})
    (problem,) = check_copartitioned(bad, settings)
    assert "not co-partitioned" in problem and "paperec.dwells=3" in problem
    missing = {"paperec.impressions": 4}
    assert len(check_copartitioned(missing, settings)) == 2


def test_every_topic_gets_the_configured_replication_and_min_insync_replicas() -> None:
    plan = topic_plan(Settings(replication_factor=3, min_insync_replicas=2))
    assert {s.replication_factor for s in plan} == {3}
    assert {s.configs["min.insync.replicas"] for s in plan} == {"2"}
    assert {s.configs["min.insync.replicas"] for s in topic_plan(Settings())} == {"1"}


def test_min_insync_replicas_above_the_replication_factor_is_refused() -> None:
    with pytest.raises(ValueError, match="min_insync_replicas=2 with replication_factor=1"):
        topic_plan(Settings(min_insync_replicas=2))
