"""The durable archive of modelvc.events: Avro Object Container File segments.

Layout of an archive directory:
  index.json                              segments per partition: file, first/last offset,
                                          record count, sha256 of the file
  p<partition>-<first offset>.avro        ArchivedMessage records, ``segment_records`` each

Every segment is written to a temporary file, fsynced, renamed into place and
its directory fsynced; then the index is replaced the same way. A segment
grows until it holds ``segment_records`` records (the tail segment is
rewritten on each flush until then), so a crash loses at most one flush
interval. `python -m streams.archive` runs the archiver.

Restore writes the archive back into an empty log at the same offsets. A
message the broker refuses (larger than its limit, say: the archive keeps the
log as it was, garbage included) is skipped, reported and dead-lettered, and
a small placeholder (``PLACEHOLDER_MAGIC`` + JSON with its sha256 and size)
takes its offset so every later message still lands where the archive says.
Readers treat the placeholder as the undecodable garbage it stands for.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
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
from streams.codec import EVENTS, load_schema
from streams.errors import StreamsError
from streams.logreader import log_consumer, topic_partitions

log = logging.getLogger("modelvc.archive")
SCHEMA = load_schema("archived_message.avsc")
PARSED = fastavro.parse_schema(SCHEMA)
SEGMENT_RECORDS = 10_000


class ArchiveError(StreamsError):
    """Raised when an archive cannot be read or restored as asked; the message says why."""


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class SegmentProblem:
    """A segment that does not match its index entry or cannot be read."""

    file: str
    partition: int
    first: int
    last: int
    detail: str


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Archive:
    def __init__(
        self, root: Path, topic: str = "modelvc.events", segment_records: int = SEGMENT_RECORDS
    ) -> None:
        self.root = root
        self.index_path = root / "index.json"
        if self.index_path.exists():
            index = json.loads(self.index_path.read_text())
            self.topic = str(index["topic"])
            self.segment_records = int(index["segment_records"])
            self.segments: dict[int, list[dict[str, Any]]] = {
                int(p): list(s) for p, s in index["partitions"].items()
            }
        else:
            self.topic, self.segment_records, self.segments = topic, segment_records, {}
        self._tail: dict[int, list[Record]] = {}

    @property
    def empty(self) -> bool:
        return not any(self.segments.values())

    def next_offset(self, partition: int) -> int:
        tail = self._tail.get(partition)
        if tail:
            return tail[-1].offset + 1
        segments = self.segments.get(partition)
        return int(segments[-1]["last"]) + 1 if segments else 0

    # -- writing ------------------------------------------------------------------
    def append(self, record: Record) -> None:
        expected = self.next_offset(record.partition)
        if record.offset != expected:
            raise ArchiveError(
                f"partition {record.partition}: offset {record.offset} after {expected - 1}; "
                "the archive only takes the log in order, without holes"
            )
        tail = self._tail.get(record.partition)
        if tail is None:
            tail = self._tail[record.partition] = self._reopen_tail(record.partition)
        tail.append(record)
        if len(tail) >= self.segment_records:
            self._write_segment(record.partition, tail)
            self._tail[record.partition] = []

    def _reopen_tail(self, partition: int) -> list[Record]:
        """An unsealed last segment keeps growing: load it back as the tail."""
        segments = self.segments.get(partition) or []
        if segments and int(segments[-1]["count"]) < self.segment_records:
            entry = segments.pop()
            return list(self._read_segment(entry))
        return []

    def _write_segment(self, partition: int, records: list[Record]) -> None:
        if not records:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"p{partition:03d}-{records[0].offset:020d}.avro"
        buffer = _ocf(self.topic, records)
        _write_atomically(self.root / name, buffer)
        entry = {
            "file": name,
            "first": records[0].offset,
            "last": records[-1].offset,
            "count": len(records),
            "sha256": hashlib.sha256(buffer).hexdigest(),
        }
        segments = self.segments.setdefault(partition, [])
        if segments and segments[-1]["file"] == name:
            segments[-1] = entry
        else:
            segments.append(entry)
        self._write_index()

    def _write_index(self) -> None:
        index = {
            "topic": self.topic,
            "segment_records": self.segment_records,
            "partitions": {str(p): s for p, s in sorted(self.segments.items())},
        }
        _write_atomically(self.index_path, json.dumps(index, indent=1).encode())

    def flush(self) -> None:
        """Persist every tail segment (a crash after this loses nothing appended before)."""
        for partition, tail in self._tail.items():
            if tail:
                self._write_segment(partition, tail)

    # -- reading --------------------------------------------------------------------
    def _read_segment(self, entry: dict[str, Any]) -> Iterator[Record]:
        with open(self.root / entry["file"], "rb") as handle:
            for item in fastavro.reader(handle, reader_schema=PARSED):
                raw: dict[str, Any] = item  # type: ignore[assignment]
                yield Record(
                    raw["topic"],
                    raw["partition"],
                    raw["offset"],
                    raw["timestamp"],
                    raw["key"],
                    raw["value"],
                )

    def records(
        self, problems: list[SegmentProblem] | None = None, partitions: set[int] | None = None
    ) -> Iterator[Record]:
        """Every archived record, partition by partition, in offset order.

        A segment whose bytes no longer match the index, or that cannot be read,
        is reported in ``problems``; its readable records are still yielded so
        the chain check can name the first bad event.
        """
        for partition in sorted(self.segments):
            if partitions is not None and partition not in partitions:
                continue
            for entry in self.segments[partition]:
                path = self.root / entry["file"]
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    self._problem(problems, entry, partition, f"missing: {exc}")
                    continue
                if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    self._problem(
                        problems, entry, partition, "bytes differ from the index's sha256"
                    )
                try:
                    yield from self._read_segment(entry)
                except Exception as exc:  # a damaged container fails in many ways
                    self._problem(problems, entry, partition, f"unreadable: {exc!r}")

    @staticmethod
    def _problem(
        problems: list[SegmentProblem] | None, entry: dict[str, Any], partition: int, detail: str
    ) -> None:
        problem = SegmentProblem(entry["file"], partition, entry["first"], entry["last"], detail)
        if problems is None:
            raise ArchiveError(
                f"segment {problem.file} (offsets {problem.first}..{problem.last}): {detail}"
            )
        problems.append(problem)


def _ocf(topic: str, records: list[Record]) -> bytes:
    import io

    out = io.BytesIO()
    fastavro.writer(
        out,
        PARSED,
        (
            {
                "topic": r.topic,
                "partition": r.partition,
                "offset": r.offset,
                "timestamp": r.timestamp,
                "key": r.key,
                "value": r.value,
            }
            for r in records
        ),
        codec="null",
        metadata={"modelvc.topic": topic, "modelvc.value_schema": json.dumps(EVENTS.schema)},
        sync_marker=hashlib.sha256(
            f"{topic}/{records[0].partition}/{records[0].offset}".encode()
        ).digest()[:16],
    )
    return out.getvalue()


# -- restoring ------------------------------------------------------------------------
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
    archive: Archive, bootstrap: str, topic: str, dead_letter_topic: str | None = None
) -> Restored:
    """Write the archive back into an empty topic at the same offsets.

    A message the broker refuses is replaced by a placeholder (so later offsets stay
    those of the archive), reported in the result and sent to ``dead_letter_topic``.
    """
    result = Restored()
    if archive.empty:
        return result
    ends = partition_ends(bootstrap, topic)
    if any(ends.values()):
        raise ArchiveError(
            f"{topic} is not empty ({ends}); restore only into an empty log (a fresh broker)"
        )
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_in_flight_requests_per_connection=1,
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


def partition_ends(bootstrap: str, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """High watermark of every partition, from fetch responses (never ListOffsets)."""
    consumer = log_consumer(bootstrap)
    try:
        tps = topic_partitions(consumer, topic)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        deadline = time.monotonic() + timeout
        while any(consumer.highwater(tp) is None for tp in tps):
            if time.monotonic() > deadline:
                raise ArchiveError(f"no fetch answer for {topic} in {timeout:.0f}s")
            consumer.poll(timeout_ms=100, max_records=1)
        return {tp.partition: int(consumer.highwater(tp) or 0) for tp in tps}
    finally:
        consumer.close()


# -- the archiver process ----------------------------------------------------------
def run_archiver(archive: Archive, bootstrap: str, topic: str, flush_s: float = 1.0) -> None:
    """Follow ``topic`` into ``archive`` until SIGTERM; then drain to the end and flush."""
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    consumer = log_consumer(bootstrap, fetch_max_wait_ms=50, max_poll_records=10_000)
    try:
        tps = topic_partitions(consumer, topic)
        if not tps:
            raise ArchiveError(f"topic {topic} does not exist")
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, archive.next_offset(tp.partition))
        log.info(
            "archiving %s into %s from %s",
            topic,
            archive.root,
            {tp.partition: archive.next_offset(tp.partition) for tp in tps},
        )
        last_flush = time.monotonic()
        while True:
            for tp, messages in consumer.poll(timeout_ms=100).items():
                for m in messages:
                    archive.append(
                        Record(topic, tp.partition, m.offset, m.timestamp, m.key, m.value)
                    )
            caught_up = all(
                (hw := consumer.highwater(tp)) is not None and consumer.position(tp) >= hw
                for tp in tps
            )
            if time.monotonic() - last_flush >= flush_s or (stopping and caught_up):
                archive.flush()
                last_flush = time.monotonic()
            if stopping and caught_up:
                log.info(
                    "archive flushed up to %s",
                    {tp.partition: archive.next_offset(tp.partition) for tp in tps},
                )
                return
    finally:
        with contextlib.suppress(Exception):
            archive.flush()
        consumer.close()


def main() -> None:
    from streams.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings.from_env()
    root = Path(os.environ.get("MODELVC_ARCHIVE_DIR", str(settings.data_dir.parent / "archive")))
    run_archiver(Archive(root, settings.events_topic), settings.bootstrap, settings.events_topic)


if __name__ == "__main__":
    main()
