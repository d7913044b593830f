"""Serving benchmark: one run, one table (issues: streaming inference workers; 11).

`python -m bench.serving [BACKLOG_EVENTS] [SWEEP_EVENTS]` (defaults 200,000 and 50,000)
`python -m bench.serving --breakdown [EVENTS]`: the per-event cost table alone.
`python -m bench.serving --formats [EVENTS]` (default 100,000): LightGBM beside the ONNX MLP
alone (ceilings and one worker draining EVENTS typed events each).

Model: 100 trees, 31 leaves, 20 features. Broker (Tansu) on the same machine. Beside it, an
ONNX MLP of the same 20 features (2 hidden layers of 64, Relu, a sigmoid output;
``tests.onnx_models.mlp_bytes``), scored by onnxruntime on one thread: its in-memory
ceilings (``predict`` alone on batches of the worker's size, and decode + predict + encode)
and one worker draining a typed backlog of it.
Typed feature events are encoded with ``SingleObjectCodec(feature_schema(signature))``
(what `modelvc schema` prints), map-of-union ones with ``streams.codec.FEATURES``.
0. per-event cost of each stage (decode, group, predict, encode, send), CPU µs;
1. in-memory ceiling: decode + predict + encode, no Kafka, typed and map;
2. sweep: one worker draining SWEEP_EVENTS typed events per setting (batch size, batches
   in flight, producer linger, fetch wait); the defaults (workers.settings) come from it;
3. one worker process draining BACKLOG typed events, then BACKLOG map-of-union ones;
4. a naive Faust agent (decode, predict one row, send, per event) on typed events;
5. end-to-end latency at a fixed offered load of 5,000 typed events/s;
6. switch time: rollback appended -> first prediction with the rolled-back commit (20 times);
7. peak worker RSS while serving 10 versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from bench.report import percentile, report
from modelvc.client import Client
from modelvc.processes import spawn, stop
from modelvc.stack import Stack, start_broker, start_worker, streams_env
from modelvc.streaming import encode_feature_event, feature_event
from streams.artifacts import LocalStore, sha256_of
from streams.codec import PREDICTIONS, SingleObjectCodec
from streams.core import Command, CreateModel, MakeCommit, decide
from streams.core.fold import Fold
from streams.core.model_signature import DOUBLE, Feature, ModelSignature, feature_schema
from streams.follow import topic_partitions
from streams.topics import ensure_topics
from streams.watermarks import wait_for_ends_async
from tests.onnx_models import mlp_bytes
from workers import scoring
from workers.artifacts import ArtifactLoader
from workers.metrics import Metrics, sample_sum
from workers.scorer import Incoming, Scorer
from workers.settings import WorkerSettings
from workers.versions import VersionTracker

NAMES = [f"f{i:02d}" for i in range(20)]
SIGNATURE = ModelSignature("lightgbm", tuple(Feature(n, DOUBLE) for n in NAMES), 1)
TYPED = SingleObjectCodec(feature_schema(SIGNATURE))


def train(path: Path, seed: int, rounds: int = 100) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(5000, len(NAMES)))
    y = (x[:, 0] + x[:, 1] * x[:, 2] - x[:, seed % 20] + rng.normal(size=5000) > 0).astype(int)
    params = {
        "objective": "binary",
        "num_leaves": 31,
        "verbosity": -1,
        "num_threads": 1,
        "min_data_in_leaf": 5,
        "seed": seed,
    }
    lgb.train(params, lgb.Dataset(x, y, feature_name=NAMES), num_boost_round=rounds).save_model(
        str(path)
    )
    return path


def mlp(path: Path) -> Path:
    """The ONNX MLP on the same 20 features: 2 hidden layers of 64, Relu, a sigmoid output."""
    path.write_bytes(mlp_bytes(inputs=len(NAMES), hidden=(64, 64), feature_names=NAMES))
    return path


def events(
    n: int,
    ref: str | None,
    prefix: str,
    seed: int = 0,
    typed: bool = False,
    model: str = "bench",
) -> list[bytes]:
    x = np.random.default_rng(seed).normal(size=(min(n, 10_000), len(NAMES)))
    encode = TYPED.encode if typed else encode_feature_event
    out = []
    for i in range(n):
        row = dict(zip(NAMES, map(float, x[i % len(x)]), strict=True))
        out.append(encode(feature_event(model, row, f"e{i % 1000}", ref, f"{prefix}{i}")))
    return out


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        return sample_sum(response.read().decode(), name)


# -- per-event cost breakdown ------------------------------------------------------
def scoring_setup(tmp: Path, model: Path) -> tuple[VersionTracker, Metrics]:
    """A tracker serving ``model`` as bench@main from a folded log (no broker)."""
    store = LocalStore(tmp / f"store-{model.stem}")
    data = model.read_bytes()
    digest = sha256_of(data)
    store.put(io.BytesIO(data), digest)
    fold = Fold()
    for i, body in enumerate([CreateModel(), MakeCommit(digest, "bench")]):
        for event in decide(fold.models.get("bench"), Command(f"c{i}", "bench", "b", i, body)):
            fold.apply(event)
    metrics = Metrics()
    tracker = VersionTracker(WorkerSettings(), ArtifactLoader(store), metrics, fold)
    tracker.registry.add(SIGNATURE)  # as the commit's recorded signature would
    return tracker, metrics


# -- 1 ------------------------------------------------------------------------
def ceiling(
    tmp: Path, model: Path, n: int = 100_000, batch: int = 5000, typed: bool = False
) -> tuple[float, float]:
    """Predictions/s of Scorer.score alone (wall) and its CPU µs per prediction."""
    tracker, metrics = scoring_setup(tmp, model)
    scorer = Scorer(tracker, metrics, "ceiling")
    values = events(n, None, "c", typed=typed)
    incoming = [Incoming("t", i % 4, i, 0, b"k", v) for i, v in enumerate(values)]

    async def run() -> tuple[float, float]:
        await scorer.score(incoming[:batch])  # warm: loads the model
        started, cpu = time.perf_counter(), time.process_time()
        produced = 0
        for i in range(0, n, batch):
            produced += len((await scorer.score(incoming[i : i + batch])).predictions)
        assert produced == n
        return n / (time.perf_counter() - started), (time.process_time() - cpu) / n * 1e6

    return asyncio.run(run())


def predict_ceiling(tmp: Path, model: Path, n: int = 200_000) -> tuple[float, float, str]:
    """Predictions/s of the version's ``predict`` alone, on batches of the worker's size
    (the most a worker could do with free decoding and sending), its CPU µs per
    prediction, and the predictor's runtime."""
    tracker, _ = scoring_setup(tmp, model)
    version = asyncio.run(tracker.version_for("bench", "main"))
    batch = WorkerSettings().max_batch
    x = np.random.default_rng(1).normal(size=(batch, len(NAMES)))
    scoring.predict(version, x)  # warm
    started, cpu = time.perf_counter(), time.process_time()
    rounds = max(1, n // batch)
    for _ in range(rounds):
        scoring.predict(version, x)
    done = rounds * batch
    wall, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    return done / wall, cpu_s / done * 1e6, version.loaded.predictor.runtime


def timed(fn: Any, *args: Any) -> tuple[Any, float, float]:
    """fn(*args), its wall seconds and this process's CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


async def send_cost(
    bootstrap: str, topic: str, values: list[bytes], batch: int
) -> tuple[float, float]:
    """Wall and client-CPU seconds to send ``values`` a batch at a time as the worker does
    (one Kafka record batch per partition, acks=all, every ack awaited before the next)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=0, max_batch_size=1 << 20
    )
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(values), batch):
            futures = []
            for p in partitions:
                kafka_batch = producer.create_batch()
                for value in values[start + p : start + batch : len(partitions)]:
                    if kafka_batch.append(key=b"k", value=value, timestamp=None) is None:
                        futures.append(await producer.send_batch(kafka_batch, topic, partition=p))
                        kafka_batch = producer.create_batch()
                        kafka_batch.append(key=b"k", value=value, timestamp=None)
                futures.append(await producer.send_batch(kafka_batch, topic, partition=p))
            await asyncio.gather(*futures)
        return time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await producer.stop()


