"""Reading an archive back: every record, partition by partition, in offset order."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from streams.archive.format import ArchiveError, Record, decode_segment
from streams.archive.index import Index, SegmentEntry


@dataclass(frozen=True)
class SegmentProblem:
    """A segment that does not match its index entry or cannot be read."""

    file: str
    partition: int
    first: int
    last: int
    detail: str


def read_segment(root: Path, entry: SegmentEntry) -> Iterator[Record]:
    with open(root / entry["file"], "rb") as handle:
        yield from decode_segment(handle)


def read_records(
    root: Path,
    index: Index,
    problems: list[SegmentProblem] | None = None,
    partitions: set[int] | None = None,
) -> Iterator[Record]:
    """Every archived record (of ``partitions``, or all), partition by partition, in order.

    A segment whose bytes no longer match the index, or that cannot be read,
    is reported in ``problems`` (raised as ArchiveError without it); its
    readable records are still yielded so the chain check can name the first
    bad event.
    """
    for partition in sorted(index.segments):
        if partitions is not None and partition not in partitions:
            continue
        for entry in index.segments[partition]:
            try:
                data = (root / entry["file"]).read_bytes()
            except OSError as exc:
                _problem(problems, entry, partition, f"missing: {exc}")
                continue
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                _problem(problems, entry, partition, "bytes differ from the index's sha256")
            try:
                yield from decode_segment(io.BytesIO(data))  # the very bytes just checked
            except Exception as exc:  # a damaged container fails in many ways
                _problem(problems, entry, partition, f"unreadable: {exc!r}")


def _problem(
    problems: list[SegmentProblem] | None, entry: SegmentEntry, partition: int, detail: str
) -> None:
    problem = SegmentProblem(entry["file"], partition, entry["first"], entry["last"], detail)
    if problems is None:
        raise ArchiveError(
            f"segment {problem.file} (offsets {problem.first}..{problem.last}): {detail}"
        )
    problems.append(problem)
