"""The archive's index: ``index.json``, the segments of each partition in offset order.

    {"topic": ..., "segment_records": N,
     "partitions": {"<p>": [{"file", "first", "last", "count", "sha256"}, ...]}}

The index is replaced atomically (:func:`streams.files.write_atomically`)
after the segment it describes, so it never names bytes that are not on disk.
It is read as untrusted input (an audit reads archives handed to it): a
malformed index or a file name that is not a segment's is an ArchiveError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from streams.archive.format import SEGMENT_NAME, ArchiveError
from streams.files import write_atomically

INDEX = "index.json"
MAX_INDEX_BYTES = 256 << 20


class SegmentEntry(TypedDict):
    file: str
    first: int
    last: int
    count: int
    sha256: str


def _entry(raw: Any) -> SegmentEntry:
    if not isinstance(raw, dict) or not SEGMENT_NAME.fullmatch(str(raw.get("file"))):
        raise ValueError(f"not a segment entry: {str(raw)[:200]}")
    return SegmentEntry(
        file=str(raw["file"]),
        first=int(raw["first"]),
        last=int(raw["last"]),
        count=int(raw["count"]),
        sha256=str(raw["sha256"]),
    )


@dataclass
class Index:
    topic: str
    segment_records: int
    segments: dict[int, list[SegmentEntry]] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path, topic: str, segment_records: int) -> Index:
        """The index in ``root``, or an empty one for ``topic`` when there is none yet."""
        path = root / INDEX
        if not path.exists():
            return cls(topic, segment_records)
        try:
            if path.stat().st_size > MAX_INDEX_BYTES:
                raise ValueError(f"larger than {MAX_INDEX_BYTES:,} bytes")
            raw = json.loads(path.read_bytes())
            return cls(
                str(raw["topic"]),
                int(raw["segment_records"]),
                {int(p): [_entry(e) for e in s] for p, s in raw["partitions"].items()},
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ArchiveError(
                f"{path} is not an archive index ({exc}); point at the directory "
                "`modelvc up` archives into (<home>/archive)"
            ) from exc

    def save(self, root: Path) -> None:
        index = {
            "topic": self.topic,
            "segment_records": self.segment_records,
            "partitions": {str(p): s for p, s in sorted(self.segments.items())},
        }
        write_atomically(root / INDEX, json.dumps(index, indent=1).encode())

    @property
    def empty(self) -> bool:
        return not any(self.segments.values())

    def next_offset(self, partition: int) -> int:
        segments = self.segments.get(partition)
        return segments[-1]["last"] + 1 if segments else 0

    def put(self, partition: int, entry: SegmentEntry) -> None:
        """Record a written segment: a grown tail replaces its own entry, a new one is added."""
        segments = self.segments.setdefault(partition, [])
        if segments and segments[-1]["file"] == entry["file"]:
            segments[-1] = entry
        else:
            segments.append(entry)