def breakdown(
    tmp: Path, model: Path, bootstrap: str, values: list[bytes], batch: int = 5000
) -> dict[str, float]:
    """CPU microseconds per event of each stage of the worker's hot path, measured apart
    (CPU, not wall: the machine is shared, and a neighbour's load must not count):
    decode (by the writer's fingerprint, as the worker does), group (by model and ref,
    the version fixed, the rows in training order, the finiteness check), predict
    (Booster.predict, one thread), encode (the prediction record and its Avro bytes), send
    (to the broker, acks awaited; wall and this process's CPU), and score (the worker's
    Scorer.score, all but send, end to end)."""
    tracker, metrics = scoring_setup(tmp, model)
    scorer = Scorer(tracker, metrics, "breakdown")
    n = len(values)
    incoming = [Incoming("t", i % 4, i, 0, b"k", v) for i, v in enumerate(values)]
    totals = dict.fromkeys(("decode", "group", "predict", "encode", "encode_fast", "score"), 0.0)

    async def stages() -> list[bytes]:
        version = await tracker.version_for("bench", "main")
        read = tracker.registry.read  # by fingerprint, as Scorer.score decodes
        await scorer.score(incoming[:batch])  # warm
        names = version.loaded.feature_names
        encoded: list[bytes] = []
        for start in range(0, n, batch):
            chunk = incoming[start : start + batch]
            reads, _, took = timed(lambda c=chunk: [read(i.value) for i in c])
            totals["decode"] += took

            def group(c: list[Incoming] = chunk, r: list[Any] = reads) -> Any:
                groups: dict[tuple[str, str | None], list[Any]] = defaultdict(list)
                for item, got in zip(c, r, strict=True):
                    groups[(got.event["model"], got.event["ref"])].append((item, got))
                matrices = []
                for members in groups.values():
                    # As the scorer does: an all-double typed event's raw features go into
                    # one frombuffer matrix; the map form is read feature by feature.
                    if all(got.doubles is not None for _, got in members):
                        raw = b"".join(got.doubles for _, got in members)
                        matrix = np.frombuffer(raw, dtype="<f8").reshape(len(members), -1)
                    else:
                        rows = [scoring.feature_row(g.event["features"], names) for _, g in members]
                        matrix = np.asarray(rows, dtype=np.float64)
                    scoring.check_finite(matrix, names)
                    matrices.append(([(item, got.event) for item, got in members], matrix))
                return matrices

            matrices, _, took = timed(group)
            totals["group"] += took
            for members, matrix in matrices:
                scores, _, took = timed(scoring.predict, version, matrix)
                totals["predict"] += took

                def encode(m: list[Any] = members, s: Any = scores) -> list[bytes]:
                    out = []
                    for (item, event), row in zip(m, s.tolist(), strict=True):
                        source = scoring.Source(
                            item.topic, item.partition, item.offset, item.timestamp_ms
                        )
                        record = scoring.prediction_record(event, source, version, row, "b", 0)
                        record |= {"key_id": "", "signature": b""}
                        out.append(PREDICTIONS.encode(record))
                    return out

                chunk_encoded, _, took = timed(encode)
                totals["encode"] += took

                def encode_fast(m: list[Any] = members, s: Any = scores) -> list[bytes]:
                    encoder = scoring.PredictionEncoder(version, "b", 0)
                    return [
                        encoder.encode(
                            ev["event_id"],
                            i.topic,
                            i.partition,
                            i.offset,
                            ev["event_time"],
                            row,
                            ev["entity_key"],
                        )
                        for (i, ev), row in zip(m, s.tolist(), strict=True)
                    ]

                fast, _, took = timed(encode_fast)
                totals["encode_fast"] += took
                assert fast == chunk_encoded, "PredictionEncoder differs from the codec"
                encoded += chunk_encoded
            started = time.process_time()
            await scorer.score(chunk)
            totals["score"] += time.process_time() - started
        return encoded

    encoded = asyncio.run(stages())
    topic = "bench.send-cost"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        if topic not in admin.list_topics():
            admin.create_topics([NewTopic(topic, 4, 1)])
    finally:
        admin.close()
    asyncio.run(send_cost(bootstrap, topic, encoded[:batch], batch))  # warm
    send_wall, send_cpu = asyncio.run(send_cost(bootstrap, topic, encoded, batch))
    out = {stage: seconds / n * 1e6 for stage, seconds in totals.items()}
    return out | {"send": send_wall / n * 1e6, "send_cpu": send_cpu / n * 1e6}


