"""The read side's questions without HTTP: reachability and point-in-time replay."""

from __future__ import annotations

from dataclasses import replace

import pytest

from streams import queries
from streams.core import Command, CreateBranch, CreateModel, MakeCommit, Rollback, decide
from streams.core.errors import UnknownModel
from streams.core.events import ModelEvent
from streams.core.fold import Fold


def played() -> tuple[Fold, list[tuple[int, ModelEvent]]]:
    fold = Fold()
    history = []
    bodies = [
        CreateModel(),
        MakeCommit("a" * 64, "one"),
        MakeCommit("b" * 64, "two"),
        Rollback("main", "main~1", "bad"),
        CreateBranch("exp"),
    ]
    for i, body in enumerate(bodies):
        for event in decide(
            fold.models.get("m"), Command(f"c{i}", "m", "t", 1_000 * (i + 1), body)
        ):
            fold.apply(event)
            history.append((10 + i, event))
    return fold, history


def test_log_marks_what_no_ref_reaches() -> None:
    fold, _ = played()
    state = queries.model(fold.models, "m")
    every = queries.log(state, None)["commits"]  # every commit ever made, newest first
    assert [(c["message"], c["reachable"]) for c in every] == [("two", False), ("one", True)]
    log = queries.log(state, "exp")
    assert [c["message"] for c in log["commits"]] == ["one"]
    assert {m["cause"] for m in log["ref_moves"]} >= {"RolledBack", "BranchCreated"}


def test_as_of_replays_the_prefix_up_to_an_offset_or_a_time() -> None:
    fold, history = played()
    at_offset = queries.as_of("m", history, ("offset", 11), "11")
    assert at_offset.seq == 2 and len(at_offset.commits) == 1
    at_time = queries.as_of("m", history, ("time", 3_000), "then")  # before the rollback
    assert at_time.seq == 3 and at_time.branches["main"] != fold.models["m"].branches["main"]
    with pytest.raises(UnknownModel, match="did not exist yet as of early"):
        queries.as_of("m", history, ("offset", 9), "early")
    with pytest.raises(UnknownModel):
        queries.model(fold.models, "nope")


def test_as_of_replays_signed_history_the_projection_already_checked() -> None:
    """A signed model's history carries key ids and signatures whose ring lives in another
    chain (``~keys.P``): the replay must not judge them again without it."""
    fold, history = played()
    signed = [(o, replace(e, key_id="ab" * 32, signature=b"s" * 64)) for o, e in history]
    then = queries.as_of("m", signed, ("offset", 11), "11")
    assert then.seq == 2 and len(then.commits) == 1
    assert queries.as_of("m", signed, ("offset", 99), "now").branches == fold.models["m"].branches


def test_refs_and_resolve_answer_from_the_state() -> None:
    fold, _ = played()
    state = fold.models["m"]
    table = queries.ref_table(state)
    assert set(table["branches"]) == {"main", "exp"} and table["seq"] == state.seq
    assert queries.resolve(state, "exp")["commit"] == state.branches["exp"]
    assert queries.list_models(fold.models)["models"][0]["commits"] == 2


def test_token_list_shows_state_and_never_a_hash() -> None:
    from dataclasses import replace

    from streams.core.security import SecurityState, Token

    def token(token_id: str, **changes: object) -> Token:
        return replace(Token(token_id, "alice", "reader", "f" * 64, 0, 1_000, "admin"), **changes)

    security = SecurityState(
        seq=3,
        last_hash="0" * 64,
        tokens={
            "a" * 16: token("a" * 16),
            "b" * 16: token("b" * 16, issued_at=2_000, revoked_at=3_000, revoked_by="admin"),
            "c" * 16: token("c" * 16, issued_at=3_000, expires_at=4_000),
        },
        rules={("alias", "", "production"): "releaser", ("branch", "churn", "main"): "admin"},
        receipts={},
    )
    listed = queries.tokens(security, now_ms=5_000)["tokens"]
    assert [(t["token_id"][0], t["state"]) for t in listed] == [
        ("a", "active"),
        ("b", "revoked"),
        ("c", "expired"),
    ]
    assert "f" * 64 not in repr(listed) and all("token_sha256" not in t for t in listed)
    assert queries.tokens(None, 0) == {"tokens": []}
    assert queries.protections(security)["rules"] == [
        {"kind": "alias", "model": "", "name": "production", "role": "releaser"},
        {"kind": "branch", "model": "churn", "name": "main", "role": "admin"},
    ]
    keys = queries.writer_keys({}, 2, "k" * 64)
    assert keys == {
        "instance_key": "k" * 64,
        "partitions": {"0": {"active": {}, "retired": {}}, "1": {"active": {}, "retired": {}}},
    }
