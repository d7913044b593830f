"""The single writer of an events partition: decide, append, wait until applied, answer.

Runs in the Faust agent that owns commands partition N, and appends to events
partition N: a model lives on one partition, so each model has one writer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from streams.codec import decode_command, encode_event
from streams.core import decide
from streams.core.commands import Command
from streams.core.errors import CommandIdReused, VersionGraphError, WriteRaced
from streams.core.state import ModelState
from streams.errors import UndecodableMessage
from streams.service.answers import Answer, receipt_body, refused
from streams.service.follower import Follower
from streams.service.letters import DeadLetters
from streams.service.producer import Producer
from streams.service.replies import Replies
from streams.topics import misplaced

log = logging.getLogger("modelvc.streams")


def last_event_at(state: ModelState) -> int:
    """When ``state``'s model last changed: every event after creation moves a ref."""
    return state.reflog.entry.at if state.reflog is not None else state.created_at


class Writer:
    def __init__(
        self,
        follower: Follower,
        producer: Producer,
        replies: Replies,
        letters: DeadLetters,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.follower = follower
        self.settings = follower.settings
        self.projection = follower.projection
        self.producer = producer
        self.replies = replies
        self.letters = letters
        self.clock = clock  # the single writer's: every event's time comes from here
        # Partitions this instance has caught up on since it last owned them: deciding
        # there needs no fresh check until a rebalance may have let another writer in.
        self._fresh: set[int] = set()

    def on_partitions_revoked(self) -> None:
        # A partition we get back later may have been written by someone else meanwhile.
        if self._fresh:
            log.info(
                "partitions revoked: re-checking %s before deciding there", sorted(self._fresh)
            )
        self._fresh.clear()

    async def handle(self, partition: int, offset: int, key: bytes | None, value: bytes) -> None:
        """Decide one command from the commands partition this instance owns."""
        topic = self.settings.commands_topic
        await self.follower.ready.wait()
        try:
            command, reply_to = decode_command(value)
        except UndecodableMessage as exc:
            await self.letters.send(topic, partition, offset, key, value, str(exc), "decode")
            return
        except Exception as exc:  # a decoder bug must not stop the agent either
            log.exception("decoding the command at %s@%s failed", partition, offset)
            await self.letters.send(topic, partition, offset, key, value, repr(exc), "decode")
            return
        problem = misplaced(command.model, partition, self.follower.partitions)
        if problem is not None:
            # Deciding it here would make a second writer of that model: refuse, keep, tell.
            await self.letters.send(topic, partition, offset, key, value, problem, "route")
            body = {"error": "misrouted", "message": problem, "model": command.model}
            await self.replies.answer(command.command_id, reply_to, Answer(body))
            return
        try:
            answer = await self._decide_and_append(partition, command)
        except Exception as exc:  # never let one command stop the agent
            log.exception("command %s failed", command.command_id)
            answer = Answer({"error": "internal", "message": f"{type(exc).__name__}: {exc}"})
        await self.replies.answer(command.command_id, reply_to, answer)

    async def _decide_and_append(self, partition: int, command: Command) -> Answer:
        if partition not in self._fresh:
            end = await self.follower.caught_up(partition)
            log.info("events partition %d: caught up to offset %d before deciding", partition, end)
            self._fresh.add(partition)
        state = self.projection.models.get(command.model)
        # The writer stamps the time, whatever the command carries (anyone may write to
        # the commands topic), and never before the model's last event: `as_of` cuts
        # a model's history by time, so its times must not go backwards.
        now = int(self.clock() * 1000)
        command = replace(command, at=now if state is None else max(now, last_event_at(state)))
        try:
            events = decide(state, command)
        except VersionGraphError as exc:
            return self._refusal(partition, state, command, exc)
        if not events:
            assert state is not None
            receipt = state.receipts[command.command_id]
            # A repeat answers with the first answer: the event's own offset when known.
            offset = self.projection.event_offset(command.model, receipt.seq)
            if offset is None:
                offset = self.projection.next_offsets.get(partition, 1) - 1
            return Answer(receipt_body(state, receipt, command.command_id, partition, offset, True))
        metadata = None
        for event in events:
            metadata = await self.producer.client.send_and_wait(
                self.settings.events_topic,
                key=command.model.encode(),
                value=encode_event(event),
                partition=partition,
            )
        assert metadata is not None
        await self.follower.wait_applied(partition, metadata.offset)
        state = self.projection.models[command.model]
        applied = state.receipts.get(command.command_id)
        if applied is not None and applied.digest != events[-1].command_digest:
            # Another writer appended another request under this key first; decide
            # on the new state refuses ours and names that request's event.
            try:
                decide(state, command)
            except VersionGraphError as exc:
                return self._refusal(partition, state, command, exc)
        if applied is None:
            self._fresh.discard(partition)
            return refused(
                WriteRaced(
                    "another writer appended to this model first, so this command had no "
                    "effect; retry it",
                    model=command.model,
                )
            )
        body = receipt_body(state, applied, command.command_id, partition, metadata.offset, False)
        return Answer(body)

    def _refusal(
        self, partition: int, state: ModelState | None, command: Command, exc: VersionGraphError
    ) -> Answer:
        receipt = None if state is None else state.receipts.get(command.command_id)
        if isinstance(exc, CommandIdReused) and receipt is not None:
            # Name the first request's event by its place in the log too, so it can be read.
            offset = self.projection.event_offset(command.model, receipt.seq)
            if offset is not None:
                return refused(exc, partition=partition, offset=offset)
        return refused(exc)
