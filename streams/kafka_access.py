"""How every modelvc client reaches Kafka: the one home of client configuration.

Every producer, consumer and admin client (aiokafka and kafka-python take the same
keyword names for these) is configured from a :class:`KafkaAccess`:

- producers write with ``acks=all`` and, where the broker can, idempotently, so a retry
  after a lost acknowledgement never writes a record twice;
- consumers read ``read_committed``, so a transaction that was aborted (a worker killed
  mid-batch in exactly-once mode) is never seen;
- with ``security="sasl"`` every client authenticates with SCRAM-SHA-512, from a
  credentials file (``MODELVC_KAFKA_CREDENTIALS``), never from a claim.

Delivery: ``exactly-once`` needs a broker with idempotent producers and transactions
(Apache Kafka); ``at-least-once`` works everywhere (the embedded Tansu broker has
neither). ``auto`` asks the broker once (:func:`negotiate`) and says what it chose.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

log = logging.getLogger("modelvc.kafka")

Security = Literal["plaintext", "sasl"]
Delivery = Literal["auto", "exactly-once", "at-least-once"]
SECURITY: tuple[Security, ...] = ("plaintext", "sasl")
DELIVERY: tuple[Delivery, ...] = ("auto", "exactly-once", "at-least-once")
SASL_MECHANISM = "SCRAM-SHA-512"
# A credentials file is two short strings; anything larger is not one.
MAX_CREDENTIALS_BYTES = 4096


class KafkaAccessError(ValueError):
    """The Kafka access settings are unusable; the message says which variable to fix."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    @classmethod
    def read(cls, path: Path) -> Credentials:
        """``{"username": ..., "password": ...}`` from ``path`` (written by the launcher)."""
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_CREDENTIALS_BYTES + 1)
        except OSError as exc:
            raise KafkaAccessError(
                f"cannot read Kafka credentials {path}: {exc.strerror}; set "
                "MODELVC_KAFKA_CREDENTIALS to a file the launcher wrote (under MODELVC_HOME/kafka)"
            ) from exc
        try:
            if len(raw) > MAX_CREDENTIALS_BYTES:
                raise ValueError("too large")
            doc = json.loads(raw)
            username, password = doc["username"], doc["password"]
            if not (isinstance(username, str) and isinstance(password, str)):
                raise ValueError("not strings")
            if not username or not password:
                raise ValueError("empty")
        except (ValueError, KeyError, TypeError) as exc:
            raise KafkaAccessError(
                f"{path} is not a Kafka credentials file ({exc}); it must be JSON "
                '{"username": "...", "password": "..."} of at most 4 KiB'
            ) from exc
        return cls(username, password)


