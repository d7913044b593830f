"""The worker's one settings object, built at the edge from the environment."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from streams.settings import Settings as StreamsSettings


@dataclass(frozen=True)
class WorkerSettings:
    topics: StreamsSettings = field(default_factory=StreamsSettings)
    worker_id: str = "worker-local"
    group_id: str = "modelvc-workers"
    web_host: str = "127.0.0.1"
    web_port: int = 6070
    artifact_root: Path | None = None  # read the store's files directly when shared
    artifact_url: str | None = None  # else fetch from the streams API
    max_batch: int = 5000
    max_refs: int = 1024  # distinct (model, ref) pairs one worker serves at once
    # Budget for one version: its trees plus a full batch (streams.modelfile estimates both).
    worker_memory_mb: int = 1024
    fetch_wait_ms: int = 10
    retry_s: float = 1.0

    @property
    def bootstrap(self) -> str:
        return self.topics.bootstrap

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        """Read ``MODELVC_*`` / ``KAFKA_BOOTSTRAP``; call only at the edge."""
        env = os.environ if env is None else env
        topics = StreamsSettings.from_env(env)
        port = int(env.get("MODELVC_WORKER_PORT", "6070"))
        namespace = env.get("MODELVC_NAMESPACE", "modelvc")
        root = env.get("MODELVC_ARTIFACTS")
        return cls(
            topics=topics,
            worker_id=env.get("MODELVC_WORKER_ID", f"{socket.gethostname()}-{port}"),
            group_id=env.get("MODELVC_WORKER_GROUP", f"{namespace}-workers"),
            web_host=env.get("MODELVC_WORKER_HOST", "127.0.0.1"),
            web_port=port,
            artifact_root=Path(root) if root else None,
            # The streams API serves every artifact by digest; the store directory is a shortcut.
            artifact_url=env.get("MODELVC_ARTIFACT_URL")
            or env.get("MODELVC_URL")
            or f"http://127.0.0.1:{env.get('MODELVC_WEB_PORT', '6066')}",
            max_batch=int(env.get("MODELVC_WORKER_MAX_BATCH", "5000")),
            max_refs=int(env.get("MODELVC_WORKER_MAX_REFS", "1024")),
            worker_memory_mb=int(env.get("MODELVC_WORKER_MEMORY_MB", "1024")),
            fetch_wait_ms=int(env.get("MODELVC_FETCH_WAIT_MS", "10")),
        )
