"""Read a whole topic synchronously (kafka-python, assigned partitions, no group).

Where a partition ends is taken from the fetch responses' high watermark
(:mod:`streams.watermarks`), never from ListOffsets. Readers are ``read_committed``
(``KafkaAccess.consumer``): records of aborted or still open transactions are never read.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from streams.errors import TopicUnreadable
from streams.kafka_access import KafkaAccess
from streams.watermarks import fetched_ends, positions, reached, wait_for_ends


@dataclass(frozen=True)
class LogRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def log_consumer(kafka: KafkaAccess, **overrides: Any) -> KafkaConsumer:
    """A kafka-python consumer for assigned partitions: no group, no committed offsets."""
    config = kafka.consumer(group_id=None, enable_auto_commit=False, fetch_max_wait_ms=10)
    return KafkaConsumer(**(config | overrides))


def topic_partitions(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]


def read_topic(
    kafka: KafkaAccess,
    topic: str,
    idle_timeout: float = 30.0,
    partitions: Iterable[int] | None = None,
) -> Iterator[LogRecord]:
    """Every committed record of ``topic`` (or of some partitions) from offset 0 up to the
    high watermark each partition's first fetch answered: what was written before the call.

    Terminates on a topic that is still being written, transactionally or not. A
    transaction open below those ends (a worker killed mid-batch) holds it back until
    it is aborted or committed; ``TimeoutError`` after ``idle_timeout`` without progress.
    """
    only = None if partitions is None else set(partitions)
    consumer = log_consumer(kafka, max_poll_records=10000, consumer_timeout_ms=1000)
    try:
        listed = topic_partitions(consumer, topic)
        if not listed:
            raise TopicUnreadable(
                f"{topic[:200]} has no partitions on {kafka.bootstrap[:200]}: it does not exist "
                "(run `modelvc up`, which creates it), or the login in "
                "MODELVC_KAFKA_CREDENTIALS may not read it"
            )
        tps = [tp for tp in listed if only is None or tp.partition in only]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        ends: dict[int, int] | None = None
        deadline = time.monotonic() + idle_timeout
        while not reached(ends := ends or fetched_ends(consumer, tps), positions(consumer, tps)):
            before = positions(consumer, tps)
            batches = consumer.poll(timeout_ms=200)
            for tp, messages in batches.items():
                for m in messages:
                    yield LogRecord(tp.partition, m.offset, m.key, m.value)
            # Progress is a moved position: skipping markers and aborted records is progress.
            if batches or positions(consumer, tps) != before:
                deadline = time.monotonic() + idle_timeout
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{topic}: no progress for {idle_timeout}s at {positions(consumer, tps)} "
                    f"of {ends}; if a transaction is open below the end (a worker killed "
                    "mid-batch), it is aborted when that worker restarts or times out"
                )
    finally:
        consumer.close()


def partition_ends(kafka: KafkaAccess, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """Where every partition of ``topic`` ends now (its high watermark, from a fetch)."""
    consumer = log_consumer(kafka)
    try:
        tps = topic_partitions(consumer, topic)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        return wait_for_ends(consumer, tps, timeout) if tps else {}
    finally:
        consumer.close()
