"""The one settings object of the streams app, built at the edge and passed down."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.kafka_access import DELIVERY, SECURITY, Delivery, KafkaAccess, Security

# A namespace prefixes every topic name and consumer group: Kafka's topic alphabet, bounded.
NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


@dataclass(frozen=True)
class Settings:
    # Topics and the consumer group are named from the namespace (tests and tenants use
    # one each); the names are derived below, never stored, so they cannot disagree.
    namespace: str = "modelvc"
    bootstrap: str = "127.0.0.1:9092"
    partitions: int = 4
    data_dir: Path = Path(".modelvc/streams")
    artifact_root: Path = Path(".modelvc/artifacts")
    archive_dir: Path = Path(".modelvc/archive")
    # The address the HTTP API binds to, and its canonical host: loopback unless an
    # operator says otherwise (a container sets 0.0.0.0 and publishes the port).
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    instance_id: str = "streams-local"
    # The embedded broker answers a fetch only when its wait expires, so the
    # wait bounds read latency; 10 ms keeps a commit round trip well under 100 ms.
    fetch_wait_ms: int = 10
    command_timeout_s: float = 20.0
    # How long a read with ``?after=P:O`` waits for the projection to reach O.
    consistency_timeout_s: float = 10.0
    # How clients log in (plaintext, or SASL/SCRAM from a credentials file) and what
    # delivery they ask for (streams.kafka_access says what each means).
    kafka_security: Security = "plaintext"
    kafka_credentials: Path | None = None
    delivery: Delivery = "auto"
    # Replicas of every topic modelvc creates; None: min(3, brokers in the cluster).
    replication_factor: int | None = None

    def __post_init__(self) -> None:
        if not NAMESPACE.fullmatch(self.namespace):
            raise ValueError(
                f"namespace {self.namespace[:80]!r} is not 1-200 letters, digits, '.', '_' "
                "or '-' starting with a letter or digit; set MODELVC_NAMESPACE to one that is"
            )
        if self.replication_factor is not None and not 1 <= self.replication_factor <= 32:
            raise ValueError(
                f"MODELVC_REPLICATION_FACTOR={self.replication_factor} is not 1-32; "
                "unset it to use min(3, brokers)"
            )
        if self.kafka_security not in SECURITY or self.delivery not in DELIVERY:
            raise ValueError(
                f"MODELVC_KAFKA_SECURITY={self.kafka_security[:40]!r} must be one of "
                f"{', '.join(SECURITY)} and MODELVC_DELIVERY={self.delivery[:40]!r} one of "
                f"{', '.join(DELIVERY)}"
            )

    @property
    def access(self) -> KafkaAccess:
        """How this process's clients reach Kafka."""
        return KafkaAccess(
            self.bootstrap, self.kafka_security, self.kafka_credentials, self.delivery
        )

    @classmethod
    def namespaced(cls, namespace: str, **kwargs: Any) -> Settings:
        """Settings whose topics and consumer group live under ``namespace`` (tests, tenants)."""
        return cls(namespace=namespace, **kwargs)

    @property
    def app_id(self) -> str:
        return f"{self.namespace}-streams"

    @property
    def events_topic(self) -> str:
        return f"{self.namespace}.events"

    @property
    def commands_topic(self) -> str:
        return f"{self.namespace}.commands"

    @property
    def replies_topic(self) -> str:
        return f"{self.namespace}.replies"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.namespace}.dead-letter"

    @property
    def features_topic(self) -> str:
        return f"{self.namespace}.features"

    @property
    def predictions_topic(self) -> str:
        return f"{self.namespace}.predictions"

    @property
    def rocksdb_path(self) -> Path:
        return self.data_dir / "projection.rocksdb"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``MODELVC_*`` / ``KAFKA_BOOTSTRAP`` variables; call only at the edge."""
        env = os.environ if env is None else env
        home = Path(env.get("MODELVC_HOME", ".modelvc"))
        port = int(env.get("MODELVC_WEB_PORT", "6066"))
        data_dir = Path(env.get("MODELVC_DATA_DIR", str(home / "streams")))
        access = KafkaAccess.from_env(env)
        return cls(
            namespace=env.get("MODELVC_NAMESPACE", "modelvc"),
            bootstrap=access.bootstrap,
            partitions=int(env.get("MODELVC_PARTITIONS", "4")),
            data_dir=data_dir,
            artifact_root=Path(env.get("MODELVC_ARTIFACTS", str(home / "artifacts"))),
            archive_dir=Path(env.get("MODELVC_ARCHIVE_DIR", str(data_dir.parent / "archive"))),
            web_host=env.get("MODELVC_WEB_HOST", "127.0.0.1"),
            web_port=port,
            instance_id=env.get("MODELVC_INSTANCE_ID", f"{socket.gethostname()}-{port}"),
            fetch_wait_ms=int(env.get("MODELVC_FETCH_WAIT_MS", "10")),
            command_timeout_s=float(env.get("MODELVC_COMMAND_TIMEOUT_S", "20")),
            consistency_timeout_s=float(env.get("MODELVC_CONSISTENCY_TIMEOUT_S", "10")),
            kafka_security=access.security,
            kafka_credentials=access.credentials,
            delivery=access.delivery,
            replication_factor=int(rf) if (rf := env.get("MODELVC_REPLICATION_FACTOR")) else None,
        )

    def to_env(self) -> dict[str, str]:
        """The variables :meth:`from_env` reads back into these very settings (for children)."""
        env = {
            "MODELVC_NAMESPACE": self.namespace,
            "MODELVC_PARTITIONS": str(self.partitions),
            "MODELVC_DATA_DIR": str(self.data_dir),
            "MODELVC_ARTIFACTS": str(self.artifact_root),
            "MODELVC_ARCHIVE_DIR": str(self.archive_dir),
            "MODELVC_WEB_HOST": self.web_host,
            "MODELVC_WEB_PORT": str(self.web_port),
            "MODELVC_INSTANCE_ID": self.instance_id,
            "MODELVC_FETCH_WAIT_MS": str(self.fetch_wait_ms),
            # repr: the shortest text that reads back as the same float
            "MODELVC_COMMAND_TIMEOUT_S": repr(self.command_timeout_s),
            "MODELVC_CONSISTENCY_TIMEOUT_S": repr(self.consistency_timeout_s),
        } | self.access.to_env()
        if self.replication_factor is not None:
            env["MODELVC_REPLICATION_FACTOR"] = str(self.replication_factor)
        return env


# The default namespace's topics, for clients that take a topic name (modelvc.streaming).
_DEFAULT = Settings()
EVENTS_TOPIC = _DEFAULT.events_topic
COMMANDS_TOPIC = _DEFAULT.commands_topic
REPLIES_TOPIC = _DEFAULT.replies_topic
DEAD_LETTER_TOPIC = _DEFAULT.dead_letter_topic
FEATURES_TOPIC = _DEFAULT.features_topic
PREDICTIONS_TOPIC = _DEFAULT.predictions_topic
