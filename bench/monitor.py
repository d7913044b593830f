"""The monitor and the rollout controller: join rate, memory, time to decision.

- **join rate**: N predictions and their N labels are on the topics before one monitor
  process starts; records (predictions + labels) per second from the moment it is ready
  until the metric windows on ``modelvc.metrics`` account for every pair (target
  >= 50,000/s; the last window waits for the watermark, so the figure is a floor), and
  the same with the process's start-up included, and per CPU second the monitor spent
  (the figure that the neighbours on a shared machine do not move).
- **RSS for 1M open predictions**: the monitor's resident memory once it holds a million
  predictions whose labels have not come (counted in the windows it wrote).
- **time to decision**: a rollout of many small steps; at each step the candidate's
  labels are published in one burst once its predictions are out, and the time from the
  burst's last label to the ``RolloutAdvanced`` event (its ``at``) is measured
  (target p99 <= 2 s). A trickle of baseline traffic keeps the watermark moving, as live
  traffic does; the windows are short (``WINDOW_MS``), as a canary's should be.

`python -m bench.monitor [PAIRS] [OPEN] [ROLLOUTS]` (defaults 200,000, 1,000,000 and 2; 0
skips that part).
"""

from __future__ import annotations

import functools
import hashlib
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaProducer

from bench.report import percentile, report
from bench.serving import cpu_seconds
from bench.streams_memory import vm
from modelvc.demo import FEATURES, churn_truth, train
from modelvc.stack import Stack
from modelvc.streaming import FeatureProducer
from streams.codec import LABELS, PREDICTIONS
from streams.core import rollout
from streams.logreader import read_topic
from streams.monitoring.windows import decode_window

WINDOW_MS = 1000  # the shortest the monitor takes
LATENESS_MS = 250
MODEL = "churn"
STEP_LABELS = 50  # the candidate labels each step needs (the policy's min_labels)
STEPS = tuple(range(5, 101, 5))  # 20 steps: 19 measured (the last one moves the alias)


@contextmanager
def stack_with(workers: int) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="modelvc-bench-") as tmp:
        stack = Stack.up(Path(tmp) / "home", workers=workers)
        try:
            yield stack
        finally:
            stack.down()


# -- join rate and memory ---------------------------------------------------------------
def window_totals(stack: Stack) -> tuple[int, int]:
    """(predictions, labelled pairs) in every metric window written so far (one per id)."""
    windows = {}
    for r in read_topic(stack.settings.access, stack.settings.metrics_topic):
        if r.value:
            window = decode_window(r.value)
            windows[window.window_id] = window.stats
    return (
        sum(s.predictions for s in windows.values()),
        sum(s.labeled for s in windows.values()),
    )


def preload(stack: Stack, count: int, labelled: bool, prefix: str) -> float:
    """Write ``count`` predictions (and their labels) as a worker and a labeller would;
    the seconds it took."""
    started = time.perf_counter()
    access = stack.settings.access
    producer = KafkaProducer(
        **access.producer(linger_ms=20, batch_size=1 << 20, max_request_size=8 << 20)
    )
    now = int(time.time() * 1000)
    commit = hashlib.sha256(b"bench commit").hexdigest()
    rng = np.random.default_rng(0)
    scores = rng.random(count)
    for n in range(count):
        event_id = f"{prefix}-{n}"
        at = now + n * 1000 // max(1, count)  # a second's worth of traffic, in order
        prediction = {
            "prediction_id": hashlib.sha256(event_id.encode()).hexdigest(),
            "feature_event_id": event_id,
            "source_topic": stack.settings.features_topic,
            "source_partition": 0,
            "source_offset": n,
            "model": MODEL,
            "requested_ref": "production",
            "commit_id": commit,
            "artifact_sha256": commit,
            "scores": [float(scores[n])],
            "worker_id": "bench",
            "event_time": at - 5,
            "scored_at": at,
            "key_id": "",
            "signature": b"",
            "entity_key": f"customer-{n % 10_000}",
            "rollout_id": "",
            "arm": "",
            "shadow": False,
        }
        producer.send(
            stack.settings.predictions_topic,
            key=event_id.encode(),
            value=PREDICTIONS.encode(prediction),
        )
        if labelled:
            label = {
                "label_id": event_id,
                "model": MODEL,
                "feature_event_id": event_id,
                "entity_key": None,
                "event_time": None,
                "values": [float(scores[n] > 0.5)],
                "label_time": at + 10,
            }
            producer.send(
                stack.settings.labels_topic, key=event_id.encode(), value=LABELS.encode(label)
            )
    producer.flush()
    producer.close()
    return time.perf_counter() - started


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


