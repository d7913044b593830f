"""An archive directory: its index, read and written through one object."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from streams.archive.format import Record
from streams.archive.index import Index, SegmentEntry
from streams.archive.reader import SegmentProblem, read_records
from streams.archive.writer import SegmentWriter

SEGMENT_RECORDS = 10_000


class Archive:
    """The archive in ``root``; ``topic`` and ``segment_records`` only for a new one."""

    def __init__(
        self, root: Path, topic: str = "modelvc.events", segment_records: int = SEGMENT_RECORDS
    ) -> None:
        self.root = root
        self.index = Index.load(root, topic, segment_records)
        self._writer = SegmentWriter(root, self.index)

    @property
    def topic(self) -> str:
        return self.index.topic

    @property
    def segment_records(self) -> int:
        return self.index.segment_records

    @property
    def segments(self) -> dict[int, list[SegmentEntry]]:
        return self.index.segments

    @property
    def empty(self) -> bool:
        return self.index.empty

    def next_offset(self, partition: int) -> int:
        return self._writer.next_offset(partition)

    def append(self, record: Record) -> None:
        self._writer.append(record)

    @property
    def pending(self) -> bool:
        return self._writer.pending

    def flush(self) -> None:
        """Persist what was appended (a crash after this loses nothing appended before)."""
        self._writer.flush()

    def records(
        self, problems: list[SegmentProblem] | None = None, partitions: set[int] | None = None
    ) -> Iterator[Record]:
        """Every archived record, partition by partition, in offset order (see read_records)."""
        return read_records(self.root, self.index, problems, partitions)
