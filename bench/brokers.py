"""The broker column: the same measurements on Tansu and on one Apache Kafka broker, one run.

`python -m bench.brokers [BACKLOG] [AUDIT_EVENTS]` (defaults 200,000 and 1,000,000)

For each broker, on a fresh broker of its own:
1. commit round trip (accepted -> visible in `log`), p50/p99 over 300 commits;
2. one worker draining a BACKLOG of feature events, at-least-once;
3. the same backlog drained by a second worker group with exactly-once delivery
   (Kafka only: Tansu has no transactions);
4. end-to-end latency p99 at an offered 5,000 events/s for 10 s;
5. `audit replay` of AUDIT_EVENTS events read from the broker (one process);
6. the broker's peak RSS (VmHWM of the Tansu process, or of the Kafka JVM).
Model and events as bench/serving.py (100 trees, 31 leaves, 20 features).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from bench import audit as audit_bench
from bench import serving
from bench.report import percentile, report
from modelvc.client import Client
from modelvc.kafka_broker import running_cluster
from modelvc.processes import stop
from modelvc.stack import Stack, start_broker, start_worker
from streams.codec import PREDICTIONS
from streams.follow import topic_partitions
from streams.kafka_access import Delivery
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.conftest import train_model


@contextlib.contextmanager
def broker(kind: str, home: Path) -> Iterator[tuple[str, int]]:
    """A fresh broker of ``kind``: its bootstrap and the pid whose RSS is the broker's."""
    if kind == "kafka":
        with running_cluster(home / "kafka", brokers=1) as cluster:
            yield cluster.bootstrap, next(iter(cluster.processes.values())).pid
        return
    spawned, bootstrap = start_broker(home)
    try:
        yield bootstrap, spawned.pid
    finally:
        stop(spawned)


def commit_round_trip(stack: Stack, tmp: Path, count: int = 300) -> list[float]:
    c = stack.client()
    digest = c.upload(train_model(tmp / "rt.txt"))["sha256"]
    c.create("rt")
    visible: list[float] = []
    for i in range(count):
        t0 = time.perf_counter()
        head = c.commit("rt", digest, f"commit {i}")["head"]
        assert c.log("rt", head)["commits"][0]["id"] == head
        visible.append((time.perf_counter() - t0) * 1000)
    return visible


