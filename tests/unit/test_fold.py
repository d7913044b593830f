"""Races between writers are settled by the fold, the same way for every reader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import pytest

from streams.codec import decode_event
from streams.core import Command, CreateModel, MakeCommit, decide, fold
from streams.core.errors import InvalidCommand
from streams.core.events import Commit, Committed
from streams.core.hashing import commit_id
from streams.core.model_signature import CATEGORICAL, DOUBLE, Feature, ModelSignature

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


def test_finding_7_v1_events_decode_without_a_digest_and_keep_their_hashes() -> None:
    """Events written before command digests existed still fold into a valid chain,
    with the hashes they were chained with, and their receipts keep the old repeat rule."""
    golden = Path(__file__).parents[1] / "golden" / "v1"
    files = sorted(golden.glob("event-*.bin"))
    events = [decode_event(f.read_bytes()) for f in files]  # the service's own decoder
    assert events and all(e.command_digest == "" for e in events)
    for event, following in pairwise(events):
        assert event.hash() == following.prev_hash
    result = fold(events)
    state = result.models["churn"]
    assert result.voided == 0 and state.seq == len(events)
    assert {r.digest for r in state.receipts.values()} == {""}
    reuse = Command("cmd-01", "churn", "someone-else", 1, MakeCommit(B, "not the same"))
    assert decide(state, reuse) == ()


def test_digests_match_whole_in_decide_and_fold() -> None:
    """A digest with a trailing newline once passed `^...$` with `.match`."""
    created, state = _created()
    with pytest.raises(InvalidCommand):
        decide(state, Command("c1", "m", "alice", 2, MakeCommit(A + "\n", "x")))
    (event,) = decide(state, Command("c1", "m", "alice", 2, MakeCommit(A, "x")))
    assert isinstance(event.payload, Committed)
    forged_commit = replace(event.payload.commit, artifact_sha256="../" + A[3:])
    forged_id = commit_id(
        parents=forged_commit.parents,
        artifact_sha256=forged_commit.artifact_sha256,
        params=forged_commit.params,
        metrics=forged_commit.metrics,
        message=forged_commit.message,
        author=forged_commit.author,
        at=forged_commit.at,
    )
    forged_commit = replace(forged_commit, id=forged_id)
    forged = replace(event, payload=replace(event.payload, commit=forged_commit))
    result = fold([created, forged])
    assert result.voided == 1 and result.models["m"].branches["main"] is None


SIGNATURE = ModelSignature("lightgbm", (Feature("x", DOUBLE), Feature("y", CATEGORICAL)), 1)


@pytest.mark.parametrize(
    "forge",
    [
        lambda c: replace(c, signature=None),  # the signature stripped
        lambda c: replace(c, signature=replace(SIGNATURE, outputs=2)),  # changed
        lambda c: replace(c, signature=replace(SIGNATURE, inputs=SIGNATURE.inputs[:1])),
    ],
    ids=["stripped", "outputs", "inputs"],
)
def test_a_commit_whose_signature_is_not_the_one_its_id_covers_is_void(
    forge: Callable[[Commit], Commit],
) -> None:
    created, state = _created()
    command = Command("c1", "m", "alice", 2, MakeCommit(A, "x", signature=SIGNATURE))
    (event,) = decide(state, command)
    assert isinstance(event.payload, Committed)
    assert fold([created, event]).voided == 0
    forged = replace(event, payload=replace(event.payload, commit=forge(event.payload.commit)))
    result = fold([created, forged])
    assert result.voided == 1 and result.models["m"].branches["main"] is None


def test_a_signature_added_to_a_legacy_commit_is_void() -> None:
    created, state = _created()
    (event,) = decide(state, Command("c1", "m", "alice", 2, MakeCommit(A, "legacy")))
    assert isinstance(event.payload, Committed)
    dressed = replace(event.payload.commit, signature=SIGNATURE)
    assert fold([created, replace(event, payload=replace(event.payload, commit=dressed))]).voided
