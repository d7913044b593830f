"""Random command sequences keep every invariant, and the fold of the log is the live state."""

from __future__ import annotations

import random

from hypothesis import given, settings

from streams.codec import decode_event, encode_event
from streams.core import Command, ModelEvent, decide, fold, state_digest
from streams.core.errors import VersionGraphError
from streams.core.fold import Fold
from streams.core.invariants import violations
from tests.unit.strategies import steps


def play(script: list) -> tuple[Fold, list[ModelEvent], int]:
    live = Fold()
    log: list[ModelEvent] = []
    accepted = 0
    issued: list[Command] = []
    for i, (model, body, repeat) in enumerate(script):
        if repeat and issued:
            command = issued[i % len(issued)]  # the same command again (a retry)
        else:
            command = Command(f"c{i}", model, "alice", 1_000 + i, body)
        issued.append(command)
        try:
            events = decide(live.models.get(command.model), command)
        except VersionGraphError:
            continue
        for event in events:
            assert live.apply(event) is None, "decide produced an event the fold voids"
            log.append(event)
            accepted += 1
    return live, log, accepted


@settings(max_examples=150, deadline=None)
@given(steps)
def test_random_histories_keep_every_invariant(script: list) -> None:
    live, log, _ = play(script)
    for name, state in live.models.items():
        own = [e for e in log if e.model == name]
        assert violations(state, own) == []


@settings(max_examples=150, deadline=None)
@given(steps)
def test_fold_of_the_encoded_log_equals_the_live_state(script: list) -> None:
    live, log, _ = play(script)
    replayed = fold(decode_event(encode_event(e)) for e in log)
    assert replayed.models == live.models
    assert state_digest(replayed.models) == state_digest(live.models)
    assert replayed.voided == 0


@settings(max_examples=60, deadline=None)
@given(steps)
def test_a_repeated_or_duplicated_event_is_void_and_changes_nothing(script: list) -> None:
    live, log, _ = play(script)
    if not log:
        return
    rng = random.Random(len(log))
    dup = log[rng.randrange(len(log))]
    position = rng.randrange(log.index(dup) + 1, len(log) + 1)
    noisy = [*log[:position], dup, *log[position:]]
    replayed = fold(noisy)
    assert replayed.models == live.models
    assert replayed.voided == 1
