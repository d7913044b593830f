"""The single writer of an events partition: decide, append, wait until applied, answer.

Runs in the Faust agent that owns commands partition N, and appends to events
partition N: a model lives on one partition, so each model has one writer.

Anyone who can write to the commands topic can put a command there, so the
writer decides only commands an API instance signed (with a key of the
partition's writer-key ring), authorizes them against ``~security`` by the role
the API authenticated, and signs every event it appends with its own key, which
it first introduces into the partition's ring when the ring is empty (trust on
first use; readers pin it with ``MODELVC_TRUSTED_WRITER_KEYS``). Every instance
asks for that at startup (:func:`introduce_key`, sent to each partition), so the
rings exist before the first command; deciding a command does it too, as a fallback.

A signed command is decided only while its signed time is recent: one captured
from the commands topic cannot be replayed later, when the state would allow it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from streams.codec import decode_command, encode_event
from streams.core.commands import AddWriterKey, Command
from streams.core.decide import decide_on
from streams.core.errors import (
    CommandIdReused,
    InvalidCommand,
    Unauthenticated,
    VersionGraphError,
    WriteRaced,
)
from streams.core.events import ModelEvent
from streams.core.security import WRITER_ACTOR, SecurityState, authorize
from streams.core.signatures import KeyRing, keys_stream
from streams.core.state import ModelState
from streams.errors import UndecodableMessage
from streams.service.answers import Answer, receipt_body, refused
from streams.service.follower import Follower
from streams.service.letters import DeadLetters
from streams.service.producer import Producer
from streams.service.replies import Replies
from streams.signing import SigningKey, command_verifies, sign_event
from streams.topics import misplaced

log = logging.getLogger("modelvc.streams")


UNTRUSTED_WRITER = "untrusted_writer"  # the answer's code: this instance's key is not in the ring

Chain = ModelState | SecurityState | KeyRing
# How far a signed command's time may be from the writer's clock: behind by the time a
# submission waits plus this (clocks of instances differ a little), ahead by this.
CLOCK_SKEW_S = 30.0


def introduce_key(signer: SigningKey, partition: int, at_ms: int) -> Command:
    """The command that puts ``signer``'s key into ``partition``'s empty ring.

    Its id and body depend only on the key and the partition, so every instance
    sharing the key, at every start, sends the same command: a repeat, never twice.
    """
    return Command(
        f"writer-key-{signer.key_id[:32]}-{partition}",
        keys_stream(partition),
        WRITER_ACTOR,
        at_ms,
        AddWriterKey(signer.public_key, "the streams instances' writer key"),
        role="admin",
    )


def asks_to_introduce(signer: SigningKey, partition: int, command: Command) -> bool:
    """Whether ``command`` is :func:`introduce_key`'s for ``signer`` on ``partition``."""
    return replace(command, key_id="", signature=b"") == introduce_key(
        signer, partition, command.at
    )


