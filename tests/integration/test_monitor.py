"""The monitor process on a real broker: the join's label outcomes, bad labels, a kill -9,
and drift (PSI) against a commit's reference.

One module-scoped stack (streams app, no worker): predictions are written straight to the
topics, as a worker writes them (``streams.codec.PREDICTIONS``), so each test is a few
seconds. Windows are 1 s and the horizon 3 s. Every test writes records timed from the
wall clock when it starts, so no record is older than what is already in its partitions.
The join's rules themselves are unit-tested (tests/unit/test_monitor_join.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from modelvc.processes import stop
from modelvc.stack import Stack
from streams import deadletter
from streams.codec import DEAD_LETTERS, FEATURES, LABELS, PREDICTIONS
from streams.core import monitoring
from streams.kafka_access import negotiate_sync
from streams.logreader import read_topic
from streams.monitoring.windows import Window, decode_window
from tests.conftest import train_model
from tests.integration.test_workers import wait_for

pytestmark = pytest.mark.broker

WINDOW_MS = 1000
HORIZON_MS = 3000
LATENESS_MS = 200
TUNING = {"window_ms": WINDOW_MS, "horizon_ms": HORIZON_MS, "lateness_ms": LATENESS_MS}
COMMIT = "c" * 64


@dataclass
class World:
    stack: Stack
    producer: KafkaProducer

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.producer.send(topic, key=key, value=value)

    def flush(self) -> None:
        self.producer.flush(timeout=30)

    def windows(self, model: str, monitor_id: str | None = None) -> list[Window]:
        found = []
        for record in read_topic(self.stack.settings.access, self.stack.settings.metrics_topic):
            assert record.value is not None
            window = decode_window(record.value)
            if window.model == model and monitor_id in (None, window.monitor_id):
                found.append(window)
        return found

    def scrape(self, name: str = "monitor") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        url = self.stack.monitor_url(name) + "/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, bootstrap: str) -> Iterator[World]:
    home = tmp_path_factory.mktemp("monitor") / "home"
    stack = Stack.up(home, bootstrap=bootstrap, namespace=f"m{uuid.uuid4().hex[:10]}")
    producer = None
    try:
        stack.add_monitor(**TUNING)
        producer = KafkaProducer(**negotiate_sync(stack.settings.access).producer(linger_ms=5))
        yield World(stack, producer)
    finally:
        if producer is not None:
            producer.close()
        stack.down()


def prediction(
    model: str, event: str, scored_at: int, score: float, *, commit: str = COMMIT, entity: str = ""
) -> bytes:
    return PREDICTIONS.encode(
        {
            "prediction_id": hashlib.sha256(f"{event}|{commit}".encode()).hexdigest(),
            "feature_event_id": event,
            "source_topic": "features",
            "source_partition": 0,
            "source_offset": 0,
            "model": model,
            "requested_ref": "production",
            "commit_id": commit,
            "artifact_sha256": "a" * 64,
            "scores": [score],
            "worker_id": "test",
            "event_time": scored_at - 3,
            "scored_at": scored_at,
            "entity_key": entity,
        }
    )


def label(
    model: str,
    label_time: int,
    value: float,
    *,
    event: str | None = None,
    entity: str | None = None,
    event_time: int | None = None,
) -> bytes:
    return LABELS.encode(
        {
            "label_id": uuid.uuid4().hex,
            "model": model,
            "feature_event_id": event,
            "entity_key": entity,
            "event_time": event_time,
            "values": [value],
            "label_time": label_time,
        }
    )


def now_ms() -> int:
    return int(time.time() * 1000)


def total(windows: list[Window]) -> monitoring.Stats:
    return monitoring.merge_all(w.stats for w in {w.window_id: w for w in windows}.values())


def same(a: monitoring.Stats, b: monitoring.Stats) -> bool:
    """Equal counts and histograms; sums of doubles equal up to the order they were added
    in (records of several partitions interleave differently from one run to the next)."""
    sums = ("logloss_sum", "brier_sum", "abs_err_sum", "sq_err_sum")
    exact = {f: v for f, v in vars(a).items() if f not in sums}
    return exact == {f: v for f, v in vars(b).items() if f not in sums} and all(
        math.isclose(getattr(a, f), getattr(b, f), rel_tol=1e-9, abs_tol=1e-9) for f in sums
    )


def test_early_late_and_unmatched_labels_are_counted(world: World) -> None:
    s, model, t = world.stack.settings, "early", now_ms()
    # Before its prediction: waits, then joins (early).
    world.send(s.labels_topic, label(model, t, 1.0, event="e1"))
    world.send(s.predictions_topic, prediction(model, "e1", t + 100, 0.9))
    # After the horizon: counted late, not joined.
    world.send(s.predictions_topic, prediction(model, "e2", t, 0.2))
    world.send(s.labels_topic, label(model, t + HORIZON_MS + 300, 0.0, event="e2"))
    # In time, by entity key and event time.
    world.send(s.predictions_topic, prediction(model, "e3", t + 50, 0.3, entity="alice"))
    world.send(s.labels_topic, label(model, t + 500, 0.0, entity="alice", event_time=t + 47))
    # For no prediction at all: unmatched once the horizon passes.
    world.send(s.labels_topic, label(model, t + 200, 1.0, event="nobody"))
    world.flush()

    def counted() -> monitoring.Stats | None:
        stats = total(world.windows(model))
        return stats if stats.unmatched_labels and stats.late_labels else None

    stats = wait_for(counted, 30, "the windows of the early/late labels")
    assert stats.predictions == 3
    assert (stats.labeled, stats.early_labels, stats.late_labels) == (2, 1, 1)
    assert stats.unmatched_labels == 1
    unmatched = [w for w in world.windows(model) if w.stats.unmatched_labels]
    assert [w.version.commit_id for w in unmatched] == [""]
    samples = world.scrape()
    assert samples[("modelvc_monitor_late_labels_total", (("model", model),))] == 1
    assert samples[("modelvc_monitor_early_labels_total", (("model", model),))] == 1
    assert samples[("modelvc_monitor_joined_total", (("model", model),))] == 2
    version = (("arm", ""), ("commit", COMMIT), ("model", model), ("shadow", "false"))
    assert ("modelvc_monitor_coverage", version) in samples


def test_bad_labels_become_dead_letters_with_the_reason(world: World) -> None:
    s, t = world.stack.settings, now_ms()
    before = world.scrape().get(("modelvc_monitor_bad_labels_total", ()), 0.0)
    world.send(s.labels_topic, label("bad", t, 1.0, event="e1", entity="x", event_time=t))
    world.send(s.labels_topic, b"\xc3\x01 not a label")
    world.flush()

    def letters() -> list[dict[str, Any]]:
        found = [
            DEAD_LETTERS.decode(r.value)
            for r in read_topic(s.access, s.dead_letter_topic)
            if r.value is not None
        ]
        mine = [d for d in found if d["stage"] == "label" and d["topic"] == s.labels_topic]
        return mine if len(mine) >= 2 else []

    found = wait_for(letters, 30, "two dead letters of labels")
    reasons = sorted(d["reason"] for d in found)
    assert any("not both" in r for r in reasons), reasons
    assert any("magic" in r or "schema" in r or "fingerprint" in r for r in reasons), reasons
    assert [d["model"] for d in found if "not both" in d["reason"]] == ["bad"]
    after = wait_for(
        lambda: world.scrape().get(("modelvc_monitor_bad_labels_total", ()), 0.0) >= before + 2,
        10,
        "the bad labels counted",
    )
    assert after


def test_a_kill_9_loses_no_window_and_changes_none(world: World) -> None:
    """A monitor killed with windows open and restarted on its state writes the same
    windows (by id, and figures) as one that ran through the same backlog.

    The reference starts with the one killed, after the records are all written: the
    module's monitor reads them live, where a partition's batch delayed by more than the
    200 ms lateness (a loaded machine) is rightly counted late, in the next window."""
    s, model, t = world.stack.settings, "crash", now_ms() + 1000
    for n in range(3000):
        at = t + n  # 3 windows, labels 150 ms later
        world.send(s.predictions_topic, prediction(model, f"k{n}", at, (n % 10) / 10))
        world.send(s.labels_topic, label(model, at + 150, float(n % 2), event=f"k{n}"))
    world.flush()
    world.stack.add_monitor("steady", max_batch=200, **TUNING)
    world.stack.add_monitor("crashy", max_batch=200, **TUNING)
    wait_for(lambda: world.windows(model, "crashy"), 60, "a first window before the kill")
    world.stack.restart_monitor("crashy", hard=True)
    expected = 3  # the windows of [t, t + 3000), aligned or not: 3 or 4

    def through(monitor_id: str) -> dict[str, Window] | None:
        found = {w.window_id: w for w in world.windows(model, monitor_id)}
        done = total(list(found.values())).predictions == 3000 and len(found) >= expected
        return found if done else None

    crashed = wait_for(lambda: through("crashy"), 60, "every window after the restart")
    clean = wait_for(lambda: through("steady"), 60, "every window of the monitor that ran")
    assert set(crashed) == set(clean)
    for window in world.windows(model, "crashy"):  # each copy, written before or after the kill
        assert same(window.stats, clean[window.window_id].stats)
    stats = total(list(clean.values()))
    assert (stats.predictions, stats.labeled, stats.unmatched_labels) == (3000, 3000, 0)
    live = wait_for(lambda: through("monitor"), 60, "every record in the live monitor's windows")
    assert set(live) <= set(clean)  # the live one may count a record late, never lose it
    for name in ("crashy", "steady"):
        stop(world.stack.processes.pop(name))
        world.stack.monitors.pop(name)


def test_psi_of_a_commit_with_a_reference(world: World, tmp_path: Path) -> None:
    s, model, client = world.stack.settings, "drift", world.stack.client()
    reference = monitoring.reference_from_rows(
        ["f0", "f1"], [[float(i % 10), float(i % 7)] for i in range(1000)], bins=4
    )
    digest = client.upload_reference(monitoring.reference_to_json(reference))["sha256"]
    client.create(model)
    artifact = client.upload(train_model(tmp_path / "m.txt"))["sha256"]
    commit = client.commit(model, artifact, "with bins", reference_sha256=digest)["head"]
    # The first prediction of the commit makes the monitor fetch its reference.
    world.send(s.predictions_topic, prediction(model, "first", now_ms(), 0.5, commit=commit))
    world.flush()

    def health() -> dict[str, Any]:
        with urllib.request.urlopen(world.stack.monitor_url() + "/healthz", timeout=5) as r:
            return dict(json.loads(r.read()))

    wait_for(lambda: health()["reading_features"], 30, "the monitor reading features")
    t = now_ms()
    for n in range(200):  # live values far above the training data: f0 drifts
        event = f"d{n}"
        world.send(
            s.features_topic,
            FEATURES.encode(
                {
                    "event_id": event,
                    "model": model,
                    "ref": None,
                    "entity_key": f"u{n}",
                    "event_time": t + n,
                    "features": {"f0": 100.0 + n, "f1": float(n % 7)},
                }
            ),
        )
        world.send(s.predictions_topic, prediction(model, event, t + n + 2, 0.5, commit=commit))
    world.flush()
    version = (("arm", ""), ("commit", commit), ("model", model), ("shadow", "false"))

    def psi() -> dict[str, float] | None:
        samples = world.scrape()
        found = {
            dict(labels)["feature"]: value
            for (name, labels), value in samples.items()
            if name == "modelvc_monitor_psi"
            and tuple(pair for pair in labels if pair[0] != "feature") == version
        }
        return found if "f0" in found else None

    found = wait_for(psi, 30, "the PSI gauges")
    assert found["f0"] > 1.0  # every live value beyond the last bin
    assert found.get("f1", 0.0) < 0.1  # same distribution as training
    windows = [w for w in world.windows(model) if w.stats.reference_sha256]
    assert windows and all(w.stats.reference_sha256 == digest for w in windows)


def test_the_dead_letter_record_carries_the_model(world: World) -> None:
    """Dead letters a worker attributes to a version count in that version's windows."""
    s, model, t = world.stack.settings, "letters", now_ms()
    world.send(s.predictions_topic, prediction(model, "ok", t, 0.5))
    letter = deadletter.record(
        s.features_topic,
        0,
        1,
        None,
        b"x",
        "a missing feature",
        "score",
        at=t + 1,
        model=model,
        commit_id=COMMIT,
    )
    world.send(s.dead_letter_topic, DEAD_LETTERS.encode(letter))
    world.flush()

    def counted() -> monitoring.Stats | None:
        stats = total(world.windows(model))
        return stats if stats.dead_letters and stats.predictions else None

    stats = wait_for(counted, 30, "the dead letter counted")
    assert (stats.predictions, stats.dead_letters) == (1, 1)
    rate = monitoring.figures(stats, WINDOW_MS)["dead_letter_rate"]
    assert rate == 0.5
