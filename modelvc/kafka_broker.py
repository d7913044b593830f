"""Apache Kafka on loopback: 1 or N KRaft nodes, each a JVM of ours, stopped by pid.

The jars come from ``brokers/kafka`` (``make kafka`` copies them into
``brokers/kafka/target/lib``). A cluster lives under one home::

    <home>/cluster.json          cluster id, security, node ids, ports and pids
    <home>/log4j2.properties     shared logging configuration
    <home>/credentials/<name>.json  SASL logins (security "sasl" only; modelvc.kafka_acl)
    <home>/node-<id>/server.properties   (mode 0600 with SASL: it holds the brokers' logins)
    <home>/node-<id>/data/       log.dirs (formatted once, never again)
    <home>/node-<id>/logs/       server.log (rolled by log4j2) and the JVM's stdout

The top half renders configuration and argv (pure, tested without a JVM); the
bottom half formats storage, spawns the JVMs through ``modelvc.processes`` and
waits until metadata lists every broker. Starting again on an existing home
reuses its cluster id, ports and data: nothing is reformatted, so whatever was
acknowledged before a stop or a kill -9 is still there.

Security "sasl" (``MODELVC_KAFKA_SECURITY=sasl``): clients and brokers log in with
SCRAM-SHA-512, the users created at format time with random passwords; the
StandardAuthorizer denies whatever no ACL allows (``modelvc.kafka_acl`` grants them).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from modelvc.kafka_acl import (
    BROKER_LOGIN,
    CONTROLLER_LOGIN,
    SCRAM_ITERATIONS,
    SCRAM_USERS,
    SUPER_USERS,
    Role,
    credentials_path,
    ensure_credentials,
    read_credentials,
    scram_argument,
)
from modelvc.processes import (
    Spawned,
    StackError,
    alive,
    free_port,
    is_ours,
    spawn,
    stop,
    wait_for_port,
)
from streams.files import write_private
from streams.kafka_access import SASL_MECHANISM, SECURITY, KafkaAccess, Security

MIN_JAVA = 17  # Kafka 4.x brokers refuse older JVMs
LIB_ENV = "MODELVC_KAFKA_LIB"
JAVA_ENV = "MODELVC_JAVA"
KAFKA_MAIN = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"  # still the Scala tool in core in 4.x
# Several brokers share a 2-core box with the Python processes under test: bound each
# heap so three of them plus their page cache fit comfortably.
DEFAULT_HEAP = "512m"
STOP_TIMEOUT_S = 20.0  # a controlled shutdown moves leadership first; give it time
START_TIMEOUT_S = 120.0  # a loaded 2-core machine takes 10-20 s per JVM start

_CLUSTER_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}")
_JAVA_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')
# What goes inside a JAAS string: the launcher's own random tokens, nothing to escape.
_JAAS_SECRET = re.compile(r"[A-Za-z0-9_-]{16,128}")
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


# ---------------------------------------------------------------------------
# Pure part: specs, configuration, argv
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSpec:
    node_id: int
    port: int  # the PLAINTEXT listener clients and brokers use
    controller_port: int  # the CONTROLLER listener of the KRaft quorum


@dataclass(frozen=True)
class ClusterSpec:
    cluster_id: str
    nodes: tuple[NodeSpec, ...]
    security: Security = "plaintext"  # fixed at format time: the users live in the log

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def node(self, node_id: int) -> NodeSpec:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise StackError(f"no Kafka node {node_id}; nodes are {[n.node_id for n in self.nodes]}")


def cluster_id_from(raw: bytes) -> str:
    """Kafka's cluster id: 16 bytes in unpadded URL-safe base64 (22 characters)."""
    if len(raw) != 16:
        raise ValueError("a Kafka cluster id is 16 bytes")
    text = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    # Kafka's own generator rerolls ids starting with '-' (they read as CLI options).
    return "A" + text[1:] if text.startswith("-") else text


