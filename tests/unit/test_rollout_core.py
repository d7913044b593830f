"""Shadows and canary rollouts in the pure core (issue 12): decide, evolve, the fold, serving.

A rollout is folded from the log like everything else, so what a worker routes, what the
controller may decide next and what an auditor replays are one state.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from types import MappingProxyType

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from streams.core import refs
from streams.core.commands import (
    AbortRollout,
    AddWriterKey,
    AdvanceRollout,
    Command,
    CreateBranch,
    CreateModel,
    MakeCommit,
    Merge,
    MoveAlias,
    PauseRollout,
    PromoteRollout,
    ResumeRollout,
    StartRollout,
    StartShadow,
    StopShadow,
    command_digest,
)
from streams.core.decide import decide
from streams.core.errors import (
    InvalidCommand,
    NothingToDo,
    RolloutActive,
    RolloutMoved,
    SignatureChangeRefused,
    UnknownRef,
    UnknownRollout,
    VersionGraphError,
)
from streams.core.events import (
    AliasMoved,
    ModelEvent,
    RolloutAborted,
    RolloutAdvanced,
    RolloutPaused,
    RolloutResumed,
    RolloutStarted,
    ShadowStarted,
    ShadowStopped,
    plain_commit,
)
from streams.core.fold import Fold, fold
from streams.core.hashing import canonical, commit_id
from streams.core.model_signature import DOUBLE, Feature, ModelSignature
from streams.core.rollout import (
    ABORTED,
    BASELINE,
    CANDIDATE,
    COMPLETED,
    PAUSED,
    RUNNING,
    Policy,
    rollout_id,
    routing_key,
)
from streams.core.rollout import arm as arm_of
from streams.core.security import SecurityState, required_role
from streams.core.signatures import keys_stream
from streams.core.state import ModelState
from tests.unit.fakekeys import FakeKey, fake_verify

A, B, C, R = "a" * 64, "b" * 64, "c" * 64, "e" * 64
EVIDENCE = canonical({"criteria": [], "step": 0}).decode()
ENTITIES = [f"user-{i}" for i in range(400)]


class Rollouts:
    """decide + fold as the writer does: ``production`` serves commit A, main's head is B."""

    def __init__(self, steps: tuple[int, ...] = (10, 50, 100)) -> None:
        self.fold = Fold()
        self.clock = 1_700_000_000_000
        self.n = 0
        self.log: list[ModelEvent] = []
        self.policy = Policy(steps=steps, min_labels=5, max_regression={"logloss": 0.01})
        self.run(CreateModel())
        self.run(MakeCommit(A, "baseline"))
        self.baseline = self.state.branches["main"]
        self.run(MoveAlias("production", "main"))
        self.run(MakeCommit(B, "candidate"))
        self.candidate = self.state.branches["main"]

    def run(
        self, body: object, actor: str = "alice", command_id: str | None = None
    ) -> tuple[ModelEvent, ...]:
        self.n += 1
        self.clock += 1000
        command = Command(command_id or f"cmd-{self.n}", "m", actor, self.clock, body)  # type: ignore[arg-type]
        events = decide(self.fold.models.get("m"), command)
        for event in events:
            assert self.fold.apply(event) is None
            self.log.append(event)
        return events

    @property
    def state(self) -> ModelState:
        return self.fold.models["m"]

    def start(self, **changes: object) -> str:
        (event,) = self.run(StartRollout("production", "main", self.policy, **changes))  # type: ignore[arg-type]
        assert isinstance(event.payload, RolloutStarted)
        return event.payload.rollout_id

    def arms(self) -> dict[str, tuple[str, str, str]]:
        return {e: refs.serving(self.state, "production", e, f"ev-{e}") for e in ENTITIES}


