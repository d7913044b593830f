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

**Pipelining.** The loop never waits for the broker when it could be scoring.
At-least-once (:class:`Pipeline`): batch N's sends are started and the loop goes
on to fetch and score N+1 while N's acknowledgements come back; at most
``max_in_flight`` batches (``MODELVC_WORKER_MAX_IN_FLIGHT``) are sent and not yet
acknowledged, and the loop waits for the oldest before sending more. A committer
task commits offsets in order, asynchronously, only up to the last batch that is
acknowledged with every batch before it (several acknowledged batches make one
commit). A failed send stops the pipeline: nothing past the batch before it is
committed, every batch still in flight settles, the consumer goes back to the
first offsets of the first unacknowledged batch (per partition) and the loop
goes on from there, so events are repeated (same prediction ids), never lost.
Exactly-once keeps one transaction per batch and overlaps the fetch and scoring
of batch N+1 with batch N's transaction (sends, offsets, commit), run as a task:
at most one transaction is open, N+1's begins after N's commit, and a failed N
takes N+1 back with it. Why not a transaction over several batches: at 5,000
events a batch, scoring costs far more than the 10-17 ms a transaction adds
(docs/kafka.md), so the overlap hides it; a longer transaction would hold every
read_committed reader of the predictions (the last stable offset) for longer,
raise end-to-end latency by as much, and widen what a revoke must abort.
Stopping drains what is in flight and commits it. The defaults (batch size,
batches in flight, linger, fetch wait) come from bench/serving.py's sweep.

In both, no batch mixes versions within one group of rows (a canary rollout splits a
ref's rows into its baseline's and its candidate's), and dead letters are bounded
(``streams.deadletter``) and name the model and commit when known. Shadow predictions
go to their own topic in the same batch: acknowledged before the offsets are committed,
or in the same transaction.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
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


Offsets = dict[TopicPartition, int]


def earliest(offsets: Iterable[Offsets]) -> Offsets:
    """Per partition, the lowest of the offsets given (where to go back to)."""
    out: Offsets = {}
    for each in offsets:
        for tp, offset in each.items():
            out[tp] = min(out.get(tp, offset), offset)
    return out


@dataclass
class Sent:
    """One batch between sent and acknowledged."""

    first: Offsets  # its first offsets: where the consumer goes back to if it fails
    next: Offsets  # its next offsets: committed once it and every batch before are acked
    acks: asyncio.Future[Any]  # done when every prediction and dead letter is acknowledged
    size: int = 0


@dataclass
class Pipeline:
    """At-least-once: batches sent and not yet acknowledged, committed in order behind them.

    ``commit`` commits offsets (and says why not, never raises for a broker's refusal);
    ``seek`` puts the consumer back. Both are the worker's, injected so the ordering
    rules are tested without a broker.
    """

    max_in_flight: int
    commit: Callable[[Offsets], Awaitable[None]]
    seek: Callable[[Offsets], None]
    metrics: Metrics | None = None
    failure: BaseException | None = None  # the first failed send; None while all go well
    in_flight: deque[Sent] = field(default_factory=deque)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _committer: asyncio.Task[None] | None = None
    _closing: bool = False

    def add(self, sent: Sent) -> None:
        if len(self.in_flight) >= self.max_in_flight:
            raise RuntimeError("Pipeline.add without room: await room() first")
        self.in_flight.append(sent)
        self._gauge()
        self._changed.set()
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_in_order(), name="commits")

    async def room(self) -> None:
        """Return when another batch may be sent, or a send failed (see ``failure``)."""
        while len(self.in_flight) >= self.max_in_flight and self.failure is None:
            self._changed.clear()
            await self._changed.wait()

    async def recover(self, fetched: Iterable[Offsets] = ()) -> None:
        """After a failure: let every sent batch settle, then put the consumer back to the
        first offsets of the first unacknowledged batch, per partition (and of batches
        ``fetched`` since, not sent), and start again from there."""
        await self._stop_committer()
        pending = [s.acks for s in self.in_flight]
        if pending:
            await asyncio.wait(pending)
        for future in pending:
            if not future.cancelled():
                future.exception()  # retrieved: asyncio would log it as never retrieved
        self.seek(earliest([*(s.first for s in self.in_flight), *fetched]))
        self.in_flight.clear()
        self.failure = None
        self._gauge()

    async def drain(self) -> None:
        """Wait for every sent batch and commit what they acknowledged (stopping)."""
        while self.in_flight and self.failure is None:
            self._changed.clear()
            await self._changed.wait()
        await self._stop_committer()

    async def _stop_committer(self) -> None:
        task, self._committer = self._committer, None
        if task is not None:
            self._closing = True
            self._changed.set()
            try:
                await task
            finally:
                self._closing = False

    async def _commit_in_order(self) -> None:
        try:
            await self._commit_acknowledged()
        except Exception as exc:  # never a silent stop: the loop recovers as from a send
            log.warning("committing offsets failed (%r)", exc)
            self.failure = exc
            self._changed.set()

    async def _commit_acknowledged(self) -> None:
        acked: Offsets = {}  # of batches acknowledged with every batch before them
        while True:
            head = self.in_flight[0] if self.in_flight else None
            if head is None or not head.acks.done():
                if acked:  # what is acknowledged is committed now, not after the head
                    await self.commit(acked)
                    acked = {}
                elif head is not None:
                    await asyncio.wait([head.acks])  # a wait: cancelling us never cancels it
                elif self._closing:
                    return
                else:
                    self._changed.clear()
                    await self._changed.wait()
                continue
            failed = CancelledSend() if head.acks.cancelled() else head.acks.exception()
            if failed is not None:
                # Nothing from the head on is committed: recover() goes back to it.
                if acked:
                    await self.commit(acked)
                self.failure = failed
                if self.metrics is not None:
                    self.metrics.send_failed()
                self._changed.set()
                return
            acked |= head.next  # a later batch's offsets are past an earlier one's
            self.in_flight.popleft()
            self._gauge()
            self._changed.set()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.in_flight(len(self.in_flight))


