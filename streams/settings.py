"""The one settings object of the streams app, built at the edge and passed down."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

EVENTS_TOPIC = "modelvc.events"
COMMANDS_TOPIC = "modelvc.commands"
REPLIES_TOPIC = "modelvc.replies"
DEAD_LETTER_TOPIC = "modelvc.dead-letter"
FEATURES_TOPIC = "modelvc.features"
PREDICTIONS_TOPIC = "modelvc.predictions"


@dataclass(frozen=True)
class Settings:
    bootstrap: str = "127.0.0.1:9092"
    partitions: int = 4
    data_dir: Path = Path(".modelvc/streams")
    artifact_root: Path = Path(".modelvc/artifacts")
    # The address the HTTP API binds to, and its canonical host: loopback unless an
    # operator says otherwise (a container sets 0.0.0.0 and publishes the port).
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    app_id: str = "modelvc-streams"
    instance_id: str = "streams-local"
    # The embedded broker answers a fetch only when its wait expires, so the
    # wait bounds read latency; 10 ms keeps a commit round trip well under 100 ms.
    fetch_wait_ms: int = 10
    command_timeout_s: float = 20.0
    # How long a read with ``?after=P:O`` waits for the projection to reach O.
    consistency_timeout_s: float = 10.0
    events_topic: str = EVENTS_TOPIC
    commands_topic: str = COMMANDS_TOPIC
    replies_topic: str = REPLIES_TOPIC
    dead_letter_topic: str = DEAD_LETTER_TOPIC
    features_topic: str = FEATURES_TOPIC
    predictions_topic: str = PREDICTIONS_TOPIC

    @classmethod
    def namespaced(cls, namespace: str, **kwargs: object) -> Settings:
        """Settings whose topics and consumer group live under ``namespace`` (tests, tenants)."""
        return cls(
            app_id=f"{namespace}-streams",
            events_topic=f"{namespace}.events",
            commands_topic=f"{namespace}.commands",
            replies_topic=f"{namespace}.replies",
            dead_letter_topic=f"{namespace}.dead-letter",
            features_topic=f"{namespace}.features",
            predictions_topic=f"{namespace}.predictions",
            **kwargs,  # type: ignore[arg-type]
        )

    @property
    def rocksdb_path(self) -> Path:
        return self.data_dir / "projection.rocksdb"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``MODELVC_*`` / ``KAFKA_BOOTSTRAP`` variables; call only at the edge."""
        env = os.environ if env is None else env
        home = Path(env.get("MODELVC_HOME", ".modelvc"))
        port = int(env.get("MODELVC_WEB_PORT", "6066"))
        return cls.namespaced(
            env.get("MODELVC_NAMESPACE", "modelvc"),
            bootstrap=env.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            partitions=int(env.get("MODELVC_PARTITIONS", "4")),
            data_dir=Path(env.get("MODELVC_DATA_DIR", str(home / "streams"))),
            artifact_root=Path(env.get("MODELVC_ARTIFACTS", str(home / "artifacts"))),
            web_host=env.get("MODELVC_WEB_HOST", "127.0.0.1"),
            web_port=port,
            instance_id=env.get("MODELVC_INSTANCE_ID", f"{socket.gethostname()}-{port}"),
            fetch_wait_ms=int(env.get("MODELVC_FETCH_WAIT_MS", "10")),
            command_timeout_s=float(env.get("MODELVC_COMMAND_TIMEOUT_S", "20")),
            consistency_timeout_s=float(env.get("MODELVC_CONSISTENCY_TIMEOUT_S", "10")),
        )
