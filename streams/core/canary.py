"""The canary decision: given a rollout and the figures of its two arms, advance, abort or wait.

Pure and deterministic (no clock: the caller passes ``now_ms``), so that the controller that
acts on it and an auditor who replays it from the evidence reach the same verdict. The
evidence names every criterion with its limit and both sides' figures; it is recorded, as
canonical JSON, in the RolloutAdvanced or RolloutAborted event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from streams.core import monitoring
from streams.core.rollout import LOWER_IS_BETTER, RUNNING, Rollout

ADVANCE: Final = "advance"
ABORT: Final = "abort"
WAIT: Final = "wait"
STEP_TIMEOUT: Final = "step_timeout"
P99: Final = "p99_ms"
DEAD_LETTER_RATE: Final = "dead_letter_rate"
# Window ids listed in the evidence, per arm: the event's evidence is bounded (32 KiB), and
# the count and the first and last ids are enough to find the rest on the metrics topic.
MAX_EVIDENCE_WINDOWS: Final = 100


@dataclass(frozen=True)
class ArmFigures:
    """What one arm of a rollout showed over the windows it is judged on."""

    predictions: int
    labeled: int
    metrics: Mapping[str, float]  # the LOWER_IS_BETTER metrics the counts define
    p99_ms: float | None
    dead_letter_rate: float | None
    windows: tuple[str, ...]  # window ids, sorted
    dead_letters: int = 0  # events of the arm that failed before a prediction

    @property
    def events(self) -> int:
        """What the arm was sent: its predictions and its dead letters."""
        return self.predictions + self.dead_letters


@dataclass(frozen=True)
class Verdict:
    action: str  # ADVANCE | ABORT | WAIT
    reason: str
    evidence: Mapping[str, object]


def arm_figures(windows: Sequence[tuple[str, monitoring.Stats]], window_ms: int) -> ArmFigures:
    """The figures of the merged ``(window_id, stats)``; a window listed twice counts once."""
    unique = dict(windows)
    merged = monitoring.merge_all(unique[w] for w in sorted(unique))
    figures = monitoring.figures(merged, window_ms)
    metrics: dict[str, float] = {}
    for name in sorted(LOWER_IS_BETTER):
        value = figures[name]
        if isinstance(value, int | float):
            metrics[name] = float(value)
    p99, rate = figures["p99_ms"], figures["dead_letter_rate"]
    return ArmFigures(
        predictions=merged.predictions,
        labeled=merged.labeled,
        metrics=metrics,
        p99_ms=float(p99) if isinstance(p99, int | float) else None,
        dead_letter_rate=float(rate) if isinstance(rate, int | float) else None,
        windows=tuple(sorted(unique)),
        dead_letters=merged.dead_letters,
    )


def _plain(arm: ArmFigures) -> dict[str, object]:
    listed = list(arm.windows)
    if len(listed) > MAX_EVIDENCE_WINDOWS:
        half = MAX_EVIDENCE_WINDOWS // 2
        listed = listed[:half] + listed[-half:]
    return {
        "predictions": arm.predictions,
        "dead_letters": arm.dead_letters,
        "labeled": arm.labeled,
        "metrics": dict(arm.metrics),
        "p99_ms": arm.p99_ms,
        "dead_letter_rate": arm.dead_letter_rate,
        "window_count": len(arm.windows),
        "windows": listed,
    }


def _criterion(
    name: str, limit: float, baseline: float | None, candidate: float | None, ok: bool
) -> dict[str, object]:
    return {"name": name, "limit": limit, "baseline": baseline, "candidate": candidate, "ok": ok}


def criteria(
    rollout: Rollout, baseline: ArmFigures, candidate: ArmFigures
) -> list[dict[str, object]]:
    """Each criterion of the rollout's policy, evaluated: regression per metric (sorted by
    name), then p99 latency, then the dead-letter rate. A figure missing fails its criterion."""
    return [
        *metric_criteria(rollout, baseline, candidate),
        *serving_criteria(rollout, baseline, candidate),
    ]


def metric_criteria(
    rollout: Rollout, baseline: ArmFigures, candidate: ArmFigures
) -> list[dict[str, object]]:
    """The regression criteria, one per metric of the policy (sorted by name)."""
    policy = rollout.policy
    results: list[dict[str, object]] = []
    for metric in sorted(policy.max_regression):
        limit = policy.max_regression[metric]
        base, cand = baseline.metrics.get(metric), candidate.metrics.get(metric)
        ok = False
        if base is not None and cand is not None:
            # Worsening of the candidate: up for a loss, down for the AUC.
            worse = cand - base if LOWER_IS_BETTER.get(metric, True) else base - cand
            ok = worse <= limit
        results.append(_criterion(metric, limit, base, cand, ok))
    return results


def serving_criteria(
    rollout: Rollout, baseline: ArmFigures, candidate: ArmFigures
) -> list[dict[str, object]]:
    """The criteria that need no label: the candidate's p99 latency and dead-letter rate."""
    policy = rollout.policy
    results: list[dict[str, object]] = []
    if policy.max_p99_ms is not None:
        cand_p99 = candidate.p99_ms
        ok = cand_p99 is not None and cand_p99 <= policy.max_p99_ms
        results.append(_criterion(P99, policy.max_p99_ms, baseline.p99_ms, cand_p99, ok))
    if policy.max_dead_letter_rate is not None:
        cand_rate = candidate.dead_letter_rate
        ok = cand_rate is not None and cand_rate <= policy.max_dead_letter_rate
        results.append(
            _criterion(
                DEAD_LETTER_RATE,
                policy.max_dead_letter_rate,
                baseline.dead_letter_rate,
                cand_rate,
                ok,
            )
        )
    return results