BREAKDOWN_ROWS = (
    ("decode", "decode (by fingerprint)"),
    ("group", "group + version + rows + finite"),
    ("predict", "Booster.predict, 1 thread"),
    ("encode", "prediction record + Avro"),
    ("encode_fast", "encode, workers.scoring.PredictionEncoder"),
    ("send", "send, acks awaited (wall, broker too)"),
    ("send_cpu", "send, worker CPU only"),
    ("score", "Scorer.score (all but send)"),
)


def breakdown_rows(costs: dict[str, float], label: str) -> list[tuple[str, Any, str, str]]:
    return [(f"{label}: {what}", costs[key], "µs/event", "") for key, what in BREAKDOWN_ROWS]


# -- LightGBM beside the ONNX MLP ------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FormatRun:
    """One model format's figures: ceilings in memory and one worker's drain."""

    label: str
    runtime: str
    predict_rate: float  # predict alone, batches of the worker's size
    predict_cpu: float  # µs per prediction
    ceiling_rate: float  # Scorer.score: decode + predict + encode, typed events
    ceiling_cpu: float
    worker_rate: float = 0.0  # one worker draining a typed backlog
    worker_cpu: float = 0.0

    def rows(self) -> list[tuple[str, Any, str, str]]:
        return [
            (f"{self.label}: predict alone, batches of 5,000", self.predict_rate, "pred/s", ""),
            (f"{self.label}: predict alone, CPU per prediction", self.predict_cpu, "µs", ""),
            (f"{self.label}: in-memory ceiling, typed", self.ceiling_rate, "pred/s", ""),
            (f"{self.label}: ceiling CPU per prediction", self.ceiling_cpu, "µs", ""),
            (f"{self.label}: one worker, typed backlog", self.worker_rate, "pred/s", ""),
            (f"{self.label}: worker CPU per prediction", self.worker_cpu, "µs", ""),
            (
                f"{self.label}: worker / its ceiling",
                self.worker_rate / max(self.ceiling_rate, 1e-9),
                "ratio",
                "",
            ),
            (f"{self.label}: runtime", self.runtime, "", ""),
        ]


