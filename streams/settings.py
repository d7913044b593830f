"""The one settings object of the streams app, built at the edge and passed down."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.artifacts.location import S3Location, endpoint_problem, parse_location
from streams.core import refs
from streams.core.hashing import SHA256_HEX
from streams.kafka_access import DELIVERY, SECURITY, Delivery, KafkaAccess, Security
from streams.modelfile import MAX_MODEL_BYTES

# A namespace prefixes every topic name and consumer group: Kafka's topic alphabet, bounded.
NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
# Key ids an operator pins: a few writer keys per deployment, never hundreds.
MAX_TRUSTED_KEYS = 64
TRUSTED_KEYS_ENV = "MODELVC_TRUSTED_WRITER_KEYS"
# The largest model a deployment takes, in MiB (MODELVC_MAX_MODEL_MB): checking one reads
# it whole into memory (our parser, then the sandbox child), so this is also what one
# check holds.
MIB = 1 << 20
MAX_MODEL_MB = 4096
# A path field left unset, resolved from the others in __post_init__ (no one means "."
# for a key file).
_UNSET_PATH = Path()


@dataclass(frozen=True)
class Settings:
    # Topics and the consumer group are named from the namespace (tests and tenants use
    # one each); the names are derived below, never stored, so they cannot disagree.
    namespace: str = "modelvc"
    bootstrap: str = "127.0.0.1:9092"
    partitions: int = 4
    data_dir: Path = Path(".modelvc/streams")
    # The artifact store every instance and worker shares: a directory, or
    # s3://bucket/prefix (credentials and region as boto3 finds them: AWS_* variables,
    # ~/.aws), at s3_endpoint when it is not AWS.
    artifacts: str = ".modelvc/artifacts"
    s3_endpoint: str | None = None
    # The largest model an upload may be and a download or a worker may read: a whole
    # number of MiB, 1 to MAX_MODEL_MB (MODELVC_MAX_MODEL_MB; default 64).
    max_model_bytes: int = MAX_MODEL_BYTES
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
    # The Ed25519 key this instance signs events and commands with (made at first start,
    # mode 0600, with its public half in <path>.pub); unset: data_dir / "writer.key".
    writer_key: Path = _UNSET_PATH
    # A file holding the token this instance issues as the first admin's, while the
    # security chain holds no token yet (`modelvc up` writes $MODELVC_HOME/admin.token).
    bootstrap_token_file: Path | None = None
    admin_actor: str = "admin"
    # Writer key ids (64 hex) readers accept as a partition ring's first key; the streams
    # app adds its own. Empty: a worker trusts each ring's first key on first use.
    trusted_writer_keys: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.writer_key == _UNSET_PATH:
            object.__setattr__(self, "writer_key", self.data_dir / "writer.key")
        if not NAMESPACE.fullmatch(self.namespace):
            raise ValueError(
                f"namespace {self.namespace[:80]!r} is not 1-200 letters, digits, '.', '_' "
                "or '-' starting with a letter or digit; set MODELVC_NAMESPACE to one that is"
            )
        if not refs.NAME.fullmatch(self.admin_actor):
            raise ValueError(
                f"MODELVC_ADMIN_ACTOR={self.admin_actor[:80]!r} is not an actor name (1-128 "
                "letters, digits, '.', '_' or '-' starting with a letter or digit); set one that is"
            )
        problem = trusted_keys_problem(self.trusted_writer_keys)
        if problem is not None:
            raise ValueError(problem)
        problem = artifacts_problem(self.artifacts, self.s3_endpoint)
        if problem is not None:
            raise ValueError(problem)
        if self.max_model_bytes % MIB or not 1 <= self.max_model_bytes // MIB <= MAX_MODEL_MB:
            raise ValueError(
                f"the model size limit {self.max_model_bytes} bytes is not 1-{MAX_MODEL_MB} "
                f"MiB; set MODELVC_MAX_MODEL_MB to a whole number from 1 to {MAX_MODEL_MB} "
                f"(default {MAX_MODEL_BYTES // MIB})"
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
    def labels_topic(self) -> str:
        """True values answering predictions, keyed by feature event id or entity key."""
        return f"{self.namespace}.labels"

    @property
    def metrics_topic(self) -> str:
        """The monitor's metric windows, keyed by model: kept forever, so replayable."""
        return f"{self.namespace}.metrics"

    @property
    def shadow_predictions_topic(self) -> str:
        """Predictions of shadow commits: apart, so subscribers of predictions never see them."""
        return f"{self.namespace}.shadow-predictions"

    @property
    def rocksdb_path(self) -> Path:
        return self.data_dir / "projection.rocksdb"

    @property
    def staging_dir(self) -> Path:
        """Where uploads stream while they are checked: inside a store directory (its
        tmp, made on the first upload: the store's own disk), else on this instance's
        own disk. Storing copies the checked file into the store (a write, an fsync and
        a link for a directory; an upload for S3), so the staged file is never what is
        served."""
        location = parse_location(self.artifacts)
        if isinstance(location, S3Location):
            return self.data_dir / "uploads"
        return location / "tmp"

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
            artifacts=env.get("MODELVC_ARTIFACTS") or str(home / "artifacts"),
            s3_endpoint=env.get("MODELVC_S3_ENDPOINT") or None,
            max_model_bytes=max_model_mb(env.get("MODELVC_MAX_MODEL_MB")) * MIB,
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
            writer_key=Path(env.get("MODELVC_WRITER_KEY") or data_dir / "writer.key"),
            bootstrap_token_file=(
                Path(token) if (token := env.get("MODELVC_BOOTSTRAP_TOKEN_FILE")) else None
            ),
            admin_actor=env.get("MODELVC_ADMIN_ACTOR", "admin"),
            trusted_writer_keys=parse_trusted_keys(env.get(TRUSTED_KEYS_ENV, "")),
        )

    def to_env(self) -> dict[str, str]:
        """The variables :meth:`from_env` reads back into these very settings (for children)."""
        env = {
            "MODELVC_NAMESPACE": self.namespace,
            "MODELVC_PARTITIONS": str(self.partitions),
            "MODELVC_DATA_DIR": str(self.data_dir),
            "MODELVC_ARTIFACTS": self.artifacts,
            # Always set (empty: none), so a child never inherits another store's endpoint.
            "MODELVC_S3_ENDPOINT": self.s3_endpoint or "",
            "MODELVC_MAX_MODEL_MB": str(self.max_model_bytes // MIB),
            "MODELVC_ARCHIVE_DIR": str(self.archive_dir),
            "MODELVC_WEB_HOST": self.web_host,
            "MODELVC_WEB_PORT": str(self.web_port),
            "MODELVC_INSTANCE_ID": self.instance_id,
            "MODELVC_FETCH_WAIT_MS": str(self.fetch_wait_ms),
            # repr: the shortest text that reads back as the same float
            "MODELVC_COMMAND_TIMEOUT_S": repr(self.command_timeout_s),
            "MODELVC_CONSISTENCY_TIMEOUT_S": repr(self.consistency_timeout_s),
            "MODELVC_WRITER_KEY": str(self.writer_key),
            "MODELVC_ADMIN_ACTOR": self.admin_actor,
        } | self.access.to_env()
        if self.trusted_writer_keys:
            env[TRUSTED_KEYS_ENV] = ",".join(sorted(self.trusted_writer_keys))
        if self.bootstrap_token_file is not None:
            env["MODELVC_BOOTSTRAP_TOKEN_FILE"] = str(self.bootstrap_token_file)
        if self.replication_factor is not None:
            env["MODELVC_REPLICATION_FACTOR"] = str(self.replication_factor)
        return env


def artifacts_problem(artifacts: str, s3_endpoint: str | None) -> str | None:
    """What is wrong with MODELVC_ARTIFACTS / MODELVC_S3_ENDPOINT, or None."""
    try:
        parse_location(artifacts)
    except ValueError as exc:
        return f"MODELVC_ARTIFACTS={artifacts[:80]!r}: {exc}"
    return None if s3_endpoint is None else endpoint_problem(s3_endpoint)


def max_model_mb(text: str | None) -> int:
    """MODELVC_MAX_MODEL_MB as a number (unset or empty: the default); ValueError saying
    the accepted range for text that is not a whole number (the range is checked with
    the settings)."""
    if not text:
        return MAX_MODEL_BYTES // MIB
    if not re.fullmatch(r"[0-9]{1,9}", text.strip()):
        raise ValueError(
            f"MODELVC_MAX_MODEL_MB={text[:40]!r} is not a whole number of MiB; set it to "
            f"1-{MAX_MODEL_MB} (default {MAX_MODEL_BYTES // MIB})"
        )
    return int(text)


def parse_trusted_keys(text: str) -> frozenset[str]:
    """The key ids in ``MODELVC_TRUSTED_WRITER_KEYS`` (comma-separated; blanks ignored)."""
    # Bounded before it is split: the value comes from whoever set the environment.
    if len(text) > MAX_TRUSTED_KEYS * 66:
        raise ValueError(f"{TRUSTED_KEYS_ENV} is over {MAX_TRUSTED_KEYS} key ids long")
    return frozenset(part.strip().lower() for part in text.split(",") if part.strip())


def trusted_keys_problem(keys: frozenset[str]) -> str | None:
    if len(keys) > MAX_TRUSTED_KEYS:
        return f"{TRUSTED_KEYS_ENV} names {len(keys)} keys; at most {MAX_TRUSTED_KEYS} are allowed"
    for key in sorted(keys):
        if not isinstance(key, str) or not SHA256_HEX.fullmatch(key):
            return (
                f"{TRUSTED_KEYS_ENV} holds {str(key)[:80]!r}, not a writer key id (64 hex "
                "digits); list the ids `modelvc key list` shows, separated by commas"
            )
    return None


# The default namespace's topics, for clients that take a topic name (modelvc.streaming).
_DEFAULT = Settings()
EVENTS_TOPIC = _DEFAULT.events_topic
COMMANDS_TOPIC = _DEFAULT.commands_topic
REPLIES_TOPIC = _DEFAULT.replies_topic
DEAD_LETTER_TOPIC = _DEFAULT.dead_letter_topic
FEATURES_TOPIC = _DEFAULT.features_topic
PREDICTIONS_TOPIC = _DEFAULT.predictions_topic
LABELS_TOPIC = _DEFAULT.labels_topic
METRICS_TOPIC = _DEFAULT.metrics_topic
SHADOW_PREDICTIONS_TOPIC = _DEFAULT.shadow_predictions_topic
