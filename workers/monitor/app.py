"""The monitor process: read predictions, labels and dead letters, write metric windows.

One consumer is assigned every partition of ``modelvc.predictions``,
``modelvc.shadow-predictions``, ``modelvc.labels`` and ``modelvc.dead-letter`` (and of
``modelvc.features`` once a served commit has a drift reference), with no consumer group:
its positions live in the monitor's own RocksDB with the join state
(:mod:`workers.monitor.join`). Each batch is:

1. decoded and fed to the :class:`~workers.monitor.join.Joiner` (a bad label, or one
   stamped more than :data:`MAX_AHEAD_MS` ahead of the monitor's clock, is sent to the
   dead-letter topic with its reason, stage ``label``, and counted; a bad prediction is
   skipped and counted);
2. the watermark is moved and the windows it passed are closed and written to
   ``modelvc.metrics`` (key: the model), every write acknowledged;
3. the state and the positions after the batch are written in one RocksDB batch.

A kill between 2 and 3 writes those windows again after the restart: same ids, same
figures (readers keep one per ``window_id``). A kill anywhere else loses nothing.

Drift: the first time the monitor sees a commit, it asks the streams API (with the
workers' reader token) for the commit; when it links a reference (``reference_sha256``),
the reference is fetched (``GET /v1/references/{digest}``, checked against its digest),
and that model's feature events are read from then on, counted in the reference's bins
with the commit's predictions. Commits made before the monitor could reach the API are
asked again after ``REFERENCE_RETRY_S``.

HTTP on ``MODELVC_MONITOR_HOST:MODELVC_MONITOR_PORT`` (loopback by default): ``/metrics``
(Prometheus) and ``/healthz``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from streams import deadletter
from streams.codec import DEAD_LETTERS, LABELS, PREDICTIONS
from streams.core import monitoring
from streams.core.events import signature_from_plain
from streams.core.labels import validate_label, version_problem
from streams.core.model_signature import ModelSignature
from streams.core.monitoring import Reference
from streams.core.refs import NAME
from streams.errors import UndecodableMessage
from streams.follow import topic_partitions
from streams.http_client import HttpClient, HttpError, resolve_token
from streams.http_edge import JsonErrorRunner, guard, render_errors
from streams.kafka_access import negotiate
from streams.monitoring.windows import Version, Window, encode_window
from workers.errors import Undecodable
from workers.monitor.join import Joiner, label_from_record, prediction_from_record
from workers.monitor.metrics import CONTENT_TYPE_LATEST, MonitorMetrics
from workers.monitor.settings import MonitorSettings
from workers.monitor.windows import Closed
from workers.typed import TypedRegistry

log = logging.getLogger("modelvc.monitor")

IDLE_S = 1.0  # no record for this long: the wall clock moves the watermark
REFERENCE_RETRY_S = 30.0
# Commits whose reference was asked (LRU): bounded, so made-up commit ids cannot exhaust
# memory; a commit forgotten is asked again (once per REFERENCE_RETRY_S at most).
MAX_COMMITS_ASKED = 10_000
# A label (or prediction) stamped further ahead of the monitor's clock than this would
# sit in a window that never closes, kept until then: refused. An hour allows any clock
# skew; a label_time in microseconds (or ns) is decades ahead.
MAX_AHEAD_MS = 3_600_000


@dataclass(frozen=True)
class CommitReference:
    """A commit's drift reference, and the signature its typed feature events are written in."""

    digest: str
    reference: Reference
    signature: ModelSignature | None


# A commit's reference (model, commit id), or None when the commit links none.
ReferenceLookup = Callable[[str, str], CommitReference | None]


class ApiReferences:
    """A commit's drift reference, from the streams API (synchronous: run in a thread)."""

    def __init__(self, http: HttpClient) -> None:
        self.http = http

    def __call__(self, model: str, commit_id: str) -> CommitReference | None:
        path = f"/v1/models/{urllib.parse.quote(model, safe='')}/commits/{commit_id}"
        commit = self.http.get_json(path)
        digest = commit.get("reference_sha256") if isinstance(commit, dict) else None
        if not isinstance(digest, str) or not digest:
            return None
        data = self.http.request(
            "GET", f"/v1/references/{digest}", max_bytes=monitoring.MAX_REFERENCE_BYTES
        ).body
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"the reference served for {digest} has another sha256")
        signature = signature_from_plain(commit.get("signature"))
        return CommitReference(digest, monitoring.reference_from_json(data), signature)


