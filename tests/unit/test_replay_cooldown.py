"""POST /v1/audit/replay's single flight: after a run, calls within the cool-down get its
answer (cached, with its age) instead of starting another run. No broker: a fake runner."""

from __future__ import annotations

import asyncio
from typing import Any

from streams import replay


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def flight(clock: Clock, run_s: float) -> tuple[replay.SingleFlight, list[float]]:
    started: list[float] = []

    def work(deadline: float) -> replay.Replay:
        started.append(clock.now)
        clock.now += run_s  # the run takes run_s on the injected clock
        return replay.Replay("fake", events=len(started))

    async def finish(done: replay.Replay) -> dict[str, Any]:
        return {"events": done.events}

    return replay.SingleFlight(work, finish, clock=clock), started


def test_back_to_back_calls_run_once_within_the_cool_down_and_again_after_it() -> None:
    clock = Clock()
    runs, started = flight(clock, run_s=2.0)

    async def calls() -> list[dict[str, Any]]:
        answers = [await runs()]
        clock.now += 29.0  # 29 s after the run ended: max(30 s, 5 x 2 s) not yet over
        answers.append(await runs())
        clock.now += 1.5  # past 30 s: a new run
        answers.append(await runs())
        return answers

    try:
        first, again, later = asyncio.run(calls())
    finally:
        runs.close()
    assert runs.runs == 2 and len(started) == 2
    assert first == {"events": 1, "cached": False, "age_ms": 0}
    assert again == {"events": 1, "cached": True, "age_ms": 29_000}
    assert later == {"events": 2, "cached": False, "age_ms": 0}


def test_a_long_run_cools_down_for_five_times_its_duration() -> None:
    clock = Clock()
    runs, _ = flight(clock, run_s=20.0)

    async def calls() -> list[dict[str, Any]]:
        answers = [await runs()]
        clock.now += 99.0  # within 5 x 20 s
        answers.append(await runs())
        clock.now += 2.0
        answers.append(await runs())
        return answers

    try:
        _, again, later = asyncio.run(calls())
    finally:
        runs.close()
    assert again["cached"] is True and again["age_ms"] == 99_000
    assert later["cached"] is False and runs.runs == 2


def test_a_failed_run_is_not_rerun_within_the_cool_down() -> None:
    clock = Clock()
    tries: list[float] = []

    def work(deadline: float) -> replay.Replay:
        tries.append(clock.now)
        raise TimeoutError("the replay ran out of time")

    async def finish(done: replay.Replay) -> dict[str, Any]:
        return {}

    runs = replay.SingleFlight(work, finish, clock=clock)

    async def call() -> str:
        try:
            await runs()
        except TimeoutError as exc:
            return str(exc)
        return "answered"

    try:
        assert asyncio.run(call()) == "the replay ran out of time"
        clock.now += 10.0
        assert asyncio.run(call()) == "the replay ran out of time"
    finally:
        runs.close()
    assert len(tries) == 1