def plan_cluster(
    cluster_id: str, ports: Sequence[tuple[int, int]], security: Security = "plaintext"
) -> ClusterSpec:
    """Nodes 1..N, each with its (client port, controller port)."""
    if security not in SECURITY:
        raise ValueError(f"security {security[:40]!r} is not one of {', '.join(SECURITY)}")
    if not _CLUSTER_ID.fullmatch(cluster_id):
        raise ValueError(f"not a Kafka cluster id: {cluster_id!r}")
    if not ports:
        raise ValueError("a cluster needs at least one node")
    flat = [p for pair in ports for p in pair]
    if len(set(flat)) != len(flat):
        raise ValueError(f"ports must be distinct: {flat}")
    nodes = tuple(NodeSpec(i + 1, client, ctrl) for i, (client, ctrl) in enumerate(ports))
    return ClusterSpec(cluster_id, nodes, security)


@dataclass(frozen=True)
class BrokerLogins:
    """The brokers' own passwords: ``broker`` (inter-broker, SCRAM) and ``controller``
    (the KRaft controller listener, PLAIN)."""

    broker: str = field(repr=False)
    controller: str = field(repr=False)

    def __post_init__(self) -> None:
        # They go inside a quoted JAAS value: a quote or ';' there would rewrite it.
        if not (_JAAS_SECRET.fullmatch(self.broker) and _JAAS_SECRET.fullmatch(self.controller)):
            raise ValueError(
                "a broker password must be 16-128 letters, digits, '_' or '-' "
                "(the launcher writes such ones); move the cluster home aside to start anew"
            )


def security_settings(
    spec: ClusterSpec, node: NodeSpec, logins: BrokerLogins | None = None
) -> dict[str, str]:
    """Listeners, and with "sasl" the logins and the authorizer, of one node."""
    if spec.security == "plaintext":
        return {
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        }
    if logins is None:
        raise ValueError("a SASL cluster needs the brokers' logins")
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
    plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
    ctl = CONTROLLER_LOGIN
    return {
        "listeners": (
            f"SASL_PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
        ),
        "advertised.listeners": f"SASL_PLAINTEXT://127.0.0.1:{node.port}",
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        # The controller listener authenticates too: an anonymous one would need
        # User:ANONYMOUS as a super user, and admin clients can reach controllers
        # directly (--bootstrap-controller), so anyone on the host could grant ACLs.
        "listener.security.protocol.map": "CONTROLLER:SASL_PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
        # Clients and brokers: SCRAM only (no PLAIN, which would send the password).
        "sasl.enabled.mechanisms": SASL_MECHANISM,
        "sasl.mechanism.inter.broker.protocol": SASL_MECHANISM,
        "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": (
            f'{scram} required username="{BROKER_LOGIN}" password="{logins.broker}";'
        ),
        # A controller cannot check SCRAM (the users live in the log it serves), so its
        # listener takes PLAIN from a user list of one, on loopback only.
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": (
            f'{plain} required username="{ctl}" password="{logins.controller}" '
            f'user_{ctl}="{logins.controller}";'
        ),
        "authorizer.class.name": AUTHORIZER,
        # Deny what no ACL allows: a topic without ACLs is nobody's, not everybody's.
        "allow.everyone.if.no.acl.found": "false",
        "super.users": ";".join(f"User:{name}" for name in SUPER_USERS),
    }


def replication_settings(brokers: int) -> dict[str, str]:
    """Replication the cluster gives internal and default topics.

    Factor min(3, brokers); with 3 replicas an acknowledged (acks=all) write survives
    one broker down while writes go on (min.insync 2). Fewer replicas cannot do both,
    so min.insync is 1 there.
    """
    factor = min(3, brokers)
    min_isr = 2 if factor >= 3 else 1
    return {
        "default.replication.factor": str(factor),
        "min.insync.replicas": str(min_isr),
        "offsets.topic.replication.factor": str(factor),
        "transaction.state.log.replication.factor": str(factor),
        "transaction.state.log.min.isr": str(min_isr),
        "share.coordinator.state.topic.replication.factor": str(factor),
        "share.coordinator.state.topic.min.isr": str(min_isr),
    }


