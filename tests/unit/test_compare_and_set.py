"""Compare-and-set for the console's actions (issue 13): a rollback and a rollout start
name what the caller saw (``expect``) and are refused, with where the ref is now, when it
moved; the field travels on the wire, and commands written before it still read."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from streams import codec
from streams.core import Command, CreateModel, MakeCommit, MoveAlias, Rollback
from streams.core.commands import AbortRollout, StartRollout, command_digest
from streams.core.errors import RolloutMoved, StaleHead
from streams.core.events import RolledBack, RolloutAborted, RolloutStarted
from streams.core.hashing import canonical, sha256_hex
from streams.core.rollout import Policy, rollout_id
from tests.golden.make_fixtures import console_history
from tests.unit.test_decide import Repo

A, B, C = "a" * 64, "b" * 64, "c" * 64
GOLDEN = Path(__file__).parents[1] / "golden"
POLICY = Policy((10, 100), 0, max_p99_ms=80.0)


@pytest.fixture
def repo() -> Repo:
    r = Repo()
    r.run(CreateModel())
    r.run(MakeCommit(A, "one"))
    r.run(MakeCommit(B, "two"))
    return r


def test_a_rollback_expecting_the_head_it_saw_applies(repo: Repo) -> None:
    head = repo.head()
    (event,) = repo.run(Rollback("main", "main~1", "latency", expect=head))
    assert isinstance(event.payload, RolledBack) and event.payload.from_commit == head


def test_a_rollback_of_a_branch_that_moved_is_refused_with_its_head_now(repo: Repo) -> None:
    seen = repo.head()
    repo.run(MakeCommit(C, "three"))  # someone else committed meanwhile
    with pytest.raises(StaleHead) as caught:
        repo.run(Rollback("main", "main~2", "latency", expect=seen))
    assert caught.value.details == {"branch": "main", "current": repo.head()}
    assert caught.value.to_dict()["error"] == "stale_head"
    # What to do next, in a line the CLI accepts.
    assert (
        f"modelvc -M m rollback main --to 'main~2' --reason WHY --expect {repo.head()}"
        in caught.value.message
    )
    assert repo.state.branches["main"] == repo.head()  # nothing happened


def test_a_rollout_start_expecting_what_the_alias_serves(repo: Repo) -> None:
    repo.run(MoveAlias("production", "main~1"))
    serving = repo.state.aliases["production"]
    repo.run(MoveAlias("production", "main"))  # moved after the page was drawn
    with pytest.raises(StaleHead) as caught:
        repo.run(StartRollout("production", "main", POLICY, expect=serving))
    assert caught.value.details == {"alias": "production", "current": repo.head()}
    assert f"--expect {repo.head()}" in caught.value.message
    repo.run(MoveAlias("production", "main~1"))
    (event,) = repo.run(StartRollout("production", "main", POLICY, expect=serving))
    assert isinstance(event.payload, RolloutStarted) and event.payload.baseline == serving


def test_an_abort_expecting_an_old_step_names_where_the_rollout_is(repo: Repo) -> None:
    repo.run(MoveAlias("production", "main~1"))
    (started,) = repo.run(StartRollout("production", "main", POLICY), command_id="go")
    rid = rollout_id("m", "go")
    assert started.payload.rollout_id == rid  # type: ignore[union-attr]
    with pytest.raises(RolloutMoved) as caught:
        repo.run(AbortRollout(rid, "bad", expect_step=1))
    assert caught.value.details["current"] == {"step": 0, "status": "running", "percent": 10}
    (aborted,) = repo.run(AbortRollout(rid, "bad", expect_step=0))
    assert isinstance(aborted.payload, RolloutAborted)


def test_without_expect_a_request_digests_as_it_did_before_the_field() -> None:
    """A retry of a request sent before issue 13 is still recognised as the same request:
    the golden rollout starts digest to what their events recorded, and a rollback to the
    digest of its old fields."""
    events = {
        json.loads(p.with_suffix(".json").read_text())["command_id"]: json.loads(
            p.with_suffix(".json").read_text()
        )["command_digest"]
        for p in sorted(GOLDEN.glob("rollout-v1/event-*-RolloutStarted.bin"))
    }
    starts = [
        c
        for c in (
            codec.decode_command(p.read_bytes())[0]
            for p in sorted(GOLDEN.glob("rollout-v1/command-*.bin"))
        )
        if isinstance(c.body, StartRollout)
    ]
    assert len(starts) == 3
    for command in starts:
        assert command_digest(command) == events[command.command_id]
        with_expect = replace(command, body=replace(command.body, expect=A))
        assert command_digest(with_expect) != events[command.command_id]
    plain = {"branch": "main", "to_ref": "main~1", "reason": "why"}
    before = sha256_hex(
        canonical({"model": "m", "actor": "alice", "type": "Rollback", "body": plain})
    )
    assert command_digest(Command("c", "m", "alice", 0, Rollback("main", "main~1", "why"))) == (
        before
    )


@pytest.mark.parametrize("body_type", [Rollback, StartRollout])
def test_expect_round_trips_on_the_wire(body_type: type) -> None:
    body = (
        Rollback("main", "main~1", "why", expect=A)
        if body_type is Rollback
        else StartRollout("production", "main", POLICY, expect=A)
    )
    command = Command("c1", "m", "alice", 5, body)
    data = codec.encode_command(command, "inst", "req")
    assert data[2:10] == codec.COMMANDS.fingerprint
    assert codec.decode_command(data) == (command, codec.ReplyTo("inst", "req"))


def test_commands_written_before_expect_read_without_one() -> None:
    """Released writers (v1's rollback, rollout-v1's rollout starts) read with expect None."""
    old = [
        codec.decode_command(p.read_bytes())[0]
        for p in sorted(GOLDEN.glob("v1/command-*.bin"))
        + sorted(GOLDEN.glob("rollout-v1/command-*.bin"))
    ]
    kinds = [c.body for c in old if isinstance(c.body, Rollback | StartRollout)]
    assert {type(b) for b in kinds} == {Rollback, StartRollout}
    assert all(b.expect is None for b in kinds)
    for path in sorted(GOLDEN.glob("v1/command-*.bin")):
        assert path.read_bytes()[2:10] != codec.COMMANDS.fingerprint  # an older writer


def test_the_golden_console_commands_carry_their_expect() -> None:
    written = {
        f"command-{int(c.command_id[-2:]):02d}.bin": c
        for c in console_history()
        if getattr(c.body, "expect", None) is not None
    }
    found = sorted((GOLDEN / "console-v1").glob("command-*.bin"))
    assert [p.name for p in found] == sorted(written)
    for path in found:
        command, _ = codec.decode_command(path.read_bytes())
        assert command == written[path.name]
    bodies = [written[p.name].body for p in found]
    assert {type(b) for b in bodies} >= {Rollback, StartRollout}