def join_rate(pairs: int) -> dict[str, float]:
    with stack_with(workers=0) as stack:
        loaded = preload(stack, pairs, labelled=True, prefix="join")
        started = time.perf_counter()
        monitor = stack.add_monitor(window_ms=WINDOW_MS, lateness_ms=LATENESS_MS)
        ready = time.perf_counter()
        cpu_ready = cpu_seconds(monitor.pid)
        wait_for(
            f"the monitor to pair {pairs:,} labels",
            lambda: window_totals(stack)[1] >= pairs,
            timeout=1800,
        )
        done = time.perf_counter()
        cpu = cpu_seconds(monitor.pid) - cpu_ready
        peak = vm(monitor.pid, "VmHWM")
    return {
        "preload_s": loaded,
        "start_s": ready - started,
        "join_s": done - ready,
        # From ready to the last window written: the last window waits for the watermark
        # (lateness, then the idle rule), so this too is a floor of the join's own rate.
        "rate": 2 * pairs / (done - ready),
        "rate_with_start": 2 * pairs / (done - started),
        # On a shared machine the wall-clock rate is the neighbours' as much as ours: the
        # monitor's own CPU seconds give the rate of one process with a core to itself.
        "cpu_s": cpu,
        "rate_per_cpu_s": 2 * pairs / cpu if cpu > 0 else float("nan"),
        "peak_mb": peak,
    }


def open_memory(count: int) -> dict[str, float]:
    with stack_with(workers=0) as stack:
        monitor = stack.add_monitor(window_ms=WINDOW_MS, lateness_ms=LATENESS_MS)
        idle = vm(monitor.pid, "VmRSS")
        preload(stack, count, labelled=False, prefix="open")
        wait_for(
            f"the monitor to hold {count:,} predictions",
            lambda: window_totals(stack)[0] >= count,
            timeout=1800,
        )
        return {
            "idle_mb": idle,
            "rss_mb": vm(monitor.pid, "VmRSS"),
            "peak_mb": vm(monitor.pid, "VmHWM"),
        }


# -- time to decision ---------------------------------------------------------------------
def entities(rollout_id: str, low: int, high: int, count: int) -> list[str]:
    """``count`` entity keys whose bucket of ``rollout_id`` is in [low, high) percent."""
    scale = rollout.BUCKETS // 100
    found: list[str] = []
    n = 0
    while len(found) < count:
        key = f"customer-{n}"
        if low * scale <= rollout.bucket(rollout_id, key) < high * scale:
            found.append(key)
        n += 1
    return found


def scored(stack: Stack, event_ids: set[str]) -> bool:
    seen: set[str] = set()
    for r in read_topic(stack.settings.access, stack.settings.predictions_topic):
        if r.value:
            event_id = PREDICTIONS.decode(r.value)["feature_event_id"]
            if event_id in event_ids:
                seen.add(event_id)
    return seen == event_ids


def send(
    producer: FeatureProducer, keys: list[str], prefix: str, rng: np.random.Generator
) -> list[tuple[str, int]]:
    """One feature event per entity of ``keys`` for production; (event id, true label)."""
    x = rng.normal(size=(len(keys), len(FEATURES)))
    sent = []
    for n, (key, row, y) in enumerate(zip(keys, x, churn_truth(x, rng), strict=True)):
        features = dict(zip(FEATURES, map(float, row), strict=True))
        event_id = producer.publish(MODEL, features, key, "production", f"{prefix}-{n}")
        sent.append((event_id, int(y)))
    producer.flush()
    return sent


def label(producer: FeatureProducer, sent: list[tuple[str, int]]) -> None:
    for event_id, y in sent:
        producer.publish_label(MODEL, [float(y)], feature_event_id=event_id)
    producer.flush()


def trickle(producer: FeatureProducer, rid: str, keys: list[str], stop: threading.Event) -> None:
    """Baseline traffic, labelled, ten times a second: live traffic moves the watermark."""
    rng = np.random.default_rng(2)
    batch = 0
    while not stop.wait(0.1):
        label(producer, send(producer, keys[batch % 10 :: 10], f"{rid}-t{batch}", rng))
        batch += 1


