"""What a user of the version graph relies on, checked on the pure core."""

from __future__ import annotations

from dataclasses import replace

import pytest

from streams.core import (
    Command,
    CreateBranch,
    CreateModel,
    DeleteBranch,
    MakeCommit,
    Merge,
    MoveAlias,
    Rollback,
    decide,
    refs,
)
from streams.core.commands import command_digest
from streams.core.errors import (
    AmbiguousRef,
    CommandIdReused,
    EmptyBranch,
    InvalidCommand,
    MergeConflict,
    ModelExists,
    NotAnAncestor,
    NothingToDo,
    ProtectedBranch,
    StaleHead,
    UnknownModel,
    UnknownRef,
)
from streams.core.fold import Fold
from streams.core.hashing import canonical, sha256_hex

A, B, C = "a" * 64, "b" * 64, "c" * 64


class Repo:
    """A tiny driver: decide + fold, the way the service does it."""

    def __init__(self) -> None:
        self.fold = Fold()
        self.clock = 1_700_000_000_000
        self.n = 0
        self.log: list = []

    def run(self, body: object, command_id: str | None = None, model: str = "m") -> tuple:
        self.n += 1
        self.clock += 1000
        command = Command(command_id or f"cmd-{self.n}", model, "alice", self.clock, body)  # type: ignore[arg-type]
        events = decide(self.fold.models.get(model), command)
        for event in events:
            assert self.fold.apply(event) is None
            self.log.append(event)
        return events

    @property
    def state(self):  # type: ignore[no-untyped-def]
        return self.fold.models["m"]

    def head(self, branch: str = "main") -> str:
        return self.state.branches[branch]


@pytest.fixture
def repo() -> Repo:
    r = Repo()
    r.run(CreateModel())
    return r


def test_commit_id_is_the_content_hash_and_events_are_deterministic(repo: Repo) -> None:
    command = Command("c1", "m", "alice", 5, MakeCommit(A, "first", params={"lr": "0.1"}))
    first = decide(repo.state, command)
    again = decide(repo.state, command)
    assert first == again
    assert first[0].hash() == again[0].hash()
    other = decide(
        repo.state, Command("c1", "m", "alice", 5, MakeCommit(A, "first", params={"lr": "0.2"}))
    )
    assert other[0].payload.commit.id != first[0].payload.commit.id


def test_commits_append_to_the_branch_head(repo: Repo) -> None:
    repo.run(MakeCommit(A, "one"))
    first = repo.head()
    repo.run(MakeCommit(B, "two"))
    assert repo.state.commits[repo.head()].parents == (first,)


def test_expect_head_is_compare_and_set(repo: Repo) -> None:
    repo.run(MakeCommit(A, "one"))
    stale = repo.head()
    repo.run(
        MakeCommit(B, "two"),
    )
    with pytest.raises(StaleHead) as caught:
        repo.run(MakeCommit(C, "three", expect_head=stale))
    assert caught.value.details["current"] == repo.head()
    repo.run(MakeCommit(C, "three", expect_head=repo.head()))
    assert repo.state.commits[repo.head()].message == "three"


def test_repeated_command_id_emits_nothing(repo: Repo) -> None:
    assert len(repo.run(MakeCommit(A, "one"), command_id="same")) == 1
    assert repo.run(MakeCommit(A, "one"), command_id="same") == ()
    assert len(repo.state.commits) == 1


def test_finding_7_reused_command_id_with_different_body_is_refused(repo: Repo) -> None:
    (first,) = repo.run(MakeCommit(A, "one"), command_id="job-7")
    with pytest.raises(CommandIdReused) as caught:
        repo.run(MakeCommit(A, "two"), command_id="job-7")
    fault = caught.value
    assert fault.code == "command_id_reused" and fault.status == 422
    assert fault.details == {
        "command_id": "job-7",
        "model": "m",
        "seq": first.seq,
        "event": "Committed",
    }
    assert "new command id" in fault.message and f"event {first.seq}" in fault.message
    assert [c.message for c in repo.state.commits.values()] == ["one"]


def test_finding_7_same_request_is_a_repeat_even_when_stamped_later(repo: Repo) -> None:
    (first,) = repo.run(MakeCommit(A, "one", metrics={"auc": 1.0}), command_id="job-7")
    # A retry after a timeout is stamped again by the server; 1 and 1.0 are one metric.
    retry = Command(
        "job-7", "m", "alice", first.at + 60_000, MakeCommit(A, "one", metrics={"auc": 1})
    )
    assert decide(repo.state, retry) == ()
    assert repo.state.receipts["job-7"].digest == first.command_digest == command_digest(retry)


