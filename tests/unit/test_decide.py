"""What a user of the version graph relies on, checked on the pure core."""

from __future__ import annotations

from dataclasses import replace

import pytest

from modelvc import cli
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
    SignatureChangeRefused,
    StaleHead,
    UnknownModel,
    UnknownRef,
    VersionGraphError,
)
from streams.core.events import AliasMoved, plain_commit
from streams.core.fold import Fold
from streams.core.hashing import canonical, sha256_hex
from streams.core.model_signature import CATEGORICAL, DOUBLE, Feature, ModelSignature

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


def _hint(fault: pytest.ExceptionInfo[VersionGraphError]) -> object:
    """The hint as the HTTP API answers it."""
    return fault.value.to_dict().get("hint")


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
    assert _hint(caught) == {
        "code": "retry_commit",
        "args": {"model": "m", "branch": "main", "expect_head": repo.head()},
    }
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
    assert fault.code == "command_id_reused"  # 422 at the HTTP edge (streams.statuses)
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
        "merge_bases": [base],
        "target_head": ours_head,
        "source_head": theirs_head,
    }
    assert f"merge base {base}," in caught.value.message
    assert caught.value.to_dict()["hint"] == {
        "code": "merge",
        "args": {"model": "m", "source": "exp", "into": "main"},
    }
    repo.run(Merge("exp", strategy="theirs"))
    merge = repo.state.commits[repo.head()]
    assert merge.parents == (ours_head, theirs_head)
    assert merge.artifact_sha256 == B and merge.metrics == {"auc": 0.9}
    with pytest.raises(NothingToDo):
        repo.run(Merge("exp"))


def _commit_ids(repo: Repo) -> dict[str, str]:
    return {c.message: c.id for c in repo.state.commits.values()}


def test_issue_8_conflict_names_git_merge_base_whichever_way_it_merges(repo: Repo) -> None:
    """The reproduction of issue 8: `git merge-base --all main exp` says B2, both ways."""
    repo.run(MakeCommit(A, "A1"))
    repo.run(MakeCommit(A, "A2"))
    repo.run(CreateBranch("f"))
    repo.run(MakeCommit(B, "F", branch="f"))
    repo.run(MakeCommit(B, "B2"))
    repo.run(CreateBranch("exp"))
    for message in ("E1", "E2", "E3"):
        repo.run(MakeCommit(C, message, branch="exp"))
    repo.run(Merge("f", target="exp", strategy="ours"))
    repo.run(MakeCommit(C, "C2"))
    ids = _commit_ids(repo)
    for source, target in (("exp", "main"), ("main", "exp")):
        with pytest.raises(MergeConflict) as caught:
            repo.run(Merge(source, target=target))
        details = caught.value.details
        assert details["merge_bases"] == [ids["B2"]] and details["merge_base"] == ids["B2"]
        assert f"merge base {ids['B2']}," in caught.value.message
        assert ids["A2"] not in caught.value.message  # what a breadth-first walk from exp named


