"""The rollout controller: judges each running rollout on its windows and sends the decision.

The decision itself is pure (``streams.core.canary.judge`` over the rollout and the two
arms' figures); this is its shell. It runs in every streams instance, and acts only for
models whose home partition this instance's writer owns, so one instance judges a rollout
at a time. It judges after each batch of new windows of a model and every second (a step
may time out with no window at all).

A decision is a command like any other, signed and sent through the writers (the same
path as the API's), as actor ``rollout:<id>``, with the command id
``rollout:<id>:<step>:<action>``: two instances that judge the same step during a
rebalance, or one that restarts, send the same id, and the writer applies it once (or
refuses the second as a changed request, or the step as moved). The command's role is the
one the rollout's start needed already: the controller carries out a policy someone with
that role set, and decides nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

from streams.core import canary
from streams.core.commands import AbortRollout, AdvanceRollout, Body, Command
from streams.core.hashing import canonical
from streams.core.rollout import BASELINE, CANDIDATE, RUNNING, Rollout
from streams.core.state import ModelState
from streams.monitoring.windows import Added, Window, WindowStore
from streams.service.answers import Answer
from streams.topics import home_partition

log = logging.getLogger("modelvc.streams")

INTERVAL_S: Final = 1.0
DEFAULT_WINDOW_MS: Final = 60_000  # the monitor's default, before any window says otherwise
# The role of the controller's commands: an alias move at the last step may need a
# protected alias's role, and the policy that asks for it was accepted from someone who had it.
CONTROLLER_ROLE: Final = "admin"
REFUSALS_REMEMBERED: Final = 1024
# Answers that may go away on their own (a timeout, a writer between owners, a race):
# the same decision is sent again at the next evaluation.
PASSING: Final = frozenset({"timeout", "untrusted_writer", "misrouted", "internal", "write_raced"})
# Time to decision spans the monitor's lateness, the window's close and the command's trip.
DECISION_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)

Submit = Callable[[Command], Awaitable[Answer]]


def actor_of(rollout_id: str) -> str:
    return f"rollout:{rollout_id}"


def command_id_of(rollout_id: str, step: int, action: str) -> str:
    return f"rollout:{rollout_id}:{step}:{action}"


class Ownership:
    """Which commands partitions this instance's writer owns now (Faust assigns them)."""

    def __init__(self, partitions: Callable[[], int]) -> None:
        self._partitions = partitions
        self.owned: frozenset[int] = frozenset()

    def assigned(self, partitions: Iterable[int]) -> None:
        self.owned = frozenset(partitions)

    def revoked(self, partitions: Iterable[int]) -> None:
        self.owned = self.owned - frozenset(partitions)

    def owns(self, model: str) -> bool:
        return home_partition(model, self._partitions()) in self.owned


