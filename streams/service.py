"""The imperative shell around the core: follow the log, decide commands, answer.

* ``follow_events`` reads every partition of ``modelvc.events`` (no consumer
  group: every instance keeps the whole read model) and folds it into the
  RocksDB projection.
* ``handle_command`` runs in the Faust agent that owns a commands partition,
  the single writer of the same events partition: decide against the folded
  state, append the event, wait until the fold has applied it, answer.
* ``submit`` is what the HTTP API calls: send the command, await its reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams import deadletter
from streams.artifacts import ArtifactStore
from streams.codec import (
    REPLIES,
    ReplyTo,
    decode_command,
    encode_command,
    encode_event,
)
from streams.core import decide
from streams.core.commands import Command
from streams.core.errors import CommandIdReused, VersionGraphError, WriteRaced
from streams.core.state import ModelState, Receipt
from streams.errors import UndecodableMessage
from streams.follow import assigned_consumer
from streams.projection import Projection
from streams.settings import Settings
from streams.topics import misplaced

log = logging.getLogger("modelvc.streams")


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


def receipt_body(
    state: ModelState,
    receipt: Receipt,
    command_id: str,
    partition: int,
    offset: int,
    repeated: bool,
) -> dict[str, Any]:
    return {
        "model": state.name,
        "command_id": command_id,
        "event": receipt.event,
        "seq": receipt.seq,
        "ref": receipt.ref,
        "head": receipt.head,
        "partition": partition,
        "offset": offset,
        "repeated": repeated,
    }


class VersionService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.projection = Projection(settings.rocksdb_path)
        self.store = ArtifactStore(settings.artifact_root)
        self.ready = asyncio.Event()
        self.rounds = 0
        self.highwater: dict[int, int] = {}
        self.dead_letters = 0
        self.partitions = settings.partitions  # the topics' real count, once following
        self.dead_letter_failures = 0  # letters that could only be sent minimal, or not at all
        self._progress = asyncio.Condition()
        self._pending: dict[str, asyncio.Future[Answer]] = {}
        self._fresh: set[int] = set()
        self._producer: AIOKafkaProducer | None = None

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap,
            acks="all",
            linger_ms=0,
            client_id=f"{self.settings.instance_id}-producer",
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
        self.projection.close()

    @property
    def producer(self) -> AIOKafkaProducer:
        assert self._producer is not None, "VersionService.start() was not awaited"
        return self._producer

    def on_partitions_revoked(self) -> None:
        # A partition we get back later may have been written by someone else meanwhile.
        self._fresh.clear()

    # -- the follower ---------------------------------------------------------
    async def follow_events(self) -> None:
        topic = self.settings.events_topic
        consumer, tps = await assigned_consumer(
            self.settings.bootstrap,
            topic,
            self.projection.next_offsets,
            self.settings.fetch_wait_ms,
            f"{self.settings.instance_id}-follower",
        )
        self.partitions = len(tps)
        try:
            self.ready.set()
            log.info("following %s from %s", topic, self.projection.next_offsets)
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                for tp, messages in batches.items():
                    applied = self.projection.apply(
                        tp.partition, [(m.offset, m.value) for m in messages], len(tps)
                    )
                    for item, message in zip(applied, messages, strict=True):
                        if item.undecodable is not None:
                            await self.dead_letter(
                                topic,
                                tp.partition,
                                message.offset,
                                message.key,
                                message.value,
                                item.undecodable,
                                "fold",
                            )
                        elif item.void_reason is not None:
                            log.warning(
                                "void event %s#%s at %s:%s: %s",
                                item.event and item.event.model,
                                item.event and item.event.seq,
                                tp.partition,
                                message.offset,
                                item.void_reason,
                            )
                for tp in tps:
                    hw = consumer.highwater(tp)
                    if hw is not None:
                        self.highwater[tp.partition] = hw
                self.rounds += 1
                async with self._progress:
                    self._progress.notify_all()
        finally:
            await consumer.stop()

    async def _wait_until(self, predicate: Any, timeout: float) -> None:
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(predicate), timeout)

    async def wait_applied(self, partition: int, offset: int, timeout: float | None = None) -> None:
        """Return once the fold has applied ``offset`` of events ``partition``."""
        await self._wait_until(
            lambda: self.projection.next_offsets.get(partition, 0) > offset,
            self.settings.command_timeout_s if timeout is None else timeout,
        )

    async def caught_up(self, partition: int) -> None:
        """Return once the fold has applied everything the broker had when we asked."""
        await self.ready.wait()
        start = self.rounds
        await self._wait_until(lambda: self.rounds >= start + 2, self.settings.command_timeout_s)
        end = self.highwater.get(partition, 0)
        if end > 0:
            await self.wait_applied(partition, end - 1)

    # -- the single writer ------------------------------------------------------
    async def handle_command(
        self, partition: int, offset: int, key: bytes | None, value: bytes
    ) -> None:
        """Decide one command from the commands partition this instance owns."""
        await self.ready.wait()
        try:
            command, reply_to = decode_command(value)
        except UndecodableMessage as exc:
            await self.dead_letter(
                self.settings.commands_topic, partition, offset, key, value, str(exc), "decode"
            )
            return
        except Exception as exc:  # a decoder bug must not stop the agent either
            log.exception("decoding the command at %s@%s failed", partition, offset)
            await self.dead_letter(
                self.settings.commands_topic, partition, offset, key, value, repr(exc), "decode"
            )
            return
        problem = misplaced(command.model, partition, self.partitions)
        if problem is not None:
            # Deciding it here would make a second writer of that model: refuse, keep, tell.
            await self.dead_letter(
                self.settings.commands_topic, partition, offset, key, value, problem, "route"
            )
            await self._reply(
                command.command_id,
                reply_to,
                Answer(422, {"error": "misrouted", "message": problem, "model": command.model}),
            )
            return
        try:
            answer = await self._decide_and_append(partition, command)
        except Exception as exc:  # never let one command stop the agent
            log.exception("command %s failed", command.command_id)
            answer = Answer(500, {"error": "internal", "message": f"{type(exc).__name__}: {exc}"})
        await self._reply(command.command_id, reply_to, answer)

    async def _decide_and_append(self, partition: int, command: Command) -> Answer:
        if partition not in self._fresh:
            await self.caught_up(partition)
            self._fresh.add(partition)
        models = self.projection.fold.models
        state = models.get(command.model)
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
            return Answer(
                200, receipt_body(state, receipt, command.command_id, partition, offset, True)
            )
        metadata = None
        for event in events:
            metadata = await self.producer.send_and_wait(
                self.settings.events_topic,
                key=command.model.encode(),
                value=encode_event(event),
                partition=partition,
            )
        assert metadata is not None
        await self.wait_applied(partition, metadata.offset)
        state = models[command.model]
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
            error = WriteRaced(
                "another writer appended to this model first, so this command had no effect; "
                "retry it",
                model=command.model,
            )
            return Answer(error.status, error.to_dict())
        body = receipt_body(state, applied, command.command_id, partition, metadata.offset, False)
        return Answer(201, body)

    def _refusal(
        self, partition: int, state: ModelState | None, command: Command, exc: VersionGraphError
    ) -> Answer:
        body = exc.to_dict()
        receipt = None if state is None else state.receipts.get(command.command_id)
        if isinstance(exc, CommandIdReused) and receipt is not None:
            # Name the first request's event by its place in the log too, so it can be read.
            offset = self.projection.event_offset(command.model, receipt.seq)
            if offset is not None:
                body.update(partition=partition, offset=offset)
        return Answer(exc.status, body)

    async def _reply(self, command_id: str, reply_to: ReplyTo, answer: Answer) -> None:
        """Hand the answer to the submission waiting for it, here or on another instance.

        Routed by the submission's request id, never by ``command_id``: one command
        id may be in flight for two models at once. A command from an older writer
        has an empty request id; its reply still carries ``command_id`` for it.
        """
        if reply_to.instance == self.settings.instance_id:
            future = self._pending.get(reply_to.request_id)
            if future is not None and not future.done():
                future.set_result(answer)
            return
        if reply_to.instance:
            await self.producer.send_and_wait(
                self.settings.replies_topic,
                key=reply_to.instance.encode(),
                value=REPLIES.encode(
                    {
                        "command_id": command_id,
                        "request_id": reply_to.request_id,
                        "status": answer.status,
                        "body": json.dumps(answer.body),
                    }
                ),
            )

    async def follow_replies(self) -> None:
        """Answers for commands this instance submitted but another instance decided."""
        consumer = AIOKafkaConsumer(
            self.settings.replies_topic,
            bootstrap_servers=self.settings.bootstrap,
            group_id=None,
            auto_offset_reset="latest",
            fetch_max_wait_ms=self.settings.fetch_wait_ms,
            client_id=f"{self.settings.instance_id}-replies",
        )
        await consumer.start()
        try:
            async for message in consumer:
                # Garbage is dead-lettered by every instance that reads it, whoever it names:
                # it may name no live instance. The letters' coordinates show they are one.
                try:
                    record = REPLIES.decode(message.value)
                    body = json.loads(record["body"])
                    if not isinstance(body, dict):
                        raise ValueError(f"body is JSON {type(body).__name__}, not an object")
                except (UndecodableMessage, ValueError, RecursionError) as exc:
                    await self.dead_letter(
                        self.settings.replies_topic,
                        message.partition,
                        message.offset,
                        message.key,
                        message.value,
                        f"undecodable reply: {exc}",
                        "reply",
                    )
                    continue
                if message.key != self.settings.instance_id.encode():
                    continue  # another instance's answer
                future = self._pending.get(record["request_id"])
                if future is not None and not future.done():
                    future.set_result(Answer(record["status"], body))
        finally:
            await consumer.stop()

    # -- submitting (HTTP side) ---------------------------------------------
    async def submit(self, command: Command) -> Answer:
        await self.ready.wait()
        # Fresh for this submission: the reply finds it by this id (see _reply).
        request_id = uuid.uuid4().hex
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self.producer.send_and_wait(
                self.settings.commands_topic,
                key=command.model.encode(),
                value=encode_command(
                    command, reply_to=self.settings.instance_id, request_id=request_id
                ),
            )
            answer = await asyncio.wait_for(future, self.settings.command_timeout_s)
        except TimeoutError:
            return Answer(
                504,
                {
                    "error": "timeout",
                    "message": f"command {command.command_id} got no answer in "
                    f"{self.settings.command_timeout_s:.0f}s; it may still be applied. Send it "
                    "again unchanged, with the same command id: a repeat never applies twice",
                    "command_id": command.command_id,
                },
            )
        finally:
            self._pending.pop(request_id, None)
        if answer.status < 300 and "offset" in answer.body:
            # Read-your-writes on this instance even when another one decided it.
            await self.wait_applied(answer.body["partition"], answer.body["offset"])
        return answer

    async def dead_letter(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        reason: str,
        stage: str,
    ) -> None:
        """Send a bounded dead letter; never raises (a failure is logged and counted)."""
        self.dead_letters += 1
        letter = deadletter.record(topic, partition, offset, key, value, reason, stage)
        log.warning("dead letter %s", deadletter.describe(letter))
        outcome = await deadletter.send(self.producer, self.settings.dead_letter_topic, letter)
        if outcome is not deadletter.Outcome.SENT:
            self.dead_letter_failures += 1