def test_a_rollout_starts_at_its_first_step_and_routes_by_entity() -> None:
    r = Rollouts()
    rid = r.start()
    assert rid == rollout_id("m", f"cmd-{r.n}")
    rollout = r.state.rollouts[rid]
    assert (rollout.step, rollout.status, rollout.percent) == (0, RUNNING, 10)
    assert rollout.started_at == rollout.step_started_at == r.clock
    assert (rollout.baseline, rollout.candidate) == (r.baseline, r.candidate)
    served = r.arms()
    on_candidate = {e for e, (commit, _, arm) in served.items() if arm == CANDIDATE}
    assert all(commit == r.candidate for commit, _, arm in served.values() if arm == CANDIDATE)
    assert all(commit == r.baseline for commit, _, arm in served.values() if arm == BASELINE)
    assert {rid_ for _, rid_, _ in served.values()} == {rid}
    assert 0.04 < len(on_candidate) / len(ENTITIES) < 0.16
    # The alias itself does not move while the rollout runs; other refs resolve as before.
    assert r.state.aliases["production"] == r.baseline
    assert refs.serving(r.state, "main", "user-1", "ev-1") == (r.candidate, "", "")
    # An entity on the candidate stays there as the share grows.
    r.run(AdvanceRollout(rid, 0, EVIDENCE))
    grown = {e for e, (_, _, arm) in r.arms().items() if arm == CANDIDATE}
    assert on_candidate < grown


def test_an_event_without_an_entity_is_routed_by_its_own_id() -> None:
    r = Rollouts()
    rid = r.start()
    rollout = r.state.rollouts[rid]
    events = [f"ev-{i}" for i in range(400)]
    served = [refs.serving(r.state, "production", "", e) for e in events]
    # The workers' rule (routing_key): by event id, so such events spread at the step's
    # share rather than all landing in the one bucket of "".
    assert [arm for _, _, arm in served] == [arm_of(rollout, routing_key("", e)) for e in events]
    assert 0.04 < sum(arm == CANDIDATE for _, _, arm in served) / len(events) < 0.16
    # An entity keeps its arm whatever the event.
    assert len({refs.serving(r.state, "production", "user-7", e) for e in events}) == 1


steps_lists = st.lists(st.integers(1, 99), min_size=1, max_size=6, unique=True).map(
    lambda xs: (*sorted(xs), 100)
)


@settings(max_examples=40, deadline=None)
@given(steps=steps_lists)
def test_advancing_every_step_completes_and_moves_the_alias_in_one_decision(
    steps: tuple[int, ...],
) -> None:
    r = Rollouts(steps)
    rid = r.start()
    for step in range(len(steps) - 1):
        (event,) = r.run(AdvanceRollout(rid, step, EVIDENCE), actor=f"rollout:{rid}")
        assert event.payload == RolloutAdvanced(
            rid, step, step + 1, steps[step + 1], False, EVIDENCE
        )
        assert r.state.rollouts[rid].percent == steps[step + 1]
        assert r.state.rollouts[rid].step_started_at == event.at
        assert r.state.aliases["production"] == r.baseline
    last = len(steps) - 1
    advanced, moved = r.run(AdvanceRollout(rid, last, EVIDENCE))
    assert advanced.payload == RolloutAdvanced(rid, last, last, 100, True, EVIDENCE)
    assert moved.payload == AliasMoved("production", r.baseline, r.candidate, False)
    assert (moved.seq, moved.prev_hash) == (advanced.seq + 1, advanced.hash())
    assert moved.command_id == advanced.command_id
    rollout = r.state.rollouts[rid]
    assert (rollout.status, rollout.percent) == (COMPLETED, 100)
    assert r.state.aliases["production"] == r.candidate
    assert refs.serving(r.state, "production", "user-1", "ev-1") == (r.candidate, "", "")
    assert r.state.ref_moves()[0].new == r.candidate  # the alias's reflog shows the move
    # A replay of the log gives the same state; the completed rollout frees the alias.
    assert fold(r.log).models["m"] == r.state
    r.run(MoveAlias("production", r.baseline))


def test_abort_returns_every_entity_to_the_baseline() -> None:
    r = Rollouts()
    rid = r.start()
    r.run(AdvanceRollout(rid, 0, EVIDENCE))
    figures = canonical({"criteria": [{"name": "logloss", "ok": False}]}).decode()
    (event,) = r.run(AbortRollout(rid, "logloss regressed", figures, expect_step=1))
    assert event.payload == RolloutAborted(rid, 1, "logloss regressed", figures)
    rollout = r.state.rollouts[rid]
    assert (rollout.status, rollout.percent, rollout.reason) == (ABORTED, 0, "logloss regressed")
    assert set(r.arms().values()) == {(r.baseline, "", "")}
    assert r.state.aliases["production"] == r.baseline
    with pytest.raises(RolloutMoved):
        r.run(AdvanceRollout(rid, 1, EVIDENCE))
    with pytest.raises(RolloutMoved):
        r.run(AbortRollout(rid, "again"))
    # The alias is free again: moved by hand, or given a new rollout.
    r.start()


