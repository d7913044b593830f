"""The Apache Kafka launcher's pure half: ids, plans, rendered configuration, argv."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from modelvc.kafka_acl import acl_plan, ensure_credentials, scram_argument, settings_as
from modelvc.kafka_broker import (
    DEFAULT_HEAP,
    KAFKA_MAIN,
    STORAGE_TOOL,
    BrokerLogins,
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
from modelvc.processes import Spawned, StackError
from streams.kafka_access import Credentials
from streams.settings import Settings

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


# -- SASL: the brokers' logins, the authorizer, the users created at format time --------------

LOGINS = BrokerLogins(broker="b" * 43, controller="c" * 43)


def sasl_properties(node_id: int = 1) -> dict[str, str]:
    spec = plan_cluster(CID, [(9001, 9101), (9002, 9102)], security="sasl")
    settings = broker_settings(spec, spec.node(node_id), Path("/d"), LOGINS)
    return parse_properties(render_properties(settings))


def test_a_sasl_node_takes_scram_logins_only_and_denies_what_no_acl_allows() -> None:
    props = sasl_properties(2)
    assert props["listeners"] == "SASL_PLAINTEXT://127.0.0.1:9002,CONTROLLER://127.0.0.1:9102"
    assert props["advertised.listeners"] == "SASL_PLAINTEXT://127.0.0.1:9002"
    assert props["listener.security.protocol.map"] == (
        "CONTROLLER:SASL_PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
    )
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"  # no PLAIN for clients
    assert props["inter.broker.listener.name"] == "SASL_PLAINTEXT"
    assert props["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    assert (
        'username="broker" password="' + "b" * 43
        in props["listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config"]
    )
    # The controller listener authenticates too (PLAIN from a list of one user).
    assert props["listener.name.controller.sasl.enabled.mechanisms"] == "PLAIN"
    assert props["sasl.mechanism.controller.protocol"] == "PLAIN"
    controller = props["listener.name.controller.plain.sasl.jaas.config"]
    assert 'user_controller="' + "c" * 43 + '"' in controller
    assert props["authorizer.class.name"] == (
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    )
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"].split(";") == ["User:admin", "User:broker", "User:controller"]
    # Everything but the listeners and the security is the plaintext node's.
    spec = plan_cluster(CID, [(9001, 9101), (9002, 9102)])
    plain = broker_settings(spec, spec.node(2), Path("/d"))
    assert "authorizer.class.name" not in plain and "sasl.enabled.mechanisms" not in plain
    shared = {k for k in plain if "listener" not in k}
    assert {k: props[k] for k in shared} == {k: plain[k] for k in shared}


def test_sasl_needs_the_brokers_logins_and_refuses_ones_that_would_rewrite_jaas() -> None:
    spec = plan_cluster(CID, [(1, 2)], security="sasl")
    with pytest.raises(ValueError):
        broker_settings(spec, spec.node(1), Path("/d"))
    with pytest.raises(ValueError):
        BrokerLogins(broker='x" user_admin="x', controller="c" * 43)
    with pytest.raises(ValueError):
        plan_cluster(CID, [(1, 2)], security="tls")  # type: ignore[arg-type]


def test_format_adds_every_scram_user_and_the_record_keeps_the_security(tmp_path: Path) -> None:
    args = ['SCRAM-SHA-512=[name=a,iterations=4096,salt="QQ==",saltedpassword="QQ=="]']
    fmt = format_argv("/usr/bin/java", tmp_path, tmp_path / "l", tmp_path / "n", CID, args)
    assert fmt[-2:] == ["--add-scram", args[0]]
    spec = plan_cluster(CID, [(9001, 9101)], security="sasl")
    assert spec_from_json(spec_to_json(spec, {}))[0].security == "sasl"
    # A record from before SASL existed is a plaintext cluster.
    old = json.loads(spec_to_json(plan_cluster(CID, [(9001, 9101)]), {}))
    del old["security"]
    assert spec_from_json(json.dumps(old))[0].security == "plaintext"


def test_scram_argument_carries_the_salted_password_never_the_password() -> None:
    salt = bytes(range(32))
    arg = scram_argument("worker", "secret-password", salt, 4096)
    fields = dict(
        part.split("=", 1) for part in arg.removeprefix("SCRAM-SHA-512=[").rstrip("]").split(",")
    )
    assert fields["name"] == "worker" and fields["iterations"] == "4096"
    assert base64.b64decode(fields["salt"].strip('"')) == salt
    assert len(base64.b64decode(fields["saltedpassword"].strip('"'))) == 64  # SHA-512 sized
    assert "secret-password" not in arg
    # A fresh salt gives another stored form of the same password.
    assert scram_argument("worker", "secret-password", bytes(32), 4096) != arg
    with pytest.raises(ValueError):
        scram_argument("worker,name=admin", "p", salt, 4096)


def test_credentials_are_private_random_and_never_rotated(tmp_path: Path) -> None:
    directory = tmp_path / "credentials"
    ensure_credentials(directory, ["admin", "worker"], create=True)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    first = {p.stem: p.read_text() for p in directory.glob("*.json")}
    assert set(first) == {"admin", "worker"}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in directory.glob("*.json"))
    assert Credentials.read(directory / "worker.json").username == "worker"
    assert len({json.loads(t)["password"] for t in first.values()}) == 2
    ensure_credentials(directory, ["admin", "worker"], create=True)
    assert {p.stem: p.read_text() for p in directory.glob("*.json")} == first
    # Once formatted, a lost file cannot be made up: the broker knows only the old one.
    (directory / "worker.json").unlink()
    with pytest.raises(StackError, match="worker"):
        ensure_credentials(directory, ["admin", "worker"], create=False)


def test_settings_as_a_role_log_in_with_its_file(tmp_path: Path) -> None:
    settings = settings_as(Settings(namespace="n"), tmp_path, "worker")
    assert settings.access.security == "sasl"
    assert settings.access.credentials == tmp_path / "worker.json"


# -- the ACL plan, as data ----------------------------------------------------------------------


def grants(namespace: str, role: str) -> set[tuple[str, str, str, str]]:
    return {
        (g.resource_type, g.resource_name, g.pattern_type, g.operation)
        for g in acl_plan(namespace)
        if g.principal == role
    }


def test_only_the_streams_app_may_write_events_and_create_topics() -> None:
    plan = acl_plan("ns")
    writers = {
        g.principal for g in plan if g.operation == "WRITE" and g.resource_name == "ns.events"
    }
    assert writers == {"streams"}
    creators = {g.principal for g in plan if g.operation == "CREATE"}
    assert creators == {"streams"}
    assert "admin" not in {g.principal for g in plan}  # a super user needs no ACL
    assert grants("ns", "streams") >= {
        ("TOPIC", "ns.events", "LITERAL", "WRITE"),
        ("TOPIC", "ns.commands", "LITERAL", "READ"),
        ("TOPIC", "ns.replies", "LITERAL", "WRITE"),
        ("TOPIC", "ns.dead-letter", "LITERAL", "WRITE"),
        ("GROUP", "ns-streams", "LITERAL", "READ"),
    }


MONITOR_READS = ("predictions", "shadow-predictions", "labels", "dead-letter")


def test_the_worker_reads_events_and_features_and_writes_predictions_transactionally() -> None:
    assert grants("ns", "worker") == {
        ("TOPIC", "ns.events", "LITERAL", "READ"),
        ("TOPIC", "ns.features", "LITERAL", "READ"),
        ("TOPIC", "ns.predictions", "LITERAL", "WRITE"),
        ("TOPIC", "ns.shadow-predictions", "LITERAL", "WRITE"),
        ("TOPIC", "ns.dead-letter", "LITERAL", "WRITE"),
        # the monitor logs in as a worker
        *(("TOPIC", f"ns.{k}", "LITERAL", "READ") for k in MONITOR_READS),
        ("TOPIC", "ns.metrics", "LITERAL", "WRITE"),
        ("GROUP", "ns-workers", "LITERAL", "READ"),
        ("TRANSACTIONAL_ID", "ns-workers", "PREFIXED", "WRITE"),
        ("TRANSACTIONAL_ID", "ns-workers", "PREFIXED", "DESCRIBE"),
    }


def test_the_producer_writes_features_only_and_the_auditor_only_reads() -> None:
    assert grants("ns", "producer") == {
        ("TOPIC", "ns.features", "LITERAL", "WRITE"),
        ("TOPIC", "ns.labels", "LITERAL", "WRITE"),
    }
    assert grants("ns", "auditor") == {
        ("TOPIC", f"ns.{kind}", "LITERAL", "READ")
        for kind in (
            "events",
            "features",
            "labels",
            "predictions",
            "shadow-predictions",
            "metrics",
            "dead-letter",
        )
    }


def test_tenants_do_not_share_a_resource() -> None:
    # "a." would prefix "a.b.events": every topic is named literally.
    a = {g.resource_name for g in acl_plan("a")}
    b = {g.resource_name for g in acl_plan("a.b")}
    assert not a & b
    assert {g.pattern_type for g in acl_plan("a") if g.resource_type != "TRANSACTIONAL_ID"} == {
        "LITERAL"
    }
    assert acl_plan("a") == acl_plan("a")  # a plan is data: the same every time
    with pytest.raises(ValueError):
        acl_plan("bad name")
