"""Restore: write an archive back into an empty log, at the same offsets.

A message the broker refuses (larger than its limit, say: the archive keeps
the log as it was, garbage included) is skipped, reported and dead-lettered,
and a small placeholder (``PLACEHOLDER_MAGIC`` + JSON with its sha256 and
size) takes its offset so every later message still lands where the archive
says. Readers treat the placeholder as the undecodable garbage it stands for.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaProducer
from kafka.errors import (
    CorruptRecordError,
    InvalidRecordError,
    InvalidTimestampError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)

from streams import deadletter
from streams.archive.directory import Archive
from streams.archive.format import ArchiveError, Record
from streams.kafka_access import KafkaAccess, negotiate_sync
from streams.logreader import partition_ends

log = logging.getLogger("modelvc.archive")

# What the broker refuses at restore (a message above its size limit, a timestamp it will
# not take, ...): such a message is skipped, reported and dead-lettered, never fatal.
REFUSALS: tuple[type[KafkaError], ...] = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidRecordError,
    InvalidTimestampError,
    CorruptRecordError,
)
# A refused message's offset is taken by this placeholder, so every later message lands
# at its archived offset. It has no Avro magic (C3 01), so every reader treats it as
# undecodable garbage: the streams app dead-letters it, workers skip it, and the audit
# reports it as skipped, never as an event.
PLACEHOLDER_MAGIC = b"modelvc.placeholder/v1 "


@dataclass(frozen=True)
class Refused:
    """An archived message the broker refused at restore; a placeholder holds its offset."""

    partition: int
    offset: int
    size: int
    sha256: str
    reason: str

    def __str__(self) -> str:
        return f"{self.partition}@{self.offset} ({self.size:,} bytes: {self.reason})"


def placeholder(refused: Refused) -> bytes:
    return (
        PLACEHOLDER_MAGIC
        + json.dumps(
            {"refused": refused.reason[:200], "sha256": refused.sha256, "size": refused.size}
        ).encode()
    )


@dataclass
class Restored:
    count: int = 0  # messages written back, placeholders included
    refused: list[Refused] = field(default_factory=list)


def restore(
    archive: Archive, kafka: KafkaAccess, topic: str, dead_letter_topic: str | None = None
) -> Restored:
    """Write the archive back into an empty topic at the same offsets.

    A message the broker refuses is replaced by a placeholder (so later offsets stay
    those of the archive), reported in the result and sent to ``dead_letter_topic``.
    """
    result = Restored()
    if archive.empty:
        return result
    ends = partition_ends(kafka, topic)
    if any(ends.values()):
        raise ArchiveError(
            f"{topic} is not empty ({ends}); restore only into an empty log (a fresh broker)"
        )
    producer = KafkaProducer(
        **negotiate_sync(kafka).producer(linger_ms=5, max_in_flight_requests_per_connection=1)
    )
    try:
        for record in archive.records():
            try:
                metadata = _send(
                    producer, topic, record, record.key, record.value, record.timestamp
                )
            except REFUSALS as exc:
                value = record.value or b""
                refused = Refused(
                    record.partition,
                    record.offset,
                    len(value),
                    hashlib.sha256(value).hexdigest(),
                    type(exc).__name__,
                )
                # Reported by the caller (Restored.refused); the log line is for operators.
                log.info("the broker refused archived message %s; placeholder written", refused)
                # Now, not the archived time: the broker may have refused that very timestamp.
                metadata = _send(producer, topic, record, None, placeholder(refused), None)
                result.refused.append(refused)
                if dead_letter_topic is not None:
                    letter = deadletter.record(
                        topic,
                        record.partition,
                        record.offset,
                        record.key,
                        record.value,
                        f"the broker refused it at archive restore: {exc}",
                        "restore",
                    )
                    deadletter.send_sync(producer, dead_letter_topic, letter)
            if metadata.offset != record.offset:
                raise ArchiveError(
                    f"restored partition {record.partition} offset {record.offset} landed at "
                    f"{metadata.offset}; the log no longer matches the archive"
                )
            result.count += 1
    finally:
        producer.close()
    return result


def _send(
    producer: KafkaProducer,
    topic: str,
    record: Record,
    key: bytes | None,
    value: bytes | None,
    timestamp: int | None,
) -> Any:
    return producer.send(
        topic, key=key, value=value, partition=record.partition, timestamp_ms=timestamp
    ).get(timeout=30)