def test_a_persons_abort_and_promotion_record_who_and_why() -> None:
    r = Rollouts()
    rid = r.start()
    (event,) = r.run(AbortRollout(rid, "pager went off"), actor="bob")
    assert json.loads(event.payload.evidence) == {  # type: ignore[union-attr]
        "manual": True,
        "by": "bob",
        "reason": "pager went off",
    }
    rid = r.start()
    r.run(PauseRollout(rid, "looking"))
    advanced, moved = r.run(PromoteRollout(rid, "looks fine"), actor="carol")
    # From a paused first step straight to the end.
    assert advanced.payload == RolloutAdvanced(
        rid,
        0,
        2,
        100,
        True,
        canonical({"by": "carol", "manual": True, "reason": "looks fine"}).decode(),
    )
    assert moved.payload == AliasMoved("production", r.baseline, r.candidate, False)
    assert r.state.rollouts[rid].reason == "looks fine"
    for refused in (AbortRollout(rid, "late"), PromoteRollout(rid, "twice")):
        with pytest.raises(RolloutMoved):
            r.run(refused)


@pytest.mark.parametrize("body", [AbortRollout("ID", " "), PromoteRollout("ID", "")])
def test_a_person_must_say_why_they_abort_or_promote(body: AbortRollout | PromoteRollout) -> None:
    r = Rollouts()
    rid = r.start()
    with pytest.raises(InvalidCommand, match="--reason"):
        r.run(replace(body, rollout_id=rid))


def test_pause_holds_the_step_and_resume_restarts_its_clock() -> None:
    r = Rollouts()
    rid = r.start()
    before = r.arms()
    r.run(PauseRollout(rid, "investigating"))
    rollout = r.state.rollouts[rid]
    assert (rollout.status, rollout.percent, rollout.reason) == (PAUSED, 10, "investigating")
    assert r.arms() == before  # a paused rollout keeps routing its share
    with pytest.raises(RolloutMoved) as moved:
        r.run(AdvanceRollout(rid, 0, EVIDENCE))
    assert moved.value.details == {
        "rollout_id": rid,
        "step": 0,
        "status": PAUSED,
        "current": {"step": 0, "status": PAUSED, "percent": 10},
    }
    assert f"modelvc -M m rollout status {rid}" in moved.value.message
    with pytest.raises(RolloutMoved):
        r.run(PauseRollout(rid))
    (resumed,) = r.run(ResumeRollout(rid))
    rollout = r.state.rollouts[rid]
    assert (rollout.status, rollout.step_started_at) == (RUNNING, resumed.at)
    with pytest.raises(NothingToDo):
        r.run(ResumeRollout(rid))
    r.run(AdvanceRollout(rid, 0, EVIDENCE))


def test_a_stale_decision_is_refused() -> None:
    r = Rollouts()
    rid = r.start()
    r.run(AdvanceRollout(rid, 0, EVIDENCE))
    for stale in (AdvanceRollout(rid, 0, EVIDENCE), AbortRollout(rid, "x", EVIDENCE, 0)):
        with pytest.raises(RolloutMoved) as moved:
            r.run(stale)
        assert moved.value.code == "rollout_moved"
        assert moved.value.details["step"] == 1
    with pytest.raises(UnknownRollout, match="modelvc -M m rollout status"):
        r.run(AdvanceRollout("r000000000000", 0, EVIDENCE))


def test_an_alias_in_rollout_is_moved_only_by_the_rollout() -> None:
    r = Rollouts()
    rid = r.start()
    with pytest.raises(RolloutActive) as active:
        r.run(MoveAlias("production", "main"))
    assert active.value.code == "rollout_active"
    assert active.value.details == {"rollout_id": rid, "alias": "production"}
    assert f"modelvc -M m rollout abort {rid} --reason" in active.value.message
    assert f"modelvc -M m rollout promote {rid} --reason" in active.value.message
    r.run(MakeCommit(C, "third"))
    with pytest.raises(RolloutActive):
        r.start()
    r.run(PauseRollout(rid))
    with pytest.raises(RolloutActive):  # paused is still active
        r.run(MoveAlias("production", "main"))
    # Another alias is not held by this rollout.
    r.run(MoveAlias("staging", "main"))