def one_rollout(
    stack: Stack, producer: FeatureProducer, baseline: str, candidate: str
) -> list[float]:
    """Milliseconds from each step's last label to the controller's RolloutAdvanced."""
    c = stack.client()  # production serves the baseline: each rollout is aborted at the end
    started = c.start_rollout(
        MODEL,
        "production",
        candidate,
        STEPS,
        min_labels=STEP_LABELS,
        max_regression={"logloss": 1.0},  # time is measured here, not judgement
    )
    rid = str(started["rollout"]["id"])
    ours = entities(rid, 0, STEPS[0], STEP_LABELS)  # the candidate's from the first step
    theirs = entities(rid, 99, 100, 200)  # the baseline's until the last step
    rng = np.random.default_rng(1)
    stop = threading.Event()
    thread = threading.Thread(target=trickle, args=(producer, rid, theirs, stop), daemon=True)
    thread.start()
    out: list[float] = []
    try:
        for step in range(len(STEPS) - 1):
            sent = send(producer, ours, f"{rid}-s{step}", rng)
            ids = {event_id for event_id, _ in sent}
            wait_for("the step's predictions", functools.partial(scored, stack, ids), 60)
            label(producer, sent)
            last_label = time.time() * 1000
            out.append(wait_step(c, rid, step)["at"] - last_label)
            print(f"rollout {rid} step {step}: {out[-1]:.0f} ms", flush=True)
    finally:
        stop.set()
        thread.join(10)
    c.control_rollout(MODEL, rid, "abort", "benchmark done")
    return out


def decisions(rollouts: int) -> list[float]:
    out: list[float] = []
    with stack_with(workers=1) as stack, tempfile.TemporaryDirectory() as work:
        stack.add_monitor(window_ms=WINDOW_MS, lateness_ms=LATENESS_MS)
        c = stack.client()
        c.create(MODEL)
        models = {
            "baseline": train(Path(work) / "b.txt", 1, 10, 7),
            "candidate": train(Path(work) / "c.txt", 4, 100, 15, rows=5000),
        }
        heads = {
            name: c.commit(MODEL, c.upload(path)["sha256"], name)["head"]
            for name, path in models.items()
        }
        c.set_alias(MODEL, "production", heads["baseline"])
        settings = stack.settings
        with FeatureProducer(
            settings.access, settings.features_topic, labels_topic=settings.labels_topic
        ) as producer:
            for _ in range(rollouts):
                out += one_rollout(stack, producer, heads["baseline"], heads["candidate"])
    return out


def wait_step(c: Any, rid: str, step: int, timeout: float = 60.0) -> dict[str, Any]:
    """The decision that ended ``step`` of rollout ``rid``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = c.rollout(MODEL, rid)
        for d in answer["decisions"]:
            if d["type"] == "RolloutAdvanced" and d["from_step"] == step:
                return dict(d)
            if d["type"] == "RolloutAborted":
                raise SystemExit(f"rollout {rid} aborted: {answer['reason']}")
        time.sleep(0.05)
    raise SystemExit(f"no decision on step {step} of rollout {rid} within {timeout:.0f}s")


def main() -> None:
    """Arguments: pairs to join, open predictions to hold, rollouts to time (0 skips one)."""
    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    open_count = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    rollouts = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    rows: list[tuple[str, Any, str, str]] = []
    extra: dict[str, Any] = {"window_ms": WINDOW_MS, "lateness_ms": LATENESS_MS}
    if pairs:
        joined = extra["join"] = join_rate(pairs)
        print(f"join: {joined}", flush=True)
        rows += [
            ("pairs joined (predictions + labels)", 2 * pairs, "records", ""),
            ("join rate, one process", joined["rate"], "records/s", ">= 50,000"),
            ("join rate, start-up included", joined["rate_with_start"], "records/s", ""),
            ("join rate per CPU second of the monitor", joined["rate_per_cpu_s"], "records/s", ""),
        ]
    if open_count:
        memory = extra["memory"] = open_memory(open_count)
        print(f"open predictions: {memory}", flush=True)
        rows += [
            ("open predictions held", open_count, "", ""),
            ("RSS idle", memory["idle_mb"], "MB", ""),
            ("RSS holding the open predictions", memory["rss_mb"], "MB", "reported"),
        ]
    if rollouts:
        times = extra["decision_ms"] = decisions(rollouts)
        extra["step_labels"] = STEP_LABELS
        rows += [
            ("decisions measured", len(times), "", ""),
            ("time to decision p50", percentile(times, 50), "ms", ""),
            ("time to decision p99", percentile(times, 99), "ms", "<= 2,000"),
            ("time to decision max", max(times), "ms", ""),
        ]
    report("monitor", rows, extra=extra)


if __name__ == "__main__":
    main()
