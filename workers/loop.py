"""The worker loop: batch consume, group by (model, ref), predict, batch produce.

The delivery is negotiated once at startup (``streams.kafka_access.negotiate``),
logged, and shown in ``/healthz`` and ``modelvc_delivery_info``.

**exactly-once** (a broker with transactions: Apache Kafka). Each batch is
read, scored and written in one Kafka transaction: ``begin_transaction``, the
batch's predictions *and* dead letters, ``send_offsets_to_transaction`` with the
batch's next offsets for the workers' group, ``commit_transaction``; there is
no ``consumer.commit``. A ``read_committed`` reader of predictions and dead
letters sees a batch's output exactly when its offsets are committed: a crash
anywhere before the commit leaves an open transaction whose records are never
visible, and the batch is scored again from the committed offsets.

- Zombies of this worker: the transactional id is ``{group_id}-{worker_id}``,
  the same across restarts, so a restarted worker's producer fences its
  previous incarnation (``InitProducerId`` bumps the epoch and aborts the open
  transaction) before its consumer joins the group.
- Rebalances: aiokafka 0.14 sends ``TxnOffsetCommit`` v0, without the group
  generation and member id of KIP-447, and ``OffsetFetch`` v3, without
  ``require_stable``, so the broker cannot fence a transaction by generation.
  The worker makes the handover safe itself (:class:`Handover`): a revoke
  marks every batch fetched before it stale; a stale batch is dropped before
  its transaction begins, and aborted instead of committed if the revoke came
  during it; the revoke does not complete (the worker does not rejoin) until
  no transaction is open and the offsets it committed are what the group
  coordinator answers, so the partitions' next owner starts after them. It
  waits at most the rebalance timeout (the group would evict it then anyway),
  and says so in a warning if it gave up.
- Errors: a failed transaction is aborted, the consumer is put back to the
  batch's first offsets and the batch is scored again. A producer that cannot
  abort (fenced by a newer producer with its id, or its transaction timed out
  by the coordinator) is replaced after ``retry_s``; the worker never exits for it.

What is *not* guaranteed: a worker frozen (SIGSTOP, a stalled VM) for longer
than the group's session timeout with a transaction open, then thawed, may
commit that batch after its partitions' new owner has read the older offsets,
before its own heartbeat learns it was removed; the transaction timeout
(``TRANSACTION_TIMEOUT_MS``) bounds how long the window stays open. The
duplicate then carries the same prediction id and score (below), so a reader
can drop it.

**at-least-once** (Tansu: no idempotent producers, no transactions). Offsets
are committed only after every prediction and dead letter of the batch is
acknowledged (acks=all), so a crash repeats work but never loses it; a repeat
has the same prediction id (sha256 of the event id and the commit id) and score.

In both, no batch mixes versions, and dead letters are bounded (``streams.deadletter``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    IllegalOperation,
    TopicPartition,
)
from aiokafka.errors import CommitFailedError, KafkaError

from streams import deadletter
from streams.kafka_access import Delivery, negotiate
from streams.signing import public_path
from workers.metrics import Metrics
from workers.scorer import Incoming, Scored, Scorer
from workers.settings import WorkerSettings
from workers.versions import VersionTracker

log = logging.getLogger("modelvc.workers")


@dataclass(frozen=True)
class Fault:
    """Test-only fault hook, set by ``MODELVC_WORKER_FAULT``; never set it in production.

    ``crash_before_commit:N`` SIGKILLs this process in the Nth batch, in the one window
    where a crash must neither lose nor show work twice: at-least-once, after its
    predictions and dead letters are acknowledged and before its offsets are committed
    (the batch is scored again, same prediction ids and scores); exactly-once, after
    its sends are acknowledged and its offsets sent to the transaction, before
    ``commit_transaction`` (the open transaction is aborted when the restarted worker
    fences it, and no ``read_committed`` reader ever sees it).
    """

    crash_before_commit: int | None = None

    @classmethod
    def parse(cls, spec: str) -> Fault:
        if not spec:
            return cls()
        match = re.fullmatch(r"crash_before_commit:([1-9][0-9]{0,8})", spec)
        if match is None:
            raise ValueError(
                f"MODELVC_WORKER_FAULT={spec[:100]!r} is not a fault hook; it is for tests only: "
                "unset it, or set it to crash_before_commit:N with N >= 1"
            )
        return cls(crash_before_commit=int(match[1]))


# What each delivery promises a reader, said at startup and in /healthz.
DELIVERY_NOTES: dict[str, str] = {
    "exactly-once": "each batch's predictions, dead letters and offsets are committed in one "
    "Kafka transaction: a read_committed reader sees each feature event's outcome once",
    "at-least-once": "offsets are committed after acks: a crash or rebalance may score an event "
    "again, and the repeat keeps its prediction_id (sha256 of event id and commit id) and score",
    "auto": "not negotiated with the broker yet",
}
# A batch's transaction spans only its sends and the commit (scoring comes before it), so
# seconds are plenty; a dead worker's open transaction holds read_committed readers of the
# predictions back (the last stable offset) until the coordinator aborts it, so keep it short.
# Kafka Streams uses the same 10 s for exactly-once.
TRANSACTION_TIMEOUT_MS = 10_000
# How long a revoke waits for an open transaction to end and its offsets to be readable:
# the group waits this long (rebalance_timeout_ms) for a member to rejoin anyway.
REBALANCE_TIMEOUT_MS = 6_000
# Bounds on stopping or aborting with a producer whose broker does not answer.
PRODUCER_CLOSE_S = 10.0


class StaleBatch(Exception):
    """The batch's partitions were revoked while its transaction was open: abort, not commit."""