BAD_POLICIES = [
    Policy(steps=()),
    Policy(steps=(50, 10, 100)),
    Policy(steps=(10, 10, 100)),
    Policy(steps=(10, 50)),
    Policy(steps=(0, 100)),
    Policy(steps=(10, 101)),
    Policy(steps=(True, 100)),  # type: ignore[arg-type]
    Policy(steps=(10.0, 100)),  # type: ignore[arg-type]
    Policy(steps=(*range(1, 21), 100)),
    Policy(steps=(100,), min_labels=-1),
    Policy(steps=(100,), min_labels=10**9 + 1),
    Policy(steps=(100,), max_regression={"accuracy": 0.1}),
    Policy(steps=(100,), max_regression={"logloss": -0.1}),
    Policy(steps=(100,), max_regression={"auc": float("nan")}),
    Policy(steps=(100,), max_p99_ms=0.0),
    Policy(steps=(100,), max_p99_ms=float("inf")),
    Policy(steps=(100,), max_dead_letter_rate=1.5),
    Policy(steps=(100,), max_dead_letter_rate=-0.1),
    Policy(steps=(100,), step_timeout_ms=-1),
    Policy(steps=(100,), step_timeout_ms=31 * 24 * 3600 * 1000),
    # JSON numbers no double holds: refused, not an OverflowError (the API's 500).
    Policy(steps=(10, 100), max_regression={"logloss": 10**400}),
    Policy(steps=(10, 100), max_p99_ms=10**400),
    Policy(steps=(10, 100), max_dead_letter_rate=10**400),
    Policy(steps=(100,), max_p99_ms=50.0),  # no baseline traffic to compare with
    Policy(steps=(10, 100)),  # no criterion: every step would advance
    "10,50,100",
]


def test_a_new_rollout_needs_a_criterion_and_a_first_step_below_100() -> None:
    bare = refs.policy_problem(Policy(steps=(10, 100)))
    assert bare is not None
    for flag in ("--max-regression logloss=0.01", "--max-p99-ms", "--max-dead-letter-rate"):
        assert flag in bare
    at_once = refs.policy_problem(Policy(steps=(100,), max_p99_ms=50.0))
    assert at_once is not None and "--steps 10,100" in at_once and "alias set" in at_once
    for one in ({"max_regression": {"mae": 0.1}}, {"max_p99_ms": 9.0}, {"max_dead_letter_rate": 0}):
        assert refs.policy_problem(Policy(steps=(10, 100), **one)) is None  # type: ignore[arg-type]
    # Rules for new rollouts: one already in the log still folds.
    assert refs.policy_form_problem(Policy(steps=(100,))) is None


def test_the_api_refuses_a_policy_number_no_double_holds() -> None:
    from streams.api import rollout_policy

    for body in (
        {"steps": [10, 100], "max_regression": {"logloss": 10**400}},
        {"steps": [10, 100], "max_p99_ms": 10**400},
        {"steps": [10, 100], "max_dead_letter_rate": -(10**400)},
    ):
        with pytest.raises(InvalidCommand) as refused:
            rollout_policy(body)
        assert refused.value.details == {"field": "policy"}


@pytest.mark.parametrize("policy", BAD_POLICIES, ids=repr)
def test_an_invalid_policy_is_refused_saying_what_the_flags_take(policy: Policy) -> None:
    r = Rollouts()
    with pytest.raises(InvalidCommand) as refused:
        r.run(StartRollout("production", "main", policy))
    assert refused.value.details == {"field": "policy"}
    assert refs.policy_problem(policy) == refused.value.message
    assert not r.state.rollouts


@settings(max_examples=60, deadline=None)
@given(
    steps=steps_lists,
    min_labels=st.integers(0, 10**9),
    regression=st.dictionaries(
        st.sampled_from(["logloss", "brier", "mae", "rmse", "auc"]),
        st.floats(0, 1e6, allow_nan=False),
    ),
    p99=st.none() | st.floats(1e-3, 1e6),
    rate=st.none() | st.floats(0, 1),
    timeout=st.integers(0, 30 * 24 * 3600 * 1000),
)
def test_every_valid_policy_is_recorded_as_given(
    steps: tuple[int, ...],
    min_labels: int,
    regression: dict[str, float],
    p99: float | None,
    rate: float | None,
    timeout: int,
) -> None:
    assume(regression or p99 is not None or rate is not None)  # else refused: no criterion
    policy = Policy(steps, min_labels, regression, p99, rate, timeout)
    r = Rollouts()
    (event,) = r.run(StartRollout("production", "main", policy))
    assert isinstance(event.payload, RolloutStarted)
    assert event.payload.policy == policy
    assert r.state.rollouts[event.payload.rollout_id].policy == policy
    # Deterministic: the same command on the same state gives the same bytes.
    state = fold(r.log[:-1]).models["m"]
    command = Command(
        event.command_id, "m", "alice", event.at, StartRollout("production", "main", policy)
    )
    (again,) = decide(state, command)
    assert again == event and again.hash() == event.hash()


