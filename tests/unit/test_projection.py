"""One suite over both projections (RocksDB and in memory): the same batches give the
same read model, and RocksDB reopened gives back what it had."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams.codec import encode_event
from streams.core import (
    Command,
    CreateBranch,
    CreateModel,
    MakeCommit,
    ModelEvent,
    MoveAlias,
    decide,
    state_digest,
)
from streams.core.fold import Fold
from streams.projection import MemoryProjection, Projection, RocksDBProjection
from streams.topics import home_partition

PARTITIONS = 4
DIGEST = "a" * 64
Records = dict[int, list[tuple[int, bytes]]]


def history(model: str, commits: int) -> list[ModelEvent]:
    fold = Fold()
    bodies = [
        CreateModel(),
        *(MakeCommit(DIGEST, f"c{i}", params={"i": str(i)}) for i in range(commits)),
        CreateBranch("exp"),
        MoveAlias("production", "main"),
    ]
    events = []
    for i, body in enumerate(bodies):
        command = Command(f"{model}-{i}", model, "tester", 1_000 + i, body)
        for event in decide(fold.models.get(model), command):
            assert fold.apply(event) is None
            events.append(event)
    return events


def other_partition(model: str) -> int:
    return (home_partition(model, PARTITIONS) + 1) % PARTITIONS


def log() -> tuple[Records, list[ModelEvent]]:
    """Events of three models on their home partitions, plus a record of each kind of trouble:
    undecodable bytes, an event on the wrong partition, and a repeat that breaks its chain."""
    records: Records = {p: [] for p in range(PARTITIONS)}
    accepted: list[ModelEvent] = []
    for model, commits in (("churn", 5), ("fraud", 3), ("ltv", 1)):
        for event in history(model, commits):
            records[home_partition(model, PARTITIONS)].append(
                (len(records[home_partition(model, PARTITIONS)]), encode_event(event))
            )
            accepted.append(event)
    churn = home_partition("churn", PARTITIONS)
    records[churn].append((len(records[churn]), b"\x00not an event"))
    records[churn].append((len(records[churn]), encode_event(accepted[1])))  # a repeat: void
    stray = history("stray", 1)[0]
    wrong = other_partition("stray")
    records[wrong].append((len(records[wrong]), encode_event(stray)))  # misplaced: void
    return records, accepted


def apply_all(projection: Projection, records: Records, batch: int = 3) -> list[str]:
    """Apply in batches of ``batch``; the outcome of every record, in order."""
    outcomes = []
    for partition, items in sorted(records.items()):
        for start in range(0, len(items), batch):
            for applied in projection.apply(partition, items[start : start + batch], PARTITIONS):
                if applied.undecodable is not None:
                    outcomes.append("undecodable")
                elif applied.void_reason is not None:
                    outcomes.append("void")
                else:
                    outcomes.append("applied")
    return outcomes


def snapshot(projection: Projection) -> dict[str, object]:
    """Everything a reader can ask a projection."""
    models = sorted(projection.models)
    return {
        "digest": state_digest(projection.models),
        "offsets": dict(projection.next_offsets),
        "voided": projection.voided,
        "void_counts": dict(projection.void_counts()),
        "history": {m: list(projection.history(m)) for m in models},
        "offsets_of_events": {
            m: [projection.event_offset(m, seq) for seq in range(1, projection.models[m].seq + 2)]
            for m in models
        },
        "receipts": {m: dict(projection.models[m].receipts) for m in models},
    }


@pytest.fixture(params=["memory", "rocksdb"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Projection]]:
    opened: list[Projection] = []

    def open_one() -> Projection:
        projection: Projection = (
            MemoryProjection() if request.param == "memory" else RocksDBProjection(tmp_path / "db")
        )
        opened.append(projection)
        return projection

    yield open_one
    for projection in opened:
        projection.close()


def test_a_projection_is_the_fold_of_what_it_applied(make: Callable[[], Projection]) -> None:
    records, accepted = log()
    projection = make()
    outcomes = apply_all(projection, records)
    assert outcomes.count("undecodable") == 1 and outcomes.count("void") == 2
    expected = Fold()
    for event in accepted:
        expected.apply(event)
    assert state_digest(projection.models) == state_digest(expected.models)
    assert dict(projection.next_offsets) == {p: len(items) for p, items in records.items() if items}
    assert projection.voided == 2
    assert dict(projection.void_counts()) == {"churn": 1, "stray": 1}
    churn = [e for e in accepted if e.model == "churn"]
    assert [event for _, event in projection.history("churn")] == churn
    assert [offset for offset, _ in projection.history("churn")] == list(range(len(churn)))
    assert projection.event_offset("churn", churn[-1].seq) == len(churn) - 1
    assert projection.event_offset("churn", 999) is None
    assert list(projection.history("stray")) == []  # void events are not history
    receipt = projection.receipt("churn", "churn-1")
    assert receipt is not None and receipt.seq == churn[1].seq
    assert projection.receipt("churn", "never") is None
    assert projection.applied(home_partition("churn", PARTITIONS), 0)
    assert not projection.applied(home_partition("churn", PARTITIONS), 10_000)


def test_an_empty_batch_changes_nothing(make: Callable[[], Projection]) -> None:
    projection = make()
    assert projection.apply(0, [], PARTITIONS) == []
    assert dict(projection.next_offsets) == {} and not projection.models


def test_memory_and_rocksdb_answer_alike_for_the_same_batches(tmp_path: Path) -> None:
    records, _ = log()
    memory, rocksdb = MemoryProjection(), RocksDBProjection(tmp_path / "db")
    try:
        assert apply_all(memory, records, batch=2) == apply_all(rocksdb, records, batch=5)
        assert snapshot(memory) == snapshot(rocksdb)
    finally:
        rocksdb.close()


def test_rocksdb_reopened_resumes_where_it_stopped(tmp_path: Path) -> None:
    records, _ = log()
    first = {p: items[: len(items) // 2] for p, items in records.items()}
    rest = {p: items[len(items) // 2 :] for p, items in records.items()}
    projection = RocksDBProjection(tmp_path / "db")
    apply_all(projection, first)
    before = snapshot(projection)
    projection.close()
    reopened = RocksDBProjection(tmp_path / "db")
    try:
        assert snapshot(reopened) == before  # the same state, offsets, history and void counts
        apply_all(reopened, rest)  # and it goes on from the stored offsets
        reference = MemoryProjection()
        apply_all(reference, records)
        assert snapshot(reopened) == snapshot(reference)
    finally:
        reopened.close()