def test_finding_7_another_actor_or_body_type_under_a_used_id_is_another_request(
    repo: Repo,
) -> None:
    repo.run(MakeCommit(A, "one"), command_id="job-7")
    with pytest.raises(CommandIdReused):
        decide(repo.state, Command("job-7", "m", "mallory", 1, MakeCommit(A, "one")))
    with pytest.raises(CommandIdReused):
        decide(repo.state, Command("job-7", "m", "alice", 1, CreateBranch("exp")))
    # Digesting never fails, even for a body decide would refuse for other reasons.
    with pytest.raises(CommandIdReused):
        repo.run(MakeCommit(A, "one", metrics={"auc": float("nan"), "n": 10**400}), "job-7")


def test_finding_7_the_key_is_model_and_command_id(repo: Repo) -> None:
    repo.run(MakeCommit(A, "one"), command_id="job-7")
    repo.run(CreateModel(), model="other", command_id="job-7")
    (event,) = decide(
        repo.fold.models["other"], Command("job-8", "other", "alice", 9, MakeCommit(B, "x"))
    )
    assert event.model == "other"
    assert repo.fold.models["other"].receipts["job-7"].event == "ModelCreated"
    assert repo.state.receipts["job-7"].event == "Committed"


def test_finding_7_events_without_a_digest_keep_the_old_repeat_rule(repo: Repo) -> None:
    """Events written before digests existed: any reuse of their id is a repeat."""
    command = Command("old-1", "m", "alice", 5, MakeCommit(A, "one"))
    (event,) = decide(repo.state, command)
    old = replace(event, command_digest="")
    assert repo.fold.apply(old) is None
    assert repo.state.receipts["old-1"].digest == ""
    other = Command("old-1", "m", "mallory", 6, MakeCommit(B, "two"))
    assert decide(repo.state, other) == ()


def test_event_hash_covers_the_digest_only_when_set(repo: Repo) -> None:
    (event,) = decide(repo.state, Command("h-1", "m", "alice", 5, MakeCommit(A, "one")))
    assert event.command_digest
    old = replace(event, command_digest="")
    plain = {
        "model": "m",
        "seq": event.seq,
        "prev_hash": event.prev_hash,
        "command_id": "h-1",
        "actor": "alice",
        "at": 5,
        "type": "Committed",
        "payload": {"branch": "main", "commit": event.payload.commit.id},  # type: ignore[union-attr]
    }
    assert old.hash() == sha256_hex(canonical(plain))  # unchanged for old events
    assert event.hash() == sha256_hex(canonical({**plain, "command_digest": event.command_digest}))
    assert "command_digest" not in old.to_plain()
    assert event.to_plain()["command_digest"] == event.command_digest


def test_merge_fast_forwards_when_target_is_an_ancestor(repo: Repo) -> None:
    repo.run(MakeCommit(A, "one"))
    repo.run(CreateBranch("exp"))
    repo.run(MakeCommit(B, "two", branch="exp"))
    (event,) = repo.run(Merge("exp"))
    assert event.payload.fast_forward and event.payload.commit is None
    assert repo.head() == repo.head("exp")


def test_diverged_merge_needs_a_strategy_and_names_the_base(repo: Repo) -> None:
    repo.run(MakeCommit(A, "one"))
    base = repo.head()
    repo.run(CreateBranch("exp"))
    repo.run(MakeCommit(B, "two", branch="exp", metrics={"auc": 0.9}))
    repo.run(MakeCommit(C, "three"))
    ours_head, theirs_head = repo.head(), repo.head("exp")
    with pytest.raises(MergeConflict) as caught:
        repo.run(Merge("exp"))
    assert caught.value.details == {
        "merge_base": base,
        "target_head": ours_head,
        "source_head": theirs_head,
    }
    repo.run(Merge("exp", strategy="theirs"))
    merge = repo.state.commits[repo.head()]
    assert merge.parents == (ours_head, theirs_head)
    assert merge.artifact_sha256 == B and merge.metrics == {"auc": 0.9}
    with pytest.raises(NothingToDo):
        repo.run(Merge("exp"))


def test_merge_with_an_explicit_artifact(repo: Repo) -> None:
    repo.run(MakeCommit(A, "one"))
    repo.run(CreateBranch("exp"))
    repo.run(MakeCommit(B, "two", branch="exp"))
    repo.run(MakeCommit(C, "three"))
    repo.run(Merge("exp", artifact_sha256="d" * 64))
    assert repo.state.commits[repo.head()].artifact_sha256 == "d" * 64