def test_start_refuses_a_missing_alias_an_unknown_ref_and_no_change() -> None:
    r = Rollouts()
    with pytest.raises(UnknownRef, match="modelvc -M m alias set staging REF"):
        r.run(StartRollout("staging", "main", r.policy))
    with pytest.raises(UnknownRef):
        r.run(StartRollout("production", "nowhere", r.policy))
    with pytest.raises(NothingToDo):
        r.run(StartRollout("production", r.baseline, r.policy))


def test_the_signature_rule_of_alias_moves_holds_for_rollouts() -> None:
    r = Rollouts()
    x, z = Feature("x", DOUBLE), Feature("z", DOUBLE)
    r.run(MakeCommit(A, "reads x", signature=ModelSignature("lightgbm", (x,), 1)))
    r.run(MoveAlias("production", "main"))
    r.run(MakeCommit(C, "reads z too", signature=ModelSignature("lightgbm", (x, z), 1)))
    target = r.state.branches["main"]
    with pytest.raises(SignatureChangeRefused) as refused:
        r.start()
    assert refused.value.message.endswith(
        f"modelvc -M m rollout start production --to {target[:12]} --allow-signature-change"
    )
    rid = r.start(allow_signature_change=True)
    r.run(AdvanceRollout(rid, 0, EVIDENCE))
    r.run(AdvanceRollout(rid, 1, EVIDENCE))
    _, moved = r.run(AdvanceRollout(rid, 2, EVIDENCE))
    assert moved.payload == AliasMoved("production", r.state.rollouts[rid].baseline, target, True)


@pytest.mark.parametrize(
    "evidence",
    ['{"b":1, "a":2}', "[1,2]", "not json", '{"x":NaN}', canonical({"x": "y" * 40_000}).decode()],
)
def test_evidence_must_be_a_bounded_canonical_json_object(evidence: str) -> None:
    r = Rollouts()
    rid = r.start()
    with pytest.raises(InvalidCommand) as refused:
        r.run(AdvanceRollout(rid, 0, evidence))
    assert refused.value.details == {"field": "evidence"}
    with pytest.raises(InvalidCommand):
        r.run(AbortRollout(rid, "bad", evidence))


def test_a_repeated_completion_is_answered_with_nothing_new() -> None:
    r = Rollouts(steps=(10, 100))
    rid = r.start()
    r.run(AdvanceRollout(rid, 0, EVIDENCE), actor=f"rollout:{rid}")
    assert len(r.run(AdvanceRollout(rid, 1, EVIDENCE), command_id="done")) == 2
    assert r.run(AdvanceRollout(rid, 1, EVIDENCE), command_id="done") == ()
    assert r.state.receipts["done"].event == "AliasMoved"


# -- shadows -------------------------------------------------------------------------------


def test_a_shadow_scores_beside_an_alias_until_stopped() -> None:
    r = Rollouts()
    assert refs.shadow_of(r.state, "production") is None
    (event,) = r.run(StartShadow("production", "main"))
    assert event.payload == ShadowStarted("production", r.candidate)
    assert refs.shadow_of(r.state, "production") == r.candidate
    assert r.state.shadows["production"].started_at == event.at
    assert refs.shadow_of(r.state, "main") is None  # only an alias has a shadow
    with pytest.raises(NothingToDo):
        r.run(StartShadow("production", "main"))
    r.run(MakeCommit(C, "third"))
    r.run(StartShadow("production", "main"))  # replaces the shadow
    assert refs.shadow_of(r.state, "production") == r.state.branches["main"]
    (stopped,) = r.run(StopShadow("production"))
    assert stopped.payload == ShadowStopped("production", r.state.branches["main"])
    assert refs.shadow_of(r.state, "production") is None
    with pytest.raises(NothingToDo, match="modelvc -M m shadow"):
        r.run(StopShadow("production"))
    with pytest.raises(InvalidCommand):  # the alias's own commit is no shadow
        r.run(StartShadow("production", "production"))
    with pytest.raises(UnknownRef):
        r.run(StartShadow("staging", "main"))
    assert fold(r.log).models["m"] == r.state