class CancelledSend(Exception):
    """A batch's sends were cancelled (the producer stopped under them)."""


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
        self._shadow_parts: list[int] = []  # of the shadow-predictions topic, on first use

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
            linger_ms=self.settings.linger_ms,
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
            if self.exactly_once:
                await self._run_transactions(consumer, follower, out_parts)
            else:
                await self._run_pipeline(consumer, follower, out_parts)
        finally:
            follower.cancel()
            await consumer.stop()
            await self._close(self.producer)
            log.info("worker %s stopped", self.settings.worker_id)

    async def _fetch(
        self, consumer: AIOKafkaConsumer, follower: asyncio.Task[None]
    ) -> tuple[list[Incoming], Offsets, Offsets]:
        """The next batch (maybe empty), its first offsets and its next offsets."""
        fetched = await consumer.getmany(timeout_ms=100, max_records=self.settings.max_batch)
        if follower.done():
            follower.result()  # raises why the version log could not be read
        batch = [
            Incoming(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value)
            for messages in fetched.values()
            for m in messages
        ]
        first = {tp: messages[0].offset for tp, messages in fetched.items() if messages}
        after = {tp: messages[-1].offset + 1 for tp, messages in fetched.items() if messages}
        return batch, first, after

    async def _run_pipeline(
        self, consumer: AIOKafkaConsumer, follower: asyncio.Task[None], out_parts: list[int]
    ) -> None:
        """At-least-once: score batch N+1 while N's acks are awaited (module doc)."""
        pipeline = Pipeline(self.settings.max_in_flight, self._commit, self._seek, self.metrics)
        try:
            while not self._stopping.is_set():
                if pipeline.failure is not None:
                    await self._went_back(pipeline)
                batch, first, after = await self._fetch(consumer, follower)
                if not batch:
                    continue
                self.metrics.batch(len(batch))
                scored = await self.scorer.score(batch)
                await pipeline.room()
                if pipeline.failure is not None:
                    await self._went_back(pipeline, first)  # this batch is fetched again
                    continue
                assert self.producer is not None
                acks = await self._send(scored, self.producer, out_parts)
                if self._crash_due():
                    # The window: every batch before committed, this one acked, not committed.
                    await pipeline.drain()
                    await asyncio.wait([acks])
                    self._crash(after)
                pipeline.add(Sent(first, after, acks, len(batch)))
        finally:
            await pipeline.drain()  # stopping: what was sent and acknowledged is committed

    async def _went_back(self, pipeline: Pipeline, *fetched: Offsets) -> None:
        failure = pipeline.failure
        count = sum(s.size for s in pipeline.in_flight)
        await pipeline.recover(fetched)
        log.warning(
            "a send failed (%r): back to the first unacknowledged batch; its %d feature "
            "events and those after it will be scored again (same prediction ids)",
            failure,
            count,
        )

    async def _commit(self, offsets: Offsets) -> None:
        assert self.consumer is not None
        # A partition revoked meanwhile would make the consumer refuse the whole commit.
        assigned = self.consumer.assignment()
        offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not offsets:
            return
        started = time.perf_counter()
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            log.warning("offset commit failed (%s); the batch may be scored again", exc)
        self.metrics.commit_took(time.perf_counter() - started)

    def _seek(self, offsets: Offsets) -> None:
        """Back to ``offsets``, for the partitions still assigned (a new owner of the
        others starts from the committed offsets by itself)."""
        assert self.consumer is not None
        assigned = self.consumer.assignment()
        for tp, offset in offsets.items():
            if tp in assigned:
                self.consumer.seek(tp, offset)

    async def _run_transactions(
        self, consumer: AIOKafkaConsumer, follower: asyncio.Task[None], out_parts: list[int]
    ) -> None:
        """Exactly-once: score batch N+1 while N's transaction commits (module doc)."""
        previous: asyncio.Task[Offsets | None] | None = None
        previous_revokes = 0
        try:
            while not self._stopping.is_set():
                revokes = self._revokes  # before the fetch: a revoke during it makes it stale
                batch, first, after = await self._fetch(consumer, follower)
                # N's outcome as soon as it is known, empty fetches included: a seek back
                # applied late could land on a later assignment of the same partitions.
                if previous is not None and previous.done():
                    back, previous = await previous, None
                    if back is not None and self._revokes == previous_revokes:
                        # N failed: back to where it began, and N+1 (fetched after it) with
                        # it, unsent. After a revoke, no seek: every partition assigned
                        # since (even one that came back to us) starts from its committed
                        # offsets, and another worker may have moved them on meanwhile.
                        self._seek(earliest([back, first]))
                        continue
                if not batch:
                    continue
                self.metrics.batch(len(batch))
                scored = await self.scorer.score(batch)
                if previous is not None:
                    back, previous = await previous, None
                    if back is not None and self._revokes == previous_revokes:
                        self._seek(earliest([back, first]))  # as above
                        continue
                previous_revokes = revokes
                previous = asyncio.create_task(
                    self._transact(scored, len(batch), first, after, revokes, out_parts)
                )
        finally:
            if previous is not None:
                await previous  # stopping: the open transaction ends, committed or aborted

    async def _transact(
        self,
        scored: Scored,
        size: int,
        first: Offsets,
        offsets: Offsets,
        revokes: int,
        out_parts: list[int],
    ) -> Offsets | None:
        """One batch in one transaction: None once committed, else where to go back to."""
        producer = self.producer
        if self._revokes != revokes:
            # Fetched under an assignment that is gone; its partitions' owner scores it.
            log.info("batch of %d dropped: its partitions were revoked meanwhile", size)
            return None
        assert producer is not None
        failure: BaseException | None = None
        usable = True
        self._no_transaction.clear()
        self.metrics.in_flight(1)
        try:
            try:
                await producer.begin_transaction()
                await (await self._send(scored, producer, out_parts))
                started = time.perf_counter()
                await producer.send_offsets_to_transaction(offsets, self.settings.group_id)
                if self._crash_due():
                    self._crash(offsets)
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
            self.metrics.in_flight(0)
        if failure is None:
            self._committed.update(offsets)
            self.metrics.transaction("committed")
            return None
        self.metrics.transaction("aborted")
        log.warning(
            "batch transaction aborted (%r); its %d feature events will be scored again",
            failure,
            size,
        )
        if not usable:
            await self._replace_producer()
        return first

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

    async def _send(
        self, scored: Scored, producer: AIOKafkaProducer, out_parts: list[int]
    ) -> asyncio.Future[Any]:
        """Start sending a batch's predictions, shadow predictions and dead letters, in order;
        the future is done when all are acknowledged (acks=all), and fails with the first
        failed prediction."""
        topics = self.settings.topics
        futures = await self._send_records(
            producer, topics.predictions_topic, scored.predictions, out_parts
        )
        if scored.shadow_predictions and await self._shadow_topic(producer):
            futures += await self._send_records(
                producer,
                topics.shadow_predictions_topic,
                scored.shadow_predictions,
                self._shadow_parts,
            )
        elif scored.shadow_predictions:
            self.metrics.shadow_failed("", "send", len(scored.shadow_predictions))
        letters: list[asyncio.Future[Any]] = []
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
                model=reason.for_model,
                commit_id=reason.for_commit,
                rollout_id=reason.for_rollout,
                arm=reason.for_arm,
                ref=reason.for_ref,
            )
            letters.append(
                asyncio.ensure_future(deadletter.send(producer, topics.dead_letter_topic, letter))
            )
        return asyncio.ensure_future(self._acknowledged(futures, letters))

    async def _shadow_topic(self, producer: AIOKafkaProducer) -> bool:
        """Whether the shadow-predictions topic can be written (its partitions learnt once).
        Without it (a streams app of this release creates it at start), shadow scores are
        dropped, counted and logged: they never hold serving back."""
        if self._shadow_parts:
            return True
        topic = self.settings.topics.shadow_predictions_topic
        try:
            found = await producer.partitions_for(topic)
        except KafkaError as exc:
            log.warning("shadow predictions dropped: topic %s unavailable (%r)", topic, exc)
            return False
        self._shadow_parts = sorted(found or {0})
        return True

    @staticmethod
    async def _send_records(
        producer: AIOKafkaProducer,
        topic: str,
        records: list[tuple[int, bytes | None, bytes]],
        parts: list[int],
    ) -> list[asyncio.Future[Any]]:
        """Start sending ``records`` (source partition, key, value) to ``topic``, one Kafka
        batch per partition at a time: a source partition's records keep their order."""
        futures: list[asyncio.Future[Any]] = []
        try:
            by_partition: dict[int, list[tuple[bytes | None, bytes]]] = defaultdict(list)
            for source_partition, key, value in records:
                by_partition[parts[source_partition % len(parts)]].append((key, value))
            for partition, batch in by_partition.items():
                kafka_batch = producer.create_batch()
                for key, value in batch:
                    if kafka_batch.append(key=key, value=value, timestamp=None) is None:
                        futures.append(
                            await producer.send_batch(kafka_batch, topic, partition=partition)
                        )
                        kafka_batch = producer.create_batch()
                        kafka_batch.append(key=key, value=value, timestamp=None)
                futures.append(await producer.send_batch(kafka_batch, topic, partition=partition))
        except KafkaError as exc:  # the producer refused to take it (closed, queue timed out)
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            futures.append(failed)
        return futures

    async def _acknowledged(
        self, futures: list[asyncio.Future[Any]], letters: list[asyncio.Future[Any]]
    ) -> None:
        # A dead letter never raises: one that cannot be sent whole is sent minimal, or logged
        # and counted, and the batch goes on (a bad event must not block its partition).
        for outcome in await asyncio.gather(*letters):
            if outcome is not deadletter.Outcome.SENT:
                self.metrics.dead_letter_failed(outcome.value)
        if futures:
            await asyncio.gather(*futures)  # acks=all for all of them before the commit

    def _crash_due(self) -> bool:
        self.batches += 1
        return self.batches == self.fault.crash_before_commit

    def _crash(self, offsets: Offsets) -> None:
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