class DecisionMetrics:
    """``modelvc_rollout_decisions_total{action}`` and the time from the newest window a
    decision used (when the monitor emitted it) to the decision being in the log; a step
    timeout is left out of the latter (the clock decided it, not a window)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.decisions = Counter(
            "modelvc_rollout_decisions",
            "Rollout decisions the controller appended, by action (advance, abort).",
            ["action"],
            registry=self.registry,
        )
        self.time_to_decision = Histogram(
            "modelvc_rollout_time_to_decision_seconds",
            "Seconds from the monitor emitting the newest window a decision used (its "
            "emitted_at) to the controller's decision being applied in the log; step-timeout "
            "aborts, which no window caused, are not observed.",
            buckets=DECISION_BUCKETS,
            registry=self.registry,
        )
        self.unwritable = Counter(
            "modelvc_rollout_unwritable_evidence",
            "Rollout decisions not sent because their evidence is not canonical JSON "
            "(each counted once; the rollout waits).",
            registry=self.registry,
        )


@dataclass(frozen=True)
class Decision:
    """One decision the controller sent, and what the writer answered."""

    model: str
    rollout_id: str
    step: int
    action: str  # "advance" | "abort"
    command_id: str
    reason: str
    answer: Answer


class Controller:
    """Judges the running rollouts of the models this instance owns and sends decisions."""

    def __init__(
        self,
        windows: WindowStore,
        models: Callable[[], Mapping[str, ModelState]],
        owns: Callable[[str], bool],
        submit: Submit,
        *,
        ready: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
        metrics: DecisionMetrics | None = None,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.windows = windows
        self.models = models
        self.owns = owns
        self.submit = submit
        self.ready = ready
        self.clock = clock
        self.metrics = metrics if metrics is not None else DecisionMetrics()
        self.interval_s = interval_s
        self._woken: set[str] = set()
        self._wake = asyncio.Event()
        # Decisions the writer refused for good (anything but a timeout): not sent again,
        # so a refusal is logged once rather than every second. Keyed by the command id and
        # the rollout as judged: a refusal holds for that rollout only, and once it changes
        # (resumed after a pause at the same step: step_started_at moves) the same command
        # id may be what it needs.
        self._refused: OrderedDict[tuple[str, str, int], str] = OrderedDict()
        # Command ids whose evidence could not be written, logged and counted once each.
        self._unwritable: OrderedDict[str, None] = OrderedDict()

    # -- when to judge ------------------------------------------------------------------
    def on_windows(self, added: Added) -> None:
        """A follower listener: judge these models' rollouts now."""
        self._woken |= added.models
        self._wake.set()

    async def run(self) -> None:
        """Judge woken models at once and every owned rollout every ``interval_s``."""
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            timeout = max(0.0, next_tick - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            woken, self._woken = self._woken, set()
            try:
                if loop.time() >= next_tick:
                    next_tick = loop.time() + self.interval_s
                    await self.tick()
                else:
                    for model in sorted(woken):
                        await self.evaluate(model)
            except Exception:  # one bad evaluation must not stop the controller
                log.exception("the rollout controller failed; trying again")

    async def tick(self) -> list[Decision]:
        """Judge every running rollout of every model this instance owns."""
        decisions: list[Decision] = []
        for model in sorted(self.models()):
            decisions += await self.evaluate(model)
        return decisions

    # -- judging ----------------------------------------------------------------------
    def running(self, model: str) -> list[Rollout]:
        """The model's running rollouts, if this instance owns the model and is caught up."""
        state = self.models().get(model)
        if state is None or not self.ready() or not self.owns(model):
            return []
        return [r for r in state.rollouts.values() if r.status == RUNNING]

    def figures(self, model: str, rollout: Rollout) -> tuple[canary.ArmFigures, canary.ArmFigures]:
        """The baseline's figures over the rollout and the candidate's over its step."""
        window_ms = self.windows.window_ms(model) or DEFAULT_WINDOW_MS
        baseline = self._arm(model, rollout, BASELINE)
        candidate = self._arm(model, rollout, CANDIDATE)
        return (
            canary.arm_figures([(w.window_id, w.stats) for w in baseline], window_ms),
            canary.arm_figures([(w.window_id, w.stats) for w in candidate], window_ms),
        )

    def _arm(self, model: str, rollout: Rollout, arm: str) -> list[Window]:
        # The baseline over the whole rollout; the candidate over its step: only windows
        # that start once the step began, since one that began before holds predictions
        # served at the previous step's share (and maybe made the previous decision), and
        # must not decide this step too. Each arm's windows are its own commit's: a window
        # that names the rollout and arm with another commit (a confused or hostile writer
        # of the metrics topic) judges nothing.
        baseline = arm == BASELINE
        return self.windows.windows(
            model,
            rollout_id=rollout.id,
            arm=arm,
            commit_id=rollout.baseline if baseline else rollout.candidate,
            shadow=False,
            starting_from=rollout.started_at if baseline else rollout.step_started_at,
        )

    def newest_emitted(self, model: str, rollout: Rollout) -> int | None:
        used = self._arm(model, rollout, BASELINE) + self._arm(model, rollout, CANDIDATE)
        return max((w.emitted_at for w in used), default=None)

    async def evaluate(self, model: str) -> list[Decision]:
        decisions = []
        for rollout in self.running(model):
            decision = await self._judge(model, rollout)
            if decision is not None:
                decisions.append(decision)
        return decisions

    async def _judge(self, model: str, rollout: Rollout) -> Decision | None:
        baseline, candidate = self.figures(model, rollout)
        now_ms = int(self.clock() * 1000)
        verdict = canary.judge(rollout, baseline, candidate, now_ms)
        if verdict.action not in ("advance", "abort"):
            return None
        command_id = command_id_of(rollout.id, rollout.step, verdict.action)
        refusal = (command_id, rollout.status, rollout.step_started_at)
        if refusal in self._refused:
            return None
        # canary bounds what it lists (the log takes at most refs.MAX_EVIDENCE_BYTES).
        try:
            evidence = canonical(dict(verdict.evidence)).decode()
        except ValueError as exc:
            # Figures the window store bounds are finite; should one not be anyway, this
            # step waits (judged again each second) rather than stop the controller.
            if command_id not in self._unwritable:
                self._unwritable[command_id] = None
                while len(self._unwritable) > REFUSALS_REMEMBERED:
                    self._unwritable.popitem(last=False)
                self.metrics.unwritable.inc()
                log.error(
                    "rollout %s of %s: %s has evidence JSON cannot hold: %s",
                    rollout.id,
                    model,
                    command_id,
                    exc,
                )
            return None
        body: Body
        if verdict.action == "advance":
            body = AdvanceRollout(rollout.id, rollout.step, evidence)
        else:
            body = AbortRollout(rollout.id, verdict.reason, evidence, rollout.step)
        command = Command(command_id, model, actor_of(rollout.id), now_ms, body, CONTROLLER_ROLE)
        emitted = self.newest_emitted(model, rollout)
        answer = await self.submit(command)
        decision = Decision(
            model, rollout.id, rollout.step, verdict.action, command_id, verdict.reason, answer
        )
        if answer.ok:
            if not answer.body.get("repeated"):
                self.metrics.decisions.labels(verdict.action).inc()
                # A step timeout is the clock's decision, not a window's: no lag to measure.
                timed_out = verdict.reason.startswith(f"{canary.STEP_TIMEOUT}:")
                if emitted is not None and not timed_out:
                    lag_s = max(0.0, self.clock() - emitted / 1000)
                    self.metrics.time_to_decision.observe(lag_s)
            log.info(
                "rollout %s of %s at step %d: %s (%s)",
                rollout.id,
                model,
                rollout.step,
                verdict.action,
                verdict.reason,
            )
        elif answer.body.get("error") not in PASSING:
            # Moved already (another instance decided), or refused for good: not again.
            self._refused[refusal] = str(answer.body.get("error"))
            while len(self._refused) > REFUSALS_REMEMBERED:
                self._refused.popitem(last=False)
            log.warning(
                "rollout %s of %s: %s refused: %s",
                rollout.id,
                model,
                command_id,
                answer.body.get("message"),
            )
        return decision