def test_criss_cross_conflict_names_both_merge_bases_newest_first(repo: Repo) -> None:
    repo.run(MakeCommit(A, "X"))
    repo.run(CreateBranch("q"))
    repo.run(MakeCommit(B, "P1"))
    repo.run(MakeCommit(C, "Q1", branch="q"))
    repo.run(Merge("q", strategy="ours"))  # main: merge of P1 and Q1
    repo.run(Merge("main~1", target="q", strategy="theirs"))  # q: merge of Q1 and P1
    ids = _commit_ids(repo)
    expected = [ids["Q1"], ids["P1"]]  # Q1 was committed after P1
    for source, target in (("q", "main"), ("main", "q")):
        with pytest.raises(MergeConflict) as caught:
            repo.run(Merge(source, target=target))
        assert caught.value.details["merge_bases"] == expected
        assert caught.value.details["merge_base"] == expected[0]
        assert f"merge bases {expected[0]}, {expected[1]}," in caught.value.message


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
    with pytest.raises(NotAnAncestor) as caught:
        repo.run(Rollback("main", second, "forward is not a rollback"))
    assert _hint(caught) == {"code": "show_log", "args": {"model": "m", "ref": "main"}}
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
    with pytest.raises(StaleHead) as caught:
        repo.run(MoveAlias("production", "main", expect=repo.head()))
    assert _hint(caught) == {
        "code": "retry_alias",
        "args": {"model": "m", "alias": "production", "ref": "main", "expect": first},
    }
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
    with pytest.raises(UnknownModel, match="create it first") as ghost:
        decide(None, Command("x", "ghost", "a", 1, MakeCommit(A, "m")))
    assert _hint(ghost) == {"code": "create_model", "args": {"model": "ghost"}}
    with pytest.raises(UnknownModel) as unnamable:
        decide(None, Command("x", "bad/name", "a", 1, MakeCommit(A, "m")))
    assert _hint(unnamable) is None  # creating it would be refused too
    r = Repo()
    r.run(CreateModel())
    with pytest.raises(ModelExists):
        r.run(CreateModel())
    with pytest.raises(EmptyBranch) as empty:
        r.run(CreateBranch("exp"))
    assert _hint(empty) == {"code": "commit", "args": {"model": "m", "branch": "main"}}
    with pytest.raises(UnknownRef, match="create it first") as missing:
        r.run(MakeCommit(A, "x", branch="exp"))
    assert _hint(missing) == {"code": "create_branch", "args": {"model": "m", "branch": "exp"}}
    with pytest.raises(UnknownRef) as gone:
        r.run(DeleteBranch("exp"))
    assert _hint(gone) == {"code": "list_refs", "args": {"model": "m"}}  # not "create it"
    with pytest.raises(ProtectedBranch) as protected:
        r.run(DeleteBranch("main"))
    assert _hint(protected) is None and "hint" not in protected.value.to_dict()
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


# -- model signatures (issue 11) ----------------------------------------------------------
X, Y, Z = Feature("x", DOUBLE), Feature("y", CATEGORICAL), Feature("z", DOUBLE)
SIG_XY = ModelSignature("lightgbm", (X, Y), 1)
SIG_XYZ = ModelSignature("lightgbm", (X, Y, Z), 1)


def test_a_commit_without_a_signature_keeps_the_id_it_always_had(repo: Repo) -> None:
    (event,) = repo.run(MakeCommit(A, "baseline", params={"lr": "0.1"}))
    commit = event.payload.commit
    # The rule older releases hashed by (schemas/CANONICAL.md): no "signature" key at all.
    legacy = {
        k: v
        for k, v in plain_commit(commit).items()
        if k not in ("id", "signature", "reference_sha256")
    }
    assert commit.signature is None and commit.id == sha256_hex(canonical(legacy))


def test_a_signature_is_recorded_and_changes_the_commit_id(repo: Repo) -> None:
    other = Repo()
    other.run(CreateModel())
    (plain,) = other.run(MakeCommit(A, "baseline"))
    (signed,) = repo.run(MakeCommit(A, "baseline", signature=SIG_XY))
    commit = signed.payload.commit
    assert commit.signature == SIG_XY and commit.id != plain.payload.commit.id
    content = {k: v for k, v in plain_commit(commit).items() if k not in ("id", "reference_sha256")}
    assert content["signature"] == SIG_XY.plain()
    assert commit.id == sha256_hex(canonical(content))
    assert repo.state.commits[commit.id].signature == SIG_XY


