"""The Apache Kafka launcher's pure half: ids, plans, rendered configuration, argv."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelvc.kafka_broker import (
    DEFAULT_HEAP,
    KAFKA_MAIN,
    STORAGE_TOOL,
    broker_settings,
    cluster_id_from,
    format_argv,
    java_major,
    plan_cluster,
    render_properties,
    replication_settings,
    server_argv,
    spec_from_json,
    spec_to_json,
)
from modelvc.processes import Spawned

CID = cluster_id_from(bytes(range(16)))


def parse_properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {key: value for key, value in pairs}


def test_cluster_id_is_kafka_shaped_and_never_starts_with_a_dash() -> None:
    assert len(CID) == 22
    assert plan_cluster(CID, [(1, 2)]).cluster_id == CID
    # 0xf8.. encodes to '-' first in URL-safe base64: read as a CLI option by the tool.
    assert not cluster_id_from(b"\xf8" + bytes(15)).startswith("-")
    with pytest.raises(ValueError):
        cluster_id_from(b"short")


def test_plan_refuses_bad_ids_and_shared_ports() -> None:
    with pytest.raises(ValueError):
        plan_cluster("not an id", [(1, 2)])
    with pytest.raises(ValueError):
        plan_cluster(CID, [(1, 2), (2, 3)])
    with pytest.raises(ValueError):
        plan_cluster(CID, [])


def test_one_node_replicates_once() -> None:
    assert set(replication_settings(1).values()) == {"1"}


def test_three_nodes_keep_acknowledged_writes_with_one_down() -> None:
    settings = replication_settings(3)
    assert settings["default.replication.factor"] == "3"
    assert settings["min.insync.replicas"] == "2"
    assert settings["offsets.topic.replication.factor"] == "3"
    assert settings["transaction.state.log.replication.factor"] == "3"
    assert settings["transaction.state.log.min.isr"] == "2"
    assert replication_settings(5)["default.replication.factor"] == "3"
    assert replication_settings(2)["min.insync.replicas"] == "1"


def test_every_node_names_every_controller_and_listens_on_loopback_only() -> None:
    spec = plan_cluster(CID, [(9001, 9101), (9002, 9102), (9003, 9103)])
    node = spec.node(2)
    props = parse_properties(render_properties(broker_settings(spec, node, Path("/d/2"))))
    assert props["node.id"] == "2"
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:9101,2@127.0.0.1:9102,3@127.0.0.1:9103"
    )
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9002,CONTROLLER://127.0.0.1:9102"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9002"
    assert props["log.dirs"] == "/d/2"
    assert props["auto.create.topics.enable"] == "false"
    assert props["unclean.leader.election.enable"] == "false"
    assert spec.bootstrap == "127.0.0.1:9001,127.0.0.1:9002,127.0.0.1:9003"


def test_properties_refuse_newlines() -> None:
    with pytest.raises(ValueError):
        render_properties({"log.dirs": "/x\nauto.create.topics.enable=true"})


def test_argv_runs_the_broker_and_the_storage_tool_from_the_jar_folder(tmp_path: Path) -> None:
    lib, log4j2, node = tmp_path / "lib", tmp_path / "log4j2.properties", tmp_path / "node-1"
    argv = server_argv("/usr/bin/java", lib, "512m", log4j2, node)
    assert argv[0] == "/usr/bin/java"
    assert "-Xmx512m" in argv
    assert f"-Dlog4j2.configurationFile={log4j2}" in argv
    assert argv[argv.index("-cp") + 1] == f"{lib}/*"
    assert argv[-2:] == [KAFKA_MAIN, str(node / "server.properties")]
    fmt = format_argv("/usr/bin/java", lib, log4j2, node, CID)
    assert fmt[fmt.index(STORAGE_TOOL) :] == [
        STORAGE_TOOL,
        "format",
        "--ignore-formatted",
        "--cluster-id",
        CID,
        "--config",
        str(node / "server.properties"),
    ]


def test_java_major_reads_old_and_new_version_strings() -> None:
    assert java_major('openjdk version "17.0.15" 2025-04-15') == 17
    assert java_major('openjdk version "25" 2025-09-16') == 25
    assert java_major('java version "1.8.0_402"') == 8
    with pytest.raises(ValueError):
        java_major("command not found")


def test_cluster_record_round_trips() -> None:
    spec = plan_cluster(CID, [(9001, 9101), (9002, 9102)])
    pids = {1: Spawned(42, ("/usr/bin/java", "kafka.Kafka"), "/l/stdout.log")}
    assert spec_from_json(spec_to_json(spec, pids)) == (spec, pids)


# Where each node differs (ids, addresses, paths); every other setting must be equal.
NODE_SPECIFIC = {"node.id", "listeners", "advertised.listeners", "controller.quorum.voters"}
NODE_SPECIFIC |= {"log.dirs"}
REPO = Path(__file__).resolve().parents[2]


def compose_settings(environment: dict[str, object]) -> dict[str, str]:
    """The apache/kafka image's KAFKA_FOO_BAR variables as foo.bar properties."""
    return {
        key.removeprefix("KAFKA_").lower().replace("_", "."): str(value)
        for key, value in environment.items()
        if key.startswith("KAFKA_") and key != "KAFKA_HEAP_OPTS"
    }


@pytest.mark.parametrize("brokers", [1, 3])
def test_docker_compose_runs_kafka_with_the_launchers_settings(brokers: int) -> None:
    yaml = pytest.importorskip("yaml")
    single = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    cluster = yaml.safe_load((REPO / "docker-compose.cluster.yml").read_text())
    services = single["services"] | (cluster["services"] if brokers == 3 else {})
    environments = [single["services"]["kafka"]["environment"]]
    if brokers == 3:
        environments = [
            single["services"]["kafka"]["environment"]
            | cluster["services"]["kafka"]["environment"],
            services["kafka-2"]["environment"],
            services["kafka-3"]["environment"],
        ]
    spec = plan_cluster(CID, [(9000 + i, 9100 + i) for i in range(brokers)])
    for node, environment in zip(spec.nodes, environments, strict=True):
        ours = broker_settings(spec, node, Path("/data"))
        theirs = compose_settings(environment)
        assert set(theirs) == set(ours)
        assert {k: v for k, v in theirs.items() if k not in NODE_SPECIFIC} == {
            k: v for k, v in ours.items() if k not in NODE_SPECIFIC
        }
        assert theirs["node.id"] == str(node.node_id)
        assert len(theirs["controller.quorum.voters"].split(",")) == brokers
        assert plan_cluster(str(environment["CLUSTER_ID"]), [(1, 2)])
        assert environment["KAFKA_HEAP_OPTS"] == f"-Xmx{DEFAULT_HEAP}"
    image = single["services"]["kafka"]["image"]
    pom = (REPO / "brokers" / "kafka" / "pom.xml").read_text()
    assert f"<kafka.version>{image.split(':')[1]}</kafka.version>" in pom
