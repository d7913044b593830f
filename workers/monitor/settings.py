"""The monitor's one settings object, built at the edge from the environment."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from streams.http_client import ADMIN_TOKEN_FILE, TOKEN_ENV, TOKEN_FILE_ENV, default_home
from streams.settings import Settings as StreamsSettings

WINDOW_ENV = "MODELVC_MONITOR_WINDOW_MS"
HORIZON_ENV = "MODELVC_MONITOR_HORIZON_MS"
LATENESS_ENV = "MODELVC_MONITOR_LATENESS_MS"
PORT_ENV = "MODELVC_MONITOR_PORT"
HOST_ENV = "MODELVC_MONITOR_HOST"
ID_ENV = "MODELVC_MONITOR_ID"
STATE_ENV = "MODELVC_MONITOR_STATE"
MAX_BATCH_ENV = "MODELVC_MONITOR_MAX_BATCH"
DAY_MS = 24 * 3600 * 1000
# The monitor id names its state directory and its windows' writer: a file name.
MONITOR_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class MonitorSettings:
    topics: StreamsSettings = field(default_factory=StreamsSettings)
    monitor_id: str = "monitor-local"
    window_ms: int = 60_000  # tumbling windows of this length
    horizon_ms: int = 3_600_000  # how long a prediction waits for its label, and back
    lateness_ms: int = 2_000  # how far behind the newest record a record may still be
    web_host: str = "127.0.0.1"
    web_port: int = 6072
    state_dir: Path | None = None  # None: $MODELVC_HOME/monitor/<monitor id>
    max_batch: int = 10_000  # records taken from the broker at once
    api_url: str | None = None  # the streams API (references); None: the local one
    # The reader token the API is asked with, found as the workers find theirs.
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    admin_token_file: Path = default_home({}) / ADMIN_TOKEN_FILE

    def __post_init__(self) -> None:
        if not 1_000 <= self.window_ms <= DAY_MS:
            raise ValueError(f"{WINDOW_ENV}={self.window_ms} is not 1000-{DAY_MS} (ms)")
        if not 0 <= self.horizon_ms <= 30 * DAY_MS:
            raise ValueError(f"{HORIZON_ENV}={self.horizon_ms} is not 0-{30 * DAY_MS} (ms)")
        if not 0 <= self.lateness_ms <= self.window_ms * 100:
            raise ValueError(
                f"{LATENESS_ENV}={self.lateness_ms} is not 0-{self.window_ms * 100} (ms, at "
                f"most 100 windows of {WINDOW_ENV})"
            )
        if not 1 <= self.max_batch <= 100_000:
            raise ValueError(f"{MAX_BATCH_ENV}={self.max_batch} is not 1-100000")
        if not MONITOR_ID.fullmatch(self.monitor_id):
            raise ValueError(
                f"{ID_ENV}={self.monitor_id[:100]!r}: use 1-100 letters, digits, '.', '_', '-' "
                "(it names the monitor's state directory)"
            )

    @property
    def state_path(self) -> Path:
        """The RocksDB directory of the join state and positions."""
        if self.state_dir is not None:
            return self.state_dir
        return self.topics.data_dir.parent / "monitor" / self.monitor_id

    @property
    def api(self) -> str:
        return self.api_url or f"http://127.0.0.1:{self.topics.web_port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MonitorSettings:
        """Read ``MODELVC_MONITOR_*`` and the topics' variables; call only at the edge."""
        env = os.environ if env is None else env
        port = int(env.get(PORT_ENV, str(cls.web_port)))
        return cls(
            topics=StreamsSettings.from_env(env),
            monitor_id=env.get(ID_ENV, f"{socket.gethostname()}-{port}"),
            window_ms=int(env.get(WINDOW_ENV, str(cls.window_ms))),
            horizon_ms=int(env.get(HORIZON_ENV, str(cls.horizon_ms))),
            lateness_ms=int(env.get(LATENESS_ENV, str(cls.lateness_ms))),
            web_host=env.get(HOST_ENV, "127.0.0.1"),
            web_port=port,
            state_dir=Path(state) if (state := env.get(STATE_ENV)) else None,
            max_batch=int(env.get(MAX_BATCH_ENV, str(cls.max_batch))),
            api_url=env.get("MODELVC_URL") or None,
            token=env.get(TOKEN_ENV) or None,
            token_file=Path(file) if (file := env.get(TOKEN_FILE_ENV)) else None,
            admin_token_file=default_home(env) / ADMIN_TOKEN_FILE,
        )

    def to_env(self) -> dict[str, str]:
        """The variables :meth:`from_env` reads back into these very settings (for children)."""
        env = self.topics.to_env() | {
            ID_ENV: self.monitor_id,
            WINDOW_ENV: str(self.window_ms),
            HORIZON_ENV: str(self.horizon_ms),
            LATENESS_ENV: str(self.lateness_ms),
            HOST_ENV: self.web_host,
            PORT_ENV: str(self.web_port),
            MAX_BATCH_ENV: str(self.max_batch),
        }
        if self.state_dir is not None:
            env[STATE_ENV] = str(self.state_dir)
        if self.api_url is not None:
            env["MODELVC_URL"] = self.api_url
        if self.token:
            env[TOKEN_ENV] = self.token
        if self.token_file is not None:
            env[TOKEN_FILE_ENV] = str(self.token_file)
        env["MODELVC_HOME"] = str(self.admin_token_file.parent)
        return env
