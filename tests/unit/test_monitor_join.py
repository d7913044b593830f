"""The monitor's join of predictions with labels (workers.monitor.join): no broker."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core import monitoring
from streams.core.monitoring import Stats
from streams.monitoring.windows import MemoryRows
from workers.monitor.join import Joiner, Label, Prediction
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
