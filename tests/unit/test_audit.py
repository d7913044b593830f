"""Tamper evidence: every way of damaging the log is found, classified and located."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelvc.audit import replay
from streams.archive import Archive, Record
from streams.codec import encode_event
from streams.core import decide, fold, state_digest
from streams.core.fold import Fold
from tests.golden.make_fixtures import history


def events() -> list:
    state = Fold()
    out = []
    for command in history():  # every command kind
        for event in decide(state.models.get("churn"), command):
            state.apply(event)
            out.append(event)
    return out


def write_archive(root: Path, values: list[bytes], segment_records: int = 4) -> Archive:
    archive = Archive(root, "modelvc.events", segment_records=segment_records)
    for offset, value in enumerate(values):
        archive.append(Record("modelvc.events", 0, offset, 1000 + offset, b"churn", value))
    archive.flush()
    return Archive(root)


def kinds(result) -> list[tuple[str, int, int]]:  # type: ignore[no-untyped-def]
    return [(f.kind, f.seq, f.where.offset) for f in result.violations]


def test_an_intact_archive_replays_to_the_live_digest(tmp_path: Path) -> None:
    log = events()
    write_archive(tmp_path, [encode_event(e) for e in log])
    result = replay(None, "modelvc.events", tmp_path)
    assert result.clean and result.auditor.events == len(log)
    assert result.digest == state_digest(fold(log).models)
    index = json.loads((tmp_path / "index.json").read_text())
    assert [s["count"] for s in index["partitions"]["0"]] == [4, 4, 3]  # fixed-size segments


def test_an_identical_duplicate_is_harmless(tmp_path: Path) -> None:
    values = [encode_event(e) for e in events()]
    write_archive(tmp_path, [*values[:5], values[4], *values[5:]])
    result = replay(None, "modelvc.events", tmp_path)
    assert result.clean and result.auditor.duplicates() == 1
    assert result.digest == state_digest(fold(events()).models)


def test_a_dropped_event_is_a_gap(tmp_path: Path) -> None:
    values = [encode_event(e) for e in events()]
    write_archive(tmp_path, values[:5] + values[6:])
    found = kinds(replay(None, "modelvc.events", tmp_path))
    assert found[0] == ("gap", 7, 5)  # seq 6 missing before seq 7, which sits at offset 5


def test_two_swapped_events_are_reported_as_reordered(tmp_path: Path) -> None:
    values = [encode_event(e) for e in events()]
    values[5], values[6] = values[6], values[5]
    write_archive(tmp_path, values)
    found = kinds(replay(None, "modelvc.events", tmp_path))
    assert found[0] == ("reordered", 7, 5)


def test_two_different_events_with_one_sequence_number_conflict(tmp_path: Path) -> None:
    log = events()
    from dataclasses import replace

    forged = replace(log[3], actor="mallory")
    write_archive(tmp_path, [encode_event(e) for e in [*log[:4], forged, *log[4:]]])
    assert kinds(replay(None, "modelvc.events", tmp_path))[0] == ("conflict", 4, 4)


@pytest.mark.parametrize("position", [3, 6, 9])
def test_flipping_one_byte_names_the_first_bad_event(tmp_path: Path, position: int) -> None:
    values = [encode_event(e) for e in events()]
    # Change one character of the actor ("golden" -> "golden" with one letter altered):
    value = bytearray(values[position])
    at = value.index(b"golden")
    value[at] ^= 0x01
    values[position] = bytes(value)
    write_archive(tmp_path, values)
    archive = Archive(tmp_path)
    segment = tmp_path / archive.segments[0][position // 4]["file"]
    result = replay(None, "modelvc.events", tmp_path)
    first = result.violations[0]
    assert (first.kind, first.where.offset) == ("broken_hash", position)
    assert not result.problems  # the archive itself was written that way: only the chain knows
    # Now flip a byte of the written segment file instead: the index catches it too.
    data = bytearray(segment.read_bytes())
    data[data.index(b"golden")] ^= 0x01
    segment.write_bytes(bytes(data))
    again = replay(None, "modelvc.events", tmp_path)
    assert again.problems and "sha256" in again.problems[0].detail
    assert not again.clean


def test_an_undecodable_message_is_a_violation_with_coordinates(tmp_path: Path) -> None:
    values = [encode_event(e) for e in events()]
    # A released schema's header with a body cut short: bytes an event was written as.
    write_archive(tmp_path, [*values[:2], values[2][:14], *values[2:]])
    result = replay(None, "modelvc.events", tmp_path)
    assert next((f.kind, f.where.offset) for f in result.violations) == ("undecodable", 2)


def test_parallel_replay_by_partition_finds_the_same_as_one_pass(tmp_path: Path) -> None:
    from bench.history import model_history

    source = Fold()
    archive = Archive(tmp_path, "modelvc.events", segment_records=50)
    offsets = {0: 0, 1: 0, 2: 0}
    for m in range(6):
        name, partition = f"model-{m}", m % 3
        for event in model_history(source, name, 40):
            value = encode_event(event)
            if m == 4 and event.seq == 10:  # damage one event of one model
                value = value.replace(b"bench", b"bunch", 1)
            archive.append(Record("modelvc.events", partition, offsets[partition], 0, b"", value))
            offsets[partition] += 1
    archive.flush()
    one = replay(None, "modelvc.events", tmp_path, jobs=1)
    two = replay(None, "modelvc.events", tmp_path, jobs=2)
    assert one.digest == two.digest and one.events == two.events == sum(offsets.values())
    assert [(f.kind, f.model, f.where.offset) for f in one.violations] == [
        (f.kind, f.model, f.where.offset) for f in two.violations
    ]
    assert one.violations[0].model == "model-4" and one.violations[0].kind == "broken_hash"