def test_the_digest_of_a_request_without_the_new_fields_is_unchanged() -> None:
    """A request sent before issue 11 digests as it did, so its retry is still a repeat."""
    body = MoveAlias("production", "main")
    command = Command("c", "m", "alice", 0, body)
    old_rule = {"alias": "production", "ref": "main", "expect": None}
    assert command_digest(command) == sha256_hex(
        canonical({"model": "m", "actor": "alice", "type": "MoveAlias", "body": old_rule})
    )
    allowed = replace(command, body=replace(body, allow_signature_change=True))
    signed = replace(command, body=MakeCommit(A, "x", signature=SIG_XY))
    assert command_digest(allowed) != command_digest(command)
    assert command_digest(signed) != command_digest(replace(signed, body=MakeCommit(A, "x")))


def _alias_at(repo: Repo, signature: ModelSignature | None, artifact: str = A) -> str:
    repo.run(MakeCommit(artifact, "current", signature=signature))
    repo.run(MoveAlias("production", "main"))
    return repo.head()


def test_moving_an_alias_to_a_commit_that_needs_new_features_is_refused(repo: Repo) -> None:
    current = _alias_at(repo, SIG_XY)
    w = Feature("w", DOUBLE)
    repo.run(MakeCommit(B, "adds z and w", signature=replace(SIG_XYZ, inputs=(X, Y, Z, w))))
    target = repo.head()
    with pytest.raises(SignatureChangeRefused) as fault:
        repo.run(MoveAlias("production", "main"))
    assert fault.value.code == "signature_change"
    assert fault.value.details == {"features": ("z", "w"), "current": current, "target": target}
    assert fault.value.message == (
        f"moving alias production from {current[:12]} to {target[:12]} would require "
        f"feature(s) 'z', 'w' that producers for {current[:12]} do not send; publish them "
        f"first, or run: modelvc -M m alias set production {target[:12]} "
        "--allow-signature-change"
    )
    assert repo.state.aliases["production"] == current  # nothing was written


def test_the_refusal_names_at_most_ten_features_and_counts_the_rest(repo: Repo) -> None:
    _alias_at(repo, SIG_XY)
    many = tuple(Feature(f"f{i}", DOUBLE) for i in range(25))
    repo.run(MakeCommit(B, "wide", signature=replace(SIG_XY, inputs=(X, Y, *many))))
    with pytest.raises(SignatureChangeRefused) as fault:
        repo.run(MoveAlias("production", "main"))
    assert "'f9' and 15 more that producers" in fault.value.message
    assert len(fault.value.details["features"]) == 25  # type: ignore[arg-type]


def test_the_cli_command_in_the_refusal_is_one_the_cli_parses(repo: Repo) -> None:
    _alias_at(repo, SIG_XY)
    repo.run(MakeCommit(B, "adds z", signature=SIG_XYZ))
    with pytest.raises(SignatureChangeRefused) as fault:
        repo.run(MoveAlias("production", "main"))
    words = fault.value.message.split("or run: ", 1)[1].split()
    assert words[0] == "modelvc"
    args = cli.parser().parse_args(words[1:])
    assert (args.model, args.command, args.action, args.name) == ("m", "alias", "set", "production")
    assert args.ref == repo.head()[:12]
    assert refs.resolve(repo.state, args.ref) == repo.head()


def test_the_flag_allows_the_move_and_the_event_records_it(repo: Repo) -> None:
    current = _alias_at(repo, SIG_XY)
    repo.run(MakeCommit(B, "adds z", signature=SIG_XYZ))
    (event,) = repo.run(MoveAlias("production", "main", allow_signature_change=True))
    assert event.payload == AliasMoved("production", current, repo.head(), True)
    assert event.to_plain()["payload"]["allow_signature_change"] is True  # type: ignore[index]
    # The chain covers the flag: the same move without it hashes differently.
    unflagged = replace(event, payload=replace(event.payload, allow_signature_change=False))
    assert unflagged.hash() != event.hash()
    assert repo.state.aliases["production"] == repo.head()