def test_a_shadow_of_the_commit_the_alias_now_serves_scores_nothing_twice() -> None:
    r = Rollouts((10, 100))
    r.run(StartShadow("production", "main"))
    rid = r.start()
    r.run(AdvanceRollout(rid, 0, EVIDENCE))
    assert refs.shadow_of(r.state, "production") == r.candidate  # still the baseline's
    r.run(AdvanceRollout(rid, 1, EVIDENCE))  # completes: the alias serves the candidate
    assert r.state.shadows["production"].candidate == r.state.aliases["production"]
    assert refs.shadow_of(r.state, "production") is None


# -- the fold: forged or out-of-order rollout events are void ------------------------------


def _forge(r: Rollouts, payload: object, command_id: str = "forged") -> str | None:
    """Apply a well-chained event carrying ``payload``; the fold's verdict."""
    state = r.state
    event = ModelEvent("m", state.seq + 1, state.last_hash, command_id, "mallory", r.clock, payload)  # type: ignore[arg-type]
    before = r.state
    reason = r.fold.apply(event)
    if reason is not None:
        assert r.fold.models["m"] is before
    return reason


def test_forged_rollout_events_are_void() -> None:
    r = Rollouts()
    rid = r.start()
    other = rollout_id("m", "forged")
    started = RolloutStarted(rid, "production", r.baseline, r.candidate, (10, 100), 0, {})
    forgeries: list[object] = [
        RolloutAdvanced(rid, 1, 2, 100, False, EVIDENCE),  # from a step it is not at
        RolloutAdvanced(rid, 0, 2, 100, False, EVIDENCE),  # skips a step
        RolloutAdvanced(rid, 0, 1, 100, False, EVIDENCE),  # the wrong percentage
        RolloutAdvanced(rid, 0, 1, 50, False, "{}x"),  # evidence that is no JSON object
        RolloutAdvanced(rid, 1, 2, 100, True, EVIDENCE),  # a completion from another step
        RolloutAdvanced(other, 0, 1, 50, False, EVIDENCE),  # no such rollout
        RolloutAborted(rid, 1, "x", EVIDENCE),
        RolloutResumed(rid),  # it is running
        AliasMoved("production", r.baseline, r.candidate),  # only the rollout moves it
        replace(started, rollout_id=other),  # a second rollout of the alias
        ShadowStopped("production", r.candidate),  # no shadow
        ShadowStarted("production", r.baseline),  # the alias's own commit
    ]
    for payload in forgeries:
        assert _forge(r, payload) is not None, payload
    assert r.fold.voided == len(forgeries)
    assert r.state.rollouts[rid].step == 0 and r.state.aliases["production"] == r.baseline


def test_a_rollout_id_must_be_the_one_its_command_derives() -> None:
    r = Rollouts()
    started = RolloutStarted(
        rollout_id("m", "forged"), "production", r.baseline, r.candidate, (10, 100), 0, {}
    )
    assert _forge(r, replace(started, rollout_id="r" + "0" * 11)) is not None
    assert _forge(r, replace(started, baseline=r.candidate)) is not None
    assert _forge(r, replace(started, steps=(10, 90))) is not None
    nan = replace(started, max_regression={"logloss": float("nan")})
    assert _forge(r, nan) is not None  # void before anything hashes it
    assert _forge(r, started) is None
    assert r.state.rollouts[started.rollout_id].status == RUNNING


def test_a_signed_partition_voids_an_unhashable_rollout_before_hashing_it() -> None:
    key = FakeKey.named("writer")
    r = Rollouts()
    signed = Fold(verify=fake_verify)
    ring = decide(
        None, Command("k", keys_stream(0), "ann", 1, AddWriterKey(key.public_key)), key.key_id
    )
    assert signed.apply(key.signed(ring[0])) is None
    for event in r.log:  # the same history, as a writer with this key signs it
        prev = signed.models["m"].last_hash if "m" in signed.models else event.prev_hash
        assert signed.apply(key.signed(replace(event, key_id=key.key_id, prev_hash=prev))) is None
    state = signed.models["m"]
    nan = RolloutStarted(
        rollout_id("m", "f"),
        "production",
        r.baseline,
        r.candidate,
        (100,),
        0,
        {"auc": float("inf")},
    )
    forged = ModelEvent(
        "m", state.seq + 1, state.last_hash, "f", "x", 1, nan, "", key.key_id, b"s" * 64
    )
    assert signed.apply(forged) is not None
    assert signed.models["m"] is state