class Handover(ConsumerRebalanceListener):  # type: ignore[misc]
    """Exactly-once: no partition is handed over while a transaction on it may still commit."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker.hand_over(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("assigned %s", sorted(tp.partition for tp in assigned))


class Worker:
    """The loop over its collaborators; ``workers.bootstrap`` wires them."""

    def __init__(
        self, settings: WorkerSettings, tracker: VersionTracker, scorer: Scorer, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.fault = Fault.parse(settings.fault)
        self.batches = 0  # handled since start; the fault hook counts them
        self.metrics = metrics
        self.tracker = tracker
        self.scorer = scorer
        self.delivery: Delivery = settings.topics.delivery  # resolved by run()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._producer_config: dict[str, Any] = {}
        self._stopping = asyncio.Event()
        # Exactly-once handover: revokes seen so far, whether no transaction is open, and
        # the offsets this worker's transactions committed (checked readable at a revoke).
        self._revokes = 0
        self._no_transaction = asyncio.Event()
        self._no_transaction.set()
        self._committed: dict[TopicPartition, int] = {}

    def stop(self) -> None:
        self._stopping.set()

    @property
    def exactly_once(self) -> bool:
        return self.delivery == "exactly-once"

    async def run(self) -> None:
        topics = self.settings.topics
        follower = asyncio.create_task(self.tracker.follow(), name="versions")
        access = await negotiate(topics.access)
        self.delivery = access.delivery
        self.metrics.delivery(self.delivery)
        log.info(
            "worker %s: delivery %s (%s)",
            self.settings.worker_id,
            self.delivery,
            DELIVERY_NOTES[self.delivery],
        )
        if self.scorer.signer is not None:
            # Auditors pin this key (`modelvc audit served --trust-worker-key FILE`).
            log.info(
                "worker %s signs its predictions with key %s (public key: %s)",
                self.settings.worker_id,
                self.scorer.signer.key_id,
                public_path(self.settings.worker_key_path),
            )
        self._producer_config = access.producer(
            linger_ms=0,
            max_batch_size=1 << 20,
            client_id=f"{self.settings.worker_id}-producer",
        )
        if self.exactly_once:
            self._producer_config |= {
                "transactional_id": self.settings.transactional_id,
                "transaction_timeout_ms": TRANSACTION_TIMEOUT_MS,
            }
        producer = self.producer = AIOKafkaProducer(**self._producer_config)
        consumer = AIOKafkaConsumer(
            **access.consumer(
                group_id=self.settings.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=self.settings.fetch_wait_ms,
                max_partition_fetch_bytes=4 << 20,
                session_timeout_ms=6000,
                heartbeat_interval_ms=1000,
                rebalance_timeout_ms=REBALANCE_TIMEOUT_MS,
                client_id=self.settings.worker_id,
            ),
        )
        consumer.subscribe(
            [topics.features_topic], listener=Handover(self) if self.exactly_once else None
        )
        self.consumer = consumer
        # The producer first: in exactly-once its start fences this worker's previous
        # incarnation and aborts its open transaction before the group hands us partitions.
        await producer.start()
        try:
            await asyncio.wait(
                [asyncio.ensure_future(self.tracker.ready.wait()), follower],
                return_when=asyncio.FIRST_COMPLETED,
            )
            if follower.done():
                follower.result()  # raises why the version log could not be read
            await consumer.start()
            partitions = (await producer.partitions_for(topics.predictions_topic)) or {0}
            out_parts = sorted(partitions)
            log.info("worker %s ready", self.settings.worker_id)
            while not self._stopping.is_set():
                revokes = self._revokes  # before the fetch: a revoke during it makes it stale
                fetched = await consumer.getmany(
                    timeout_ms=100, max_records=self.settings.max_batch
                )
                if follower.done():
                    follower.result()
                if not fetched:
                    continue
                batch = [
                    Incoming(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value)
                    for messages in fetched.values()
                    for m in messages
                ]
                if self.exactly_once:
                    await self._transact(batch, fetched, revokes, out_parts)
                else:
                    await self._at_least_once(batch, fetched, out_parts)
        finally:
            follower.cancel()
            await consumer.stop()
            await self._close(self.producer)
            log.info("worker %s stopped", self.settings.worker_id)

    async def _at_least_once(
        self, batch: list[Incoming], fetched: dict[TopicPartition, list[Any]], out_parts: list[int]
    ) -> None:
        assert self.producer is not None and self.consumer is not None
        self.metrics.batch(len(batch))
        await self._produce(await self.scorer.score(batch), self.producer, out_parts)
        offsets = {tp: messages[-1].offset + 1 for tp, messages in fetched.items()}
        self._maybe_crash(offsets)
        started = time.perf_counter()
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            log.warning("offset commit failed (%s); the batch may be scored again", exc)
        self.metrics.commit_took(time.perf_counter() - started)

    async def _transact(
        self,
        batch: list[Incoming],
        fetched: dict[TopicPartition, list[Any]],
        revokes: int,
        out_parts: list[int],
    ) -> None:
        """One batch in one transaction; on failure, aborted and fetched again."""
        producer, consumer = self.producer, self.consumer
        assert producer is not None and consumer is not None
        self.metrics.batch(len(batch))
        scored = await self.scorer.score(batch)
        if self._revokes != revokes:
            # Fetched under an assignment that is gone; its partitions' owner scores it.
            log.info("batch of %d dropped: its partitions were revoked meanwhile", len(batch))
            return
        offsets = {tp: messages[-1].offset + 1 for tp, messages in fetched.items()}
        failure: BaseException | None = None
        usable = True
        self._no_transaction.clear()
        try:
            try:
                await producer.begin_transaction()
                await self._produce(scored, producer, out_parts)
                started = time.perf_counter()
                await producer.send_offsets_to_transaction(offsets, self.settings.group_id)
                self._maybe_crash(offsets)
                if self._revokes != revokes:
                    raise StaleBatch("partitions revoked during the transaction")
                await producer.commit_transaction()
                self.metrics.commit_took(time.perf_counter() - started)
            # aiokafka refuses a transaction call in the wrong state with an AssertionError.
            except (KafkaError, IllegalOperation, AssertionError, StaleBatch) as exc:
                failure = exc
                usable = await self._abort(producer)
        finally:
            self._no_transaction.set()
        if failure is None:
            self._committed.update(offsets)
            self.metrics.transaction("committed")
            return
        self.metrics.transaction("aborted")
        log.warning(
            "batch transaction aborted (%r); its %d feature events will be scored again",
            failure,
            len(batch),
        )
        if self._revokes == revokes:
            # Still ours: back to where the batch began (a new assignment starts from the
            # committed offsets by itself).
            for tp, messages in fetched.items():
                consumer.seek(tp, messages[0].offset)
        if not usable:
            await self._replace_producer()

    async def _abort(self, producer: AIOKafkaProducer) -> bool:
        """Abort the open transaction; False when this producer cannot (it must be replaced)."""
        try:
            await asyncio.wait_for(producer.abort_transaction(), PRODUCER_CLOSE_S)
        except Exception as exc:  # fenced, fatal or stuck: aiokafka raises assorted types here
            log.warning("cannot abort the transaction (%r): the producer will be replaced", exc)
            return False
        return True

    async def _replace_producer(self) -> None:
        """A new transactional producer with this worker's id; retried until it starts.

        Starting it fences every older producer with the id (and aborts what is open).
        Fenced again and again means another worker runs with this worker id.
        """
        await self._close(self.producer)
        self.producer = None
        while not self._stopping.is_set():
            await asyncio.sleep(self.settings.retry_s)
            producer = AIOKafkaProducer(**self._producer_config)
            try:
                await producer.start()
            except KafkaError as exc:
                log.warning("transactional producer did not start (%r); retrying", exc)
                await self._close(producer)
                continue
            self.producer = producer
            self.metrics.producer_restarted()
            log.warning(
                "transactional producer %s replaced (if this repeats, another worker runs "
                "with MODELVC_WORKER_ID=%s: give each worker its own)",
                self.settings.transactional_id,
                self.settings.worker_id,
            )
            return

    async def _close(self, producer: AIOKafkaProducer | None) -> None:
        if producer is None:
            return
        try:
            await asyncio.wait_for(producer.stop(), PRODUCER_CLOSE_S)
        except Exception as exc:  # closing a broken producer: nothing more to do than say so
            log.warning("producer did not stop cleanly (%r)", exc)

    async def hand_over(self, revoked: set[TopicPartition]) -> None:
        """A revoke (exactly-once): the partitions' next owner must start after our commits.

        Every batch fetched before now becomes stale (dropped, or aborted if its
        transaction is open and not yet committing); this waits for the open
        transaction to end, then until the group coordinator answers the offsets this
        worker committed for ``revoked`` (a commit's offsets are written after the
        commit returns, and aiokafka cannot ask for stable offsets only).
        """
        self._revokes += 1
        deadline = time.monotonic() + REBALANCE_TIMEOUT_MS / 1000
        try:
            await asyncio.wait_for(self._no_transaction.wait(), REBALANCE_TIMEOUT_MS / 1000)
            expected = {tp: o for tp, o in self._committed.items() if tp in revoked}
            while expected and self.consumer is not None:
                for tp in list(expected):
                    if (await self.consumer.committed(tp) or 0) >= expected[tp]:
                        del expected[tp]
                if expected:
                    if time.monotonic() > deadline:
                        raise TimeoutError
                    await asyncio.sleep(0.01)
        except (TimeoutError, KafkaError) as exc:
            log.warning(
                "handing over %s before its last transaction settled (%r): a batch may be "
                "scored by two workers (same prediction ids)",
                sorted(tp.partition for tp in revoked),
                exc,
            )
        for tp in revoked:
            self._committed.pop(tp, None)

    async def _produce(
        self, scored: Scored, producer: AIOKafkaProducer, out_parts: list[int]
    ) -> None:
        """Send a batch's predictions and dead letters; return once all are acknowledged."""
        futures: list[asyncio.Future[Any]] = []
        by_partition: dict[int, list[tuple[bytes | None, bytes]]] = defaultdict(list)
        for source_partition, key, value in scored.predictions:
            by_partition[out_parts[source_partition % len(out_parts)]].append((key, value))
        for partition, records in by_partition.items():
            kafka_batch = producer.create_batch()
            for key, value in records:
                if kafka_batch.append(key=key, value=value, timestamp=None) is None:
                    futures.append(
                        await producer.send_batch(
                            kafka_batch, self.settings.topics.predictions_topic, partition=partition
                        )
                    )
                    kafka_batch = producer.create_batch()
                    kafka_batch.append(key=key, value=value, timestamp=None)
            futures.append(
                await producer.send_batch(
                    kafka_batch, self.settings.topics.predictions_topic, partition=partition
                )
            )
        letters = []
        for item, reason in scored.rejected:
            self.metrics.dead_letter(reason.reason)
            letter = deadletter.record(
                item.topic,
                item.partition,
                item.offset,
                item.key,
                item.value,
                f"{reason.reason}: {reason}",
                "worker",
            )
            letters.append(
                deadletter.send(producer, self.settings.topics.dead_letter_topic, letter)
            )
        # A dead letter never raises: one that cannot be sent whole is sent minimal, or logged
        # and counted, and the batch goes on (a bad event must not block its partition).
        for outcome in await asyncio.gather(*letters):
            if outcome is not deadletter.Outcome.SENT:
                self.metrics.dead_letter_failed(outcome.value)
        if futures:
            await asyncio.gather(*futures)  # acks=all for all of them before the commit

    def _maybe_crash(self, offsets: dict[TopicPartition, int]) -> None:
        self.batches += 1
        if self.batches != self.fault.crash_before_commit:
            return
        log.critical(
            "MODELVC_WORKER_FAULT crash_before_commit:%d: SIGKILL before committing %s (%s)",
            self.batches,
            {tp.partition: offset for tp, offset in offsets.items()},
            "transaction left open" if self.exactly_once else "offsets not committed",
        )
        os.kill(os.getpid(), signal.SIGKILL)

    def assigned(self) -> bool:
        return self.consumer is not None and bool(self.consumer.assignment())

    async def lag(self) -> dict[TopicPartition, int]:
        consumer = self.consumer
        if consumer is None:
            return {}
        out: dict[TopicPartition, int] = {}
        for tp in consumer.assignment():
            hw = consumer.highwater(tp)
            if hw is not None:
                out[tp] = max(0, hw - await consumer.position(tp))
        return out