def _failure(criterion: Mapping[str, object]) -> str:
    name, base, cand = criterion["name"], criterion["baseline"], criterion["candidate"]
    if cand is None or (base is None and name not in (P99, DEAD_LETTER_RATE)):
        side = "candidate" if cand is None else "baseline"
        return f"cannot evaluate {name}: the {side} has no {name} yet"
    return (
        f"{name}: candidate {_shown(cand)} vs baseline {_shown(base)} "
        f"exceeds the limit {criterion['limit']}"
    )


def _shown(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, int | float) else "none"


def _short(
    rollout: Rollout, baseline: ArmFigures, candidate: ArmFigures
) -> tuple[str, int, int, str] | None:
    """(side, count, needed, "labels" or "events") of the first count a step still lacks:
    the candidate's labels, the baseline's when a metric compares them, then any traffic."""
    policy = rollout.policy
    if candidate.labeled < policy.min_labels:
        return "candidate", candidate.labeled, policy.min_labels, "labels"
    if policy.max_regression and baseline.labeled < policy.min_labels:
        return "baseline", baseline.labeled, policy.min_labels, "labels"
    if candidate.events < 1:  # min_labels 0: nothing to judge before the first event
        return "candidate", candidate.events, 1, "events"
    return None


def judge(rollout: Rollout, baseline: ArmFigures, candidate: ArmFigures, now_ms: int) -> Verdict:
    """Advance, abort or wait, with the evidence that decides it.

    Not running: wait. Once the candidate was sent ``max(1, min_labels)`` events
    (predictions and dead letters), its p99 latency and dead-letter rate are judged at
    once: a candidate that fails every event, or is slow, is aborted without waiting for
    labels it may never get. A figure not there yet (a p99 without predictions) waits.
    Then fewer labels than ``min_labels`` on the candidate, or on the baseline when the
    policy compares metrics (or no event at all): wait, or abort with ``step_timeout`` once
    the step has lasted longer than a non-zero ``step_timeout_ms``. Then every criterion
    must hold to advance; the first that fails names the abort.
    """
    policy = rollout.policy
    evidence: dict[str, object] = {
        "step": rollout.step,
        "percent": rollout.percent,
        "baseline": _plain(baseline),
        "candidate": _plain(candidate),
    }
    if rollout.status != RUNNING:
        return Verdict(WAIT, f"the rollout is {rollout.status}", evidence)
    if candidate.events >= max(1, policy.min_labels):
        early = [
            c for c in serving_criteria(rollout, baseline, candidate) if c["candidate"] is not None
        ]
        for criterion in early:
            if not criterion["ok"]:
                evidence["criteria"] = early
                return Verdict(ABORT, _failure(criterion), evidence)
    gate = _short(rollout, baseline, candidate)
    if gate is not None:
        side, have, need, what = gate
        waited = now_ms - rollout.step_started_at
        shown = f"the {side} has {have} of the {need} {what} a step needs"
        counts = (baseline.labeled, candidate.labeled)
        if what == "events":
            counts = (baseline.events, candidate.events)
        short = _criterion(f"min_{what}", need, *counts, False)
        if policy.step_timeout_ms and waited > policy.step_timeout_ms:
            evidence["criteria"] = [
                short,
                _criterion(STEP_TIMEOUT, policy.step_timeout_ms, None, waited, False),
            ]
            return Verdict(
                ABORT,
                f"{STEP_TIMEOUT}: {shown} after {waited} ms (limit {policy.step_timeout_ms} ms)",
                evidence,
            )
        evidence["criteria"] = [short]
        return Verdict(WAIT, shown, evidence)
    results = criteria(rollout, baseline, candidate)
    evidence["criteria"] = results
    for criterion in results:
        if not criterion["ok"]:
            return Verdict(ABORT, _failure(criterion), evidence)
    return Verdict(ADVANCE, f"all {len(results)} criteria hold at {rollout.percent}%", evidence)
