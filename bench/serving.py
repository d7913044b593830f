"""Serving benchmark: one run, one table (issue: streaming inference workers).

`python -m bench.serving [BACKLOG_EVENTS]`

Model: 100 trees, 31 leaves, 20 features. Broker (Tansu) on the same machine.
1. in-memory ceiling: decode + predict + encode, no Kafka;
2. sustained predictions/s of one worker process draining a backlog;
3. a naive Faust agent (decode, predict one row, send, per event) on the same backlog;
4. end-to-end latency at a fixed offered load of 5,000 events/s;
5. switch time: rollback appended -> first prediction with the rolled-back commit (20 times);
6. peak worker RSS while serving 10 versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.report import percentile, report
from modelvc.client import Client
from modelvc.processes import spawn, stop
from modelvc.stack import Stack, streams_env
from modelvc.streaming import encode_feature_event, feature_event
from streams.artifacts import LocalStore, sha256_of
from streams.codec import PREDICTIONS
from streams.core import Command, CreateModel, MakeCommit, decide
from streams.core.fold import Fold
from streams.follow import topic_partitions
from streams.topics import ensure_topics
from streams.watermarks import wait_for_ends_async
from workers.artifacts import ArtifactLoader
from workers.metrics import Metrics, sample_sum
from workers.scorer import Incoming, Scorer
from workers.settings import WorkerSettings
from workers.versions import VersionTracker

NAMES = [f"f{i:02d}" for i in range(20)]


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


def events(n: int, ref: str | None, prefix: str, seed: int = 0) -> list[bytes]:
    x = np.random.default_rng(seed).normal(size=(min(n, 10_000), len(NAMES)))
    out = []
    for i in range(n):
        row = dict(zip(NAMES, map(float, x[i % len(x)]), strict=True))
        out.append(
            encode_feature_event(feature_event("bench", row, f"e{i % 1000}", ref, f"{prefix}{i}"))
        )
    return out


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        return sample_sum(response.read().decode(), name)


# -- 1 ------------------------------------------------------------------------
def ceiling(tmp: Path, model: Path, n: int = 100_000, batch: int = 5000) -> float:
    store = LocalStore(tmp / "ceiling-store")
    data = model.read_bytes()
    digest = sha256_of(data)
    store.put(io.BytesIO(data), digest)
    fold = Fold()
    for i, body in enumerate([CreateModel(), MakeCommit(digest, "bench")]):
        for event in decide(fold.models.get("bench"), Command(f"c{i}", "bench", "b", i, body)):
            fold.apply(event)
    tracker = VersionTracker(WorkerSettings(), ArtifactLoader(store), Metrics(), fold)
    scorer = Scorer(tracker, Metrics(), "ceiling")
    values = events(n, None, "c")
    incoming = [Incoming("t", i % 4, i, 0, b"k", v) for i, v in enumerate(values)]

    async def run() -> float:
        await scorer.score(incoming[:batch])  # warm: loads the model
        started = time.perf_counter()
        produced = 0
        for i in range(0, n, batch):
            produced += len((await scorer.score(incoming[i : i + batch])).predictions)
        assert produced == n
        return n / (time.perf_counter() - started)

    return asyncio.run(run())


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
    """Predictions as they arrive, with receive times; starts at the topic's current end."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.seen: list[tuple[float, dict[str, Any]]] = []

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
                    self.seen += [(now, PREDICTIONS.decode(m.value)) for m in messages]
        finally:
            await consumer.stop()


async def paced(
    bootstrap: str, topic: str, per_second: int, seconds: float, prefix: str, ref: str | None
) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    x = np.random.default_rng(3).normal(size=(1000, len(NAMES)))
    sent, tick = 0, 0.01
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            due = int((time.monotonic() - started) * per_second)
            batch = []
            while sent < due:
                row = dict(zip(NAMES, map(float, x[sent % 1000]), strict=True))
                event = feature_event("bench", row, f"e{sent % 1000}", ref, f"{prefix}{sent}")
                batch.append(await producer.send(topic, encode_feature_event(event)))
                sent += 1
            if batch:
                await asyncio.gather(*batch)
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
    while sum(1 for _, p in tap.seen if p["feature_event_id"].startswith("lat")) < sent:
        if time.monotonic() > deadline:
            break
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


def main() -> None:
    backlog = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    rows: list[tuple[str, Any, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="modelvc-bench-") as tmp_name:
        tmp = Path(tmp_name)
        models = [train(tmp / f"m{i}.txt", i) for i in range(10)]
        print("models trained", flush=True)
        ceiling_rate = ceiling(tmp, models[0])
        print(f"ceiling {ceiling_rate:,.0f}/s", flush=True)
        stack = Stack.up(tmp / "home")
        try:
            s = stack.settings
            ensure_topics(s, extra={"bench.naive-predictions": s.partitions})
            client = stack.client()
            artifacts = [client.upload(m)["sha256"] for m in models]
            client.create("bench")
            head = client.commit("bench", artifacts[0], "bench model")["head"]
            asyncio.run(produce(s.bootstrap, s.features_topic, events(backlog, "main", "bl")))
            print(f"backlog of {backlog:,} events produced", flush=True)
            # 2. one worker drains the backlog
            worker = stack.add_worker()
            url = stack.worker_url()
            deadline = time.monotonic() + 600
            while (
                metric(url, "modelvc_predictions_total") < backlog and time.monotonic() < deadline
            ):
                time.sleep(0.5)
            worker_rate = rate(
                asyncio.run(read_all(s.bootstrap, s.predictions_topic, backlog, 120))
            )
            print(f"worker {worker_rate:,.0f}/s", flush=True)
            # 3. the naive Faust agent on the same backlog
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
            finally:
                stop(naive)
            naive_rate = rate(naive_preds)
            print(f"naive {naive_rate:,.0f}/s over {len(naive_preds):,}", flush=True)
            # 4 + 5
            live = asyncio.run(live_phases(stack, client, artifacts[:2]))
            # 6. ten versions served at once
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
        ("in-memory ceiling (decode+predict+encode)", ceiling_rate, "pred/s", ""),
        ("one worker, sustained (backlog drain)", worker_rate, "pred/s", ">= 50,000"),
        ("worker / ceiling", worker_rate / ceiling_rate, "ratio", ""),
        ("naive Faust agent, per event", naive_rate, "pred/s", ""),
        ("worker / naive", worker_rate / naive_rate, "ratio", ">= 10"),
        ("latency @5,000 ev/s p50", percentile(lat, 50), "ms", ""),
        ("latency @5,000 ev/s p99", percentile(lat, 99), "ms", "<= 50"),
        ("latency samples (events sent)", f"{len(lat)} ({live['sent']})", "", ""),
        ("switch after rollback p50 (20)", percentile(sw, 50), "ms", ""),
        ("switch after rollback p99 (20)", percentile(sw, 99), "ms", "<= 1,000"),
        ("refs served in RSS phase", served, "", "10"),
        ("worker peak RSS (VmHWM)", peak, "MB", "<= 400"),
    ]
    report("serving", rows, {"backlog": backlog, "cpu_count": os.cpu_count()})


if __name__ == "__main__":
    main()