def broker_settings(
    spec: ClusterSpec, node: NodeSpec, data_dir: Path, logins: BrokerLogins | None = None
) -> dict[str, str]:
    """Every setting of one node; docker-compose.yml repeats the cluster-wide ones."""
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in spec.nodes)
    return {
        # KRaft, combined mode: every node is a voter and a broker, as in a small cluster.
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": voters,
        "controller.listener.names": "CONTROLLER",
        **security_settings(spec, node, logins),
        "log.dirs": str(data_dir),
        **replication_settings(len(spec.nodes)),
        # modelvc creates every topic it uses with its own settings; a typo must fail,
        # not create a topic with broker defaults.
        "auto.create.topics.enable": "false",
        # Never elect an out-of-sync replica: that would drop acknowledged writes.
        "unclean.leader.election.enable": "false",
        # The 3 s default waits for more members before the first rebalance; on a local
        # cluster it only delays every first consumer (Kafka's own sample config says so).
        "group.initial.rebalance.delay.ms": "0",
    }


def render_properties(settings: Mapping[str, str]) -> str:
    """Java properties text; values are ours (ports, ids, paths), checked for newlines."""
    lines = ["# Written by modelvc.kafka_broker; rewritten at every start."]
    for key, value in settings.items():
        if "\n" in value or "\n" in key:
            raise ValueError(f"newline in setting {key!r}")
        # Backslashes escape in .properties files; paths on this OS have none we need.
        lines.append(f"{key}={value.replace(chr(92), chr(92) * 2)}")
    return "\n".join(lines) + "\n"


def render_log4j2(level: str = "INFO") -> str:
    """log4j2 properties: a size-rolled server.log per node (its dir as a system property)."""
    return f"""\
# Written by modelvc.kafka_broker.
status = warn
appender.server.type = RollingFile
appender.server.name = server
appender.server.fileName = ${{sys:kafka.logs.dir}}/server.log
appender.server.filePattern = ${{sys:kafka.logs.dir}}/server.log.%i
appender.server.layout.type = PatternLayout
appender.server.layout.pattern = [%d] %p %m (%c)%n
appender.server.policies.type = Policies
appender.server.policies.size.type = SizeBasedTriggeringPolicy
appender.server.policies.size.size = 20MB
appender.server.strategy.type = DefaultRolloverStrategy
appender.server.strategy.max = 3
rootLogger.level = {level}
rootLogger.appenderRef.server.ref = server
# Per-request and per-partition state chatter: only problems.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""


def jvm_options(heap: str, log4j2: Path, logs_dir: Path) -> list[str]:
    return [
        # No -Xms: an idle broker then keeps a small heap, so several fit side by side.
        f"-Xmx{heap}",
        # Kafka's own launcher defaults: G1 with short pauses.
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        # A broker out of heap is broken; let it die so its peers take over.
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j2}",
        f"-Dkafka.logs.dir={logs_dir}",
    ]


def classpath(lib: Path) -> str:
    return str(lib / "*")


def server_argv(java: str, lib: Path, heap: str, log4j2: Path, node_dir: Path) -> list[str]:
    return [
        java,
        *jvm_options(heap, log4j2, node_dir / "logs"),
        "-cp",
        classpath(lib),
        KAFKA_MAIN,
        str(node_dir / "server.properties"),
    ]


def format_argv(
    java: str,
    lib: Path,
    log4j2: Path,
    node_dir: Path,
    cluster_id: str,
    scram: Sequence[str] = (),
) -> list[str]:
    """The storage tool's argv; ``scram``: ``--add-scram`` values (:func:`scram_argument`),
    the users every node's first metadata holds."""
    # A short-lived tool: the C1 compiler and serial GC start it in half the time.
    return [
        java,
        "-XX:TieredStopAtLevel=1",
        "-XX:+UseSerialGC",
        "-Xmx256m",
        f"-Dlog4j2.configurationFile={log4j2}",
        f"-Dkafka.logs.dir={node_dir / 'logs'}",
        "-cp",
        classpath(lib),
        STORAGE_TOOL,
        "format",
        "--ignore-formatted",
        "--cluster-id",
        cluster_id,
        "--config",
        str(node_dir / "server.properties"),
        *(arg for value in scram for arg in ("--add-scram", value)),
    ]