def untrusted_writer(signer: SigningKey, partition: int) -> Answer:
    """This instance's key is not in ``partition``'s ring (whose keys someone else added)."""
    return Answer(
        {
            "error": UNTRUSTED_WRITER,
            "message": f"this instance's writer key {signer.key_id[:16]} is not in the "
            f"writer-key ring of events partition {partition}, so it may not write there: "
            "give this instance the deployment's writer key (MODELVC_WRITER_KEY=<path of the "
            "key the other instances use>), or retire/add keys from an instance whose key "
            "the ring holds",
            "key_id": signer.key_id,
            "partition": partition,
        }
    )


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
        signer: SigningKey,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.follower = follower
        self.settings = follower.settings
        self.projection = follower.projection
        self.producer = producer
        self.replies = replies
        self.letters = letters
        self.signer = signer  # signs every event this writer appends
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
            await self._catch_up(partition)
            unsigned = self._unsigned(partition, command)
            if self._ours_but_untrusted(partition, command):
                # An instance sharing our key sent it: the ring is the problem, not the sender.
                answer = untrusted_writer(self.signer, partition)
            elif unsigned is not None:
                # Not from an API instance: keep it for whoever investigates, decide nothing.
                await self.letters.send(topic, partition, offset, key, value, unsigned, "auth")
                answer = refused(Unauthenticated(unsigned, command_id=command.command_id))
            elif (stale := self._stale(command)) is not None:
                answer = refused(InvalidCommand(stale, command_id=command.command_id))
            else:
                answer = await self._decide_and_append(partition, command)
        except Exception as exc:  # never let one command stop the agent
            log.exception("command %s failed", command.command_id)
            answer = Answer({"error": "internal", "message": f"{type(exc).__name__}: {exc}"})
        await self.replies.answer(command.command_id, reply_to, answer)

    async def _catch_up(self, partition: int) -> None:
        if partition not in self._fresh:
            end = await self.follower.caught_up(partition)
            log.info("events partition %d: caught up to offset %d before deciding", partition, end)
            self._fresh.add(partition)

    def _unsigned(self, partition: int, command: Command) -> str | None:
        """Why ``command`` is not signed by a key this partition trusts (None: it is).

        The ring's active keys once it has any; before that, this writer's own key
        (the one it is about to introduce): an API instance signs with its key.
        """
        ring = self.projection.rings.get(partition)
        own = {self.signer.key_id: self.signer.public_key}
        keys = ring.active if ring is not None and ring.signed else own
        if command_verifies(keys.get(command.key_id), command):
            return None
        if not command.signature:
            what = "unsigned"
        elif command.key_id in keys:
            what = f"badly signed (key {command.key_id[:16]})"
        else:
            what = f"signed by a key this partition does not trust ({command.key_id[:16]!r})"
        return (
            f"command {command.command_id[:64]!r} is {what}: events partition {partition} takes "
            "commands signed by an API instance whose writer key is in its ring; send it "
            "through the HTTP API with a token (see `modelvc whoami`)"
        )

    def _ours_but_untrusted(self, partition: int, command: Command) -> bool:
        """Whether ``command`` carries this instance's key's signature on a partition whose
        (non-empty) ring does not hold that key."""
        ring = self.projection.rings.get(partition)
        return (
            ring is not None
            and ring.signed
            and self.signer.key_id not in ring.active
            and command.key_id == self.signer.key_id
            and command_verifies(self.signer.public_key, command)
        )

    def _stale(self, command: Command) -> str | None:
        """Why ``command``'s signed time is too far from now to decide it (None: it is not).

        Checked before the writer replaces that time with its own: the signature covers
        it, so a captured command cannot be given a fresh one.
        """
        now = int(self.clock() * 1000)
        oldest = now - int((self.settings.command_timeout_s + CLOCK_SKEW_S) * 1000)
        if command.at < oldest:
            return (
                f"the command {command.command_id[:64]!r} is too old (signed "
                f"{(now - command.at) / 1000:.0f}s ago, more than the "
                f"{self.settings.command_timeout_s + CLOCK_SKEW_S:.0f}s a command may wait): "
                "send it again"
            )
        if command.at > now + int(CLOCK_SKEW_S * 1000):
            return (
                f"the command {command.command_id[:64]!r} is signed "
                f"{(command.at - now) / 1000:.0f}s in the future: the clocks of the API "
                "instance and of this writer disagree; fix the API instance's clock (NTP) "
                "and send it again"
            )
        return None

    async def _own_key_in_ring(self, partition: int) -> Answer | None:
        """Make sure this writer's key is in the partition's ring; an answer if it cannot be."""
        ring = self.projection.rings.get(partition)
        if ring is None or not ring.signed:
            # Trust on first use: the ring's first event is our own key, self-signed.
            introduce = introduce_key(self.signer, partition, int(self.clock() * 1000))
            events = decide_on(self.projection.fold, partition, introduce, self.signer.key_id)
            if events:
                await self._append(partition, introduce.model, events)
                log.info(
                    "events partition %d: signing begins with writer key %s",
                    partition,
                    self.signer.key_id[:16],
                )
            ring = self.projection.rings.get(partition)
        if ring is not None and self.signer.key_id in ring.active:
            return None
        return untrusted_writer(self.signer, partition)

    async def _append(self, partition: int, model: str, events: Sequence[ModelEvent]) -> int:
        """Sign and append ``events``; returns the last one's offset once the fold applied it.

        A decision of several events (a rollout's last step and the alias move it makes)
        goes out as one record batch, which the broker appends whole or not at all: a
        crash between two separate sends would leave the rollout completed and the alias
        where it was.
        """
        client = self.producer.client
        topic = self.settings.events_topic
        key = model.encode()
        values = [encode_event(sign_event(self.signer, event)) for event in events]
        if len(values) == 1:
            metadata = await client.send_and_wait(
                topic, key=key, value=values[0], partition=partition
            )
            last = int(metadata.offset)
        else:
            batch = client.create_batch()
            for value in values:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"{len(values)} events of one decision exceed a record batch")
            batch.close()
            first = await (await client.send_batch(batch, topic, partition=partition))
            last = int(first.offset) + len(values) - 1
        await self.follower.wait_applied(partition, last)
        return last

    async def _decide_and_append(self, partition: int, command: Command) -> Answer:
        cannot_write = await self._own_key_in_ring(partition)
        if cannot_write is not None:
            return cannot_write
        if asks_to_introduce(self.signer, partition, command):
            # An instance's startup asking for what is now true: done, whoever did it.
            return Answer(
                {
                    "model": command.model,
                    "command_id": command.command_id,
                    "partition": partition,
                    "key_id": self.signer.key_id,
                    "repeated": True,
                }
            )
        state = self.projection.fold.chain(command.model, partition)
        model = state if isinstance(state, ModelState) else None
        # The writer stamps the time, whatever the command carries (anyone may write to
        # the commands topic), and never before the model's last event: `as_of` cuts
        # a model's history by time, so its times must not go backwards.
        now = int(self.clock() * 1000)
        command = replace(command, at=now if model is None else max(now, last_event_at(model)))
        try:
            authorize(self.projection.security, model, command)
            events = decide_on(self.projection.fold, partition, command, self.signer.key_id)
        except VersionGraphError as exc:
            return self._refusal(partition, state, command, exc)
        if not events:
            assert state is not None
            receipt = state.receipts[command.command_id]
            # A repeat answers with the first answer: the event's own offset when known.
            offset = self.projection.event_offset(command.model, receipt.seq)
            if offset is None:
                offset = self.projection.next_offsets.get(partition, 1) - 1
            body = receipt_body(command.model, receipt, command.command_id, partition, offset, True)
            return Answer(body)
        last = await self._append(partition, command.model, events)
        state = self.projection.fold.chain(command.model, partition)
        applied = None if state is None else state.receipts.get(command.command_id)
        if applied is not None and applied.digest != events[-1].command_digest:
            # Another writer appended another request under this key first; decide
            # on the new state refuses ours and names that request's event.
            try:
                decide_on(self.projection.fold, partition, command, self.signer.key_id)
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
        body = receipt_body(command.model, applied, command.command_id, partition, last, False)
        return Answer(body)

    def _refusal(
        self, partition: int, state: Chain | None, command: Command, exc: VersionGraphError
    ) -> Answer:
        receipt = None if state is None else state.receipts.get(command.command_id)
        if isinstance(exc, CommandIdReused) and receipt is not None:
            # Name the first request's event by its place in the log too, so it can be read.
            offset = self.projection.event_offset(command.model, receipt.seq)
            if offset is not None:
                return refused(exc, partition=partition, offset=offset)
        return refused(exc)
