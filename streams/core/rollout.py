"""Shadows and canary rollouts of an alias, as values, and the hash that routes an entity.

A *shadow* scores a candidate commit beside the commit an alias serves, on the same feature
events, without its predictions reaching subscribers. A *rollout* moves an alias from its
commit (the baseline) to a candidate in steps: at each step a share of the entities, chosen by
a hash of their key, is served by the candidate. The state here is folded from the log
(``RolloutStarted`` ... ``RolloutAborted``); what a worker does with it is :func:`arm`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

# The metrics a --max-regression criterion may name, and whether lower is better.
LOWER_IS_BETTER: Final[Mapping[str, bool]] = {
    "logloss": True,
    "brier": True,
    "mae": True,
    "rmse": True,
    "auc": False,
}
MAX_STEPS: Final = 20
MAX_STEP_TIMEOUT_MS: Final = 30 * 24 * 3600 * 1000
# Routing resolution: a step's percentage is met to 1/100 of a percent.
BUCKETS: Final = 10_000

RUNNING: Final = "running"
PAUSED: Final = "paused"
COMPLETED: Final = "completed"
ABORTED: Final = "aborted"
ACTIVE: Final = frozenset({RUNNING, PAUSED})

BASELINE: Final = "baseline"
CANDIDATE: Final = "candidate"


@dataclass(frozen=True)
class Policy:
    """How a rollout proceeds: the candidate's share at each step and what each step must show."""

    steps: tuple[int, ...]  # percentages, strictly increasing, the last one 100
    min_labels: int = 100  # labelled candidate predictions a step needs before any decision
    # metric -> the worsening allowed against the baseline (absolute; for auc, a drop)
    max_regression: Mapping[str, float] = field(default_factory=dict)
    max_p99_ms: float | None = None
    max_dead_letter_rate: float | None = None
    step_timeout_ms: int = 0  # 0: a step may wait for its labels forever


@dataclass(frozen=True)
class Rollout:
    id: str
    alias: str
    baseline: str  # the commit the alias served when the rollout started
    candidate: str
    policy: Policy
    step: int  # index into policy.steps
    status: str  # RUNNING | PAUSED | COMPLETED | ABORTED
    started_at: int  # ms, the RolloutStarted event's time
    step_started_at: int  # ms, when the current step began (start or last advance)
    allow_signature_change: bool = False
    reason: str = ""  # why it last paused, aborted or completed

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def percent(self) -> int:
        """The candidate's share of the alias's entities now (a paused rollout holds its step)."""
        if self.status in ACTIVE:
            return self.policy.steps[self.step]
        return 100 if self.status == COMPLETED else 0


@dataclass(frozen=True)
class Shadow:
    alias: str
    candidate: str  # commit id
    started_at: int


def bucket(rollout_id: str, entity_key: str) -> int:
    """The entity's fixed place in ``[0, BUCKETS)`` for one rollout.

    Salted by the rollout so that two rollouts do not always pick the same entities, and
    independent of the step: an entity in the candidate's share stays there as it grows.
    """
    digest = hashlib.sha256(f"{rollout_id}\x00{entity_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def routing_key(entity_key: str, event_id: str) -> str:
    """What an event is routed by: its entity, or, for an event sent without one, its own id.

    An empty key would put every such event in one bucket: all of them on one arm, 0% or
    100% of them on the candidate whatever the step. By event id they spread at the step's
    share (a redelivered event keeps its arm), though an entity is then not kept on one arm.
    """
    return entity_key if entity_key else event_id


def arm(rollout: Rollout, entity_key: str) -> str:
    """Which arm serves ``entity_key``: CANDIDATE for a bucket below the current percentage."""
    percent = rollout.percent
    if percent <= 0:
        return BASELINE
    if percent >= 100:
        return CANDIDATE
    return CANDIDATE if bucket(rollout.id, entity_key) < percent * (BUCKETS // 100) else BASELINE


def rollout_id(model: str, command_id: str) -> str:
    """A rollout's id, derived from the command that started it (the core draws no random ids)."""
    return "r" + hashlib.sha256(f"{model}\x00{command_id}".encode()).hexdigest()[:11]


def active_rollout(rollouts: Mapping[str, Rollout], alias: str) -> Rollout | None:
    """The running or paused rollout of ``alias``; at most one exists (decide refuses a second)."""
    for rollout in reversed(list(rollouts.values())):
        if rollout.alias == alias and rollout.active:
            return rollout
    return None