def test_an_unflagged_move_hashes_as_alias_moves_always_did(repo: Repo) -> None:
    repo.run(MakeCommit(A, "one"))
    (event,) = repo.run(MoveAlias("production", "main"))
    assert "allow_signature_change" not in event.to_plain()["payload"]  # type: ignore[operator]
    hashed = {
        "model": "m",
        "seq": event.seq,
        "prev_hash": event.prev_hash,
        "command_id": event.command_id,
        "actor": "alice",
        "at": event.at,
        "type": "AliasMoved",
        "payload": {"alias": "production", "from_commit": None, "to_commit": repo.head()},
        "command_digest": event.command_digest,
    }
    assert event.hash() == sha256_hex(canonical(hashed))


@pytest.mark.parametrize(
    "target",
    [
        ModelSignature("lightgbm", (X,), 1),  # y removed
        ModelSignature("lightgbm", (Feature("x", CATEGORICAL), Y), 1),  # x retyped
        ModelSignature("lightgbm", (Y, X), 3),  # reordered, more outputs
    ],
    ids=["removed", "retyped", "reordered"],
)
def test_a_move_that_needs_no_new_feature_is_allowed(repo: Repo, target: ModelSignature) -> None:
    _alias_at(repo, SIG_XY)
    repo.run(MakeCommit(B, "narrower", signature=target))
    (event,) = repo.run(MoveAlias("production", "main"))
    assert event.payload.allow_signature_change is False


@pytest.mark.parametrize(("before", "after"), [(None, SIG_XYZ), (SIG_XY, None)])
def test_legacy_commits_without_a_signature_are_not_checked(
    repo: Repo, before: ModelSignature | None, after: ModelSignature | None
) -> None:
    _alias_at(repo, before)
    repo.run(MakeCommit(B, "next", signature=after))
    (event,) = repo.run(MoveAlias("production", "main"))
    assert event.payload.to_commit == repo.head()


def test_a_new_alias_is_not_checked(repo: Repo) -> None:
    repo.run(MakeCommit(A, "wide", signature=SIG_XYZ))
    (event,) = repo.run(MoveAlias("canary", "main"))
    assert event.payload.from_commit is None


def _diverged(repo: Repo, ours: ModelSignature | None, theirs: ModelSignature | None) -> None:
    repo.run(MakeCommit(A, "base"))
    repo.run(CreateBranch("exp"))
    repo.run(MakeCommit(B, "main side", signature=ours))
    repo.run(MakeCommit(C, "exp side", branch="exp", signature=theirs))


@pytest.mark.parametrize("strategy", ["ours", "theirs"])
def test_a_merge_that_keeps_a_parents_file_keeps_its_signature(repo: Repo, strategy: str) -> None:
    _diverged(repo, SIG_XY, SIG_XYZ)
    (event,) = repo.run(Merge("exp", strategy=strategy))
    assert event.payload.commit.signature == (SIG_XY if strategy == "ours" else SIG_XYZ)
    # The commit id covers it: the fold recomputed it from the content.
    assert repo.state.commits[repo.head()].signature == event.payload.commit.signature


def test_a_merge_with_a_new_file_takes_its_signature(repo: Repo) -> None:
    _diverged(repo, SIG_XY, SIG_XY)
    merged = ModelSignature("lightgbm", (X, Z), 2)
    (event,) = repo.run(Merge("exp", artifact_sha256="d" * 64, signature=merged))
    assert event.payload.commit.signature == merged


def test_a_merge_naming_a_parents_file_without_a_signature_keeps_that_parents(
    repo: Repo,
) -> None:
    _diverged(repo, SIG_XY, SIG_XYZ)
    (event,) = repo.run(Merge("exp", artifact_sha256=C))
    assert event.payload.commit.signature == SIG_XYZ


def test_a_signature_too_large_for_a_message_is_refused(repo: Repo) -> None:
    wide = tuple(Feature(f"feature_{i:06d}_" + "n" * 40, DOUBLE) for i in range(4000))
    with pytest.raises(InvalidCommand, match="shorter feature names"):
        repo.run(MakeCommit(A, "too wide", signature=ModelSignature("lightgbm", wide, 1)))
