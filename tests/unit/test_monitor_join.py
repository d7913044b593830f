"""The monitor's join of predictions with labels (workers.monitor.join): no broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import deadletter
from streams.codec import DEAD_LETTERS, LABELS, PREDICTIONS
from streams.core import monitoring
from streams.core.monitoring import Stats
from streams.monitoring.windows import MemoryRows
from workers.monitor import app, join
from workers.monitor.app import Monitor
from workers.monitor.join import Joiner, Label, Prediction
from workers.monitor.metrics import MonitorMetrics
from workers.monitor.settings import MonitorSettings
from workers.monitor.windows import Closed, WindowKey, unattributed

WINDOW = 1000
HORIZON = 10_000
COMMIT = "c" * 64
SHADOW = "d" * 64
FAR = 10**12  # a wall clock far past every record


def prediction(
    event: str,
    scored_at: int,
    score: float = 0.9,
    *,
    commit: str = COMMIT,
    shadow: bool = False,
    entity: str = "",
    event_time: int | None = None,
) -> Prediction:
    return Prediction(
        prediction_id=f"{event}|{commit}|{shadow}",
        feature_event_id=event,
        key=WindowKey("m", "production", commit, "", "", shadow),
        entity_key=entity,
        event_time=scored_at - 5 if event_time is None else event_time,
        scored_at=scored_at,
        score=score,
    )


def label(
    event: str | None,
    label_time: int,
    value: float = 1.0,
    *,
    entity: str | None = None,
    event_time: int | None = None,
    label_id: str | None = None,
) -> Label:
    return Label(
        label_id or f"l-{event or entity}-{label_time}",
        "m",
        event,
        entity,
        event_time,
        value,
        label_time,
    )


def joiner(store: MemoryRows | None = None) -> Joiner:
    return Joiner(store or MemoryRows(), WINDOW, HORIZON, lateness_ms=0)


def close_all(j: Joiner) -> dict[tuple[WindowKey, int], Stats]:
    closed = j.advance([], now_ms=FAR, idle=True)
    j.commit({})
    return {(c.key, c.start_ms): c.stats for c in closed}


def total(closed: dict[tuple[WindowKey, int], Stats], key: WindowKey) -> Stats:
    return monitoring.merge_all(s for (k, _), s in closed.items() if k == key)


KEY = prediction("e", 0).key


def test_a_label_after_its_prediction_pairs_in_the_window_of_the_label() -> None:
    j = joiner()
    j.prediction(prediction("e1", 1500, 0.8), "p/0")
    j.label(label("e1", 2500, 1.0), "l/0")
    closed = close_all(j)
    assert closed[(KEY, 1000)].predictions == 1
    pair = closed[(KEY, 2000)]
    assert (pair.labeled, pair.binary, pair.early_labels, pair.late_labels) == (1, 1, 0, 0)
    assert pair.join_lag_ms_sum == 1000
    assert abs(pair.abs_err_sum - 0.2) < 1e-12


def test_a_label_before_its_prediction_waits_and_is_counted_early() -> None:
    j = joiner()
    j.label(label("e1", 1200, 0.0), "l/0")
    j.prediction(prediction("e1", 1700, 0.1), "p/0")
    stats = total(close_all(j), KEY)
    assert (stats.labeled, stats.early_labels, stats.unmatched_labels) == (1, 1, 0)


def test_a_non_finite_score_is_kept_in_the_state_and_counted_as_in_memory() -> None:
    # A model may score NaN or infinity: the state written at the commit must hold it
    # (a refused write would stop the monitor on that batch again at every restart).
    store = MemoryRows()
    j = joiner(store)
    j.prediction(prediction("nan", 1500, float("nan")), "p/0")
    j.prediction(prediction("inf", 1500, float("inf")), "p/0")
    j.commit({"p/0": 2})
    again = joiner(store)  # a restart: the predictions are read back from the rows
    again.label(label("nan", 1600, 1.0), "l/0")
    again.label(label("inf", 1600, 1.0), "l/0")
    stats = total(close_all(again), KEY)
    assert (stats.predictions, stats.labeled, stats.binary) == (2, 1, 0)
    assert stats.abs_err_sum == monitoring.MAX_ERROR


def test_a_label_past_the_horizon_is_late_not_paired() -> None:
    j = joiner()
    j.prediction(prediction("e1", 1000), "p/0")
    j.label(label("e1", 1000 + HORIZON + 1), "l/0")
    stats = total(close_all(j), KEY)
    assert (stats.labeled, stats.late_labels, stats.unmatched_labels) == (0, 1, 0)


def test_a_label_that_never_meets_its_prediction_is_unmatched_for_the_model() -> None:
    j = joiner()
    j.label(label("nobody", 5000), "l/0")
    # Within the horizon it still waits: nothing counted yet.
    assert j.advance(["l/0"], now_ms=FAR, idle=False) == []
    closed = close_all(j)
    assert total(closed, unattributed("m")).unmatched_labels == 1
    assert total(closed, KEY) == monitoring.EMPTY


def test_labels_by_entity_key_and_event_time_join_in_either_order() -> None:
    j = joiner()
    j.prediction(prediction("e1", 1000, entity="alice", event_time=990), "p/0")
    j.label(label(None, 1100, entity="alice", event_time=990), "l/0")
    j.label(label(None, 1100, entity="bob", event_time=995), "l/0")
    j.prediction(prediction("e2", 1200, entity="bob", event_time=995), "p/0")
    j.label(label(None, 1100, entity="carol", event_time=1), "l/0")  # no such event
    closed = close_all(j)
    stats = total(closed, KEY)
    assert (stats.predictions, stats.labeled, stats.early_labels) == (2, 2, 1)
    assert total(closed, unattributed("m")).unmatched_labels == 1


def test_one_label_pairs_with_the_served_and_the_shadow_prediction_once_each() -> None:
    j = joiner()
    j.prediction(prediction("e1", 1000), "p/0")
    j.label(label("e1", 1100), "l/0")
    j.prediction(prediction("e1", 1050, commit=SHADOW, shadow=True), "s/0")
    j.label(label("e1", 1100), "l/0")  # redelivered: same label id
    j.prediction(prediction("e1", 1000), "p/0")  # redelivered: same prediction id
    closed = close_all(j)
    served, shadow = (
        total(closed, KEY),
        total(closed, prediction("e1", 0, commit=SHADOW, shadow=True).key),
    )
    assert (served.predictions, served.labeled) == (1, 1)
    assert (shadow.predictions, shadow.labeled) == (1, 1)


def test_dead_letters_count_against_the_version_that_served() -> None:
    j = joiner()
    j.prediction(prediction("e1", 1000), "p/0")
    j.dead_letter("m", COMMIT, 1200, "d/0")
    j.dead_letter("m", "e" * 64, 1300, "d/0")
    closed = close_all(j)
    assert total(closed, KEY).dead_letters == 1
    assert total(closed, WindowKey("m", "", "e" * 64, "", "", False)).dead_letters == 1


def test_features_count_into_the_reference_bins_of_the_commit_that_scored() -> None:
    reference = monitoring.reference_from_rows(["x"], [[float(i)] for i in range(100)], bins=4)
    j = joiner()
    j.references[COMMIT] = ("a" * 64, reference)
    j.features("m", "e1", {"x": 1.0}, 990, "f/0")
    j.prediction(prediction("e1", 1000), "p/0")
    j.prediction(prediction("e2", 1000), "p/0")
    j.features("m", "e2", {"x": 99.0}, 995, "f/0")
    stats = total(close_all(j), KEY)
    assert stats.reference_sha256 == "a" * 64
    hist = stats.feature_hists["x"]
    assert sum(hist) == 2 and hist[0] == 1 and hist[-1] == 1


Record = tuple[str, int, int, float]  # (kind, event number, time, value)


def _feed(j: Joiner, record: Record) -> None:
    kind, n, at, value = record
    if kind == "p":
        j.prediction(prediction(f"e{n}", at, value), "p/0")
    else:
        j.label(label(f"e{n}", at, 1.0 if value > 0.5 else 0.0), "l/0")


records = st.lists(
    st.tuples(
        st.sampled_from("pl"),
        st.integers(0, 20),
        st.integers(0, 3 * HORIZON),
        st.floats(0, 1),
    ),
    max_size=60,
)


def _run(stream: list[Record], crash_at: int | None) -> list[Closed]:
    """Every window closed, feeding ``stream`` one record a batch; with ``crash_at``, the
    state after that batch is never committed and the monitor restarts from the store."""
    store = MemoryRows()
    j = joiner(store)
    out: list[Closed] = []
    offset = 0
    while offset < len(stream):
        _feed(j, stream[offset])
        closed = j.advance(["p/0"], now_ms=FAR, idle=False)
        out.extend(closed)  # written to the topic before the state: written again after a crash
        if offset == crash_at:
            crash_at = None  # once
            j = joiner(store)  # killed before the commit: back to the last one
            offset = j.positions.get("src", 0)
            continue
        offset += 1
        j.commit({"src": offset})
    out.extend(j.advance([], now_ms=FAR, idle=True))
    return out


@settings(max_examples=60, deadline=None)
@given(records, st.integers(0, 59))
def test_a_crash_before_the_commit_loses_no_window_and_changes_none(
    stream: list[Record], crash_at: int
) -> None:
    clean = {c.window_id: c for c in _run(stream, None)}
    crashed = _run(stream, crash_at)
    assert {c.window_id for c in crashed} == set(clean)
    for window in crashed:  # a window written twice is the same window twice
        assert window == clean[window.window_id]
    # Every prediction counted; one redelivered after it expired (twice the horizon) again.
    counted = monitoring.merge_all(c.stats for c in clean.values()).predictions
    kinds = [kind for kind, *_ in stream]
    assert len({n for kind, n, _, _ in stream if kind == "p"}) <= counted <= kinds.count("p")


def test_a_redelivered_entity_keyed_label_pairs_once_after_its_prediction() -> None:
    j = joiner()
    early = label(None, 600, entity="ent-1", event_time=500, label_id="L1")
    j.label(early, "l/0")  # before its prediction: waits under the entity key
    j.prediction(prediction("ev-1", 700, entity="ent-1", event_time=500), "p/0")
    j.commit({})
    j.label(early, "l/0")  # redelivered: the entity now leads to the event's key
    assert total(close_all(j), KEY).labeled == 1


def test_dead_letters_naming_their_arm_count_against_it() -> None:
    j = joiner()
    baseline = WindowKey("m", "production", "b" * 64, "r0123456789a", "baseline", False)
    j.prediction(prediction("e1", 1000)._replace(key=baseline), "p/0")
    j.dead_letter("m", COMMIT, 1200, "d/0", "production", "r0123456789a", "candidate")
    candidate = baseline._replace(commit_id=COMMIT, arm="candidate")
    assert total(close_all(j), candidate).dead_letters == 1


def test_the_versions_remembered_for_dead_letters_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(join, "MAX_VERSIONS_CACHED", 3)
    j = joiner()
    for i in range(5):
        j.prediction(prediction(f"e{i}", 1000, commit=f"{i:064x}"), "p/0")
    assert len(j._versions) == 3
    # The store keeps them all: an old commit's dead letters still find their version.
    j.commit({})
    j.dead_letter("m", f"{0:064x}", 1200, "d/0")
    assert total(close_all(j), KEY._replace(commit_id=f"{0:064x}")).dead_letters == 1


# -- the monitor's decoding (workers.monitor.app.Monitor.process) ------------------------
NOW_MS = 1_700_000_000_000
SETTINGS = MonitorSettings()
TOPICS = SETTINGS.topics


def _prediction_record(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "prediction_id": "p1",
        "feature_event_id": "e1",
        "source_topic": TOPICS.features_topic,
        "source_partition": 0,
        "source_offset": 0,
        "model": "m",
        "requested_ref": "production",
        "commit_id": COMMIT,
        "artifact_sha256": "a" * 64,
        "scores": [0.5],
        "worker_id": "w",
        "event_time": NOW_MS - 5,
        "scored_at": NOW_MS,
    }
    return record | changes


def _message(topic: str, value: bytes, offset: int = 0) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(topic, 0, offset, NOW_MS, 0, None, value, None, 0, len(value), ())


def _monitor(store: MemoryRows | None = None) -> Monitor:
    j = Joiner(store or MemoryRows(), 60_000, 3_600_000, lateness_ms=2000)
    return Monitor(SETTINGS, j, MonitorMetrics(), clock=lambda: NOW_MS / 1000)


def _process(monitor: Monitor, topic: str, values: list[bytes]) -> None:
    messages = [_message(topic, v, i) for i, v in enumerate(values)]
    monitor.process({TopicPartition(topic, 0): messages})


def _sample(monitor: Monitor, name: str) -> float:
    value = monitor.metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


@pytest.mark.parametrize(
    "bad",
    [
        {"event_time": -10, "scored_at": -5},
        {"scored_at": 1 << 62},  # no window of it would ever close
        {"commit_id": "not-a-commit"},
        {"model": "../m"},
        {"arm": "both"},
        {"rollout_id": "x" * 300},
        {"requested_ref": "r" * 1000},
        {"prediction_id": "x" * 10_000},
        {"entity_key": "a\x1b[2Jb"},
    ],
)
def test_a_bad_prediction_is_skipped_and_counted_and_the_state_reloads(
    bad: dict[str, Any],
) -> None:
    store = MemoryRows()
    monitor = _monitor(store)
    good = PREDICTIONS.encode(_prediction_record())
    junk = PREDICTIONS.encode(_prediction_record(**({"prediction_id": "p2"} | bad)))
    _process(monitor, TOPICS.predictions_topic, [good, junk])
    monitor.joiner.advance([], NOW_MS, False)
    monitor.joiner.commit({})
    assert _sample(monitor, "modelvc_monitor_bad_predictions_total") == 1
    assert [w.predictions for w in monitor.joiner.windows.open.values()] == [1]
    reloaded = Joiner(store, 60_000, 3_600_000, lateness_ms=2000)
    assert [w.predictions for w in reloaded.windows.open.values()] == [1]


def _label_record(label_time: int) -> bytes:
    return LABELS.encode(
        {
            "label_id": "L1",
            "model": "m",
            "feature_event_id": "e1",
            "entity_key": None,
            "event_time": None,
            "values": [1.0],
            "label_time": label_time,
        }
    )


def test_a_label_stamped_far_ahead_of_the_clock_is_dead_lettered_naming_the_unit() -> None:
    monitor = _monitor()
    in_an_hour = NOW_MS + app.MAX_AHEAD_MS
    _process(
        monitor, TOPICS.labels_topic, [_label_record(in_an_hour), _label_record(NOW_MS * 1000)]
    )
    assert _sample(monitor, "modelvc_monitor_bad_labels_total") == 1
    [letter] = monitor._letters
    assert letter["offset"] == 1 and letter["stage"] == "label"
    assert "milliseconds" in letter["reason"] and "microseconds" in letter["reason"]


def _letter(**version: str) -> bytes:
    letter = deadletter.record(
        TOPICS.features_topic,
        0,
        7,
        None,
        b"x",
        "signature_mismatch",
        "score",
        NOW_MS,
        **({"model": "m", "commit_id": COMMIT} | version),
    )
    return DEAD_LETTERS.encode(letter)


def test_the_monitor_counts_a_dead_letter_against_the_arm_it_names() -> None:
    monitor = _monitor()
    arm = {"ref": "production", "rollout_id": "r0123456789a", "arm": "candidate"}
    bogus = arm | {"arm": "x" * 300}
    values = [_letter(**arm), _letter(), _letter(**bogus), _letter(model="../m")]
    _process(monitor, TOPICS.dead_letter_topic, values)
    closed = {c.key: c.stats for c in monitor.joiner.advance([], 2 * NOW_MS, True)}
    assert (
        closed[
            WindowKey("m", "production", COMMIT, "r0123456789a", "candidate", False)
        ].dead_letters
        == 1
    )
    # No version named (or a junk one): the commit's last version, here none known.
    assert closed[WindowKey("m", "", COMMIT, "", "", False)].dead_letters == 2
    assert len(closed) == 2


class _Ends:
    def __init__(self, stable: int | None, high: int | None) -> None:
        self.stable, self.high = stable, high

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        return self.stable

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.high


def test_caught_up_is_judged_on_the_last_stable_offset_then_the_high_watermark() -> None:
    tp = TopicPartition("t", 0)
    # An open transaction: the records between the two ends are not readable yet.
    assert not app._behind(_Ends(5, 9), tp, 5)  # type: ignore[arg-type]
    assert app._behind(_Ends(5, 9), tp, 4)  # type: ignore[arg-type]
    assert not app._behind(_Ends(None, 9), tp, 9)  # type: ignore[arg-type]
    assert app._behind(_Ends(None, 9), tp, 8)  # type: ignore[arg-type]
    assert app._behind(_Ends(None, None), tp, 0)  # type: ignore[arg-type]


def test_the_commits_asked_for_a_reference_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "MAX_COMMITS_ASKED", 3)
    monitor = Monitor(SETTINGS, joiner(), MonitorMetrics(), references=lambda m, c: None)

    async def ask_all() -> None:
        for i in range(5):
            monitor._ask_reference("m", f"{i:064x}")
        await asyncio.gather(*monitor._lookups)

    asyncio.run(ask_all())
    assert list(monitor._asked) == [f"{i:064x}" for i in (2, 3, 4)]
