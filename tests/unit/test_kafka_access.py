"""The one home of Kafka client configuration: what every producer and consumer is given."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from streams.kafka_access import (
    MAX_CREDENTIALS_BYTES,
    Credentials,
    KafkaAccess,
    KafkaAccessError,
    negotiate,
)
from streams.settings import Settings


def credentials_file(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "streams.json"
    path.write_text(json.dumps(doc))
    return path


def test_producers_acknowledge_by_all_replicas_and_are_idempotent_only_with_exactly_once() -> None:
    exactly = KafkaAccess("k:9092", delivery="exactly-once").producer(linger_ms=5)
    assert exactly["acks"] == "all" and exactly["enable_idempotence"] is True
    assert exactly["linger_ms"] == 5 and exactly["bootstrap_servers"] == "k:9092"
    # Tansu refuses producer ids; kafka-python 3 would ask for one unless told not to.
    least = KafkaAccess("k:9092", delivery="at-least-once").producer()
    assert least["acks"] == "all" and least["enable_idempotence"] is False


def test_a_producer_is_not_made_before_delivery_is_negotiated() -> None:
    with pytest.raises(KafkaAccessError, match="negotiate"):
        KafkaAccess("k:9092").producer()


def test_consumers_read_only_committed_records() -> None:
    config = KafkaAccess("k:9092").consumer(group_id=None)
    assert config["isolation_level"] == "read_committed" and config["group_id"] is None


def test_sasl_logs_in_with_scram_from_the_credentials_file(tmp_path: Path) -> None:
    path = credentials_file(tmp_path, {"username": "streams", "password": "s3cret-s3cret"})
    access = KafkaAccess("k:9092", "sasl", path, "exactly-once")
    config = access.producer()
    assert config["security_protocol"] == "SASL_PLAINTEXT"
    assert config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (config["sasl_plain_username"], config["sasl_plain_password"]) == (
        "streams",
        "s3cret-s3cret",
    )
    # Children get the path, never the password.
    assert "s3cret" not in json.dumps(access.to_env()) and "s3cret" not in repr(access)
    assert "security_protocol" not in KafkaAccess("k:9092").client()


def test_sasl_without_credentials_says_which_variable_to_set() -> None:
    with pytest.raises(KafkaAccessError, match="MODELVC_KAFKA_CREDENTIALS"):
        KafkaAccess("k:9092", "sasl")


@pytest.mark.parametrize(
    "doc",
    [
        {"username": "a"},
        {"username": "", "password": "p"},
        {"username": 1, "password": "p"},
        ["username", "password"],
        {"username": "a", "password": "p" * MAX_CREDENTIALS_BYTES},
    ],
)
def test_a_credentials_file_that_is_not_one_is_refused(tmp_path: Path, doc: object) -> None:
    with pytest.raises(KafkaAccessError, match="not a Kafka credentials file"):
        Credentials.read(credentials_file(tmp_path, doc))


def test_a_missing_credentials_file_names_the_variable(tmp_path: Path) -> None:
    access = KafkaAccess("k:9092", "sasl", tmp_path / "absent.json", "at-least-once")
    with pytest.raises(KafkaAccessError, match="MODELVC_KAFKA_CREDENTIALS"):
        access.client()


@pytest.mark.parametrize(
    ("security", "delivery"), [("tls", "auto"), ("plaintext", "twice"), ("SASL", "auto")]
)
def test_unknown_security_or_delivery_is_refused(security: str, delivery: str) -> None:
    with pytest.raises(KafkaAccessError):
        KafkaAccess("k:9092", security, None, delivery)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Settings(kafka_security=security, delivery=delivery)  # type: ignore[arg-type]


def test_access_and_settings_travel_to_children_through_the_environment(tmp_path: Path) -> None:
    path = credentials_file(tmp_path, {"username": "w", "password": "pw-pw-pw-pw"})
    settings = Settings(
        bootstrap="a:1,b:2",
        kafka_security="sasl",
        kafka_credentials=path,
        delivery="exactly-once",
        replication_factor=3,
    )
    again = Settings.from_env(settings.to_env())
    assert again.access == settings.access
    assert again.replication_factor == 3
    assert KafkaAccess.from_env(settings.access.to_env()) == settings.access


@pytest.mark.parametrize("bad", [0, 33])
def test_a_replication_factor_out_of_range_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="MODELVC_REPLICATION_FACTOR"):
        Settings(replication_factor=bad)


def test_negotiation_leaves_an_explicit_delivery_alone() -> None:
    # No broker at this address: an explicit choice is never probed.
    access = KafkaAccess("127.0.0.1:1", delivery="at-least-once")
    assert asyncio.run(negotiate(access, timeout_s=0.1)) is access


def test_no_answer_from_the_broker_is_an_error_not_a_downgrade() -> None:
    # Nothing listens on port 1: delivery must not quietly become at-least-once for good.
    access = KafkaAccess("127.0.0.1:1")
    with pytest.raises(KafkaAccessError, match="no answer from Kafka"):
        asyncio.run(negotiate(access, timeout_s=5.0))
