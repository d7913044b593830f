"""The rollout controller's shell: which rollouts it judges, on which windows, and the
commands it sends (ids, actor, evidence), over a real window store and a recording sink."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import replace

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streams.core import monitoring
from streams.core.commands import AbortRollout, AdvanceRollout, Command
from streams.core.monitoring import Stats
from streams.core.rollout import BASELINE, CANDIDATE, PAUSED, RUNNING, Policy, Rollout
from streams.core.state import ModelState
from streams.monitoring.controller import Controller, Ownership
from streams.monitoring.windows import Version, Window, WindowStore
from streams.service.answers import Answer
from streams.topics import home_partition

RID = "r0123456789a"
T0 = 1_700_000_000_000  # the rollout started here
WINDOW_MS = 1000
POLICY = Policy(steps=(10, 50, 100), min_labels=20, max_regression={"logloss": 0.05})


def rollout(**changes: object) -> Rollout:
    fields: dict[str, object] = {
        "id": RID,
        "alias": "production",
        "baseline": "b" * 64,
        "candidate": "c" * 64,
        "policy": POLICY,
        "step": 0,
        "status": RUNNING,
        "started_at": T0,
        "step_started_at": T0,
    }
    return Rollout(**{**fields, **changes})  # type: ignore[arg-type]


def model(*rollouts: Rollout, name: str = "churn") -> ModelState:
    return ModelState(
        name=name,
        default_branch="main",
        created_at=T0 - 1000,
        seq=3,
        last_hash="0" * 64,
        commits={},
        branches={"main": "c" * 64},
        aliases={"production": "b" * 64},
        receipts={},
        rollouts={r.id: r for r in rollouts},
    )


def stats(labeled: int, right: float) -> Stats:
    """``labeled`` binary pairs scored ``right`` on the true class (0.5: a coin)."""
    acc = monitoring.Accumulator(monitoring.EMPTY)
    for i in range(labeled):
        label = float(i % 2)
        acc.add_prediction(4.0, T0 + i)
        acc.add_pair(right if label else 1 - right, label, 50)
    return acc.freeze()


def window(
    arm: str, start_ms: int, labeled: int, right: float, commit: str | None = None
) -> Window:
    if commit is None:
        commit = "c" * 64 if arm == CANDIDATE else "b" * 64
    version = Version("production", commit, RID, arm)
    window_id = monitoring.window_id("churn", "production", commit, RID, arm, False, start_ms)
    end_ms = start_ms + WINDOW_MS
    return Window(
        window_id, "churn", version, start_ms, end_ms, stats(labeled, right), "m", end_ms + 2000
    )


class Sink:
    """Records every command; answers as the writer would (a receipt unless told otherwise)."""

    def __init__(self) -> None:
        self.commands: list[Command] = []
        self.answers: list[Mapping[str, object]] = []

    async def __call__(self, command: Command) -> Answer:
        self.commands.append(command)
        if self.answers:
            return Answer(dict(self.answers.pop(0)))
        return Answer({"model": command.model, "command_id": command.command_id, "seq": 4})


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


def setup(
    *rollouts: Rollout, owned: bool = True, ready: bool = True
) -> tuple[Controller, WindowStore, Sink, Clock]:
    store, sink, clock = WindowStore.in_memory(), Sink(), Clock(T0 + 10_000)
    state = {"churn": model(*rollouts)}
    ownership = Ownership(lambda: 4)
    ownership.assigned([home_partition("churn", 4)] if owned else [])
    controller = Controller(
        store, lambda: state, ownership.owns, sink, ready=lambda: ready, clock=clock
    )
    return controller, store, sink, clock


def sample(controller: Controller, name: str, labels: Mapping[str, str] | None = None) -> float:
    text = generate_latest(controller.metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and (labels is None or dict(s.labels) == dict(labels)):
                return float(s.value)
    return 0.0


def test_a_step_whose_criteria_hold_advances_once_with_its_evidence() -> None:
    controller, store, sink, clock = setup(rollout())
    used = [window(BASELINE, T0, 40, 0.8), window(CANDIDATE, T0, 30, 0.8)]
    store.apply(0, list(enumerate(used)))
    (decision,) = asyncio.run(controller.tick())
    (command,) = sink.commands
    assert decision.action == "advance" and decision.answer.ok
    assert command.command_id == f"rollout:{RID}:0:advance"
    assert command.actor == f"rollout:{RID}" and command.model == "churn"
    assert isinstance(command.body, AdvanceRollout) and command.body.expect_step == 0
    evidence = json.loads(command.body.evidence)
    assert evidence["candidate"]["windows"] == [used[1].window_id]
    assert evidence["baseline"]["windows"] == [used[0].window_id]
    assert evidence["candidate"]["labeled"] == 30
    assert sample(controller, "modelvc_rollout_decisions_total", {"action": "advance"}) == 1
    # From the newest window's emission (end + 2 s) to the decision (the clock, 10 s in).
    lag = (clock.ms - used[1].emitted_at) / 1000
    assert sample(controller, "modelvc_rollout_time_to_decision_seconds_sum") == lag


def test_two_instances_send_the_same_command_so_the_writer_applies_it_once() -> None:
    sent = []
    for _ in range(2):
        controller, store, sink, _ = setup(rollout())
        store.apply(0, [(0, window(BASELINE, T0, 40, 0.8)), (1, window(CANDIDATE, T0, 30, 0.8))])
        asyncio.run(controller.tick())
        sent += sink.commands
    first, second = sent
    assert first.command_id == second.command_id and first.body == second.body


def test_no_decision_without_the_labels_a_step_needs_until_it_times_out() -> None:
    timed = rollout(policy=Policy((10, 100), min_labels=50, step_timeout_ms=60_000))
    controller, store, sink, clock = setup(timed)
    store.apply(0, [(0, window(BASELINE, T0, 60, 0.8)), (1, window(CANDIDATE, T0, 49, 0.8))])
    assert asyncio.run(controller.tick()) == [] and sink.commands == []
    clock.ms = T0 + 60_001
    (decision,) = asyncio.run(controller.tick())
    (command,) = sink.commands
    assert decision.action == "abort" and "step_timeout" in decision.reason
    assert command.command_id == f"rollout:{RID}:0:abort"
    assert isinstance(command.body, AbortRollout) and command.body.expect_step == 0


def test_a_worse_candidate_is_aborted_naming_the_criterion() -> None:
    controller, store, sink, _ = setup(rollout())
    store.apply(0, [(0, window(BASELINE, T0, 40, 0.9)), (1, window(CANDIDATE, T0, 40, 0.6))])
    (decision,) = asyncio.run(controller.tick())
    assert decision.action == "abort" and "logloss" in decision.reason
    (command,) = sink.commands
    assert isinstance(command.body, AbortRollout) and command.body.reason == decision.reason
    assert sample(controller, "modelvc_rollout_decisions_total", {"action": "abort"}) == 1


def test_only_windows_that_start_once_the_step_began_count_for_the_candidate() -> None:
    step_started = T0 + 5_000
    controller, store, sink, _ = setup(rollout(step=1, step_started_at=step_started))
    # The windows that decided step 0 ended before step 1 began: not evidence again.
    store.apply(0, [(0, window(BASELINE, T0, 40, 0.8)), (1, window(CANDIDATE, T0, 40, 0.8))])
    assert asyncio.run(controller.tick()) == []
    # Nor one that straddles the advance: its predictions were served at step 0's share.
    store.apply(0, [(2, window(CANDIDATE, step_started - 500, 40, 0.8))])
    assert asyncio.run(controller.tick()) == [] and sink.commands == []
    store.apply(0, [(3, window(CANDIDATE, step_started, 40, 0.8))])
    (decision,) = asyncio.run(controller.tick())
    assert decision.command_id == f"rollout:{RID}:1:advance"
    evidence = json.loads(sink.commands[0].body.evidence)  # type: ignore[union-attr]
    assert evidence["candidate"]["windows"] == [window(CANDIDATE, step_started, 1, 1).window_id]


def test_the_baseline_counts_windows_that_start_once_the_rollout_began() -> None:
    controller, store, _, _ = setup(rollout())
    # Baseline traffic from before the rollout (here a perfect one) is not its evidence.
    store.apply(0, [(0, window(BASELINE, T0 - 500, 500, 0.99))])
    base, _ = controller.figures("churn", rollout())
    assert base.labeled == 0
    store.apply(0, [(1, window(BASELINE, T0, 40, 0.8))])
    base, _ = controller.figures("churn", rollout())
    assert base.labeled == 40


@pytest.mark.parametrize(
    ("rollouts", "owned", "ready"),
    [
        ((rollout(),), False, True),  # another instance owns the model's partition
        ((rollout(),), True, False),  # not caught up with the log or the windows yet
        ((rollout(status=PAUSED),), True, True),
        ((), True, True),
    ],
)
def test_nothing_is_judged_but_running_rollouts_of_owned_models_once_caught_up(
    rollouts: tuple[Rollout, ...], owned: bool, ready: bool
) -> None:
    controller, store, sink, _ = setup(*rollouts, owned=owned, ready=ready)
    store.apply(0, [(0, window(BASELINE, T0, 40, 0.8)), (1, window(CANDIDATE, T0, 40, 0.8))])
    assert asyncio.run(controller.tick()) == [] and sink.commands == []


def test_a_refused_decision_is_not_sent_again_but_a_timed_out_one_is() -> None:
    controller, store, sink, _ = setup(rollout())
    store.apply(0, [(0, window(BASELINE, T0, 40, 0.8)), (1, window(CANDIDATE, T0, 40, 0.8))])
    sink.answers = [{"error": "timeout", "message": "no answer"}]
    asyncio.run(controller.tick())
    sink.answers = [{"error": "rollout_moved", "message": "moved on", "rollout_id": RID}]
    asyncio.run(controller.tick())
    asyncio.run(controller.tick())
    assert [c.command_id for c in sink.commands] == [f"rollout:{RID}:0:advance"] * 2
    assert sample(controller, "modelvc_rollout_decisions_total", {"action": "advance"}) == 0


def test_a_refusal_is_forgotten_once_the_rollout_resumes_at_the_same_step() -> None:
    controller, store, sink, clock = setup(rollout())
    store.apply(0, [(0, window(BASELINE, T0, 40, 0.8)), (1, window(CANDIDATE, T0, 40, 0.8))])
    # The advance raced a pause: refused, and not sent again while the rollout is as it was.
    sink.answers = [{"error": "rollout_moved", "message": "is not running", "rollout_id": RID}]
    asyncio.run(controller.tick())
    asyncio.run(controller.tick())
    assert len(sink.commands) == 1
    # Resumed at step 0 (step_started_at reset): the same step's advance is judged afresh.
    resumed = T0 + 20_000
    state = controller.models()["churn"]
    controller.models = lambda: {
        "churn": replace(state, rollouts={RID: rollout(step_started_at=resumed)})
    }
    clock.ms = resumed + 10_000
    store.apply(
        0, [(2, window(BASELINE, resumed, 40, 0.8)), (3, window(CANDIDATE, resumed, 40, 0.8))]
    )
    (decision,) = asyncio.run(controller.tick())
    assert decision.answer.ok and decision.command_id == f"rollout:{RID}:0:advance"
    assert len(sink.commands) == 2


def test_a_step_timeout_is_counted_but_not_timed_as_a_window_decision() -> None:
    timed = rollout(policy=Policy((10, 100), min_labels=50, step_timeout_ms=60_000))
    controller, store, _, clock = setup(timed)
    store.apply(0, [(0, window(BASELINE, T0, 60, 0.8)), (1, window(CANDIDATE, T0, 49, 0.8))])
    clock.ms = T0 + 60_001
    (decision,) = asyncio.run(controller.tick())
    assert decision.action == "abort" and decision.answer.ok
    assert sample(controller, "modelvc_rollout_decisions_total", {"action": "abort"}) == 1
    assert sample(controller, "modelvc_rollout_time_to_decision_seconds_count") == 0


def test_new_windows_wake_the_controller_before_its_next_tick() -> None:
    controller, store, sink, _ = setup(rollout())
    controller.interval_s = 3600.0  # only the first tick runs by the clock

    async def scenario() -> None:
        task = asyncio.create_task(controller.run())
        await asyncio.sleep(0.05)
        assert sink.commands == []  # the first tick found no windows
        added = store.apply(
            0, [(0, window(BASELINE, T0, 40, 0.8)), (1, window(CANDIDATE, T0, 40, 0.8))]
        )
        controller.on_windows(added)
        for _ in range(100):
            if sink.commands:
                break
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(scenario())
    assert [c.command_id for c in sink.commands] == [f"rollout:{RID}:0:advance"]


def test_an_arm_is_judged_on_its_own_commits_windows_only() -> None:
    controller, store, sink, _ = setup(rollout())
    # Windows that name the rollout and an arm but another commit judge nothing: a perfect
    # one cannot carry a bad candidate, nor a bad one abort a good candidate.
    stray = [
        window(CANDIDATE, T0, 500, 0.99, commit="f" * 64),
        window(BASELINE, T0, 500, 0.55, commit="e" * 64),
    ]
    store.apply(0, list(enumerate(stray)))
    assert asyncio.run(controller.tick()) == [] and sink.commands == []
    base, cand = controller.figures("churn", rollout())
    assert (base.labeled, cand.labeled) == (0, 0)
    store.apply(0, [(2, window(BASELINE, T0, 40, 0.8)), (3, window(CANDIDATE, T0, 30, 0.6))])
    (decision,) = asyncio.run(controller.tick())
    assert decision.action == "abort" and decision.reason.startswith("logloss")