def java_major(version_output: str) -> int:
    """The major version from ``java -version`` (``1.8.0`` is 8, ``17.0.15`` is 17)."""
    found = _JAVA_VERSION.search(version_output)
    if found is None:
        raise ValueError(f"no version in {version_output[:200]!r}")
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def spec_to_json(spec: ClusterSpec, pids: Mapping[int, Spawned]) -> str:
    return json.dumps(
        {
            "cluster_id": spec.cluster_id,
            "security": spec.security,
            "nodes": [
                {"node_id": n.node_id, "port": n.port, "controller_port": n.controller_port}
                for n in spec.nodes
            ],
            "processes": {
                str(node_id): {"pid": s.pid, "argv": list(s.argv), "log": s.log}
                for node_id, s in pids.items()
            },
        },
        indent=2,
    )


def spec_from_json(text: str) -> tuple[ClusterSpec, dict[int, Spawned]]:
    data = json.loads(text)
    ports = [(int(n["port"]), int(n["controller_port"])) for n in data["nodes"]]
    spec = plan_cluster(str(data["cluster_id"]), ports, data.get("security", "plaintext"))
    if [n["node_id"] for n in data["nodes"]] != [n.node_id for n in spec.nodes]:
        raise ValueError("node ids must be 1..N in order")
    processes = {
        int(k): Spawned(int(v["pid"]), tuple(str(a) for a in v["argv"]), str(v["log"]))
        for k, v in data.get("processes", {}).items()
    }
    return spec, processes


# ---------------------------------------------------------------------------
# Imperative part: find Java and the jars, format, spawn, wait, stop
# ---------------------------------------------------------------------------


def default_lib() -> Path:
    """The jars `make kafka` copied (or MODELVC_KAFKA_LIB)."""
    if os.environ.get(LIB_ENV):
        return Path(os.environ[LIB_ENV])
    return Path(__file__).resolve().parents[1] / "brokers" / "kafka" / "target" / "lib"


def find_lib(lib: Path | None = None) -> Path:
    lib = lib or default_lib()
    if not any(lib.glob("kafka_2.13-*.jar")):
        raise StackError(
            f"no Apache Kafka jars in {lib}; run `make kafka` (needs Maven and Java {MIN_JAVA}+)"
        )
    return lib