def in_memory(tmp: Path, label: str, model: Path, n: int = 100_000) -> FormatRun:
    predict_rate, predict_cpu, runtime = predict_ceiling(tmp, model, 2 * n)
    ceiling_rate, ceiling_cpu = ceiling(tmp, model, n, typed=True)
    print(
        f"{label}: predict {predict_rate:,.0f}/s, ceiling {ceiling_rate:,.0f}/s ({runtime})",
        flush=True,
    )
    return FormatRun(label, runtime, predict_rate, predict_cpu, ceiling_rate, ceiling_cpu)


def drain_model(
    stack: Stack, client: Client, name: str, model: Path, n: int
) -> tuple[float, float]:
    """Commit ``model`` as model ``name``, produce ``n`` typed events for it while no worker
    runs (worker-1 is stopped first, then started again on its port), and measure the drain."""
    s = stack.settings
    client.create(name)
    client.commit(name, client.upload(model)["sha256"], f"{name} model")
    running = stack.processes.pop("worker-1", None)
    if running is not None:
        stop(running)
    asyncio.run(
        produce(s.bootstrap, s.features_topic, events(n, "main", name, 0, True, model=name))
    )
    worker = stack.add_worker("worker-1", running.port if running is not None else None)
    got = drained(stack.worker_url(), worker.pid, n)
    print(f"worker, {name}: {got[0]:,.0f}/s, {got[1]:.1f} µs CPU", flush=True)
    return got


def formats_only(n: int) -> None:
    """`python -m bench.serving --formats [EVENTS]`: LightGBM beside the ONNX MLP alone."""
    with tempfile.TemporaryDirectory(prefix="modelvc-bench-") as tmp_name:
        tmp = Path(tmp_name)
        models = {"lightgbm": train(tmp / "m0.txt", 0), "onnx mlp": mlp(tmp / "mlp.onnx")}
        runs = {label: in_memory(tmp, label, model, n) for label, model in models.items()}
        stack = Stack.up(tmp / "home")
        try:
            client = stack.client()
            for (label, model), name in zip(
                models.items(), ("bench-gbm", "bench-mlp"), strict=True
            ):
                got, cpu = drain_model(stack, client, name, model, n)
                runs[label] = dataclasses.replace(runs[label], worker_rate=got, worker_cpu=cpu)
        finally:
            stack.down()
    report(
        "serving-formats",
        [row for run in runs.values() for row in run.rows()],
        {
            "events": n,
            "formats": {label: dataclasses.asdict(run) for label, run in runs.items()},
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
    )


# -- Kafka helpers --------------------------------------------------------------
async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=1 << 20
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, v, key=str(i % 1000).encode()) for i, v in enumerate(values)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str, count: int, timeout: float) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        fetch_max_wait_ms=20,
        max_partition_fetch_bytes=8 << 20,
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500, max_records=50_000)).values():
                out += [PREDICTIONS.decode(m.value) for m in messages]
    finally:
        await consumer.stop()
    return out


