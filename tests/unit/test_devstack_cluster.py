"""paperec/devstack: ``up --brokers 3`` configures a replicated KRaft cluster (3 voters, own ports
and dirs per node, one cluster id, replication factor 3 / min.insync.replicas 2) while one node
stays the single broker it was; down/status find every formatted node. No JVM is started."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from base.settings import Settings
from paperec.devstack import cli
from paperec.devstack.kafka import (
    Kafka,
    kafka_nodes,
    recorded_brokers,
    render_server_properties,
    replication,
    secure_server_properties,
)
from paperec.devstack.process import DevstackError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def settings_in(tmp_path: Path, brokers: int) -> Settings:
    return Settings(state_dir=str(tmp_path / "state"), kafka_brokers=brokers)


def test_three_nodes_get_derived_ports_own_dirs_and_shared_jars_and_credentials(tmp_path: Path) -> None:
    nodes = kafka_nodes(settings_in(tmp_path, 3))
    assert [n.name for n in nodes] == ["kafka", "kafka-2", "kafka-3"]
    assert [(n.port, n.controller_port) for n in nodes] == [(19092, 19093), (19094, 19095), (19096, 19097)]
    assert len({n.data_dir for n in nodes} | {n.log_dir for n in nodes}) == 6
    assert len({n.marker for n in nodes}) == 3  # each found (and stopped) by its own config path
    assert {n.libs_dir for n in nodes} == {tmp_path / "state" / "kafka" / "libs"}
    assert {n.credentials_dir for n in nodes} == {tmp_path / "state" / "kafka" / "credentials"}
    assert nodes[0].keep_on_wipe == ("libs",) and nodes[1].keep_on_wipe == ()
    assert nodes[2].quorum_voters == "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"
    assert nodes[0].bootstrap == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096"


def test_replication_of_a_cluster() -> None:
    assert [replication(n) for n in (1, 2, 3, 5)] == [(1, 1), (2, 1), (3, 2), (3, 2)]


def test_node_of_three_is_a_voter_with_replicated_internal_topics(tmp_path: Path) -> None:
    node = kafka_nodes(settings_in(tmp_path, 3))[1]
    node.write_config()
    p = props(node.server_properties.read_text())
    assert p["node.id"] == "2" and p["process.roles"] == "broker,controller"
    assert p["controller.quorum.voters"] == node.quorum_voters
    assert p["listeners"] == "PLAINTEXT://127.0.0.1:19094,CONTROLLER://127.0.0.1:19095"
    assert p["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19094"
    assert p["log.dirs"] == str(tmp_path / "state" / "kafka-2" / "data")
    assert p["default.replication.factor"] == "3" and p["min.insync.replicas"] == "2"
    assert p["offsets.topic.replication.factor"] == "3"
    assert p["transaction.state.log.replication.factor"] == "3"
    assert p["transaction.state.log.min.isr"] == "2"
    assert p["unclean.leader.election.enable"] == "false"


def test_one_node_is_the_single_broker_it_was(tmp_path: Path) -> None:
    (node,) = kafka_nodes(settings_in(tmp_path, 1))
    assert node.root == tmp_path / "state" / "kafka"
    node.write_config()
    p = props(node.server_properties.read_text())
    assert p["node.id"] == "1" and p["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert p["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    replicas = ("offsets.topic.replication.factor", "transaction.state.log.replication.factor")
    assert {p[k] for k in replicas} == {"1"} and p["min.insync.replicas"] == "1"


def test_secured_node_of_three_gets_sasl_listeners_on_its_own_ports() -> None:
    plain = render_server_properties(
        host="127.0.0.1",
        port=19096,
        controller_port=19097,
        log_dir=Path("/x"),
        max_message_bytes=1,
        node_id=3,
        quorum_voters="1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097",
        brokers=3,
    )
    text = secure_server_properties(
        plain,
        host="127.0.0.1",
        port=19096,
        controller_port=19097,
        admin_user="a",
        admin_password="p",
        controller_password="c",
    )
    p = props(text)
    assert p["listeners"] == "SASL_PLAINTEXT://127.0.0.1:19096,CONTROLLER://127.0.0.1:19097"
    assert p["inter.broker.listener.name"] == "SASL_PLAINTEXT"  # replication between nodes too


def test_all_nodes_share_the_cluster_id_node_one_draws(tmp_path: Path) -> None:
    nodes = kafka_nodes(settings_in(tmp_path, 3))
    with pytest.raises(DevstackError, match="node 1"):
        nodes[1].cluster_id()
    first = nodes[0].cluster_id()
    assert nodes[1].cluster_id() == nodes[2].cluster_id() == first


def formatted(node: Kafka, voters: str | None) -> None:
    node.data_dir.mkdir(parents=True, exist_ok=True)
    (node.data_dir / "meta.properties").write_text("node.id=1\n")
    if voters is not None:
        node.quorum_file.write_text(voters + "\n")


def test_a_formatted_cluster_refuses_another_node_count(tmp_path: Path) -> None:
    one = kafka_nodes(settings_in(tmp_path, 1))[0]
    formatted(one, one.quorum_voters)
    one.check_quorum()  # same count: fine
    three = kafka_nodes(settings_in(tmp_path, 3))[0]
    with pytest.raises(DevstackError, match=r"formatted with 1 node.*--brokers.*--wipe"):
        three.check_quorum()


def test_a_broker_formatted_before_clusters_counts_as_one_node(tmp_path: Path) -> None:
    legacy = kafka_nodes(settings_in(tmp_path, 1))[0]
    formatted(legacy, None)
    legacy.check_quorum()
    assert recorded_brokers(legacy.settings) == 0
    with pytest.raises(DevstackError, match="formatted with 1 node"):
        kafka_nodes(settings_in(tmp_path, 3))[0].check_quorum()


def test_down_and_status_act_on_every_formatted_node(tmp_path: Path) -> None:
    settings = settings_in(tmp_path, 3)
    formatted(kafka_nodes(settings)[0], kafka_nodes(settings)[0].quorum_voters)
    default = settings.replace(kafka_brokers=1)
    assert recorded_brokers(default) == 3
    names = [s.name for s in cli.selected_services(default, None, "down")]
    assert names == ["kafka", "kafka-2", "kafka-3", "clickhouse"]
    assert [s.name for s in cli.selected_services(default, "kafka", "status")] == [
        "kafka",
        "kafka-2",
        "kafka-3",
    ]
    with pytest.raises(DevstackError, match=r"formatted with 3 node.*--brokers 3"):
        cli.selected_services(default, None, "up")  # running or not: one of three is no cluster
    assert [s.name for s in cli.selected_services(default, "clickhouse", "up")] == ["clickhouse"]
    assert len(cli.selected_services(settings, None, "up")) == 4


def test_brokers_flag_sets_the_node_count_and_status_lists_each_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    args = parser.parse_args(["status", "--only", "kafka", "--brokers", "3"])
    # Free ports of our own: the shared dev stack holds the default ones.
    base = Settings(state_dir=str(tmp_path / "state"), kafka_bootstrap=f"127.0.0.1:{free_port()}")
    assert cli.run(args, base) == cli.EXIT_NOT_UP  # nothing runs here
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert rows == ["kafka", "kafka-2", "kafka-3"]


def test_brokers_below_one_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DevstackError, match="at least 1"):
        kafka_nodes(settings_in(tmp_path, 0))
