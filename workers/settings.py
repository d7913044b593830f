"""The worker's one settings object, built at the edge from the environment."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from streams.artifacts import S3Location, parse_location
from streams.http_client import ADMIN_TOKEN_FILE, TOKEN_ENV, TOKEN_FILE_ENV, default_home
from streams.settings import Settings as StreamsSettings

SIGN_PREDICTIONS_ENV = "MODELVC_SIGN_PREDICTIONS"  # 1: sign every prediction
CACHE_ENV = "MODELVC_WORKER_CACHE"  # the artifact cache's directory
CACHE_MB_ENV = "MODELVC_WORKER_CACHE_MB"  # its bound, in MiB
SHARED_STORE_ENV = "MODELVC_WORKER_SHARED_STORE"  # 1: read the store directly; 0: the API only
MAX_IN_FLIGHT_ENV = "MODELVC_WORKER_MAX_IN_FLIGHT"  # batches sent, acks awaited, at once
LINGER_ENV = "MODELVC_WORKER_LINGER_MS"  # the producer's linger for predictions
MAX_IN_FLIGHT = 64
MAX_CACHE_MB = 1 << 24  # 16 TiB: past any disk, so a typo is caught, not a real size


@dataclass(frozen=True)
class WorkerSettings:
    topics: StreamsSettings = field(default_factory=StreamsSettings)
    worker_id: str = "worker-local"
    group_id: str = "modelvc-workers"
    web_host: str = "127.0.0.1"
    web_port: int = 6070
    # Where artifacts are read from: the store (``topics.artifacts``) directly, or the
    # streams API (also for an artifact the store does not have). True: the store directly;
    # False: the API only (say, workers given no store credentials); None, decided at
    # construction: directly when it is S3, the API for a directory (not known to be
    # shared with this worker).
    shared_store: bool | None = None
    api_url: str | None = None  # the streams API; None: the local one on topics.web_port
    # Defaults measured by bench/serving.py (its sweep table): see workers.loop.
    max_batch: int = 5000
    # Batches scored and sent whose acknowledgements are still awaited (at-least-once);
    # the offsets are committed in order behind them. 1..MAX_IN_FLIGHT.
    max_in_flight: int = 4
    linger_ms: int = 0
    max_refs: int = 1024  # distinct (model, ref) pairs served at once; least recently used go
    # Budget for one version: its trees plus a full batch (streams.modelfile estimates both).
    worker_memory_mb: int = 1024
    # The local cache of artifacts fetched over the network (S3 or the API), bounded in
    # bytes; None: $MODELVC_HOME/cache/<worker id> (beside data_dir, as keys are).
    cache_dir: Path | None = None
    cache_mb: int = 2048
    retry_s: float = 1.0
    fault: str = ""  # test-only fault hook (MODELVC_WORKER_FAULT), see workers.loop.Fault
    # Sign every prediction with this worker's own Ed25519 key (workers.signing).
    sign_predictions: bool = False
    worker_key: Path | None = None  # None: $MODELVC_HOME/keys/worker-<worker id>.key
    # The reader token artifacts are fetched from the API with, found at bootstrap in
    # streams.http_client's one order: token (MODELVC_TOKEN), else the file token_file
    # (MODELVC_TOKEN_FILE), else admin_token_file ($MODELVC_HOME/admin.token) if it exists.
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    admin_token_file: Path = default_home({}) / ADMIN_TOKEN_FILE

    def __post_init__(self) -> None:
        if self.shared_store is None:
            is_s3 = isinstance(parse_location(self.topics.artifacts), S3Location)
            object.__setattr__(self, "shared_store", is_s3)  # frozen: set once, here
        if not 1 <= self.max_in_flight <= MAX_IN_FLIGHT:
            raise ValueError(
                f"{MAX_IN_FLIGHT_ENV}={self.max_in_flight} is not 1-{MAX_IN_FLIGHT} (batches "
                "sent whose acknowledgements are awaited at once); 1 sends one batch at a time"
            )
        if not 0 <= self.linger_ms <= 1000:
            raise ValueError(f"{LINGER_ENV}={self.linger_ms} is not 0-1000 (milliseconds)")
        if not 0 <= self.cache_mb <= MAX_CACHE_MB:
            raise ValueError(
                f"{CACHE_MB_ENV}={self.cache_mb} is not 0-{MAX_CACHE_MB} (MiB); "
                "0 keeps no artifact on local disk"
            )

    @property
    def bootstrap(self) -> str:
        return self.topics.bootstrap

    @property
    def namespace(self) -> str:
        return self.topics.namespace

    @property
    def transactional_id(self) -> str:
        """This worker's transactional id in exactly-once delivery: unique per worker of the
        group, and the same across its restarts, so a restarted worker fences its zombie."""
        return f"{self.group_id}-{self.worker_id}"

    @property
    def worker_key_path(self) -> Path:
        """The private key predictions are signed with (created 0600 at first start)."""
        if self.worker_key is not None:
            return self.worker_key
        # data_dir is $MODELVC_HOME/streams unless moved; keys live beside it, as the writer's.
        name = self._file_name("a key file", "MODELVC_WORKER_KEY to the key's path")
        return self.topics.data_dir.parent / "keys" / f"worker-{name}.key"

    @property
    def cache_path(self) -> Path:
        """The directory of this worker's artifact cache (see :mod:`workers.cache`)."""
        if self.cache_dir is not None:
            return self.cache_dir
        name = self._file_name("a cache directory", "MODELVC_WORKER_CACHE to a directory")
        return self.topics.data_dir.parent / "cache" / name

    def _file_name(self, what: str, instead: str) -> str:
        # The worker id is a file name here: anything else would let it point elsewhere.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", self.worker_id):
            raise ValueError(
                f"MODELVC_WORKER_ID={self.worker_id[:100]!r} cannot name {what}: set "
                f"{instead}, or use letters, digits, '.', '_', '-'"
            )
        return self.worker_id

    @property
    def fetch_wait_ms(self) -> int:
        return self.topics.fetch_wait_ms

    @property
    def artifact_store(self) -> str | None:
        """The store this worker reads directly (``topics.artifacts``), or None: the API only.

        An S3 store is reachable from anywhere, a directory only when shared with this
        worker; either is read only through the API when ``shared_store`` is False.
        """
        return self.topics.artifacts if self.shared_store else None

    @property
    def artifact_url(self) -> str:
        # The streams API serves every artifact by digest; the store is a shortcut.
        return self.api_url or f"http://127.0.0.1:{self.topics.web_port}"

    @property
    def uses_cache(self) -> bool:
        """Whether artifacts are cached locally: they are when they come over the network
        (S3, the API), not when they are read from a directory already on this machine,
        nor when the cache has no room (MODELVC_WORKER_CACHE_MB=0)."""
        store = self.artifact_store
        remote = store is None or isinstance(parse_location(store), S3Location)
        return remote and self.cache_mb > 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        """Read ``MODELVC_*`` / ``KAFKA_BOOTSTRAP``; call only at the edge."""
        env = os.environ if env is None else env
        topics = StreamsSettings.from_env(env)
        port = int(env.get("MODELVC_WORKER_PORT", "6070"))
        # A worker given a store reads it directly, unless told to use the API only.
        given = bool(env.get("MODELVC_ARTIFACTS"))
        shared = _flag(env, SHARED_STORE_ENV) if env.get(SHARED_STORE_ENV) else given
        return cls(
            topics=topics,
            worker_id=env.get("MODELVC_WORKER_ID", f"{socket.gethostname()}-{port}"),
            group_id=env.get("MODELVC_WORKER_GROUP", f"{topics.namespace}-workers"),
            web_host=env.get("MODELVC_WORKER_HOST", "127.0.0.1"),
            web_port=port,
            shared_store=shared,
            api_url=env.get("MODELVC_ARTIFACT_URL") or env.get("MODELVC_URL") or None,
            max_batch=int(env.get("MODELVC_WORKER_MAX_BATCH", str(cls.max_batch))),
            max_in_flight=int(env.get(MAX_IN_FLIGHT_ENV, str(cls.max_in_flight))),
            linger_ms=int(env.get(LINGER_ENV, str(cls.linger_ms))),
            max_refs=int(env.get("MODELVC_WORKER_MAX_REFS", "1024")),
            worker_memory_mb=int(env.get("MODELVC_WORKER_MEMORY_MB", "1024")),
            cache_dir=Path(cache) if (cache := env.get(CACHE_ENV)) else None,
            cache_mb=int(env.get(CACHE_MB_ENV, "2048")),
            retry_s=float(env.get("MODELVC_WORKER_RETRY_S", "1")),
            fault=env.get("MODELVC_WORKER_FAULT", ""),
            sign_predictions=_flag(env, SIGN_PREDICTIONS_ENV),
            worker_key=Path(key) if (key := env.get("MODELVC_WORKER_KEY")) else None,
            token=env.get(TOKEN_ENV) or None,
            token_file=Path(file) if (file := env.get(TOKEN_FILE_ENV)) else None,
            admin_token_file=default_home(env) / ADMIN_TOKEN_FILE,
        )

    def to_env(self) -> dict[str, str]:
        """The variables :meth:`from_env` reads back into these very settings (for children)."""
        env = self.topics.to_env() | {
            "MODELVC_WORKER_ID": self.worker_id,
            "MODELVC_WORKER_GROUP": self.group_id,
            "MODELVC_WORKER_HOST": self.web_host,
            "MODELVC_WORKER_PORT": str(self.web_port),
            SHARED_STORE_ENV: "1" if self.shared_store else "0",
            "MODELVC_WORKER_MAX_BATCH": str(self.max_batch),
            MAX_IN_FLIGHT_ENV: str(self.max_in_flight),
            LINGER_ENV: str(self.linger_ms),
            "MODELVC_WORKER_MAX_REFS": str(self.max_refs),
            "MODELVC_WORKER_MEMORY_MB": str(self.worker_memory_mb),
            CACHE_MB_ENV: str(self.cache_mb),
            "MODELVC_WORKER_RETRY_S": repr(self.retry_s),
        }
        if self.api_url is not None:
            env["MODELVC_ARTIFACT_URL"] = self.api_url
        if self.fault:
            env["MODELVC_WORKER_FAULT"] = self.fault
        if self.cache_dir is not None:
            env[CACHE_ENV] = str(self.cache_dir)
        if self.sign_predictions:
            env[SIGN_PREDICTIONS_ENV] = "1"
        if self.worker_key is not None:
            env["MODELVC_WORKER_KEY"] = str(self.worker_key)
        if self.token:
            env[TOKEN_ENV] = self.token
        if self.token_file is not None:
            env[TOKEN_FILE_ENV] = str(self.token_file)
        env["MODELVC_HOME"] = str(self.admin_token_file.parent)  # from_env: home/admin.token
        return env


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "0")
    if value not in ("0", "1", ""):
        raise ValueError(f"{name}={value[:20]!r}: set it to 1 (on) or 0 (off)")
    return value == "1"
