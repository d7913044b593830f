"""Writing an archive: append the log in order; flush what is new, durably.

Each partition's last segment stays open (its records in memory) until it
holds ``segment_records`` records; then it is sealed. :meth:`flush` writes
the open segments that took records since the last flush (and only those:
an idle archiver writes nothing), each to a temporary file that is fsynced
and renamed into place, then the index once. A crash loses at most what
arrived since the last flush, which the archiver reads again from the log.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from streams.archive.format import ArchiveError, Record, encode_segment, segment_name
from streams.archive.index import Index, SegmentEntry
from streams.archive.reader import read_segment
from streams.files import write_atomically


class SegmentWriter:
    def __init__(self, root: Path, index: Index) -> None:
        self.root = root
        self.index = index
        self._open: dict[int, list[Record]] = {}  # partition -> its unsealed last segment
        self._dirty: set[int] = set()  # partitions whose open segment grew since the flush

    def next_offset(self, partition: int) -> int:
        records = self._open.get(partition)
        return records[-1].offset + 1 if records else self.index.next_offset(partition)

    def append(self, record: Record) -> None:
        expected = self.next_offset(record.partition)
        if record.offset != expected:
            raise ArchiveError(
                f"partition {record.partition}: offset {record.offset} after {expected - 1}; "
                "the archive only takes the log in order, without holes"
            )
        records = self._open.get(record.partition)
        if records is None:
            records = self._open[record.partition] = self._reopen(record.partition)
        records.append(record)
        self._dirty.add(record.partition)
        if len(records) >= self.index.segment_records:
            # Sealed: written with its index entry now, so memory holds one segment at most.
            self._write(record.partition, records)
            self.index.save(self.root)
            self._open[record.partition] = []
            self._dirty.discard(record.partition)

    def _reopen(self, partition: int) -> list[Record]:
        """An unsealed last segment on disk keeps growing: load it back."""
        segments = self.index.segments.get(partition) or []
        if segments and segments[-1]["count"] < self.index.segment_records:
            return list(read_segment(self.root, segments[-1]))
        return []

    def _write(self, partition: int, records: list[Record]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        name = segment_name(partition, records[0].offset)
        data = encode_segment(self.index.topic, records)
        write_atomically(self.root / name, data)
        entry = SegmentEntry(
            file=name,
            first=records[0].offset,
            last=records[-1].offset,
            count=len(records),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        self.index.put(partition, entry)

    @property
    def pending(self) -> bool:
        """Whether records arrived since the last flush."""
        return bool(self._dirty)

    def flush(self) -> None:
        """Persist every open segment that grew, then the index (nothing when idle)."""
        if not self._dirty:
            return
        for partition in sorted(self._dirty):
            self._write(partition, self._open[partition])
        self.index.save(self.root)
        self._dirty.clear()
