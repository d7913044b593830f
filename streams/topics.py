"""Creating and checking the topics modelvc needs (idempotent)."""

from __future__ import annotations

import contextlib
import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError
from kafka.partitioner.default import murmur2

from streams.errors import TopicMismatch
from streams.settings import Settings

# The event log is the source of truth: never expire or compact it.
_FOREVER = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}
_WEEK = {"retention.ms": str(7 * 24 * 3600 * 1000)}


def home_partition(model: str, partitions: int) -> int:
    """The partition of the commands and events topics that ``model`` lives on.

    Kafka's default partitioner for a keyed record (murmur2 of the key, as the Java,
    kafka-python and aiokafka clients all compute it): commands are keyed by model,
    and the single writer of commands partition N appends to events partition N.
    """
    hashed: int = murmur2(model.encode("utf-8", "surrogatepass"))
    return (hashed & 0x7FFFFFFF) % partitions


def misplaced(model: str, partition: int, partitions: int) -> str | None:
    """Why a command or event of ``model`` read from ``partition`` is not where it belongs.

    A model's history must live on one partition: read from two, its order would
    depend on which partition a reader fetched first, and readers would disagree.
    """
    home = home_partition(model, partitions)
    if home == partition:
        return None
    return (
        f"model {model[:64]!r} lives on partition {home} of {partitions}, not {partition}; "
        "a producer must key commands by the model name (Kafka's default partitioner)"
    )


def ensure_topics(settings: Settings, extra: dict[str, int] | None = None) -> None:
    """Create missing topics; fail if commands and events are partitioned differently."""
    admin = KafkaAdminClient(**settings.access.admin())
    try:
        wanted = {
            settings.events_topic: (settings.partitions, _FOREVER),
            settings.commands_topic: (settings.partitions, _WEEK),
            settings.replies_topic: (1, {"retention.ms": str(3600 * 1000)}),
            settings.dead_letter_topic: (1, _FOREVER),
            settings.features_topic: (settings.partitions, _WEEK),
            settings.predictions_topic: (settings.partitions, _WEEK),
        }
        for name, count in (extra or {}).items():
            wanted[name] = (count, _WEEK)
        existing = set(admin.list_topics())
        for name, (count, config) in wanted.items():
            if name in existing:
                continue
            # Another instance may win the race to create it; same outcome.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, count, 1, topic_configs=config)])
        pair = [settings.events_topic, settings.commands_topic]
        described = _partition_counts(admin, pair)
        deadline = time.monotonic() + 15.0
        while 0 in described.values() and time.monotonic() < deadline:
            # Apache Kafka may describe a topic it has just created with no partitions yet.
            time.sleep(0.2)
            described = _partition_counts(admin, pair)
        if described.get(settings.events_topic) != described.get(settings.commands_topic):
            raise TopicMismatch(
                f"{settings.commands_topic} has "
                f"{described.get(settings.commands_topic)} partitions "
                f"but {settings.events_topic} has {described.get(settings.events_topic)}; "
                "give them the same count (commands partition N is written to events partition N)"
            )
    finally:
        admin.close()


def _partition_counts(admin: KafkaAdminClient, topics: list[str]) -> dict[str, int]:
    return {
        t.get("topic", t.get("name")): len(t["partitions"]) for t in admin.describe_topics(topics)
    }
