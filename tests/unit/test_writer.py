"""The single writer with fakes around it: re-checking after a revocation, misrouting,
answers that carry codes and no HTTP status."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.codec import ReplyTo, encode_command
from streams.core import Command, CreateModel, MakeCommit
from streams.projection import MemoryProjection
from streams.service.answers import Answer
from streams.service.writer import Writer
from streams.settings import Settings
from streams.statuses import status_of
from streams.topics import home_partition

PARTITIONS = 4


@dataclass
class Sent:
    offset: int


class FakeFollower:
    """Applies what the fake producer appends at once; counts catch-up checks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.projection = MemoryProjection()
        self.partitions = PARTITIONS
        self.ready = asyncio.Event()
        self.ready.set()
        self.checks: list[int] = []

    async def caught_up(self, partition: int) -> int:
        self.checks.append(partition)
        return self.projection.next_offsets.get(partition, 0)

    async def wait_applied(self, partition: int, offset: int, timeout: float | None = None) -> None:
        assert self.projection.applied(partition, offset)


@dataclass
class FakeClient:
    follower: FakeFollower

    async def send_and_wait(self, topic: str, key: bytes, value: bytes, partition: int) -> Sent:
        offset = self.follower.projection.next_offsets.get(partition, 0)
        self.follower.projection.apply(partition, [(offset, value)], PARTITIONS)
        return Sent(offset)


@dataclass
class FakeProducer:
    client: FakeClient


@dataclass
class FakeReplies:
    answers: list[tuple[str, ReplyTo, Answer]] = field(default_factory=list)

    async def answer(self, command_id: str, reply_to: ReplyTo, answer: Answer) -> None:
        self.answers.append((command_id, reply_to, answer))


@dataclass
class FakeLetters:
    letters: list[tuple[Any, ...]] = field(default_factory=list)

    async def send(self, *letter: Any) -> None:
        self.letters.append(letter)


def writer(tmp_path: Path) -> tuple[Writer, FakeFollower, FakeReplies, FakeLetters]:
    settings = Settings.namespaced("w", data_dir=tmp_path, partitions=PARTITIONS)
    follower = FakeFollower(settings)
    replies, letters = FakeReplies(), FakeLetters()
    made = Writer(
        follower,  # type: ignore[arg-type]
        FakeProducer(FakeClient(follower)),  # type: ignore[arg-type]
        replies,  # type: ignore[arg-type]
        letters,  # type: ignore[arg-type]
        clock=lambda: 1_700_000_000.0,
    )
    return made, follower, replies, letters


def command(i: int, model: str, body: Any) -> bytes:
    return encode_command(Command(f"c{i}", model, "t", 0, body), "me", f"r{i}")


def test_a_revocation_makes_the_writer_check_it_is_caught_up_again(tmp_path: Path) -> None:
    made, follower, replies, _ = writer(tmp_path)
    home = home_partition("churn", PARTITIONS)

    async def run() -> None:
        await made.handle(home, 0, b"churn", command(0, "churn", CreateModel()))
        await made.handle(home, 1, b"churn", command(1, "churn", MakeCommit("a" * 64, "one")))
        assert follower.checks == [home]  # once per ownership, not once per command
        made.on_partitions_revoked()
        await made.handle(home, 2, b"churn", command(2, "churn", MakeCommit("b" * 64, "two")))
        assert follower.checks == [home, home]

    asyncio.run(run())
    bodies = [answer.body for _, _, answer in replies.answers]
    assert [b["event"] for b in bodies] == ["ModelCreated", "Committed", "Committed"]
    assert [status_of(b) for b in bodies] == [201, 201, 201]
    assert [r.request_id for _, r, _ in replies.answers] == ["r0", "r1", "r2"]


def test_answers_carry_codes_and_the_edge_picks_the_status(tmp_path: Path) -> None:
    made, _, replies, _ = writer(tmp_path)
    home = home_partition("churn", PARTITIONS)

    async def run() -> None:
        await made.handle(home, 0, b"churn", command(0, "churn", CreateModel()))
        await made.handle(home, 1, b"churn", command(0, "churn", CreateModel()))  # a repeat
        await made.handle(home, 2, b"churn", command(3, "churn", CreateModel()))  # exists

    asyncio.run(run())
    answers = [answer for _, _, answer in replies.answers]
    assert answers[1].body["repeated"] is True and status_of(answers[1].body) == 200
    assert answers[2].body["error"] == "model_exists" and status_of(answers[2].body) == 409
    assert all(answer.wire_status is None for answer in answers)


def test_a_misrouted_command_is_refused_and_dead_lettered(tmp_path: Path) -> None:
    made, follower, replies, letters = writer(tmp_path)
    wrong = (home_partition("churn", PARTITIONS) + 1) % PARTITIONS
    asyncio.run(made.handle(wrong, 7, b"churn", command(0, "churn", CreateModel())))
    ((_, _, answer),) = replies.answers
    assert answer.body["error"] == "misrouted" and status_of(answer.body) == 422
    assert letters.letters[0][1:3] == (wrong, 7) and letters.letters[0][-1] == "route"
    assert not follower.projection.models and follower.checks == []