def rate(predictions: list[dict[str, Any]]) -> float:
    times = [p["scored_at"] for p in predictions]
    return len(times) / max(1e-3, (max(times) - min(times)) / 1000)


class Tap:
    """Predictions as they arrive, with receive times; starts at the topic's current end.

    It keeps the raw bytes and decodes them only when asked (``seen``): decoding 5,000
    predictions a second on the event loop that also produces the load would delay the
    receive times it measures."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.raw: list[tuple[float, bytes]] = []
        self._seen: list[tuple[float, dict[str, Any]]] = []

    @property
    def seen(self) -> list[tuple[float, dict[str, Any]]]:
        fresh = self.raw[len(self._seen) :]
        self._seen += [(t, PREDICTIONS.decode(value)) for t, value in fresh]
        return self._seen

    async def run(self, ready: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            fetch_max_wait_ms=5,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            tps = await topic_partitions(consumer, self.topic)
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, 0)
            ends = await wait_for_ends_async(consumer, tps, 60.0)
            for tp in tps:
                consumer.seek(tp, ends[tp.partition])
            ready.set()
            while True:
                for messages in (await consumer.getmany(timeout_ms=100)).values():
                    now = time.time()
                    self.raw += [(now, m.value) for m in messages]
        finally:
            await consumer.stop()


async def paced(
    bootstrap: str, topic: str, per_second: int, seconds: float, prefix: str, ref: str | None
) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    x = np.random.default_rng(3).normal(size=(1000, len(NAMES)))
    partitions = sorted(await producer.partitions_for(topic))
    sent, tick = 0, 0.005
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            due = int((time.monotonic() - started) * per_second)
            # One Kafka batch per partition per tick (what a real producer's linger does):
            # per-message sends would cost the load generator more CPU than the worker.
            batches = {p: producer.create_batch() for p in partitions}
            while sent < due:
                row = dict(zip(NAMES, map(float, x[sent % 1000]), strict=True))
                event = feature_event("bench", row, f"e{sent % 1000}", ref, f"{prefix}{sent}")
                part = partitions[sent % len(partitions)]
                if batches[part].append(key=None, value=TYPED.encode(event), timestamp=None):
                    sent += 1
                else:
                    break  # full: the rest goes next tick
            acks = [
                await producer.send_batch(b, topic, partition=p)
                for p, b in batches.items()
                if b.record_count()
            ]
            if acks:
                await asyncio.gather(*acks)
            await asyncio.sleep(tick)
    finally:
        await producer.stop()
    return sent


async def live_phases(
    stack: Stack, client: Client, artifacts: list[str], switches: int = 20
) -> dict[str, Any]:
    s = stack.settings
    tap = Tap(s.bootstrap, s.predictions_topic)
    ready = asyncio.Event()
    tap_task = asyncio.create_task(tap.run(ready))
    await ready.wait()
    # 4. latency at 5,000 events/s for 10 s
    sent = await paced(s.bootstrap, s.features_topic, 5000, 10.0, "lat", "main")
    deadline = time.monotonic() + 30
    while len(tap.raw) < sent and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    latencies = [
        (t - p["event_time"] / 1000) * 1000
        for t, p in tap.seen
        if p["feature_event_id"].startswith("lat")
    ]
    # 5. switch time over 20 rollbacks while 1,000 events/s flow
    switch_ms: list[float] = []
    flow = asyncio.create_task(paced(s.bootstrap, s.features_topic, 1000, 3600, "sw", "main"))
    loop = asyncio.get_running_loop()
    for i in range(switches):
        await loop.run_in_executor(
            None, lambda i=i: client.commit("bench", artifacts[(i + 1) % 2], f"candidate {i}")
        )
        target = client.resolve("bench", "main~1")["commit"]
        await asyncio.sleep(1.0)
        t0 = time.time()
        await loop.run_in_executor(
            None, lambda: client.rollback("bench", "main", "main~1", "bench")
        )
        while True:
            hit = [t for t, p in tap.seen if p["commit_id"] == target and t >= t0]
            if hit:
                switch_ms.append((min(hit) - t0) * 1000)
                break
            if time.time() - t0 > 10:
                switch_ms.append(10_000.0)
                break
            await asyncio.sleep(0.005)
    for task in (flow, tap_task):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return {"latencies": latencies, "sent": sent, "switch_ms": switch_ms}


def breakdown_only(n: int) -> None:
    """`python -m bench.serving --breakdown [EVENTS]`: the per-event cost table alone."""
    with tempfile.TemporaryDirectory(prefix="modelvc-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model = train(tmp / "m0.txt", 0)
        broker, bootstrap = start_broker(tmp)
        try:
            typed = breakdown(tmp, model, bootstrap, events(n, "main", "bt", typed=True))
            mapped = breakdown(tmp, model, bootstrap, events(n, "main", "bm"))
        finally:
            stop(broker)
    report(
        "serving-breakdown",
        breakdown_rows(typed, "typed") + breakdown_rows(mapped, "map"),
        {"events": n, "costs": {"typed": typed, "map": mapped}},
    )


# -- sweep and drains ------------------------------------------------------------
# (MODELVC_WORKER_MAX_BATCH, MODELVC_WORKER_MAX_IN_FLIGHT, MODELVC_WORKER_LINGER_MS,
#  MODELVC_FETCH_WAIT_MS): the defaults first, then one knob changed at a time.
SWEEP = (
    (5000, 4, 0, 10),
    (1000, 4, 0, 10),
    (2000, 4, 0, 10),
    (10000, 4, 0, 10),
    (5000, 1, 0, 10),
    (5000, 2, 0, 10),
    (5000, 8, 0, 10),
    (5000, 4, 5, 10),
    (5000, 4, 0, 50),
    (5000, 4, 0, 10),  # the defaults again: the neighbours' load drifts during the sweep
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drained(url: str, pid: int, target: float, timeout: float = 600) -> tuple[float, float]:
    """Predictions/s of the worker at ``url`` from its first batch until ``target``
    predictions in all (polled from /metrics every 20 ms), and its CPU µs per prediction
    meanwhile: on a shared machine the rate follows the neighbours' load, the CPU much less."""
    deadline = time.monotonic() + timeout
    first: tuple[float, float, float] | None = None
    while time.monotonic() < deadline:
        try:
            count = metric(url, "modelvc_predictions_total")
        except OSError:
            count = 0.0  # not listening yet
        now = time.monotonic()
        if count > 0 and first is None:
            first = (now, count, cpu_seconds(pid))
        if count >= target and first is not None:
            done = count - first[1]
            cpu_us = (cpu_seconds(pid) - first[2]) / max(1.0, done) * 1e6
            return done / max(1e-3, now - first[0]), cpu_us
        time.sleep(0.02)
    return 0.0, 0.0


