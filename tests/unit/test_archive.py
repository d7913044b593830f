"""The archive on disk: old archives read, write and grow the same; idle flushes write nothing.

``tests/golden/archive-v1`` was written by the archive module as it stood
before it was split into a package (commit c5a7691): the golden v1 events on
partition 0 (segments of 4, the last one unsealed) and, on partition 1, a
garbage message and a tombstone. Never rewrite it: it stands for archives that
exist.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import fastavro
import pytest

from modelvc.audit import replay
from streams.archive import Archive, ArchiveError, Record
from streams.codec import EVENTS, decode_event
from streams.core import fold, state_digest

GOLDEN = Path(__file__).parent.parent / "golden"
OLD = GOLDEN / "archive-v1"
TOPIC = "modelvc.events"


def golden_records() -> list[Record]:
    events = sorted((GOLDEN / "v1").glob("event-*.bin"))
    return [
        *(
            Record(TOPIC, 0, i, 1_700_000_000_000 + i, b"churn", p.read_bytes())
            for i, p in enumerate(events)
        ),
        Record(TOPIC, 1, 0, 1_700_000_000_500, None, b"\xc3\x01garbage"),
        Record(TOPIC, 1, 1, 1_700_000_000_501, b"k", None),
    ]


def write(root: Path, records: list[Record], segment_records: int = 4) -> Archive:
    archive = Archive(root, TOPIC, segment_records=segment_records)
    for record in records:
        archive.append(record)
    archive.flush()
    return archive


def files(root: Path) -> dict[str, tuple[int, int]]:
    """Each file's (inode, mtime): an atomic rewrite changes the inode."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(root.iterdir())}


def test_an_archive_written_before_the_split_reads_back_whole() -> None:
    problems: list = []
    assert list(Archive(OLD).records(problems)) == golden_records()
    assert problems == []


def test_an_archive_written_before_the_split_still_audits() -> None:
    result = replay(None, TOPIC, OLD, partitions={0})
    events = [decode_event(r.value or b"") for r in golden_records() if r.partition == 0]
    assert result.clean and result.auditor.events == len(events)
    assert result.digest == state_digest(fold(events).models)


def container(path: Path) -> tuple[dict[str, Any], bytes, list[Any]]:
    """A segment's metadata (but the events schema it names), sync marker and records."""
    with open(path, "rb") as handle:
        reader = fastavro.reader(handle)
        metadata = {k: v for k, v in reader.metadata.items() if k != "modelvc.value_schema"}
        return metadata, reader._header["sync"], list(reader)


def test_the_writer_writes_what_it_wrote_before(tmp_path: Path) -> None:
    write(tmp_path, golden_records())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in OLD.iterdir())
    for old in OLD.glob("*.avro"):
        assert container(tmp_path / old.name) == container(old), old.name
    # Byte for byte, as long as the events schema (named in each segment) is the same.
    with open(next(OLD.glob("*.avro")), "rb") as handle:
        named = fastavro.reader(handle).metadata["modelvc.value_schema"]
    if named == json.dumps(EVENTS.schema):
        for old in OLD.iterdir():
            assert (tmp_path / old.name).read_bytes() == old.read_bytes(), old.name


def test_an_old_archive_keeps_growing_from_its_open_segment(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    shutil.copytree(OLD, root)
    archive = Archive(root)
    assert archive.next_offset(0) == 11 and archive.next_offset(1) == 2
    extra = Record(TOPIC, 0, 11, 1_700_000_000_011, b"churn", b"\xc3\x01more")
    archive.append(extra)
    archive.flush()
    index = json.loads((root / "index.json").read_text())
    assert [s["count"] for s in index["partitions"]["0"]] == [4, 4, 4]  # the open one sealed
    assert list(Archive(root).records()) == [*golden_records()[:11], extra, *golden_records()[11:]]


def test_an_idle_flush_writes_nothing_and_a_busy_one_only_what_grew(tmp_path: Path) -> None:
    archive = write(tmp_path, golden_records())
    before = files(tmp_path)
    archive.flush()
    archive.flush()
    assert files(tmp_path) == before
    assert not archive.pending
    archive.append(Record(TOPIC, 1, 2, 0, b"k", b"x"))
    assert archive.pending
    archive.flush()
    after = files(tmp_path)
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {"p001-00000000000000000000.avro", "index.json"}
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_only_the_log_in_order_goes_in(tmp_path: Path) -> None:
    archive = Archive(tmp_path, TOPIC)
    archive.append(Record(TOPIC, 0, 0, 0, None, b"a"))
    with pytest.raises(ArchiveError, match="without holes"):
        archive.append(Record(TOPIC, 0, 2, 0, None, b"c"))


@pytest.mark.parametrize(
    "entry",
    [
        {"file": "../../etc/passwd", "first": 0, "last": 0, "count": 1, "sha256": "0"},
        {"file": "p000-00000000000000000000.avro", "first": "zero"},
        "not an entry",
    ],
)
def test_an_index_that_names_no_segment_is_refused(tmp_path: Path, entry: object) -> None:
    index = {"topic": TOPIC, "segment_records": 4, "partitions": {"0": [entry]}}
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(ArchiveError, match="not an archive index"):
        Archive(tmp_path)


def test_a_damaged_segment_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    shutil.copytree(OLD, tmp_path / "a")
    segment = tmp_path / "a" / "p000-00000000000000000004.avro"
    segment.write_bytes(segment.read_bytes()[:-40])
    problems: list = []
    records = list(Archive(tmp_path / "a").records(problems))
    assert [p.file for p in problems] == [segment.name, segment.name]  # sha, then unreadable
    assert len(records) < len(golden_records())
    with pytest.raises(ArchiveError, match=segment.name):
        list(Archive(tmp_path / "a").records())
