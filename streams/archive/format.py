"""The archive's on-disk format: Avro Object Container File segments of ArchivedMessage.

A segment ``p<partition:03>-<first offset:020>.avro`` holds consecutive
messages of one partition, uncompressed, with the topic and the events'
value schema in its metadata and a sync marker derived from its name (so
the same records always make the same bytes). This format is what existing
archives hold: change it only in ways old segments still read.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import fastavro

from streams.codec import EVENTS, fingerprint, load_schema
from streams.errors import StreamsError

SCHEMA = load_schema("archived_message.avsc")
PARSED = fastavro.parse_schema(SCHEMA)
FINGERPRINT = fingerprint(SCHEMA)
# What a segment file is called; an index naming anything else is not trusted.
SEGMENT_NAME = re.compile(r"p(?P<partition>[0-9]{3,10})-(?P<first>[0-9]{20})\.avro")


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


def segment_name(partition: int, first: int) -> str:
    return f"p{partition:03d}-{first:020d}.avro"


def encode_segment(topic: str, records: Sequence[Record]) -> bytes:
    """The container file of ``records`` (one partition, consecutive offsets, at least one)."""
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


def decode_segment(handle: IO[bytes]) -> Iterator[Record]:
    """The records of one container file, in file order (``handle`` must be seekable).

    A segment written with today's ArchivedMessage schema (every segment so far) is read
    by that schema alone: resolving it against itself decodes each record at half speed.
    Any other writer schema is resolved against ours, as Avro says.
    """
    start = handle.tell()
    reader = fastavro.reader(handle)
    written = reader.writer_schema
    if not isinstance(written, dict) or fingerprint(written) != FINGERPRINT:
        handle.seek(start)
        reader = fastavro.reader(handle, reader_schema=PARSED)
    for item in reader:
        raw: dict[str, Any] = item  # type: ignore[assignment]
        yield Record(
            raw["topic"],
            raw["partition"],
            raw["offset"],
            raw["timestamp"],
            raw["key"],
            raw["value"],
        )
