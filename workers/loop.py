"""The worker loop: batch consume, group by (model, ref), predict, batch produce.

Offsets are committed only after every prediction and dead letter of the
batch is acknowledged (acks=all), so a crash repeats work but never loses it;
a repeat has the same prediction id and score.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import time
from collections import defaultdict
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from streams import deadletter
from streams.codec import FEATURES, PREDICTIONS
from streams.errors import UndecodableMessage
from streams.kafka_access import negotiate
from workers import scoring
from workers.errors import Rejected, Undecodable
from workers.metrics import Metrics
from workers.scoring import Version
from workers.settings import WorkerSettings
from workers.versions import VersionTracker

log = logging.getLogger("modelvc.workers")


@dataclass
class Incoming:
    """One consumed message, whatever the consumer library."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


@dataclass
class Scored:
    predictions: list[tuple[int, bytes | None, bytes]] = field(
        default_factory=list
    )  # (src partition, key, value)
    rejected: list[tuple[Incoming, Rejected]] = field(default_factory=list)
    versions: dict[tuple[str, str | None], str] = field(default_factory=dict)


class Scorer:
    """Everything between consumed bytes and prediction bytes (no Kafka here)."""

    def __init__(
        self,
        tracker: VersionTracker,
        metrics: Metrics,
        worker_id: str,
        predictor: Executor | None = None,
    ) -> None:
        self.tracker = tracker
        self.metrics = metrics
        self.worker_id = worker_id
        # LightGBM runs on this thread, off the event loop: a large model's batch takes
        # seconds, and /healthz, /metrics and the group heartbeat must go on meanwhile.
        self.predictor = predictor or ThreadPoolExecutor(1, thread_name_prefix="predict")

    async def predict(self, version: Version, matrix: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.predictor, scoring.predict, version, matrix)

    async def score(self, batch: list[Incoming]) -> Scored:
        out = Scored()
        groups: dict[tuple[str, str | None], list[tuple[Incoming, dict[str, Any]]]] = defaultdict(
            list
        )
        for item in batch:
            try:
                event = FEATURES.decode(item.value)  # type: ignore[arg-type]
            except UndecodableMessage as exc:
                out.rejected.append((item, Undecodable(str(exc))))
                continue
            groups[(event["model"], event["ref"])].append((item, event))
        # Versions are fixed for the whole batch before any scoring: no batch mixes them.
        versions: dict[tuple[str, str | None], Version] = {}
        for key, members in groups.items():
            try:
                versions[key] = await self.tracker.version_for(*key)
            except Rejected as exc:
                out.rejected += [(item, exc) for item, _ in members]
        scored_at = int(time.time() * 1000)
        for key, version in versions.items():
            out.versions[key] = version.commit_id
            await self._score_group(version, groups[key], scored_at, out)
        return out

    async def _score_group(
        self,
        version: Version,
        members: list[tuple[Incoming, dict[str, Any]]],
        scored_at: int,
        out: Scored,
    ) -> None:
        names = version.loaded.feature_names
        rows: list[list[float]] = []
        kept: list[tuple[Incoming, dict[str, Any]]] = []
        for item, event in members:
            try:
                rows.append(scoring.feature_row(event["features"], names))
                kept.append((item, event))
            except Rejected as exc:
                out.rejected.append((item, exc))
        if not rows:
            return
        matrix = np.asarray(rows, dtype=np.float64)
        verdicts = scoring.check_finite(matrix, names)
        if any(v is not None for v in verdicts):
            good = [i for i, v in enumerate(verdicts) if v is None]
            out.rejected += [(kept[i][0], v) for i, v in enumerate(verdicts) if v is not None]
            matrix, kept = matrix[good], [kept[i] for i in good]
            if not kept:
                return
        started = time.perf_counter()
        scores = await self.predict(version, matrix)
        self.metrics.predict_took(time.perf_counter() - started)
        for (item, event), row in zip(kept, scores.tolist(), strict=True):
            source = scoring.Source(item.topic, item.partition, item.offset, item.timestamp_ms)
            record = scoring.prediction_record(
                event, source, version, row, self.worker_id, scored_at
            )
            out.predictions.append((item.partition, item.key, PREDICTIONS.encode(record)))
        event_ms = np.fromiter((item.timestamp_ms for item, _ in kept), np.int64, len(kept))
        self.metrics.end_to_end(np.maximum(0.0, (scored_at - event_ms) / 1000))
        self.metrics.predicted(version.model, version.commit_id, "stream", len(kept))


@dataclass(frozen=True)
class Fault:
    """Test-only fault hook, set by ``MODELVC_WORKER_FAULT``; never set it in production.

    ``crash_before_commit:N`` SIGKILLs this process after the Nth batch's predictions
    and dead letters are acknowledged and before its offsets are committed: the one
    window where a crash must repeat work (same prediction ids and scores) and lose none.
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
        self.consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        topics = self.settings.topics
        follower = asyncio.create_task(self.tracker.follow(), name="versions")
        access = await negotiate(topics.access)
        producer = AIOKafkaProducer(
            **access.producer(
                linger_ms=0,
                max_batch_size=1 << 20,
                client_id=f"{self.settings.worker_id}-producer",
            )
        )
        consumer = AIOKafkaConsumer(
            topics.features_topic,
            **access.consumer(
                group_id=self.settings.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=self.settings.fetch_wait_ms,
                max_partition_fetch_bytes=4 << 20,
                session_timeout_ms=6000,
                heartbeat_interval_ms=1000,
                rebalance_timeout_ms=6000,
                client_id=self.settings.worker_id,
            ),
        )
        self.consumer = consumer
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
                await self._handle(batch, producer, out_parts)
                offsets = {tp: messages[-1].offset + 1 for tp, messages in fetched.items()}
                self.batches += 1
                if self.batches == self.fault.crash_before_commit:
                    self._crash(offsets)
                try:
                    await consumer.commit(offsets)
                except (CommitFailedError, KafkaError) as exc:
                    log.warning("offset commit failed (%s); the batch may be scored again", exc)
        finally:
            follower.cancel()
            await consumer.stop()
            await producer.stop()
            log.info("worker %s stopped", self.settings.worker_id)

    async def _handle(
        self, batch: list[Incoming], producer: AIOKafkaProducer, out_parts: list[int]
    ) -> None:
        self.metrics.batch(len(batch))
        scored = await self.scorer.score(batch)
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

    def _crash(self, offsets: dict[TopicPartition, int]) -> None:
        log.critical(
            "MODELVC_WORKER_FAULT crash_before_commit:%d: SIGKILL before committing %s",
            self.batches,
            {tp.partition: offset for tp, offset in offsets.items()},
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
