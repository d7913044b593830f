"""Submitting commands and routing their answers back to the submission that waits.

A command is decided by whichever instance owns its commands partition; its
answer goes straight to the waiting submission when that is this instance,
else through the replies topic, keyed by the submitting instance.

The reply record has a ``status`` field (its schema is released, so it
stays): the writer fills it from the HTTP edge's table (``streams.statuses``)
so an older instance reading it still answers with the right status. A reader
chooses the status from the body's code itself, and uses the record's
``status`` only for a code it does not know.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

from aiokafka import AIOKafkaConsumer

from streams.codec import REPLIES, ReplyTo, encode_command
from streams.core.commands import Command
from streams.core.signatures import keys_partition
from streams.errors import UndecodableMessage
from streams.service.answers import Answer
from streams.service.follower import Follower
from streams.service.letters import DeadLetters
from streams.service.producer import Producer
from streams.statuses import status_of

log = logging.getLogger("modelvc.streams")


class Replies:
    def __init__(self, follower: Follower, producer: Producer, letters: DeadLetters) -> None:
        self.follower = follower
        self.settings = follower.settings
        self.producer = producer
        self.letters = letters
        self._pending: dict[str, asyncio.Future[Answer]] = {}

    async def submit(self, command: Command) -> Answer:
        """Send ``command`` and wait for its answer (read-your-writes on this instance)."""
        await self.follower.ready.wait()
        # Fresh for this submission: the reply finds it by this id (see answer()).
        request_id = uuid.uuid4().hex
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self.producer.client.send_and_wait(
                self.settings.commands_topic,
                key=command.model.encode(),
                value=encode_command(
                    command, reply_to=self.settings.instance_id, request_id=request_id
                ),
                # A ring's command goes to the writer of its own partition, which the
                # default partitioner (a hash of the key) would not pick.
                partition=keys_partition(command.model),
            )
            answer = await asyncio.wait_for(future, self.settings.command_timeout_s)
        except TimeoutError:
            return Answer(
                {
                    "error": "timeout",
                    "message": f"command {command.command_id} got no answer in "
                    f"{self.settings.command_timeout_s:.0f}s; it may still be applied. Send it "
                    "again unchanged, with the same command id: a repeat never applies twice",
                    "command_id": command.command_id,
                }
            )
        finally:
            self._pending.pop(request_id, None)
        if answer.ok and "offset" in answer.body:
            # Read-your-writes on this instance even when another one decided it.
            await self.follower.wait_applied(answer.body["partition"], answer.body["offset"])
        return answer

    def _settle(self, request_id: str, answer: Answer) -> None:
        future = self._pending.get(request_id)
        if future is not None and not future.done():
            future.set_result(answer)

    async def answer(self, command_id: str, reply_to: ReplyTo, answer: Answer) -> None:
        """Hand the answer to the submission waiting for it, here or on another instance.

        Routed by the submission's request id, never by ``command_id``: one command
        id may be in flight for two models at once. A command from an older writer
        has an empty request id; its reply still carries ``command_id`` for it.
        """
        if reply_to.instance == self.settings.instance_id:
            self._settle(reply_to.request_id, answer)
            return
        if reply_to.instance:
            await self.producer.client.send_and_wait(
                self.settings.replies_topic,
                key=reply_to.instance.encode(),
                value=REPLIES.encode(
                    {
                        "command_id": command_id,
                        "request_id": reply_to.request_id,
                        "status": status_of(answer.body),
                        "body": json.dumps(answer.body),
                    }
                ),
            )

    async def run(self) -> None:
        """Answers for commands this instance submitted but another instance decided."""
        await self.follower.ready.wait()
        consumer = AIOKafkaConsumer(
            self.settings.replies_topic,
            **self.settings.access.consumer(
                group_id=None,
                auto_offset_reset="latest",
                fetch_max_wait_ms=self.settings.fetch_wait_ms,
                client_id=f"{self.settings.instance_id}-replies",
            ),
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
                    await self.letters.send(
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
                self._settle(record["request_id"], Answer(body, wire_status=record["status"]))
        finally:
            await consumer.stop()