def sweep(
    stack: Stack, events_count: int
) -> list[tuple[tuple[int, int, int, int], tuple[float, float]]]:
    """Each setting: a worker of its own consumer group draining the same typed backlog."""
    out = []
    for i, (batch, in_flight, linger, fetch_wait) in enumerate(SWEEP):
        settings = dataclasses.replace(stack.as_role("worker"), fetch_wait_ms=fetch_wait)
        knobs = {
            "MODELVC_WORKER_MAX_BATCH": str(batch),
            "MODELVC_WORKER_MAX_IN_FLIGHT": str(in_flight),
            "MODELVC_WORKER_LINGER_MS": str(linger),
            "MODELVC_WORKER_GROUP": f"bench-sweep-{i}",
        }
        saved = {k: os.environ.get(k) for k in knobs}
        os.environ.update(knobs)
        try:
            worker = start_worker(settings, stack.home, f"sweep-{i}", None, None, False)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        try:
            got = drained(f"http://127.0.0.1:{worker.port}", worker.pid, events_count)
        finally:
            stop(worker)
        out.append(((batch, in_flight, linger, fetch_wait), got))
        print(f"sweep {SWEEP[i]}: {got[0]:,.0f}/s, {got[1]:.1f} CPU µs/prediction", flush=True)
    return out