def test_replayed_out_of_order_decisions_are_void() -> None:
    r = Rollouts()
    rid = r.start()
    (first,) = r.run(AdvanceRollout(rid, 0, EVIDENCE))
    (paused,) = r.run(PauseRollout(rid, "wait"))
    assert paused.payload == RolloutPaused(rid, "wait")
    # A replay of earlier decisions, re-chained by a forger, changes nothing.
    assert _forge(r, first.payload) is not None
    assert _forge(r, paused.payload) is not None
    r.run(AbortRollout(rid, "stop"))
    assert _forge(r, RolloutResumed(rid)) is not None
    assert _forge(r, RolloutAdvanced(rid, 1, 2, 100, True, EVIDENCE)) is not None


@settings(max_examples=50, deadline=None)
@given(
    actions=st.lists(
        st.sampled_from(
            ["advance", "stale", "pause", "resume", "abort", "promote", "start", "move"]
        ),
        max_size=12,
    )
)
def test_any_sequence_of_decisions_keeps_one_active_rollout_and_replays_exactly(
    actions: list[str],
) -> None:
    r = Rollouts(steps=(5, 25, 60, 100))
    r.start()
    for action in actions:
        rollout = list(r.state.rollouts.values())[-1]
        body = {
            "advance": AdvanceRollout(rollout.id, rollout.step, EVIDENCE),
            "stale": AdvanceRollout(rollout.id, rollout.step - 1, EVIDENCE),
            "pause": PauseRollout(rollout.id),
            "resume": ResumeRollout(rollout.id),
            "abort": AbortRollout(rollout.id, "no"),
            "promote": PromoteRollout(rollout.id, "yes"),
            "start": StartRollout(
                "production",
                r.baseline if r.state.aliases["production"] != r.baseline else "main",
                r.policy,
            ),
            "move": MoveAlias(
                "production", r.baseline if r.state.aliases["production"] != r.baseline else "main"
            ),
        }[action]
        with contextlib.suppress(VersionGraphError):
            r.run(body)
        active = [x for x in r.state.rollouts.values() if x.active]
        assert len(active) <= 1
        for x in active:
            assert r.state.aliases["production"] == x.baseline
            assert 0 < x.percent < 100 or x.policy.steps[x.step] == 100
        for x in r.state.rollouts.values():
            if x.status == COMPLETED:
                assert x.percent == 100
            if x.status == ABORTED:
                assert x.percent == 0
    assert fold(r.log).models["m"] == r.state
    assert fold(r.log).voided == 0


# -- the wire forms: hashes and plain forms ------------------------------------------------


def test_rollout_started_hashes_its_plain_form_whatever_mapping_it_holds() -> None:
    r = Rollouts()
    r.start()
    event = r.log[-1]
    payload = event.payload
    assert isinstance(payload, RolloutStarted)
    proxied = replace(
        event,
        payload=replace(
            payload, max_regression=MappingProxyType({"logloss": 0.01}), steps=[10, 50, 100]
        ),
    )  # type: ignore[arg-type]
    assert proxied.hash() == event.hash()
    plain = event.to_plain()["payload"]
    assert plain == {
        "rollout_id": payload.rollout_id,
        "alias": "production",
        "baseline": r.baseline,
        "candidate": r.candidate,
        "steps": [10, 50, 100],
        "min_labels": 5,
        "max_regression": {"logloss": 0.01},
        "max_p99_ms": None,
        "max_dead_letter_rate": None,
        "step_timeout_ms": 0,
    }
    assert json.loads(canonical(event.to_plain())) == event.to_plain()
    flagged = replace(event, payload=replace(payload, allow_signature_change=True))
    assert flagged.hash() != event.hash()


# -- the commit's reference bins ----------------------------------------------------------


