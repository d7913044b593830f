"""One suite over both projections (RocksDB and in memory): the same batches give the
same read model, and RocksDB reopened gives back what it had, the security chain and
the writer-key rings included; a forged event on a signed partition is void."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
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
from streams.core.commands import AddWriterKey, IssueToken, ProtectRef, RetireWriterKey
from streams.core.decide import decide_on
from streams.core.events import AliasMoved
from streams.core.fold import Fold
from streams.core.hashing import GENESIS_HASH
from streams.core.security import SECURITY_STREAM
from streams.core.signatures import event_message, keys_stream
from streams.projection import MemoryProjection, Projection, RocksDBProjection
from streams.signing import SigningKey, sign_event, verify
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


KEY = SigningKey.generate()
SUCCESSOR = SigningKey.generate()
SIGNED_MODEL = "signed"


def signed_log(rotate: bool = False) -> tuple[Records, Fold]:
    """A signed log: rings on the partitions of ~security and of a model, a token and a
    rule in ~security, the model's history; and the fold that wrote it. ``rotate``: then
    KEY is replaced by SUCCESSOR on both rings, which signs what follows."""
    fold = Fold(verify=verify)
    records: Records = {p: [] for p in range(PARTITIONS)}

    def run(
        partition: int, model: str, body: object, role: str = "admin", key: SigningKey = KEY
    ) -> None:
        command = Command(f"{model}-{len(records[partition])}", model, "admin", 5, body, role=role)  # type: ignore[arg-type]
        for event in decide_on(fold, partition, command, key.key_id):
            event = sign_event(key, event)
            assert fold.apply(event, partition) is None
            records[partition].append((len(records[partition]), encode_event(event)))

    security = home_partition(SECURITY_STREAM, PARTITIONS)
    model = home_partition(SIGNED_MODEL, PARTITIONS)
    for partition in sorted({security, model}):
        run(partition, keys_stream(partition), AddWriterKey(KEY.public_key, "first"))
    run(security, SECURITY_STREAM, IssueToken("0123456789abcdef", "ann", "admin", "a" * 64))
    run(security, SECURITY_STREAM, ProtectRef("alias", "production"))
    run(model, SIGNED_MODEL, CreateModel())
    run(model, SIGNED_MODEL, MakeCommit(DIGEST, "one"))
    run(model, SIGNED_MODEL, MoveAlias("production", "main"))
    run(model, SIGNED_MODEL, MakeCommit(DIGEST, "two", params={"n": "2"}))
    if rotate:
        for partition in sorted({security, model}):
            run(partition, keys_stream(partition), AddWriterKey(SUCCESSOR.public_key))
            retire = RetireWriterKey(KEY.key_id, "rotated")
            run(partition, keys_stream(partition), retire, key=SUCCESSOR)
        token = IssueToken("fedcba9876543210", "bob", "reader", "b" * 64)
        run(security, SECURITY_STREAM, token, key=SUCCESSOR)
    return records, fold


def forged_move(projection: Projection, signer: SigningKey | None) -> bytes:
    """A correctly chained AliasMoved of the signed model, unsigned or signed by ``signer``."""
    state = projection.models[SIGNED_MODEL]
    event = ModelEvent(
        SIGNED_MODEL,
        state.seq + 1,
        state.last_hash or GENESIS_HASH,
        "forged",
        "mallory",
        10,
        AliasMoved("production", state.aliases["production"], state.branches["main"]),
        key_id="" if signer is None else KEY.key_id,
    )
    if signer is None:
        return encode_event(event)
    # Under our key id, whoever signs: a stranger's signature cannot borrow our key.
    return encode_event(replace(event, signature=signer.sign(event_message(event.hash()))))


def test_signed_events_fold_and_the_system_chains_are_exposed(
    make: Callable[[], Projection],
) -> None:
    records, expected = signed_log()
    projection = make()
    assert set(apply_all(projection, records)) == {"applied"}
    assert projection.security == expected.security and projection.security is not None
    assert set(projection.security.tokens) == {"0123456789abcdef"}
    assert dict(projection.rings) == expected.rings
    assert dict(projection.rings[home_partition(SIGNED_MODEL, PARTITIONS)].active) == {
        KEY.key_id: KEY.public_key
    }
    assert state_digest(projection.models) == state_digest(expected.models)
    assert [e.seq for _, e in projection.history(SECURITY_STREAM)] == [1, 2]


@pytest.mark.parametrize("signer", [None, SigningKey.generate()], ids=["unsigned", "other-key"])
def test_a_forged_event_on_a_signed_partition_is_void(
    make: Callable[[], Projection], signer: SigningKey | None
) -> None:
    records, _ = signed_log()
    projection = make()
    apply_all(projection, records)
    before = state_digest(projection.models)
    partition = home_partition(SIGNED_MODEL, PARTITIONS)
    offset = projection.next_offsets[partition]
    (applied,) = projection.apply(
        partition, [(offset, forged_move(projection, signer))], PARTITIONS
    )
    prefix = "unsigned: " if signer is None else "bad signature: "
    assert applied.void_reason is not None and applied.void_reason.startswith(prefix)
    assert state_digest(projection.models) == before
    assert projection.void_counts()[SIGNED_MODEL] == 1
    # The genuine writer's next event (same seq as the forgery) still applies.
    genuine = forged_move(projection, KEY)
    (applied,) = projection.apply(partition, [(offset + 1, genuine)], PARTITIONS)
    assert applied.void_reason is None


def test_rocksdb_reopened_keeps_the_security_chain_and_the_rings(tmp_path: Path) -> None:
    records, expected = signed_log()
    first = {p: items[: len(items) // 2 + 1] for p, items in records.items()}
    rest = {p: items[len(items) // 2 + 1 :] for p, items in records.items()}
    projection = RocksDBProjection(tmp_path / "db")
    apply_all(projection, first)
    security, rings = projection.security, dict(projection.rings)
    assert rings  # the halves cut through the rings' partitions
    projection.close()
    reopened = RocksDBProjection(tmp_path / "db")
    try:
        assert reopened.security == security and dict(reopened.rings) == rings
        apply_all(reopened, rest)  # signed events after the restart still verify
        assert reopened.security == expected.security and dict(reopened.rings) == expected.rings
        assert state_digest(reopened.models) == state_digest(expected.models)
        partition = home_partition(SIGNED_MODEL, PARTITIONS)
        offset = reopened.next_offsets[partition]
        (applied,) = reopened.apply(partition, [(offset, forged_move(reopened, None))], PARTITIONS)
        assert applied.void_reason is not None  # the ring came back: still a signed partition
        assert reopened.voided == 1
    finally:
        reopened.close()


def test_rocksdb_reopened_after_a_key_rotation_keeps_tokens_and_rules(tmp_path: Path) -> None:
    # The ~security events KEY signed were valid when applied; the reload must judge
    # them by the ring as it was then, not by the ring in which KEY is retired.
    records, expected = signed_log(rotate=True)
    projection = RocksDBProjection(tmp_path / "db")
    assert set(apply_all(projection, records)) == {"applied"}
    projection.close()
    reopened = RocksDBProjection(tmp_path / "db")
    try:
        assert reopened.security == expected.security and reopened.security is not None
        assert set(reopened.security.tokens) == {"0123456789abcdef", "fedcba9876543210"}
        assert reopened.security.rules == {("alias", "", "production"): "releaser"}
        assert dict(reopened.rings) == expected.rings and reopened.voided == 0
        for ring in reopened.rings.values():
            assert set(ring.active) == {SUCCESSOR.key_id} and set(ring.retired) == {KEY.key_id}
    finally:
        reopened.close()
