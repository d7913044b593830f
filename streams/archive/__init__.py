"""The durable archive of modelvc.events: Avro Object Container File segments.

Layout of an archive directory:
  index.json                              segments per partition: file, first/last offset,
                                          record count, sha256 of the file
  p<partition>-<first offset>.avro        ArchivedMessage records, ``segment_records`` each

Modules, one job each: :mod:`~streams.archive.format` (segment files),
:mod:`~streams.archive.index` (``index.json``), :mod:`~streams.archive.writer`
(append and flush, durably), :mod:`~streams.archive.reader` (read back and
check), :mod:`~streams.archive.directory` (one object over all of that),
:mod:`~streams.archive.restore` (back into an empty log) and
:mod:`~streams.archive.archiver` (the process, `python -m streams.archive`).
"""

from streams.archive.directory import SEGMENT_RECORDS, Archive
from streams.archive.format import ArchiveError, Record
from streams.archive.reader import SegmentProblem
from streams.archive.restore import (
    PLACEHOLDER_MAGIC,
    REFUSALS,
    Refused,
    Restored,
    placeholder,
    restore,
)

__all__ = [
    "PLACEHOLDER_MAGIC",
    "REFUSALS",
    "SEGMENT_RECORDS",
    "Archive",
    "ArchiveError",
    "Record",
    "Refused",
    "Restored",
    "SegmentProblem",
    "placeholder",
    "restore",
]