def test_rollback_moves_back_on_first_parent_history_and_keeps_history(repo: Repo) -> None:
    repo.run(MakeCommit(A, "one"))
    first = repo.head()
    repo.run(MakeCommit(B, "two"))
    second = repo.head()
    repo.run(Rollback("main", "main~1", "bad auc"))
    assert repo.head() == first
    assert second in repo.state.commits  # nothing is deleted
    move = repo.state.ref_moves()[0]
    assert (move.cause, move.old, move.new, move.reason) == ("RolledBack", second, first, "bad auc")
    with pytest.raises(NotAnAncestor):
        repo.run(Rollback("main", second, "forward is not a rollback"))
    with pytest.raises(InvalidCommand):
        repo.run(Rollback("main", first, "  "))


def test_rollback_refuses_a_commit_only_reachable_through_a_second_parent(repo: Repo) -> None:
    repo.run(MakeCommit(A, "one"))
    repo.run(CreateBranch("exp"))
    repo.run(MakeCommit(B, "two", branch="exp"))
    side = repo.head("exp")
    repo.run(MakeCommit(C, "three"))
    repo.run(Merge("exp", strategy="ours"))
    with pytest.raises(NotAnAncestor):
        repo.run(Rollback("main", side, "not on first-parent history"))


def test_alias_moves_with_compare_and_set(repo: Repo) -> None:
    repo.run(MakeCommit(A, "one"))
    repo.run(MoveAlias("production", "main", expect="none"))
    first = repo.head()
    repo.run(MakeCommit(B, "two"))
    with pytest.raises(StaleHead):
        repo.run(MoveAlias("production", "main", expect=repo.head()))
    repo.run(MoveAlias("production", "main", expect=first))
    assert repo.state.aliases["production"] == repo.head()


def test_refs_resolve_branch_alias_prefix_and_ancestry(repo: Repo) -> None:
    repo.run(MakeCommit(A, "one"))
    one = repo.head()
    repo.run(MakeCommit(B, "two"))
    repo.run(MoveAlias("production", "main~1"))
    s = repo.state
    assert refs.resolve(s, "production") == one
    assert refs.resolve(s, one[:8]) == one
    assert refs.resolve(s, "main^") == one
    assert refs.resolve(s, "main~0") == repo.head()
    with pytest.raises(UnknownRef):
        refs.resolve(s, "main~5")
    with pytest.raises(UnknownRef):
        refs.resolve(s, "nope")


def test_ambiguous_prefix_is_refused(repo: Repo) -> None:
    repo.run(MakeCommit(A, "one"))
    real = repo.state.commits[repo.head()]
    twins = {cid: replace(real, id=cid) for cid in ("abcd" + "1" * 60, "abcd" + "2" * 60)}
    state = replace(repo.state, commits={**repo.state.commits, **twins})
    with pytest.raises(AmbiguousRef) as caught:
        refs.resolve(state, "abcd")
    assert caught.value.details["candidates"] == sorted(twins)
    assert refs.resolve(state, "abcd1") == "abcd" + "1" * 60


def test_faults_say_what_to_do() -> None:
    with pytest.raises(UnknownModel, match="modelvc create ghost"):
        decide(None, Command("x", "ghost", "a", 1, MakeCommit(A, "m")))
    r = Repo()
    r.run(CreateModel())
    with pytest.raises(ModelExists):
        r.run(CreateModel())
    with pytest.raises(EmptyBranch):
        r.run(CreateBranch("exp"))
    with pytest.raises(UnknownRef, match="branch create"):
        r.run(MakeCommit(A, "x", branch="exp"))
    with pytest.raises(ProtectedBranch):
        r.run(DeleteBranch("main"))
    with pytest.raises(InvalidCommand, match="finite"):
        r.run(MakeCommit(A, "x", metrics={"auc": float("nan")}))
    with pytest.raises(InvalidCommand, match="sha256"):
        r.run(MakeCommit("../../etc/passwd", "x"))
    with pytest.raises(InvalidCommand, match="name"):
        r.run(CreateModel(), model="bad/name")


def test_deleted_branch_keeps_its_commits(repo: Repo) -> None:
    repo.run(MakeCommit(A, "one"))
    repo.run(CreateBranch("exp"))
    repo.run(MakeCommit(B, "two", branch="exp"))
    gone = repo.head("exp")
    repo.run(DeleteBranch("exp"))
    assert "exp" not in repo.state.branches
    assert gone in repo.state.commits
    assert next(c.id for c in refs.log(repo.state)) == gone
