"""The canary decision (streams.core.canary.judge) and the hash routing of a rollout."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core import canary
from streams.core import monitoring as m
from streams.core.hashing import canonical
from streams.core.rollout import (
    ABORTED,
    BASELINE,
    CANDIDATE,
    COMPLETED,
    PAUSED,
    RUNNING,
    Policy,
    Rollout,
    arm,
)

STARTED = 1_000_000
MAX_EVIDENCE = 32 * 1024


def rollout(
    *,
    min_labels: int = 100,
    max_regression: dict[str, float] | None = None,
    max_p99_ms: float | None = None,
    max_dead_letter_rate: float | None = None,
    step_timeout_ms: int = 0,
    status: str = RUNNING,
    steps: tuple[int, ...] = (10, 50, 100),
    step: int = 0,
    rollout_id: str = "r0123456789a",
) -> Rollout:
    policy = Policy(
        steps=steps,
        min_labels=min_labels,
        max_regression=max_regression or {},
        max_p99_ms=max_p99_ms,
        max_dead_letter_rate=max_dead_letter_rate,
        step_timeout_ms=step_timeout_ms,
    )
    return Rollout(
        id=rollout_id,
        alias="production",
        baseline="b" * 64,
        candidate="c" * 64,
        policy=policy,
        step=step,
        status=status,
        started_at=STARTED,
        step_started_at=STARTED,
    )


def figures(
    labeled: int = 500,
    *,
    logloss: float = 0.3,
    auc: float = 0.8,
    p99_ms: float | None = 20.0,
    dead_letter_rate: float | None = 0.0,
    windows: tuple[str, ...] = ("w1",),
    predictions: int | None = None,
    dead_letters: int = 0,
) -> canary.ArmFigures:
    return canary.ArmFigures(
        predictions=labeled * 2 if predictions is None else predictions,
        labeled=labeled,
        metrics={"logloss": logloss, "auc": auc, "brier": 0.1},
        p99_ms=p99_ms,
        dead_letter_rate=dead_letter_rate,
        windows=windows,
        dead_letters=dead_letters,
    )


def strict(**changes: Any) -> Rollout:
    """A rollout with every kind of criterion."""
    return rollout(
        max_regression={"logloss": 0.01, "auc": 0.02},
        max_p99_ms=50.0,
        max_dead_letter_rate=0.001,
        **changes,
    )


def criteria_of(verdict: canary.Verdict) -> list[dict[str, Any]]:
    criteria = verdict.evidence["criteria"]
    assert isinstance(criteria, list)
    return criteria


# --- no decision without the labels ----------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 10_000), st.data())
def test_no_decision_before_the_minimum_labels(min_labels: int, data: st.DataObject) -> None:
    labeled = data.draw(st.integers(0, min_labels - 1))
    waited = data.draw(st.integers(0, 10**9))
    verdict = canary.judge(
        strict(min_labels=min_labels),
        figures(),
        figures(labeled, logloss=99.0),  # a failing figure: still no decision
        STARTED + waited,
    )
    assert verdict.action == canary.WAIT
    assert f"{labeled} of the {min_labels} labels" in verdict.reason


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 10**7), st.integers(0, 10**7))
def test_a_step_without_its_labels_aborts_after_its_timeout(timeout: int, waited: int) -> None:
    ro = rollout(min_labels=100, step_timeout_ms=timeout)
    verdict = canary.judge(ro, figures(), figures(99), STARTED + waited)
    if waited > timeout:
        assert verdict.action == canary.ABORT
        assert verdict.reason.startswith("step_timeout")
        names = [c["name"] for c in criteria_of(verdict)]
        assert names == ["min_labels", "step_timeout"]
    else:
        assert verdict.action == canary.WAIT


def test_the_timeout_counts_from_the_step_not_the_rollout() -> None:
    ro = dataclasses.replace(rollout(step_timeout_ms=1000), step=1, step_started_at=STARTED + 5000)
    assert canary.judge(ro, figures(), figures(0), STARTED + 5900).action == canary.WAIT
    assert canary.judge(ro, figures(), figures(0), STARTED + 6001).action == canary.ABORT


@pytest.mark.parametrize("status", [PAUSED, COMPLETED, ABORTED])
def test_a_rollout_that_is_not_running_waits(status: str) -> None:
    verdict = canary.judge(
        rollout(status=status, step_timeout_ms=1), figures(), figures(0), STARTED + 10**9
    )
    assert verdict.action == canary.WAIT and status in verdict.reason


# --- latency and dead letters need no label ---------------------------------------------------


def test_a_candidate_that_dead_letters_everything_aborts_without_labels() -> None:
    broken = figures(0, predictions=0, dead_letters=500, p99_ms=None, dead_letter_rate=1.0)
    verdict = canary.judge(strict(), figures(), broken, STARTED + 10**9)  # no step timeout
    assert verdict.action == canary.ABORT
    assert verdict.reason.startswith("dead_letter_rate")
    assert [c["name"] for c in criteria_of(verdict)] == ["dead_letter_rate"]  # p99: none yet
    assert verdict.evidence["candidate"]["dead_letters"] == 500  # type: ignore[index]


def test_a_slow_candidate_aborts_before_its_labels() -> None:
    slow = figures(50, p99_ms=10_000.0)  # 100 predictions, half the labels a step needs
    verdict = canary.judge(strict(), figures(), slow, STARTED)
    assert verdict.action == canary.ABORT and verdict.reason.startswith("p99_ms")


@pytest.mark.parametrize("min_labels", [0, 1, 100])
def test_latency_and_dead_letters_wait_for_max_1_min_labels_events(min_labels: int) -> None:
    needed = max(1, min_labels)
    ro = strict(min_labels=min_labels)
    few = figures(0, predictions=needed - 1, p99_ms=None, dead_letter_rate=None)
    if needed > 1:
        few = figures(0, predictions=needed - 2, dead_letters=1, p99_ms=99.0, dead_letter_rate=0.5)
    assert canary.judge(ro, figures(), few, STARTED).action == canary.WAIT
    enough = dataclasses.replace(few, dead_letters=few.dead_letters + 1, dead_letter_rate=0.5)
    assert canary.judge(ro, figures(), enough, STARTED).action == canary.ABORT


def test_healthy_serving_figures_still_wait_for_the_labels() -> None:
    verdict = canary.judge(strict(), figures(), figures(10, p99_ms=5.0), STARTED)
    assert verdict.action == canary.WAIT and "candidate has 10 of the 100" in verdict.reason


# --- metric criteria need the baseline's labels too -------------------------------------------


def test_a_metric_criterion_waits_for_the_baselines_labels() -> None:
    # One confidently wrong baseline label would make any candidate look better.
    few = figures(1, logloss=34.5)
    verdict = canary.judge(strict(), few, figures(logloss=2.3), STARTED)
    assert verdict.action == canary.WAIT
    assert "the baseline has 1 of the 100 labels" in verdict.reason
    timed = canary.judge(strict(step_timeout_ms=1000), few, figures(), STARTED + 1001)
    assert timed.action == canary.ABORT and "the baseline has 1 of the 100" in timed.reason


def test_without_a_metric_criterion_the_baselines_labels_do_not_matter() -> None:
    ro = rollout(max_p99_ms=50.0)
    verdict = canary.judge(ro, figures(0), figures(), STARTED)
    assert verdict.action == canary.ADVANCE


# --- criteria ------------------------------------------------------------------------------


def test_advance_when_every_criterion_holds() -> None:
    verdict = canary.judge(
        strict(),
        figures(logloss=0.30, auc=0.80, p99_ms=30.0),
        figures(logloss=0.305, auc=0.79, p99_ms=49.0, dead_letter_rate=0.0005),
        STARTED,
    )
    assert verdict.action == canary.ADVANCE
    criteria = criteria_of(verdict)
    assert [c["name"] for c in criteria] == ["auc", "logloss", "p99_ms", "dead_letter_rate"]
    assert all(c["ok"] for c in criteria)


@pytest.mark.parametrize(
    ("candidate", "criterion"),
    [
        (figures(logloss=0.32), "logloss"),
        (figures(auc=0.77), "auc"),
        (figures(p99_ms=51.0), "p99_ms"),
        (figures(dead_letter_rate=0.002), "dead_letter_rate"),
        (figures(p99_ms=None), "p99_ms"),
        (figures(dead_letter_rate=None), "dead_letter_rate"),
    ],
)
def test_abort_on_any_failed_criterion_naming_it(
    candidate: canary.ArmFigures, criterion: str
) -> None:
    verdict = canary.judge(strict(), figures(), candidate, STARTED)
    assert verdict.action == canary.ABORT
    assert criterion in verdict.reason
    failed = [c for c in criteria_of(verdict) if not c["ok"]]
    assert [c["name"] for c in failed] == [criterion]
    assert {"limit", "baseline", "candidate"} <= set(failed[0])


def test_the_auc_must_not_drop_while_a_loss_must_not_rise() -> None:
    ro = rollout(max_regression={"auc": 0.0, "logloss": 0.0})
    base = figures(logloss=0.3, auc=0.8)
    better = canary.judge(ro, base, figures(logloss=0.2, auc=0.9), STARTED)
    assert better.action == canary.ADVANCE
    worse_auc = canary.judge(ro, base, figures(logloss=0.2, auc=0.79), STARTED)
    assert worse_auc.action == canary.ABORT and worse_auc.reason.startswith("auc")
    worse_loss = canary.judge(ro, base, figures(logloss=0.31, auc=0.9), STARTED)
    assert worse_loss.action == canary.ABORT and worse_loss.reason.startswith("logloss")


@pytest.mark.parametrize("side", ["baseline", "candidate"])
def test_a_metric_missing_on_either_side_cannot_be_evaluated(side: str) -> None:
    regression_only = dataclasses.replace(figures(), metrics={"mae": 1.0, "rmse": 2.0})
    base, cand = (
        (regression_only, figures()) if side == "baseline" else (figures(), regression_only)
    )
    verdict = canary.judge(rollout(max_regression={"logloss": 0.1}), base, cand, STARTED)
    assert verdict.action == canary.ABORT
    assert verdict.reason.startswith("cannot evaluate logloss") and side in verdict.reason


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0, 1),
    st.floats(0, 1),
    st.floats(0, 0.5),
    st.floats(1, 100),
    st.floats(1, 100),
    st.floats(0, 0.1),
    st.integers(0, 1000),
)
def test_judge_is_deterministic_and_agrees_with_the_rule(
    base_loss: float,
    cand_loss: float,
    limit: float,
    p99: float,
    max_p99: float,
    rate: float,
    labeled: int,
) -> None:
    ro = rollout(
        min_labels=100,
        max_regression={"logloss": limit},
        max_p99_ms=max_p99,
        max_dead_letter_rate=0.05,
    )
    base = figures(logloss=base_loss)
    cand = figures(labeled, logloss=cand_loss, p99_ms=p99, dead_letter_rate=rate)
    verdict = canary.judge(ro, base, cand, STARTED + 1)
    assert verdict == canary.judge(ro, base, cand, STARTED + 1)
    serving_ok = p99 <= max_p99 and rate <= 0.05
    if cand.predictions >= 100 and not serving_ok:  # judged without labels
        expected = canary.ABORT
    elif labeled < 100:
        expected = canary.WAIT
    elif cand_loss - base_loss <= limit and serving_ok:
        expected = canary.ADVANCE
    else:
        expected = canary.ABORT
    assert verdict.action == expected
    assert len(canonical(dict(verdict.evidence))) <= MAX_EVIDENCE


def test_the_evidence_names_both_arms_and_stays_small() -> None:
    many = tuple(f"{i:032x}" for i in range(10_000))
    verdict = canary.judge(
        strict(),
        figures(windows=many),
        figures(windows=many[:3]),
        STARTED,
    )
    evidence = json.loads(canonical(dict(verdict.evidence)))
    assert evidence["step"] == 0 and evidence["percent"] == 10
    assert evidence["baseline"]["window_count"] == 10_000
    assert len(evidence["baseline"]["windows"]) == canary.MAX_EVIDENCE_WINDOWS
    assert evidence["candidate"]["windows"] == list(many[:3])
    assert evidence["candidate"]["metrics"]["logloss"] == 0.3
    assert len(canonical(evidence)) <= MAX_EVIDENCE


# --- arm figures from windows ----------------------------------------------------------------


def _window(pairs: list[tuple[float, float]], latency: float = 5.0) -> m.Stats:
    acc = m.Accumulator()
    for score, label in pairs:
        acc.add_prediction(latency, 1)
        acc.add_pair(score, label, 10)
    return acc.freeze()


def test_arm_figures_merge_the_windows_once_each() -> None:
    w1 = _window([(0.9, 1.0), (0.2, 0.0)])
    w2 = _window([(0.4, 1.0), (0.6, 0.0)], latency=100.0)
    arm_ = canary.arm_figures([("w2", w2), ("w1", w1), ("w2", w2)], 60_000)
    merged = m.figures(m.merge(w1, w2), 60_000)
    assert arm_.windows == ("w1", "w2")
    assert (arm_.predictions, arm_.labeled) == (4, 4)
    assert arm_.metrics == {k: merged[k] for k in ("auc", "brier", "logloss", "mae", "rmse")}
    assert arm_.p99_ms == merged["p99_ms"] and arm_.dead_letter_rate == 0.0
    dead = canary.arm_figures([("w1", m.add_dead_letter(w1, 3))], 60_000)
    assert (dead.dead_letters, dead.events) == (3, 5)
    empty = canary.arm_figures([], 60_000)
    assert empty.metrics == {} and empty.p99_ms is None and empty.labeled == 0


def test_a_better_candidate_advances_and_a_worse_one_aborts_from_windows() -> None:
    good = [(0.9, 1.0), (0.1, 0.0)] * 100
    bad = [(0.4, 1.0), (0.6, 0.0)] * 100
    base = canary.arm_figures([("b", _window(good))], 60_000)
    ro = rollout(max_regression={"logloss": 0.01, "auc": 0.01})
    assert (
        canary.judge(ro, base, canary.arm_figures([("c", _window(good))], 60_000), 0).action
        == "advance"
    )
    verdict = canary.judge(ro, base, canary.arm_figures([("c", _window(bad))], 60_000), 0)
    assert verdict.action == "abort" and verdict.reason.startswith("auc")


# --- hash routing ----------------------------------------------------------------------------


@pytest.mark.parametrize("percent", [10, 50, 90])
@pytest.mark.parametrize("rollout_id", ["r0123456789a", "rfedcba98765"])
def test_routing_fractions_are_within_tolerance(percent: int, rollout_id: str) -> None:
    ro = rollout(steps=(percent, 100), rollout_id=rollout_id)
    n = 20_000
    share = sum(arm(ro, f"entity-{i}") == CANDIDATE for i in range(n)) / n
    # Five standard deviations of a binomial share at n = 20,000 are under 0.018.
    assert abs(share - percent / 100) < 0.018


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=40),
    st.lists(st.integers(1, 99), min_size=2, max_size=6, unique=True).map(sorted),
)
def test_an_entity_keeps_its_arm_as_the_percent_grows(entity: str, steps: list[int]) -> None:
    ro = rollout(steps=(*steps, 100))
    arms = [arm(dataclasses.replace(ro, step=i), entity) for i in range(len(steps) + 1)]
    first_candidate = arms.index(CANDIDATE)  # at the last step (100%) at the latest
    assert all(a == BASELINE for a in arms[:first_candidate])
    assert all(a == CANDIDATE for a in arms[first_candidate:])
    assert arms == [arm(dataclasses.replace(ro, step=i), entity) for i in range(len(steps) + 1)]


@pytest.mark.parametrize(
    ("status", "steps", "expected"),
    [
        (ABORTED, (10, 100), BASELINE),  # 0%: all traffic back to the baseline
        (RUNNING, (0, 100), BASELINE),
        (COMPLETED, (10, 100), CANDIDATE),
        (RUNNING, (100,), CANDIDATE),  # 100%
    ],
)
def test_zero_and_hundred_percent(status: str, steps: tuple[int, ...], expected: str) -> None:
    ro = rollout(status=status, steps=steps)
    assert {arm(ro, f"e{i}") for i in range(2000)} == {expected}