def find_java() -> str:
    """MODELVC_JAVA, else $JAVA_HOME/bin/java, else java on PATH; Java 17 or newer."""
    java = os.environ.get(JAVA_ENV)
    if not java and os.environ.get("JAVA_HOME"):
        candidate = Path(os.environ["JAVA_HOME"]) / "bin" / "java"
        java = str(candidate) if candidate.exists() else None
    java = java or shutil.which("java")
    if not java:
        raise StackError(
            f"Apache Kafka needs Java {MIN_JAVA}+ and none was found; install one "
            "(`apt-get install openjdk-17-jre-headless`) or set MODELVC_JAVA"
        )
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
        major = java_major(out.stderr + out.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        raise StackError(f"cannot run {java} -version ({exc}); set MODELVC_JAVA") from exc
    if major < MIN_JAVA:
        raise StackError(
            f"{java} is Java {major}; Apache Kafka 4.x needs {MIN_JAVA}+: "
            "install it or set MODELVC_JAVA to one"
        )
    return str(Path(java).resolve()) if os.sep in java else java


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


@dataclass
class KafkaCluster:
    """A running (or stopped) cluster under ``home``; every process is ours, by pid."""

    home: Path
    spec: ClusterSpec
    java: str
    lib: Path
    heap: str = DEFAULT_HEAP
    processes: dict[int, Spawned] = field(default_factory=dict)

    # -- layout ---------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return self.spec.bootstrap

    @property
    def security(self) -> Security:
        return self.spec.security

    @property
    def credentials_dir(self) -> Path:
        return self.home / "credentials"

    def access(self, role: Role = "admin") -> KafkaAccess:
        """How a client of ``role`` reaches this cluster (delivery negotiated by the client);
        on a plaintext cluster every role is the same anonymous client."""
        if self.security == "plaintext":
            return KafkaAccess(self.bootstrap)
        return KafkaAccess(self.bootstrap, "sasl", credentials_path(self.credentials_dir, role))

    @property
    def log4j2(self) -> Path:
        return self.home / "log4j2.properties"

    def node_dir(self, node_id: int) -> Path:
        return self.home / f"node-{node_id}"

    def data_dir(self, node_id: int) -> Path:
        return self.node_dir(node_id) / "data"

    def server_log(self, node_id: int) -> Path:
        return self.node_dir(node_id) / "logs" / "server.log"

    def formatted(self, node_id: int) -> bool:
        return (self.data_dir(node_id) / "meta.properties").exists()

    # -- lifecycle --------------------------------------------------------------

    @classmethod
    def open(
        cls,
        home: Path,
        brokers: int = 1,
        *,
        java: str | None = None,
        lib: Path | None = None,
        heap: str = DEFAULT_HEAP,
        ports: Sequence[tuple[int, int]] | None = None,
        security: Security = "plaintext",
    ) -> KafkaCluster:
        """The cluster recorded in ``home``, or a new plan of ``brokers`` nodes on ``ports``
        (client, controller) pairs, free ones when None; a recorded cluster keeps its own.
        ``security`` "sasl": SCRAM logins and an authorizer (see modelvc.kafka_acl)."""
        home = home.resolve()
        home.mkdir(parents=True, exist_ok=True)
        record = home / "cluster.json"
        if record.exists():
            try:
                spec, processes = spec_from_json(record.read_text())
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise StackError(
                    f"{record} is unreadable ({exc}); move {home} aside to start a new cluster"
                ) from exc
            if len(spec.nodes) != brokers:
                raise StackError(
                    f"{home} holds a {len(spec.nodes)}-broker cluster, not {brokers}; "
                    f"start it with {len(spec.nodes)} brokers or move {home} aside"
                )
            if spec.security != security:
                raise StackError(
                    f"{home} holds a cluster formatted with security {spec.security}, not "
                    f"{security}; set MODELVC_KAFKA_SECURITY={spec.security} or move {home} "
                    "aside to start a new cluster"
                )
        else:
            spec = plan_cluster(
                cluster_id_from(uuid.uuid4().bytes), ports or _free_port_pairs(brokers), security
            )
            processes = {}
        cluster = cls(home, spec, java or find_java(), find_lib(lib), heap, processes)
        cluster._save()
        return cluster

    @classmethod
    def start(
        cls,
        home: Path,
        brokers: int = 1,
        *,
        java: str | None = None,
        lib: Path | None = None,
        heap: str = DEFAULT_HEAP,
        timeout: float = START_TIMEOUT_S,
        security: Security = "plaintext",
    ) -> KafkaCluster:
        """Open ``home``, format what is new, start every node, wait for all brokers."""
        cluster = cls.open(home, brokers, java=java, lib=lib, heap=heap, security=security)
        try:
            cluster.start_all(timeout)
        except BaseException:
            cluster.stop(hard=True)
            raise
        return cluster

    def start_all(self, timeout: float = START_TIMEOUT_S) -> None:
        if self.security == "sasl":
            # New passwords only before the first format; afterwards the log holds them.
            fresh = not any(self.formatted(n.node_id) for n in self.spec.nodes)
            ensure_credentials(self.credentials_dir, (*SCRAM_USERS, CONTROLLER_LOGIN), fresh)
        self._write_config()
        self._format([n.node_id for n in self.spec.nodes if not self.formatted(n.node_id)])
        for node in self.spec.nodes:
            if not self.running(node.node_id):  # one left from an earlier start keeps going
                self._spawn(node.node_id)
        self.wait_ready(timeout)

    def restart_node(self, node_id: int, timeout: float = START_TIMEOUT_S) -> None:
        """Start one (stopped or killed) node again on its own data; wait for every broker."""
        self.spec.node(node_id)
        if self.running(node_id):
            raise StackError(
                f"Kafka node {node_id} is still running (pid {self.processes[node_id].pid})"
            )
        self._write_config()
        if not self.formatted(node_id):
            raise StackError(
                f"{self.data_dir(node_id)} is not formatted; a restart never reformats "
                "(that would drop its data): start the cluster afresh in a new home"
            )
        self._spawn(node_id)
        self.wait_ready(timeout)

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would: no controlled shutdown, no flush."""
        self._stop_node(node_id, hard=True)

    def stop_node(self, node_id: int, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM one node (a controlled shutdown), SIGKILL after ``timeout``."""
        self._stop_node(node_id, hard=False, timeout=timeout)

    def stop(self, timeout: float = STOP_TIMEOUT_S, hard: bool = False) -> None:
        """Stop every node at once (each SIGTERM, SIGKILL after ``timeout``); data stays."""
        _stop_all(list(self.processes.values()), timeout, hard)

    def running(self, node_id: int) -> bool:
        spawned = self.processes.get(node_id)
        return spawned is not None and alive(spawned.pid) and is_ours(spawned)

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until metadata lists every node as an unfenced broker; fail fast if one exits."""
        deadline = time.monotonic() + timeout
        expected = {n.node_id for n in self.spec.nodes}
        for node in self.spec.nodes:
            remaining = max(1.0, deadline - time.monotonic())
            try:
                wait_for_port(node.port, remaining, self.processes[node.node_id].pid)
            except (StackError, KeyError) as exc:
                raise self._failed(node.node_id, str(exc)) from exc
        seen: set[int] = set()
        while time.monotonic() < deadline:
            for node_id in expected:
                if not self.running(node_id):
                    raise self._failed(node_id, "exited while the cluster started")
            seen = _brokers_in_metadata(self.access("admin"))
            if seen == expected:
                return
            time.sleep(0.25)
        raise StackError(
            f"Kafka metadata lists brokers {sorted(seen)}, not {sorted(expected)}, after "
            f"{timeout:.0f}s; see {self.home}/node-*/logs/server.log"
        )

    # -- internals ----------------------------------------------------------------

    def _save(self) -> None:
        tmp = self.home / "cluster.json.tmp"
        tmp.write_text(spec_to_json(self.spec, self.processes))
        tmp.replace(self.home / "cluster.json")

    def _logins(self) -> BrokerLogins | None:
        if self.security == "plaintext":
            return None
        return BrokerLogins(
            broker=read_credentials(self.credentials_dir, BROKER_LOGIN).password,
            controller=read_credentials(self.credentials_dir, CONTROLLER_LOGIN).password,
        )

    def _write_config(self) -> None:
        self.log4j2.write_text(render_log4j2())
        logins = self._logins()
        for node in self.spec.nodes:
            node_dir = self.node_dir(node.node_id)
            (node_dir / "logs").mkdir(parents=True, exist_ok=True)
            self.data_dir(node.node_id).mkdir(parents=True, exist_ok=True)
            settings = broker_settings(self.spec, node, self.data_dir(node.node_id), logins)
            # Written private always: with SASL it holds the brokers' passwords.
            write_private(node_dir / "server.properties", render_properties(settings).encode())

    def _scram_arguments(self) -> list[str]:
        """Every SCRAM user with a fresh salt; the same list for every node formatted now."""
        if self.security == "plaintext":
            return []
        return [
            scram_argument(
                name,
                read_credentials(self.credentials_dir, name).password,
                secrets.token_bytes(32),
                SCRAM_ITERATIONS,
            )
            for name in SCRAM_USERS
        ]

    def _format(self, node_ids: Sequence[int]) -> None:
        """StorageTool format, all new nodes at once (each JVM takes seconds to start)."""
        runs: list[tuple[int, subprocess.Popen[bytes], Path]] = []
        scram = self._scram_arguments() if node_ids else []
        try:
            for node_id in node_ids:
                node_dir = self.node_dir(node_id)
                log = node_dir / "logs" / "format.log"
                with open(log, "wb") as out:
                    argv = format_argv(
                        self.java, self.lib, self.log4j2, node_dir, self.spec.cluster_id, scram
                    )
                    runs.append(
                        (node_id, subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT), log)
                    )
            for node_id, proc, log in runs:
                if proc.wait(timeout=START_TIMEOUT_S) != 0:
                    raise StackError(
                        f"formatting Kafka node {node_id} failed; see {log}:\n{_log_tail(log)}"
                    )
        finally:
            for _, proc, _ in runs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def _spawn(self, node_id: int) -> None:
        node_dir = self.node_dir(node_id)
        argv = server_argv(self.java, self.lib, self.heap, self.log4j2, node_dir)
        self.processes[node_id] = spawn(argv, node_dir / "logs" / "stdout.log")
        self._save()

    def _stop_node(self, node_id: int, hard: bool, timeout: float = STOP_TIMEOUT_S) -> None:
        self.spec.node(node_id)
        spawned = self.processes.get(node_id)
        if spawned is not None:
            stop(spawned, timeout=timeout, hard=hard)

    def _failed(self, node_id: int, why: str) -> StackError:
        log = self.server_log(node_id)
        stdout = self.node_dir(node_id) / "logs" / "stdout.log"
        return StackError(
            f"Kafka node {node_id} {why}; see {log} and {stdout}:\n"
            f"{_log_tail(log)}\n{_log_tail(stdout, 5)}"
        )


def stop_recorded(home: Path, timeout: float = STOP_TIMEOUT_S, hard: bool = False) -> int:
    """Stop every node ``<home>/cluster.json`` records, by pid (for `down` in another
    process, and for cleanup after a failure); needs no Java. Returns how many were live."""
    record = home / "cluster.json"
    if not record.exists():
        return 0
    try:
        processes = list(spec_from_json(record.read_text())[1].values())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StackError(f"{record} is unreadable ({exc}); stop its Kafka nodes by hand") from exc
    live = [p for p in processes if alive(p.pid) and is_ours(p)]
    _stop_all(live, timeout, hard)
    return len(live)


def _stop_all(processes: Sequence[Spawned], timeout: float, hard: bool) -> None:
    """In parallel: a node's controlled shutdown waits on its peers, so one at a time
    would add the waits up."""
    if processes:
        with ThreadPoolExecutor(max_workers=len(processes)) as pool:
            list(pool.map(lambda p: stop(p, timeout=timeout, hard=hard), processes))


def _free_port_pairs(count: int) -> list[tuple[int, int]]:
    ports: list[int] = []
    while len(ports) < 2 * count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return [(ports[2 * i], ports[2 * i + 1]) for i in range(count)]


def _brokers_in_metadata(access: KafkaAccess) -> set[int]:
    """Broker ids the cluster's metadata lists as unfenced; empty while it cannot answer
    (with SASL, also until the broker has loaded the users from its log)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(
            **access.admin(client_id="modelvc-kafka-launcher", request_timeout_ms=5000)
        )
    except (KafkaError, OSError, ValueError):
        return set()
    try:
        cluster = admin.describe_cluster()
        return {int(b["broker_id"]) for b in cluster.get("brokers", []) if not b.get("is_fenced")}
    except (KafkaError, OSError, ValueError):
        return set()
    finally:
        admin.close()


@contextlib.contextmanager
def running_cluster(
    home: Path,
    brokers: int = 1,
    *,
    lib: Path | None = None,
    heap: str = DEFAULT_HEAP,
    security: Security = "plaintext",
) -> Iterator[KafkaCluster]:
    """A cluster for the length of a ``with``; every node stopped by pid on the way out."""
    cluster = KafkaCluster.start(home, brokers, lib=lib, heap=heap, security=security)
    try:
        yield cluster
    finally:
        cluster.stop()
