"""Races between writers are settled by the fold, the same way for every reader."""

from __future__ import annotations

from dataclasses import replace

from streams.core import Command, CreateModel, MakeCommit, decide, fold
from streams.core.events import Committed

A, B = "a" * 64, "b" * 64


def _created():  # type: ignore[no-untyped-def]
    (created,) = decide(None, Command("c0", "m", "alice", 1, CreateModel()))
    return created, fold([created]).models["m"]


def test_two_writers_deciding_on_the_same_state_first_in_log_wins() -> None:
    created, state = _created()
    (ours,) = decide(state, Command("c1", "m", "alice", 2, MakeCommit(A, "ours")))
    (theirs,) = decide(state, Command("c2", "m", "bob", 3, MakeCommit(B, "theirs")))
    result = fold([created, theirs, ours])
    assert result.voided == 1
    head = result.models["m"].branches["main"]
    assert result.models["m"].commits[head].message == "theirs"
    assert "c1" not in result.models["m"].receipts  # the loser is not told it was accepted


def test_tampered_commit_content_is_void() -> None:
    created, state = _created()
    (event,) = decide(state, Command("c1", "m", "alice", 2, MakeCommit(A, "honest")))
    assert isinstance(event.payload, Committed)
    forged_commit = replace(event.payload.commit, artifact_sha256=B)
    forged = replace(event, payload=replace(event.payload, commit=forged_commit))
    result = fold([created, forged])
    assert result.voided == 1 and result.models["m"].branches["main"] is None


def test_broken_hash_chain_is_void() -> None:
    created, state = _created()
    (event,) = decide(state, Command("c1", "m", "alice", 2, MakeCommit(A, "x")))
    assert fold([created, replace(event, prev_hash="f" * 64)]).voided == 1
    assert fold([created, replace(event, seq=3)]).voided == 1