@dataclass(frozen=True)
class KafkaAccess:
    bootstrap: str = "127.0.0.1:9092"
    security: Security = "plaintext"
    # A path, read when a client is made: children get the path, never the password.
    credentials: Path | None = None
    delivery: Delivery = "auto"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KafkaAccess:
        """``KAFKA_BOOTSTRAP``, ``MODELVC_KAFKA_SECURITY``, ``MODELVC_KAFKA_CREDENTIALS``,
        ``MODELVC_DELIVERY``; call only at the edge."""
        creds = env.get("MODELVC_KAFKA_CREDENTIALS")
        return cls(
            bootstrap=env.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            security=cast(Security, env.get("MODELVC_KAFKA_SECURITY", "plaintext")),
            credentials=Path(creds) if creds else None,
            delivery=cast(Delivery, env.get("MODELVC_DELIVERY", "auto")),
        )

    def to_env(self) -> dict[str, str]:
        """The variables :meth:`from_env` reads back into this very access (for children)."""
        env = {
            "KAFKA_BOOTSTRAP": self.bootstrap,
            "MODELVC_KAFKA_SECURITY": self.security,
            "MODELVC_DELIVERY": self.delivery,
        }
        if self.credentials is not None:
            env["MODELVC_KAFKA_CREDENTIALS"] = str(self.credentials)
        return env

    def __post_init__(self) -> None:
        if self.security not in SECURITY:
            raise KafkaAccessError(
                f"MODELVC_KAFKA_SECURITY={self.security[:40]!r}: use one of {', '.join(SECURITY)}"
            )
        if self.delivery not in DELIVERY:
            raise KafkaAccessError(
                f"MODELVC_DELIVERY={self.delivery[:40]!r}: use one of {', '.join(DELIVERY)}"
            )
        if self.security == "sasl" and self.credentials is None:
            raise KafkaAccessError(
                "MODELVC_KAFKA_SECURITY=sasl needs credentials: set MODELVC_KAFKA_CREDENTIALS "
                "to a credentials file (the launcher writes them under MODELVC_HOME/kafka)"
            )

    def client(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments every client takes: where the brokers are and how to log in."""
        config: dict[str, Any] = {"bootstrap_servers": self.bootstrap}
        if self.security == "sasl":
            assert self.credentials is not None  # checked in __post_init__
            login = Credentials.read(self.credentials)
            config |= {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": SASL_MECHANISM,
                "sasl_plain_username": login.username,
                "sasl_plain_password": login.password,
            }
        return config | overrides

    def producer(self, **overrides: Any) -> dict[str, Any]:
        """A producer's arguments: every write acknowledged by all in-sync replicas, and
        idempotent unless the broker cannot (delivery ``at-least-once``). ``auto`` must be
        resolved first (:func:`negotiate`): an idempotent producer fails on a broker without."""
        if self.delivery == "auto":
            raise KafkaAccessError(
                "delivery 'auto' is not resolved; call streams.kafka_access.negotiate() first"
            )
        # Said both ways: kafka-python 3 turns idempotence on by default, aiokafka off.
        idempotent = self.delivery == "exactly-once"
        return self.client(acks="all", enable_idempotence=idempotent) | overrides

    def consumer(self, **overrides: Any) -> dict[str, Any]:
        """A consumer's arguments: only committed records (aborted transactions are skipped)."""
        return self.client(isolation_level="read_committed") | overrides

    def admin(self, **overrides: Any) -> dict[str, Any]:
        return self.client(client_id="modelvc-admin") | overrides

    def with_delivery(self, delivery: Delivery) -> KafkaAccess:
        return dataclasses.replace(self, delivery=delivery)


# What each broker said, once per process (every FeatureProducer would probe otherwise).
_negotiated: dict[KafkaAccess, KafkaAccess] = {}


def as_access(kafka: KafkaAccess | str) -> KafkaAccess:
    """Public clients take a bootstrap string (plaintext, delivery negotiated) or an access."""
    return KafkaAccess(kafka) if isinstance(kafka, str) else kafka


async def negotiate(access: KafkaAccess, timeout_s: float = 10.0) -> KafkaAccess:
    """``access`` with ``auto`` delivery resolved by asking the broker for a producer id.

    A broker that hands out producer ids has idempotent producers and transactions
    (Apache Kafka); one that refuses (the embedded Tansu broker) gets at-least-once.
    An explicit ``exactly-once`` is not probed: if the broker cannot, clients fail loudly.
    """
    if access.delivery != "auto":
        return access
    if access in _negotiated:
        return _negotiated[access]
    # Imported here: the CLI imports this module for every command, and needs aiokafka rarely.
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError, KafkaError

    probe = AIOKafkaProducer(
        **access.with_delivery("exactly-once").producer(client_id="modelvc-delivery-probe")
    )
    try:
        await asyncio.wait_for(probe.start(), timeout_s)
    except (TimeoutError, KafkaConnectionError) as exc:
        # No answer is not a "no": a broker that is down or unreachable must not turn
        # this process at-least-once for its whole life (the answer is kept).
        raise KafkaAccessError(
            f"no answer from Kafka at {access.bootstrap[:200]} ({type(exc).__name__}); check "
            "KAFKA_BOOTSTRAP and that the brokers run, or set MODELVC_DELIVERY explicitly"
        ) from exc
    except KafkaError as exc:
        log.warning(
            "the broker at %s gave no producer id (%s): delivery is at-least-once "
            "(no idempotent producers, no transactions; repeats keep their ids)",
            access.bootstrap,
            type(exc).__name__,
        )
        resolved = access.with_delivery("at-least-once")
    else:
        resolved = access.with_delivery("exactly-once")
    finally:
        await probe.stop()
    _negotiated[access] = resolved
    return resolved


def negotiate_sync(access: KafkaAccess, timeout_s: float = 10.0) -> KafkaAccess:
    """:func:`negotiate` for synchronous callers (the CLI, the feature producer)."""
    if access.delivery != "auto":
        return access
    return asyncio.run(negotiate(access, timeout_s))