class Monitor:
    """The loop; collaborators are injected (:func:`workers.monitor.__main__.main` wires)."""

    def __init__(
        self,
        settings: MonitorSettings,
        joiner: Joiner,
        metrics: MonitorMetrics,
        references: ReferenceLookup | None = None,
        registry: TypedRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.joiner = joiner
        self.metrics = metrics
        self.references = references
        self.registry = registry or TypedRegistry()
        self.clock = clock
        self.ready = False
        self.reading_features = False  # the features topic is assigned (a reference is known)
        self._stopping = asyncio.Event()
        topics = settings.topics
        self._kinds = {
            topics.predictions_topic: "prediction",
            topics.shadow_predictions_topic: "shadow",
            topics.labels_topic: "label",
            topics.dead_letter_topic: "dead_letter",
            topics.features_topic: "features",
        }
        # commit -> when its reference was asked (inf: answered), least recent first
        self._asked: OrderedDict[str, float] = OrderedDict()
        self._lookups: set[asyncio.Task[None]] = set()
        self._feature_models: set[str] = set()  # models with a commit that has a reference
        self._letters: list[dict[str, Any]] = []

    def stop(self) -> None:
        self._stopping.set()

    # -- decoding ------------------------------------------------------------
    def process(self, batches: Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]]) -> int:
        """Feed one ``getmany`` batch to the joiner; the number of records it held.

        Predictions and labels, nearly every record, go through loops of their own: the
        per-record cost is the monitor's throughput.
        """
        count = 0
        for tp, messages in batches.items():
            kind, source = self._kinds[tp.topic], _source(tp)
            if kind == "prediction" or kind == "shadow":
                self._predictions(source, messages, kind == "shadow")
            elif kind == "label":
                self._labels(source, messages)
            else:
                for m in messages:
                    self._record(kind, source, m)
            count += len(messages)
        return count

    def _predictions(
        self, source: str, messages: Sequence[ConsumerRecord[Any, Any]], shadow: bool
    ) -> None:
        decode, prediction = PREDICTIONS.decode, self.joiner.prediction
        commits: dict[str, str] = {}  # commit -> model: a reference is asked once a batch
        ahead = int(self.clock() * 1000) + MAX_AHEAD_MS
        bad = 0
        for m in messages:
            try:
                p = prediction_from_record(decode(m.value), shadow)
            except (UndecodableMessage, KeyError, TypeError, ValueError, IndexError):
                bad += 1  # not a worker's prediction: nothing of a version to count
                continue
            if p.scored_at > ahead:
                bad += 1  # its window would never close
                continue
            prediction(p, source)
            commits[p.key.commit_id] = p.key.model
        if bad:
            self.metrics.bad_predictions.inc(bad)
        for commit_id, model in commits.items():
            self._ask_reference(model, commit_id)

    def _labels(self, source: str, messages: Sequence[ConsumerRecord[Any, Any]]) -> None:
        decode, label = LABELS.decode, self.joiner.label
        now = int(self.clock() * 1000)
        bad = 0
        for m in messages:
            try:
                record = decode(m.value)
            except UndecodableMessage as exc:
                problem: str | None = str(exc)
                record = {}
            else:
                problem = validate_label(record) or _ahead_problem(record["label_time"], now)
            if problem is None:
                label(label_from_record(record), source)
                continue
            bad += 1
            model = record.get("model")
            self._letters.append(
                deadletter.record(
                    m.topic,
                    m.partition,
                    m.offset,
                    m.key,
                    m.value,
                    problem,
                    "label",
                    model=model if isinstance(model, str) and NAME.fullmatch(model) else "",
                )
            )
        if bad:
            self.metrics.bad_labels.inc(bad)

    def _record(self, kind: str, source: str, m: ConsumerRecord[Any, Any]) -> None:
        """A dead letter or a feature event (predictions and labels: :meth:`process`)."""
        value = m.value
        if kind == "dead_letter":
            try:
                letter = DEAD_LETTERS.decode(value)
            except UndecodableMessage:
                return
            if letter["stage"] != "label":
                self._dead_letter(letter, source)
        elif kind == "features":
            self._features(source, value)

    def _dead_letter(self, letter: Mapping[str, Any], source: str) -> None:
        """Count a worker's dead letter against the version it names (its own ref, rollout
        and arm when it has them), or, naming only a model and commit, the version that
        commit served as; a letter naming no model (or junk) counts against none."""
        model, commit_id = letter.get("model", ""), letter.get("commit_id", "")
        if not isinstance(model, str) or not NAME.fullmatch(model):
            return
        if commit_id != "" and version_problem(model, "", commit_id, "", ""):
            return
        ref, rollout_id, arm = (
            letter.get("ref", ""),
            letter.get("rollout_id", ""),
            letter.get("arm", ""),
        )
        named = ref or rollout_id or arm
        if named and commit_id and not version_problem(model, ref, commit_id, rollout_id, arm):
            self.joiner.dead_letter(model, commit_id, letter["at"], source, ref, rollout_id, arm)
        else:
            self.joiner.dead_letter(model, commit_id, letter["at"], source)

    def _features(self, source: str, value: bytes | None) -> None:
        try:
            event, _ = self.registry.decode(value)
        except Undecodable:
            return  # the worker dead-letters it; a typed schema we do not know: no PSI
        model, event_id, features = event.get("model"), event.get("event_id"), event.get("features")
        if (
            model not in self._feature_models
            or not isinstance(event_id, str)
            or not isinstance(features, Mapping)
        ):
            return
        values = {k: float(v) for k, v in features.items() if isinstance(v, int | float)}
        self.joiner.features(model, event_id, values, event["event_time"], source)

    # -- references ----------------------------------------------------------
    def _ask_reference(self, model: str, commit_id: str) -> None:
        if self.references is None or commit_id in self.joiner.references:
            return
        asked = self._asked.get(commit_id)
        now = time.monotonic()
        if asked is not None:
            self._asked.move_to_end(commit_id)
            if asked == float("inf") or now - asked < REFERENCE_RETRY_S:
                return
        self._asked_at(commit_id, now)
        task = asyncio.create_task(self._lookup(model, commit_id))
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)

    def _asked_at(self, commit_id: str, when: float) -> None:
        self._asked[commit_id] = when
        self._asked.move_to_end(commit_id)
        while len(self._asked) > MAX_COMMITS_ASKED:
            self._asked.popitem(last=False)

    async def _lookup(self, model: str, commit_id: str) -> None:
        assert self.references is not None
        try:
            found = await asyncio.to_thread(self.references, model, commit_id)
        except (HttpError, ValueError, OSError) as exc:
            log.warning(
                "no drift reference for %s %s yet (%s); asking again later",
                model,
                commit_id[:12],
                exc,
            )
            return
        self._asked_at(commit_id, float("inf"))  # answered
        if found is None:
            return
        if found.signature is not None:
            self.registry.add(found.signature)  # its typed feature events can be read
        self.joiner.references[commit_id] = (found.digest, found.reference)
        self._feature_models.add(model)

    # -- the loop ------------------------------------------------------------
    async def run(self) -> None:
        settings = self.settings
        access = await negotiate(settings.topics.access)
        consumer = AIOKafkaConsumer(
            **access.consumer(
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=max(settings.topics.fetch_wait_ms, 50),
                max_partition_fetch_bytes=4 << 20,
                client_id=f"modelvc-monitor-{settings.monitor_id}",
            )
        )
        producer = AIOKafkaProducer(
            **access.producer(client_id=f"modelvc-monitor-{settings.monitor_id}", linger_ms=5)
        )
        await consumer.start()
        try:
            await producer.start()
            try:
                await self._loop(consumer, producer)
            finally:
                await producer.stop()
        finally:
            await consumer.stop()
            for task in list(self._lookups):
                task.cancel()

    async def _assign(
        self, consumer: AIOKafkaConsumer, with_features: bool
    ) -> list[TopicPartition]:
        topics = [t for t, k in self._kinds.items() if with_features or k != "features"]
        tps: list[TopicPartition] = []
        for topic in topics:
            found = await topic_partitions(consumer, topic)
            if not found:
                raise RuntimeError(f"topic {topic} does not exist; run `modelvc up` or create it")
            tps.extend(found)
        consumer.assign(tps)
        for tp in tps:
            position = self.joiner.positions.get(_source(tp))
            if position is not None:
                consumer.seek(tp, position)
            elif self._kinds[tp.topic] == "features":
                # Drift is counted from when a reference is known: not the topic's history.
                await consumer.seek_to_end(tp)
            else:
                await consumer.seek_to_beginning(tp)
        return tps

    async def _loop(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        settings = self.settings
        with_features = any(
            _kind_of(s) == settings.topics.features_topic for s in self.joiner.positions
        )
        tps = await self._assign(consumer, with_features)
        self.reading_features = with_features
        self.ready = True
        last_record = time.monotonic()
        while not self._stopping.is_set():
            if self._feature_models and not with_features:
                with_features = True
                tps = await self._assign(consumer, True)
                self.reading_features = True
            batches = await consumer.getmany(timeout_ms=200, max_records=settings.max_batch)
            if self.process(batches):
                last_record = time.monotonic()
            positions = {_source(tp): await consumer.position(tp) for tp in tps}
            behind = [_source(tp) for tp in tps if _behind(consumer, tp, positions[_source(tp)])]
            idle = time.monotonic() - last_record >= IDLE_S
            closed = self.joiner.advance(behind, int(self.clock() * 1000), idle)
            await self._send(producer, closed)
            self.joiner.commit(positions)
            self.metrics.watermark.set(max(self.joiner.watermark.value, 0))

    async def _send(self, producer: AIOKafkaProducer, closed: list[Closed]) -> None:
        """Every bad label's dead letter and every closed window, acknowledged."""
        topics = self.settings.topics
        letters, self._letters = self._letters, []
        for letter in letters:
            await deadletter.send(producer, topics.dead_letter_topic, letter)
        if not closed:
            return
        now = int(self.clock() * 1000)
        sends = []
        for window in closed:
            key = window.key
            record = Window(
                window_id=window.window_id,
                model=key.model,
                version=Version(key.ref, key.commit_id, key.rollout_id, key.arm, key.shadow),
                start_ms=window.start_ms,
                end_ms=window.end_ms,
                stats=window.stats,
                monitor_id=self.settings.monitor_id,
                emitted_at=now,
            )
            sends.append(
                await producer.send(
                    topics.metrics_topic, key=key.model.encode(), value=encode_window(record)
                )
            )
        await asyncio.gather(*sends)
        for window in closed:
            found = self.joiner.references.get(window.key.commit_id)
            self.metrics.closed(window, found[1] if found else None)


def _behind(consumer: AIOKafkaConsumer, tp: TopicPartition, position: int) -> bool:
    """Whether ``tp`` has records the consumer can still read. It reads committed records
    only: its end is the last stable offset, below the high watermark while a transaction
    is open (comparing with the high watermark, it would never be caught up)."""
    end = consumer.last_stable_offset(tp)
    if end is None:
        end = consumer.highwater(tp)
    return end is None or position < end


def _ahead_problem(label_time: int, now_ms: int) -> str | None:
    """Why a label stamped ``label_time`` is refused for being in the future, or None."""
    if label_time <= now_ms + MAX_AHEAD_MS:
        return None
    return (
        f"label_time {label_time} is more than an hour ahead of the monitor's clock ({now_ms}); "
        "label_time is milliseconds since the epoch, not microseconds or nanoseconds"
    )


def _source(tp: TopicPartition) -> str:
    return f"{tp.topic}/{tp.partition}"


def _kind_of(source: str) -> str:
    return source.rsplit("/", 1)[0]


def create_app(monitor: Monitor) -> web.Application:
    settings = monitor.settings

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=monitor.metrics.render())
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    async def healthz(request: web.Request) -> web.Response:
        body = {
            "ready": monitor.ready,
            "monitor": settings.monitor_id,
            "pid": os.getpid(),
            "watermark_ms": monitor.joiner.watermark.value,
            "open_windows": len(monitor.joiner.windows.open),
            "references": len(monitor.joiner.references),
            "reading_features": monitor.reading_features,
        }
        return web.json_response(body, status=200 if monitor.ready else 503)

    app = web.Application(
        client_max_size=1024,
        middlewares=[
            render_errors(lambda exc: None, 1024),
            guard(settings.web_host, settings.web_port, lambda request: "application/json"),
        ],
    )
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


def open_references(settings: MonitorSettings) -> ApiReferences:
    token = resolve_token(settings.token, settings.token_file, settings.admin_token_file)
    return ApiReferences(HttpClient(settings.api, timeout=5.0, deadline_s=10.0, token=token))


async def serve(monitor: Monitor) -> None:
    """Run the monitor and its HTTP endpoints until SIGTERM/SIGINT."""
    import signal

    runner = JsonErrorRunner(create_app(monitor))
    await runner.setup()
    site = web.TCPSite(runner, monitor.settings.web_host, monitor.settings.web_port)
    await site.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, monitor.stop)
    try:
        await monitor.run()
    finally:
        await runner.cleanup()
