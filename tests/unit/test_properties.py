"""Random command sequences keep every invariant, and the fold of the log is the live state."""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import given, settings

from streams.codec import decode_event, encode_event
from streams.core import Command, ModelEvent, decide, fold, state_digest
from streams.core.commands import command_digest
from streams.core.errors import CommandIdReused, VersionGraphError
from streams.core.fold import Fold
from streams.core.invariants import violations
from streams.projection import Projection
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
        projection = Projection(path)
        projection.apply(0, [(i, encode_event(e)) for i, e in enumerate(played.log)])
        projection.close()
        reopened = Projection(path)
        try:
            for name, state in played.live.models.items():
                assert reopened.fold.models[name].receipts == state.receipts
            for offset, event in enumerate(played.log):
                assert reopened.event_offset(event.model, event.seq) == offset
        finally:
            reopened.close()