async def scored_times(bootstrap: str, topic: str, worker: str, count: int) -> list[int]:
    """``scored_at`` of ``count`` committed predictions written by ``worker``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        fetch_max_wait_ms=20,
        max_partition_fetch_bytes=8 << 20,
    )
    await consumer.start()
    out: list[int] = []
    try:
        tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        deadline = time.monotonic() + 900
        while len(out) < count and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500, max_records=50_000)).values():
                for m in messages:
                    p = PREDICTIONS.decode(m.value)
                    if p["worker_id"] == worker:
                        out.append(p["scored_at"])
    finally:
        await consumer.stop()
    return out


def drain(stack: Stack, name: str, delivery: Delivery, backlog: int) -> float:
    """Predictions/s of one worker of its own group draining the whole backlog; the worker
    keeps running (caught up) in ``stack.processes[name]`` for the latency phase."""
    settings = dataclasses.replace(stack.settings, delivery=delivery)
    # Its own consumer group, so it reads the whole backlog whatever ran before.
    os.environ["MODELVC_WORKER_GROUP"] = f"{settings.namespace}-{name}"
    try:
        worker = start_worker(settings, stack.home, name)
    finally:
        del os.environ["MODELVC_WORKER_GROUP"]
    stack.processes[name] = worker
    times = asyncio.run(scored_times(settings.bootstrap, settings.predictions_topic, name, backlog))
    assert len(times) >= backlog, f"{name}: {len(times)} of {backlog} predictions"
    return backlog / max(1e-3, (max(times) - min(times)) / 1000)


def latency_p99(stack: Stack, client: Client, artifacts: list[str], name: str) -> float:
    """p99 end to end at 5,000 events/s, served by the caught-up worker ``name`` alone."""
    try:
        live = asyncio.run(serving.live_phases(stack, client, artifacts, switches=0))
    finally:
        stop(stack.processes.pop(name))
    return percentile(live["latencies"], 99)


def audit_replay(bootstrap: str, tmp: Path, events: int) -> float:
    records, expected = audit_bench.generate(events)
    settings = Settings(namespace="audit", bootstrap=bootstrap, partitions=audit_bench.PARTITIONS)
    ensure_topics(settings)
    asyncio.run(audit_bench.produce(bootstrap, settings.events_topic, records))
    replayed = audit_bench.child(["kafka", bootstrap, settings.events_topic, "1"])
    assert replayed["digest"] == expected, "replay digest differs from the generated log's"
    return float(replayed["seconds"])


def measure(kind: str, tmp: Path, backlog: int, audit_events: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with broker(kind, tmp) as (bootstrap, pid):
        stack = Stack.up(tmp / "home", bootstrap=bootstrap, namespace="bench")
        try:
            rt = commit_round_trip(stack, tmp)
            out["commit p50"], out["commit p99"] = percentile(rt, 50), percentile(rt, 99)
            models = [serving.train(tmp / f"m{i}.txt", i) for i in range(2)]
            client = stack.client()
            artifacts = [client.upload(m)["sha256"] for m in models]
            client.create("bench")
            client.commit("bench", artifacts[0], "bench model")
            s = stack.settings
            asyncio.run(
                serving.produce(s.bootstrap, s.features_topic, serving.events(backlog, "main", "b"))
            )
            print(f"[{kind}] backlog of {backlog:,} produced", flush=True)
            out["worker"] = drain(stack, "alo", "at-least-once", backlog)
            out["p99 @5k"] = latency_p99(stack, client, artifacts, "alo")
            print(
                f"[{kind}] at-least-once {out['worker']:,.0f}/s, p99 @5k {out['p99 @5k']:,.1f} ms"
            )
            if kind == "kafka":
                out["worker eos"] = drain(stack, "eos", "exactly-once", backlog)
                out["p99 @5k eos"] = latency_p99(stack, client, artifacts, "eos")
                eos, p99 = out["worker eos"], out["p99 @5k eos"]
                print(f"[{kind}] exactly-once {eos:,.0f}/s, p99 @5k {p99:,.1f} ms", flush=True)
        finally:
            stack.down()
        out["audit replay"] = audit_replay(bootstrap, tmp, audit_events)
        print(f"[{kind}] audit replay {out['audit replay']:,.1f} s", flush=True)
        out["broker rss"] = serving.rss_mb(pid)
    return out


def main() -> None:
    backlog = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    audit_events = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    found: dict[str, dict[str, Any]] = {}
    for kind in ("tansu", "kafka"):
        with tempfile.TemporaryDirectory(prefix=f"modelvc-bench-{kind}-") as tmp:
            found[kind] = measure(kind, Path(tmp), backlog, audit_events)
    t, k = found["tansu"], found["kafka"]
    na = "n/a (no transactions)"
    rows: list[tuple[str, Any, str, str]] = [
        ("commit round trip p50 (Tansu)", t["commit p50"], "ms", ""),
        ("commit round trip p50 (Kafka)", k["commit p50"], "ms", ""),
        ("commit round trip p99 (Tansu)", t["commit p99"], "ms", ""),
        ("commit round trip p99 (Kafka)", k["commit p99"], "ms", "<= 100"),
        (f"worker, {backlog:,} backlog (Tansu)", t["worker"], "pred/s", ""),
        (f"worker, {backlog:,} backlog (Kafka)", k["worker"], "pred/s", ""),
        ("worker exactly-once (Tansu)", na, "", ""),
        ("worker exactly-once (Kafka)", k["worker eos"], "pred/s", ""),
        ("exactly-once / at-least-once (Kafka)", k["worker eos"] / k["worker"], "ratio", ">= 0.7"),
        ("p99 end to end @5,000 ev/s (Tansu)", t["p99 @5k"], "ms", ""),
        ("p99 end to end @5,000 ev/s (Kafka)", k["p99 @5k"], "ms", "<= 50"),
        ("p99 end to end @5,000 ev/s (Kafka, exactly-once)", k["p99 @5k eos"], "ms", ""),
        (f"audit replay {audit_events:,} (Tansu)", t["audit replay"], "s", ""),
        (f"audit replay {audit_events:,} (Kafka)", k["audit replay"], "s", ""),
        ("broker peak RSS (Tansu)", t["broker rss"], "MB", ""),
        ("broker peak RSS (Kafka)", k["broker rss"], "MB", ""),
    ]
    report(
        "brokers",
        rows,
        {"backlog": backlog, "audit_events": audit_events, "cpu_count": os.cpu_count()},
    )


if __name__ == "__main__":
    main()