def main() -> None:
    if sys.argv[1:2] == ["--breakdown"]:
        breakdown_only(int(sys.argv[2]) if len(sys.argv) > 2 else 50_000)
        return
    if sys.argv[1:2] == ["--formats"]:
        formats_only(int(sys.argv[2]) if len(sys.argv) > 2 else 100_000)
        return
    backlog = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    sweep_events = int(sys.argv[2]) if len(sys.argv) > 2 else 50_000
    rows: list[tuple[str, Any, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="modelvc-bench-") as tmp_name:
        tmp = Path(tmp_name)
        models = [train(tmp / f"m{i}.txt", i) for i in range(10)]
        print("models trained", flush=True)
        mlp_run = in_memory(tmp, "onnx mlp", mlp(tmp / "mlp.onnx"))
        typed_ceiling, typed_ceiling_cpu = ceiling(tmp, models[0], typed=True)
        map_ceiling, map_ceiling_cpu = ceiling(tmp, models[0])
        print(
            f"ceiling typed {typed_ceiling:,.0f}/s ({typed_ceiling_cpu:.1f} µs CPU), "
            f"map {map_ceiling:,.0f}/s ({map_ceiling_cpu:.1f} µs CPU)",
            flush=True,
        )
        stack = Stack.up(tmp / "home")
        try:
            s = stack.settings
            costs = {
                "typed": breakdown(
                    tmp, models[0], s.bootstrap, events(50_000, "main", "bt", 0, True)
                ),
                "map": breakdown(tmp, models[0], s.bootstrap, events(50_000, "main", "bm")),
            }
            ensure_topics(s, extra={"bench.naive-predictions": s.partitions})
            client = stack.client()
            artifacts = [client.upload(m)["sha256"] for m in models]
            client.create("bench")
            head = client.commit("bench", artifacts[0], "bench model")["head"]
            # 2. the sweep, on a typed backlog of its own (first in the topic)
            asyncio.run(
                produce(s.bootstrap, s.features_topic, events(sweep_events, "main", "sw", 0, True))
            )
            swept = sweep(stack, sweep_events)
            # 3. one worker (the defaults) drains the typed backlog, then the map one; each
            # produced while no worker of its group runs (it starts after the sweep's events)
            asyncio.run(
                produce(s.bootstrap, s.features_topic, events(backlog, "main", "ty", 0, True))
            )
            print(f"typed backlog of {backlog:,} events produced", flush=True)
            worker = stack.add_worker()
            url = stack.worker_url()
            drained(url, worker.pid, sweep_events)  # the sweep's events come first here too
            typed_rate, typed_cpu = drained(url, worker.pid, sweep_events + backlog)
            print(f"worker, typed: {typed_rate:,.0f}/s, {typed_cpu:.1f} µs CPU", flush=True)
            stop(worker)
            asyncio.run(produce(s.bootstrap, s.features_topic, events(backlog, "main", "mp")))
            print(f"map backlog of {backlog:,} events produced", flush=True)
            stack.restart_worker("worker-1")
            worker = stack.processes["worker-1"]
            map_rate, map_cpu = drained(url, worker.pid, backlog)
            print(f"worker, map-of-union: {map_rate:,.0f}/s, {map_cpu:.1f} µs CPU", flush=True)
            # 3b. the same worker draining a typed backlog of the ONNX MLP
            mlp_rate, mlp_cpu = drain_model(stack, client, "bench-mlp", tmp / "mlp.onnx", backlog)
            mlp_run = dataclasses.replace(mlp_run, worker_rate=mlp_rate, worker_cpu=mlp_cpu)
            worker = stack.processes["worker-1"]
            # 4. the naive Faust agent on the typed events at the topic's start
            env = streams_env(s)
            env.update(
                BENCH_MODEL=str(models[0]),
                BENCH_COMMIT=head,
                BENCH_DIGEST=artifacts[0],
                BENCH_SOURCE=s.features_topic,
                BENCH_SINK="bench.naive-predictions",
                BENCH_DATADIR=str(tmp / "naive"),
                OMP_NUM_THREADS="1",
            )
            naive = spawn([sys.executable, "-m", "bench.naive_worker"], tmp / "naive.log", env)
            try:
                naive_preds = asyncio.run(
                    read_all(s.bootstrap, "bench.naive-predictions", 30_000, 180)
                )
                # Its start (Faust, the booster) counts too: an upper bound per prediction.
                naive_cpu = cpu_seconds(naive.pid) / max(1, len(naive_preds)) * 1e6
            finally:
                stop(naive)
            naive_rate = rate(naive_preds)
            print(f"naive {naive_rate:,.0f}/s over {len(naive_preds):,}", flush=True)
            # 5 + 6
            live = asyncio.run(live_phases(stack, client, artifacts[:2]))
            # 7. ten versions served at once
            for i in range(10):
                client.create_branch("bench", f"v{i}", "main")
                client.commit("bench", artifacts[i], f"version {i}", branch=f"v{i}")
            values = [v for i in range(10) for v in events(500, f"v{i}", f"ten{i}-", seed=i)]
            asyncio.run(produce(s.bootstrap, s.features_topic, values))
            target = metric(url, "modelvc_predictions_total") + len(values)
            deadline = time.monotonic() + 120
            while metric(url, "modelvc_predictions_total") < target and time.monotonic() < deadline:
                time.sleep(0.5)
            with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
                served = len(json.load(response)["serving"])
            peak = rss_mb(worker.pid)
        finally:
            stack.down()
    lat = live["latencies"]
    sw = live["switch_ms"]
    rows += [
        ("in-memory ceiling, typed (decode+predict+encode)", typed_ceiling, "pred/s", ""),
        ("in-memory ceiling, map-of-union", map_ceiling, "pred/s", ""),
        ("one worker, typed events (backlog drain)", typed_rate, "pred/s", ">= 60,000"),
        ("worker typed / its ceiling", typed_rate / typed_ceiling, "ratio", ">= 0.9"),
        ("one worker, map-of-union events", map_rate, "pred/s", ">= 35,000"),
        ("worker map / its ceiling", map_rate / map_ceiling, "ratio", ""),
        # The same in CPU per prediction: what the rates would be with a core to itself.
        ("ceiling CPU per prediction, typed", typed_ceiling_cpu, "µs", ""),
        ("worker CPU per prediction, typed", typed_cpu, "µs", ""),
        (
            "ceiling CPU / worker CPU, typed",
            typed_ceiling_cpu / max(typed_cpu, 1e-9),
            "ratio",
            ">= 0.9",
        ),
        (
            "one worker, typed, CPU-bound rate (1e6 / CPU µs)",
            1e6 / max(typed_cpu, 1e-9),
            "pred/s",
            ">= 60,000",
        ),
        ("ceiling CPU per prediction, map", map_ceiling_cpu, "µs", ""),
        ("worker CPU per prediction, map", map_cpu, "µs", ""),
        (
            "one worker, map, CPU-bound rate (1e6 / CPU µs)",
            1e6 / max(map_cpu, 1e-9),
            "pred/s",
            ">= 35,000",
        ),
        ("naive Faust agent, per event (typed)", naive_rate, "pred/s", ""),
        ("worker typed / naive", typed_rate / max(naive_rate, 1e-9), "ratio", ">= 20"),
        ("naive CPU per prediction (start included)", naive_cpu, "µs", ""),
        ("naive CPU / worker CPU, typed", naive_cpu / max(typed_cpu, 1e-9), "ratio", ">= 20"),
        ("latency @5,000 ev/s p50", percentile(lat, 50), "ms", ""),
        ("latency @5,000 ev/s p99", percentile(lat, 99), "ms", "<= 20"),
        ("latency @5,000 ev/s p99.9", percentile(lat, 99.9), "ms", ""),
        ("latency samples (events sent)", f"{len(lat)} ({live['sent']})", "", ""),
        ("switch after rollback p50 (20)", percentile(sw, 50), "ms", ""),
        ("switch after rollback p99 (20)", percentile(sw, 99), "ms", "<= 1,000"),
        ("refs served in RSS phase", served, "", "10"),
        ("worker peak RSS (VmHWM)", peak, "MB", "<= 400"),
    ]
    rows += mlp_run.rows()
    rows += breakdown_rows(costs["typed"], "typed") + breakdown_rows(costs["map"], "map")
    for (b, f, lg, w), (got, cpu) in swept:
        knobs = f"sweep batch={b} in_flight={f} linger={lg}ms fetch_wait={w}ms"
        rows += [(knobs, got, "pred/s", ""), (f"{knobs} CPU", cpu, "µs/pred", "")]
    report(
        "serving",
        rows,
        {
            "backlog": backlog,
            "sweep_events": sweep_events,
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
            "costs": costs,
            "onnx_mlp": dataclasses.asdict(mlp_run),
        },
    )


if __name__ == "__main__":
    main()
