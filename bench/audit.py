"""Audit benchmark: replay a 1,000,000-event log from Kafka and from the archive;
verify-predictions throughput.

`python -m bench.audit [EVENTS]` (targets, issue 11: Kafka <= 40 s, archive <= 15 s, each
with one process per core)
Each replay runs in its own process so its peak memory is its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaProducer

from bench.history import model_history
from bench.report import report
from modelvc.stack import Stack, start_broker
from streams.archive import Archive, Record
from streams.codec import encode_event
from streams.core.fold import Fold, state_digest
from streams.kafka_access import KafkaAccess
from streams.settings import Settings
from streams.topics import ensure_topics, home_partition

PARTITIONS = 4
JOBS = os.cpu_count() or 1


def generate(total: int) -> tuple[list[tuple[int, bytes, bytes]], str]:
    fold = Fold()
    out: list[tuple[int, bytes, bytes]] = []
    model = 0
    while len(out) < total:
        name = f"model-{model:06d}"
        part = home_partition(name, PARTITIONS)
        out += [(part, name.encode(), encode_event(e)) for e in model_history(fold, name, 100)]
        model += 1
    # Cut at a model boundary's worth of events: recompute the expected digest on what is kept.
    out = out[:total]
    expected = Fold()
    from streams.codec import decode_event

    for _, _, value in out:
        expected.apply(decode_event(value))
    return out, state_digest(expected.models)


async def produce(bootstrap: str, topic: str, records: list[tuple[int, bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=1 << 20
    )
    await producer.start()
    try:
        for start in range(0, len(records), 20_000):
            futures = [
                await producer.send(topic, value, key=key, partition=part)
                for part, key, value in records[start : start + 20_000]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


def child(argv: list[str]) -> dict[str, float | str | int]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.audit", *argv], capture_output=True, text=True, check=True
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def replay_child(mode: str, where: str, topic: str, jobs: int) -> None:
    from modelvc import audit

    started = time.perf_counter()
    if mode == "kafka":
        result = audit.replay(KafkaAccess(where), topic, jobs=jobs)
    else:
        result = audit.replay(None, topic, Path(where), jobs=jobs)
    seconds = time.perf_counter() - started
    peak = result.peak_mb + (audit.peak_rss_mb() if jobs > 1 else 0.0)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "events": result.events,
                "digest": result.digest,
                "violations": len(result.violations),
                "peak_mb": peak,
            }
        )
    )


def verify_throughput(tmp: Path, count: int = 20_000) -> float:
    from modelvc import audit
    from modelvc.streaming import FeatureProducer
    from streams.artifacts import open_store
    from tests.conftest import train_model
    from workers.artifacts import ArtifactLoader
    from workers.metrics import sample_sum

    stack = Stack.up(tmp / "verify-home", workers=1)
    try:
        c = stack.client()
        c.create("v")
        c.commit("v", c.upload(train_model(tmp / "v.txt", 1, rounds=100))["sha256"], "v1")
        x = np.random.default_rng(0).normal(size=(1000, 4))
        with FeatureProducer(stack.settings.bootstrap, stack.settings.features_topic, 20) as p:
            for i in range(count):
                p.publish("v", {f"Column_{j}": float(v) for j, v in enumerate(x[i % 1000])})
        url = stack.worker_url()
        import urllib.request

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
                done = sample_sum(response.read().decode(), "modelvc_predictions_total")
            if done >= count:
                break
            time.sleep(0.5)
        loader = ArtifactLoader(open_store(stack.settings.artifacts, stack.settings.s3_endpoint))
        result = audit.verify_predictions(
            stack.settings.access,
            stack.settings.events_topic,
            stack.settings.predictions_topic,
            loader,
        )
        assert result.checked == count and not result.mismatches, result.mismatches[:3]
        return result.checked / result.seconds
    finally:
        stack.down()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("kafka", "archive"):
        replay_child(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory(prefix="modelvc-bench-") as tmp_name:
        tmp = Path(tmp_name)
        records, expected = generate(total)
        print(f"generated {len(records):,} events", flush=True)
        broker, bootstrap = start_broker(tmp)
        try:
            settings = Settings(bootstrap=bootstrap, partitions=PARTITIONS)
            ensure_topics(settings)
            asyncio.run(produce(bootstrap, settings.events_topic, records))
            print("produced", flush=True)
            archive = Archive(tmp / "archive", settings.events_topic)
            offsets = dict.fromkeys(range(PARTITIONS), 0)
            for part, key, value in records:
                archive.append(Record(settings.events_topic, part, offsets[part], 0, key, value))
                offsets[part] += 1
            archive.flush()
            print("archived", flush=True)
            from_kafka = child(["kafka", bootstrap, settings.events_topic, str(JOBS)])
            kafka_single = child(["kafka", bootstrap, settings.events_topic, "1"])
        finally:
            from modelvc.processes import stop

            stop(broker)
        from_archive = child(["archive", str(tmp / "archive"), settings.events_topic, str(JOBS)])
        archive_single = child(["archive", str(tmp / "archive"), settings.events_topic, "1"])
        assert from_kafka["digest"] == expected == from_archive["digest"]
        assert kafka_single["digest"] == expected == archive_single["digest"]
        assert from_kafka["violations"] == 0 == from_archive["violations"]
        verify_rate = verify_throughput(tmp)
    rows = [
        ("events", len(records), "", ""),
        (f"replay from Kafka ({JOBS} processes)", float(from_kafka["seconds"]), "s", "<= 40"),
        ("  events/s", len(records) / float(from_kafka["seconds"]), "events/s", ""),
        ("  peak RSS (all processes)", float(from_kafka["peak_mb"]), "MB", ""),
        ("replay from Kafka (1 process)", float(kafka_single["seconds"]), "s", ""),
        ("  peak RSS", float(kafka_single["peak_mb"]), "MB", ""),
        (f"replay from archive ({JOBS} processes)", float(from_archive["seconds"]), "s", "<= 15"),
        ("  events/s", len(records) / float(from_archive["seconds"]), "events/s", ""),
        ("  peak RSS (all processes)", float(from_archive["peak_mb"]), "MB", ""),
        ("replay from archive (1 process)", float(archive_single["seconds"]), "s", ""),
        ("  peak RSS", float(archive_single["peak_mb"]), "MB", ""),
        ("verify-predictions (20,000, all)", verify_rate, "pred/s", ""),
    ]
    report("audit", rows, {"digest": expected})


if __name__ == "__main__":
    main()