def test_a_reference_enters_the_commit_id_only_when_set() -> None:
    r = Rollouts()
    (plain,) = r.run(MakeCommit(C, "no reference"))
    (linked,) = r.run(MakeCommit(C, "no reference", reference_sha256=R))
    without, with_ = plain.payload.commit, linked.payload.commit  # type: ignore[union-attr]
    assert without.reference_sha256 is None and with_.reference_sha256 == R
    content = {k: v for k, v in plain_commit(with_).items() if k not in ("id", "signature")}
    assert with_.id == commit_id(**{**content, "reference_sha256": R})  # type: ignore[arg-type]
    legacy = {
        k: v
        for k, v in plain_commit(without).items()
        if k not in ("id", "signature", "reference_sha256")
    }
    assert without.id == commit_id(**legacy)  # type: ignore[arg-type]
    assert linked.to_plain()["payload"]["commit"]["reference_sha256"] == R  # type: ignore[index]
    assert "reference_sha256" not in plain.to_plain()["payload"]["commit"]  # type: ignore[operator,index]
    assert r.state.commits[with_.id].reference_sha256 == R
    with pytest.raises(InvalidCommand, match="--reference"):
        r.run(MakeCommit(C, "bad", reference_sha256=R + "\n"))
    # A request without a reference digests as it always did (its retry is still a repeat).
    old = Command("c", "m", "alice", 1, MakeCommit(C, "x"))
    assert command_digest(old) == command_digest(
        replace(old, body=MakeCommit(C, "x", reference_sha256=None))
    )
    assert command_digest(old) != command_digest(
        replace(old, body=MakeCommit(C, "x", reference_sha256=R))
    )


def test_a_forged_reference_is_void() -> None:
    r = Rollouts()
    (event,) = decide(
        r.state, Command("c", "m", "alice", 5, MakeCommit(C, "x", reference_sha256=R))
    )
    commit = event.payload.commit  # type: ignore[union-attr]
    swapped = replace(
        event, payload=replace(event.payload, commit=replace(commit, reference_sha256=A))
    )  # type: ignore[arg-type]
    assert r.fold.apply(swapped) is not None  # the id no longer hashes its content
    junk = replace(commit, reference_sha256="../x")
    junk = replace(
        junk,
        id=commit_id(
            **{k: v for k, v in plain_commit(junk).items() if k not in ("id", "signature")}
        ),
    )  # type: ignore[arg-type]
    assert r.fold.apply(replace(event, payload=replace(event.payload, commit=junk))) is not None  # type: ignore[arg-type]
    nan = replace(commit, metrics={"auc": float("nan")})
    assert r.fold.apply(replace(event, payload=replace(event.payload, commit=nan))) is not None  # type: ignore[arg-type]
    assert r.fold.apply(event) is None


@pytest.mark.parametrize(("strategy", "kept"), [("ours", None), ("theirs", R)])
def test_a_merge_keeps_the_reference_of_the_file_it_keeps(strategy: str, kept: str | None) -> None:
    r = Rollouts()
    r.run(MakeCommit(C, "main moves on"))
    r.run(CreateBranch("exp", "main~1"))
    r.run(MakeCommit(R, "exp file", branch="exp", reference_sha256=R))
    (merged,) = r.run(Merge("exp", "main", strategy=strategy))
    assert merged.payload.commit.reference_sha256 == kept  # type: ignore[union-attr]
    # A merge that gives a new file has the reference given with it, or none.
    r.run(MakeCommit(A, "diverge", branch="exp"))
    (fresh,) = r.run(Merge("exp", "main", artifact_sha256=C, message="new"))
    assert fresh.payload.commit.reference_sha256 is None  # type: ignore[union-attr]


# -- who may ------------------------------------------------------------------------------


def test_rollout_commands_need_the_role_that_moves_their_alias() -> None:
    r = Rollouts()
    rid = r.start()
    security = SecurityState(1, "0" * 64, {}, {("alias", "", "production"): "releaser"}, {})
    for body in (
        StartShadow("production", "main"),
        StopShadow("production"),
        StartRollout("production", "main", r.policy),
        AdvanceRollout(rid, 0, EVIDENCE),
        AbortRollout(rid, "x"),
        PauseRollout(rid),
        ResumeRollout(rid),
        PromoteRollout(rid, "x"),
    ):
        command = Command("c", "m", "bob", 1, body)  # type: ignore[arg-type]
        assert required_role(security, r.state, command)[0] == "releaser", body
        assert required_role(None, r.state, command)[0] == "committer", body
