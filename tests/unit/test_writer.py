"""The single writer with fakes around it: re-checking after a revocation, misrouting,
answers that carry codes and no HTTP status; commands it decides only when an API
signed them, events it signs, and the writer-key ring it starts."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from streams.codec import ReplyTo, decode_event, encode_command
from streams.core import Command, CreateModel, MakeCommit
from streams.core.commands import AddWriterKey
from streams.core.events import WriterKeyAdded
from streams.core.signatures import event_message, keys_stream
from streams.projection import MemoryProjection
from streams.service.answers import Answer
from streams.service.writer import UNTRUSTED_WRITER, Writer, introduce_key
from streams.settings import Settings
from streams.signing import SigningKey, sign_command, verify
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
    sent: list[tuple[int, bytes]] = field(default_factory=list)

    async def send_and_wait(self, topic: str, key: bytes, value: bytes, partition: int) -> Sent:
        self.sent.append((partition, value))
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


# The instance's key: its API signs the commands, its writer the events.
KEY = SigningKey.generate()
NOW_S = 1_700_000_000.0  # the writers' clock; commands are signed at this time
NOW_MS = int(NOW_S * 1000)


def writer(
    tmp_path: Path, key: SigningKey = KEY
) -> tuple[Writer, FakeFollower, FakeReplies, FakeLetters]:
    settings = Settings.namespaced("w", data_dir=tmp_path, partitions=PARTITIONS)
    follower = FakeFollower(settings)
    replies, letters = FakeReplies(), FakeLetters()
    made = Writer(
        follower,  # type: ignore[arg-type]
        FakeProducer(FakeClient(follower)),  # type: ignore[arg-type]
        replies,  # type: ignore[arg-type]
        letters,  # type: ignore[arg-type]
        key,
        clock=lambda: NOW_S,
    )
    return made, follower, replies, letters


def command(
    i: int, model: str, body: Any, signer: SigningKey | None = KEY, role: str = "committer"
) -> bytes:
    plain = Command(f"c{i}", model, "t", NOW_MS, body, role=role)
    signed = plain if signer is None else sign_command(signer, plain)
    return encode_command(signed, "me", f"r{i}")


def sent_events(made: Writer) -> list[tuple[int, Any]]:
    client: FakeClient = made.producer.client  # type: ignore[assignment]
    return [(partition, decode_event(value)) for partition, value in client.sent]


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


def test_an_unsigned_or_forged_command_is_dead_lettered_and_not_applied(tmp_path: Path) -> None:
    made, follower, replies, letters = writer(tmp_path)
    home = home_partition("churn", PARTITIONS)
    stranger = SigningKey.generate()
    # A genuine command whose role was raised after the API signed it.
    signed = sign_command(KEY, Command("c2", "churn", "t", NOW_MS, CreateModel(), role="reader"))
    forged = replace(signed, role="admin")

    async def run() -> None:
        await made.handle(home, 0, b"churn", command(0, "churn", CreateModel(), signer=None))
        await made.handle(home, 1, b"churn", command(1, "churn", CreateModel(), signer=stranger))
        await made.handle(home, 2, b"churn", encode_command(forged, "me", "r2"))

    asyncio.run(run())
    bodies = [answer.body for _, _, answer in replies.answers]
    assert [b["error"] for b in bodies] == ["unauthenticated"] * 3
    assert "unsigned" in bodies[0]["message"] and "does not trust" in bodies[1]["message"]
    assert "badly signed" in bodies[2]["message"]
    assert [(letter[1], letter[2], letter[-1]) for letter in letters.letters] == [
        (home, 0, "auth"),
        (home, 1, "auth"),
        (home, 2, "auth"),
    ]
    assert not follower.projection.models and sent_events(made) == []


def test_the_writer_starts_the_ring_with_its_own_key_and_signs_every_event(
    tmp_path: Path,
) -> None:
    made, follower, replies, _ = writer(tmp_path)
    home = home_partition("churn", PARTITIONS)

    async def run() -> None:
        await made.handle(home, 0, b"churn", command(0, "churn", CreateModel()))
        await made.handle(home, 1, b"churn", command(1, "churn", MakeCommit("a" * 64, "one")))

    asyncio.run(run())
    assert all(answer.ok for _, _, answer in replies.answers)
    events = sent_events(made)
    assert [(p, e.model, e.type) for p, e in events] == [
        (home, keys_stream(home), "WriterKeyAdded"),
        (home, "churn", "ModelCreated"),
        (home, "churn", "Committed"),
    ]
    first = events[0][1].payload
    assert isinstance(first, WriterKeyAdded) and first.public_key == KEY.public_key
    for _, event in events:
        assert event.key_id == KEY.key_id
        assert verify(KEY.public_key, event_message(event.hash()), event.signature)
    ring = follower.projection.rings[home]
    assert dict(ring.active) == {KEY.key_id: KEY.public_key}
    assert follower.projection.voided == 0  # the projection verified and applied them all


def test_a_writer_whose_key_is_not_in_the_ring_refuses_and_says_what_to_do(
    tmp_path: Path,
) -> None:
    made, follower, replies, _ = writer(tmp_path)
    home = home_partition("churn", PARTITIONS)
    asyncio.run(made.handle(home, 0, b"churn", command(0, "churn", CreateModel())))
    # Another instance, with its own key, takes the partition over (its API signs with it).
    other = SigningKey.generate()
    second = Writer(
        follower,  # type: ignore[arg-type]
        made.producer,
        replies,  # type: ignore[arg-type]
        made.letters,
        other,
        clock=lambda: NOW_S,
    )
    body = MakeCommit("a" * 64, "one")
    asyncio.run(second.handle(home, 1, b"churn", command(1, "churn", body)))
    # And its own API's command (signed with the key the ring lacks): the same answer,
    # not "unauthenticated": the sender is genuine, the ring is what needs fixing.
    asyncio.run(second.handle(home, 2, b"churn", command(2, "churn", body, signer=other)))
    for _, _, answer in replies.answers[-2:]:
        assert answer.body["error"] == UNTRUSTED_WRITER and status_of(answer.body) == 503
        assert "MODELVC_WRITER_KEY=" in answer.body["message"]
    assert made.letters.letters == []  # type: ignore[attr-defined]  # nothing dead-lettered
    assert follower.projection.models["churn"].seq == 1  # nothing written


def test_a_ring_command_goes_to_its_partition_and_needs_admin(tmp_path: Path) -> None:
    made, follower, replies, _ = writer(tmp_path)
    home = home_partition("churn", PARTITIONS)
    other = SigningKey.generate()
    add = AddWriterKey(other.public_key, "second instance")

    async def run() -> None:
        await made.handle(home, 0, b"churn", command(0, "churn", CreateModel()))
        await made.handle(home, 1, b"k", command(1, keys_stream(home), add))  # committer
        await made.handle(home, 2, b"k", command(2, keys_stream(home), add, role="admin"))

    asyncio.run(run())
    bodies = [answer.body for _, _, answer in replies.answers]
    assert bodies[1]["error"] == "forbidden" and bodies[1]["needed"] == "admin"
    assert bodies[2]["event"] == "WriterKeyAdded" and bodies[2]["model"] == keys_stream(home)
    assert set(follower.projection.rings[home].active) == {KEY.key_id, other.key_id}


def test_a_signed_command_too_old_or_from_the_future_is_refused_before_deciding(
    tmp_path: Path,
) -> None:
    made, follower, replies, letters = writer(tmp_path)
    home = home_partition("churn", PARTITIONS)
    window_ms = int((made.settings.command_timeout_s + 30) * 1000)

    def at(i: int, at_ms: int) -> bytes:
        plain = Command(f"c{i}", "churn", "t", at_ms, CreateModel(), role="committer")
        signed = sign_command(KEY, plain)
        return encode_command(signed, "me", f"r{i}")

    async def run() -> None:
        await made.handle(home, 0, b"churn", at(0, NOW_MS - window_ms - 1))  # replayed later
        await made.handle(home, 1, b"churn", at(1, NOW_MS + 30_001))
        await made.handle(home, 2, b"churn", at(2, NOW_MS - window_ms + 1000))  # just in time

    asyncio.run(run())
    bodies = [answer.body for _, _, answer in replies.answers]
    assert bodies[0]["error"] == "invalid" and "too old" in bodies[0]["message"]
    assert "send it again" in bodies[0]["message"]
    assert bodies[1]["error"] == "invalid" and "in the future" in bodies[1]["message"]
    assert bodies[2].get("event") == "ModelCreated", bodies[2]
    assert follower.projection.models["churn"].seq == 1 and letters.letters == []
    # Nothing was written for the refused ones, not even the ring's first key.
    assert [e.model for _, e in sent_events(made)] == [keys_stream(home), "churn"]


def test_the_startup_introduction_starts_an_empty_ring_and_is_a_quiet_repeat_after(
    tmp_path: Path,
) -> None:
    made, follower, replies, letters = writer(tmp_path)
    home = home_partition("churn", PARTITIONS)
    elsewhere = next(f"m{i}" for i in range(100) if home_partition(f"m{i}", PARTITIONS) != home)
    other = home_partition(elsewhere, PARTITIONS)

    def introduction(i: int, partition: int) -> bytes:
        signed = sign_command(KEY, introduce_key(KEY, partition, NOW_MS + i))
        return encode_command(signed, "me", f"r{i}")

    async def run() -> None:
        await made.handle(home, 0, b"k", introduction(0, home))
        await made.handle(home, 1, b"k", introduction(1, home))  # another start
        # A ring a command started first (the fallback): the introduction changes nothing.
        await made.handle(other, 0, elsewhere.encode(), command(2, elsewhere, CreateModel()))
        await made.handle(other, 1, b"k", introduction(3, other))

    asyncio.run(run())
    bodies = [answer.body for _, _, answer in replies.answers]
    assert all(answer.ok for _, _, answer in replies.answers), bodies
    assert [(p, e.model) for p, e in sent_events(made)] == [
        (home, keys_stream(home)),
        (other, keys_stream(other)),
        (other, elsewhere),
    ]
    for partition in (home, other):
        assert dict(follower.projection.rings[partition].active) == {KEY.key_id: KEY.public_key}
    assert letters.letters == []
