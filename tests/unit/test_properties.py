"""Random command sequences keep every invariant, and the fold of the log is the live state."""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.codec import decode_event, encode_event
from streams.core import Command, ModelEvent, decide, fold, state_digest
from streams.core.commands import command_digest
from streams.core.errors import CommandIdReused, VersionGraphError
from streams.core.fold import Fold
from streams.core.invariants import violations
from streams.core.state import PersistentMap
from streams.projection import RocksDBProjection
from tests.unit.strategies import steps


@dataclass
class Played:
    live: Fold
    log: list[ModelEvent]
    accepted: int
    # digest of the request that first used each (model, command id) and was accepted
    first: dict[tuple[str, str], str] = field(default_factory=dict)
    reused: int = 0  # another request under a used key, refused as CommandIdReused


def play(script: list) -> tuple[Fold, list[ModelEvent], int]:
    """The live fold, the log and how many events were accepted (see :func:`record`)."""
    played = record(script)
    return played.live, played.log, played.accepted


def record(script: list) -> Played:
    played = Played(Fold(), [], 0)
    issued: list[Command] = []
    for i, (model, body, repeat) in enumerate(script):
        if repeat and issued and i % 2:
            command = issued[i % len(issued)]  # the same command again (a retry)
        elif repeat and issued:
            earlier = issued[i % len(issued)]  # its id again, for whatever this step asks
            command = Command(earlier.command_id, earlier.model, "alice", 1_000 + i, body)
        else:
            command = Command(f"c{i}", model, "alice", 1_000 + i, body)
        issued.append(command)
        try:
            events = decide(played.live.models.get(command.model), command)
        except CommandIdReused:
            key = (command.model, command.command_id)
            assert played.first[key] != command_digest(command)
            played.reused += 1
            continue
        except VersionGraphError:
            continue
        for event in events:
            assert played.live.apply(event) is None, "decide produced an event the fold voids"
            played.log.append(event)
            played.accepted += 1
            played.first[(event.model, event.command_id)] = command_digest(command)
    return played


@settings(max_examples=150, deadline=None)
@given(steps)
def test_random_histories_keep_every_invariant(script: list) -> None:
    played = record(script)
    live, log = played.live, played.log
    for name, state in live.models.items():
        own = [e for e in log if e.model == name]
        assert violations(state, own) == []


@settings(max_examples=150, deadline=None)
@given(steps)
def test_fold_of_the_encoded_log_equals_the_live_state(script: list) -> None:
    played = record(script)
    live, log = played.live, played.log
    replayed = fold(decode_event(encode_event(e)) for e in log)
    assert replayed.models == live.models
    assert state_digest(replayed.models) == state_digest(live.models)
    assert replayed.voided == 0


@settings(max_examples=60, deadline=None)
@given(steps)
def test_a_repeated_or_duplicated_event_is_void_and_changes_nothing(script: list) -> None:
    played = record(script)
    live, log = played.live, played.log
    if not log:
        return
    rng = random.Random(len(log))
    dup = log[rng.randrange(len(log))]
    position = rng.randrange(log.index(dup) + 1, len(log) + 1)
    noisy = [*log[:position], dup, *log[position:]]
    replayed = fold(noisy)
    assert replayed.models == live.models
    assert replayed.voided == 1


@settings(max_examples=150, deadline=None)
@given(steps)
def test_finding_7_replaying_the_log_rebuilds_the_same_receipts(script: list) -> None:
    """Each receipt carries the digest of the request that first used its key, and
    a fold of the decoded log rebuilds exactly those receipts (so a reuse refused
    live is refused after any rebuild)."""
    played = record(script)
    replayed = fold(decode_event(encode_event(e)) for e in played.log)
    for name, state in played.live.models.items():
        assert replayed.models[name].receipts == state.receipts
        for command_id, receipt in state.receipts.items():
            assert receipt.digest == played.first[(name, command_id)]


@settings(max_examples=25, deadline=None)
@given(steps)
def test_finding_7_the_projection_keeps_receipts_across_a_restart(script: list) -> None:
    """The RocksDB read model stores receipts with their digests and loads them back."""
    played = record(script)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rocksdb"
        projection = RocksDBProjection(path)
        projection.apply(0, [(i, encode_event(e)) for i, e in enumerate(played.log)])
        projection.close()
        reopened = RocksDBProjection(path)
        try:
            for name, state in played.live.models.items():
                assert reopened.fold.models[name].receipts == state.receipts
            for offset, event in enumerate(played.log):
                assert reopened.event_offset(event.model, event.seq) == offset
        finally:
            reopened.close()


# One operation on a persistent map: (which earlier version it starts from, as a
# fraction of the versions made so far; set or delete; key; value).
map_ops = st.lists(
    st.tuples(
        st.floats(0, 1),
        st.sampled_from(["set", "set", "set", "without"]),
        st.sampled_from("abcdefgh"),
        st.integers(0, 3) | st.none(),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(map_ops, st.randoms(use_true_random=False))
def test_every_version_of_a_persistent_map_reads_as_the_dict_it_was_made_as(
    ops: list[tuple[float, str, str, int | None]], rng: random.Random
) -> None:
    """Each version keeps its entries and their order (a dict's: an overwritten key
    keeps its place, a deleted then re-added key goes last), whether later writes
    extend the newest version or fork an older one, and in whatever order versions
    are read back."""
    versions: list[PersistentMap[str, int | None]] = [PersistentMap()]
    expected: list[dict[str, int | None]] = [{}]
    for where, op, key, value in ops:
        base = min(int(where * len(versions)), len(versions) - 1)
        if op == "set":
            versions.append(versions[base].set(key, value))
            expected.append({**expected[base], key: value})
        else:
            versions.append(versions[base].without(key))
            expected.append({k: v for k, v in expected[base].items() if k != key})
        if rng.random() < 0.3:  # read some older version in the middle of the writes
            i = rng.randrange(len(versions))
            assert list(versions[i].items()) == list(expected[i].items())
    order = list(range(len(versions)))
    rng.shuffle(order)
    for i in order:
        version, want = versions[i], expected[i]
        assert list(version.items()) == list(want.items())
        assert len(version) == len(want)
        assert version == want
        for key in "abcdefghz":
            assert (key in version) == (key in want)
            assert version.get(key, -1) == want.get(key, -1)


@settings(max_examples=60, deadline=None)
@given(steps)
def test_states_kept_during_a_fold_stay_what_they_were(script: list) -> None:
    """evolve shares maps between a state and the next: every state a reader kept
    must still equal a fresh fold of the log up to it, once the fold moved on."""
    played = record(script)
    kept = Fold()
    snapshots = []
    for event in played.log:
        assert kept.apply(event) is None
        snapshots.append((event, kept.models[event.model]))
    for i, (event, state) in enumerate(snapshots):
        fresh = fold(played.log[: i + 1]).models[event.model]
        assert state == fresh
        assert list(state.commits) == list(fresh.commits)  # topological order kept
        assert list(state.receipts.items()) == list(fresh.receipts.items())
