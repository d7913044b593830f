"""The window store: one copy per window id, bounded per model with a cumulative merge that
keeps what it drops, and offsets written with the windows (both row stores, one suite)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from streams.core import monitoring
from streams.core.monitoring import Stats
from streams.monitoring.windows import (
    MemoryRows,
    RocksDBRows,
    Rows,
    Version,
    Window,
    WindowStore,
    decode_window,
    encode_window,
    window_from_record,
    window_to_record,
)

WINDOW_MS = 1000
BASE = Version("production", "c" * 64)
CANDIDATE = Version("production", "d" * 64, "r0123456789a", "candidate")


def stats(predictions: int, labeled: int = 0) -> Stats:
    acc = monitoring.Accumulator(monitoring.EMPTY)
    for i in range(predictions):
        acc.add_prediction(5.0, 1_000 + i)
    for i in range(labeled):
        label = float(i % 2)
        acc.add_pair(0.8 if label else 0.2, label, 10)
    return acc.freeze()


def window(start: int, version: Version = BASE, model: str = "churn", n: int = 3) -> Window:
    window_id = monitoring.window_id(
        model,
        version.ref,
        version.commit_id,
        version.rollout_id,
        version.arm,
        version.shadow,
        start * WINDOW_MS,
    )
    return Window(
        window_id,
        model,
        version,
        start * WINDOW_MS,
        (start + 1) * WINDOW_MS,
        stats(n, n),
        "monitor-1",
        (start + 1) * WINDOW_MS + 2500,
    )


@pytest.fixture(params=["memory", "rocksdb"])
def rows(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Rows]]:
    """A factory of the same rows again (a restart): memory keeps its dict, RocksDB its dir."""
    if request.param == "memory":
        kept = MemoryRows()
        yield lambda: kept
        return
    opened: list[RocksDBRows] = []

    def reopen() -> Rows:
        for db in opened:
            db.close()
        opened.clear()
        opened.append(RocksDBRows(tmp_path / "windows.rocksdb"))
        return opened[0]

    yield reopen
    for db in opened:
        db.close()


def test_a_window_written_again_is_kept_once(rows: Callable[[], Rows]) -> None:
    store = WindowStore(rows())
    first = window(1)
    added = store.apply(0, [(0, first), (1, first)])
    assert [w.window_id for w in added.windows] == [first.window_id] and added.repeated == 1
    # A monitor restarted after a kill writes it again, later, with another emitted_at.
    again = Window(**{**first.__dict__, "emitted_at": first.emitted_at + 60_000})
    assert store.apply(0, [(2, again)]).repeated == 1
    ((total, count),) = store.cumulative("churn").values()
    assert count == 1 and total.predictions == 3
    assert store.next_offsets == {0: 3}


def test_the_bound_drops_the_oldest_windows_but_not_their_counts(rows: Callable[[], Rows]) -> None:
    store = WindowStore(rows(), limit=3)
    store.apply(0, [(i, window(i)) for i in range(5)])
    kept = store.windows("churn")
    assert [w.start_ms for w in kept] == [2000, 3000, 4000]
    assert all(w.stats.predictions == 3 for w in kept)  # stats read back, not the index's
    total, count = store.cumulative("churn")[BASE]
    assert (count, total.predictions, total.labeled) == (5, 15, 15)
    # A window no newer than one already dropped cannot be told from a dropped one.
    late = store.apply(0, [(5, window(0, n=7)), (6, window(1, CANDIDATE))])
    assert late.too_old == 2 and not late.windows
    assert store.cumulative("churn")[BASE][1] == 5


def test_a_restart_resumes_from_what_was_written(rows: Callable[[], Rows]) -> None:
    store = WindowStore(rows(), limit=3)
    store.apply(0, [(i, window(i)) for i in range(4)])
    store.apply(1, [(7, window(9, CANDIDATE))])
    before = (
        store.windows("churn"),
        store.cumulative("churn"),
        dict(store.next_offsets),
        store.window_ms("churn"),
    )
    reopened = WindowStore(rows(), limit=3)
    after = (
        reopened.windows("churn"),
        reopened.cumulative("churn"),
        dict(reopened.next_offsets),
        reopened.window_ms("churn"),
    )
    assert after == before and after[2] == {0: 4, 1: 8}
    # Dropped and repeated windows stay so after the restart too.
    assert reopened.apply(0, [(4, window(0)), (5, window(9, CANDIDATE))]).windows == ()
    reopened.apply(0, [(6, window(10))])
    # The bound is per model, over its versions: 2 went when 9 came, 3 stays.
    assert [w.start_ms for w in reopened.windows("churn")] == [3000, 9000, 10000]


def test_filters_pick_a_rollout_arm_after_a_time(rows: Callable[[], Rows]) -> None:
    store = WindowStore(rows())
    baseline = Version("production", "c" * 64, "r0123456789a", "baseline")
    shadow = Version("production", "e" * 64, shadow=True)
    store.apply(
        0,
        [(i, window(i, v)) for i, v in enumerate((baseline, CANDIDATE, shadow, CANDIDATE, BASE))],
    )
    picked = store.windows("churn", rollout_id="r0123456789a", arm="candidate", shadow=False)
    assert [w.start_ms for w in picked] == [1000, 3000]
    # starting_from: only windows that start once a step began (none holds an earlier step's).
    assert [w.start_ms for w in store.windows("churn", arm="candidate", starting_from=1001)] == [
        3000
    ]
    assert [w.start_ms for w in store.windows("churn", arm="candidate", starting_from=1000)] == [
        1000,
        3000,
    ]
    assert [w.start_ms for w in store.windows("churn", last=2)] == [3000, 4000]
    assert store.windows("churn", last=0) == [] and store.windows("other") == []


def test_windows_round_trip_through_the_topics_encoding() -> None:
    original = window(4, CANDIDATE)
    assert decode_window(encode_window(original)) == original
    assert window_from_record(window_to_record(original)) == original


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("window_id", "not-hex", "window_id"),
        ("window_id", "A" * 32, "window_id"),
        ("model", "~security", "model"),
        ("arm", "treatment", "arm"),
        ("end_ms", 4000, "before it starts"),
        ("ref", "x" * 5000, "ref"),
        ("shadow", 1, "shadow"),
        ("emitted_at", -1, "emitted_at"),
    ],
)
def test_junk_records_are_refused_with_the_reason(field: str, value: object, reason: str) -> None:
    record = {**window_to_record(window(4)), field: value}
    with pytest.raises(ValueError, match=reason):
        window_from_record(record)


def test_junk_stats_are_refused() -> None:
    record = window_to_record(window(4))
    record["stats"] = {**record["stats"], "pos_hist": [1, 2, 3]}
    with pytest.raises(ValueError):
        window_from_record(record)


def test_a_window_must_carry_the_id_of_its_own_fields() -> None:
    real = window(4)
    record = window_to_record(real)
    # Another window's id: it would make the real one a repeat, or one count twice.
    record["window_id"] = window(5).window_id
    with pytest.raises(ValueError, match="not the id of its own fields"):
        window_from_record(record)
    assert real.window_id == monitoring.window_id(
        "churn", "production", "c" * 64, "", "", False, 4 * WINDOW_MS
    )


def _heavy(start: int, **sums: float) -> Window:
    """A window with one labelled prediction whose sums sit at what one pair may add."""
    plain = monitoring.to_plain(stats(1, 1))
    plain.update(sums)
    return Window(**{**window(start).__dict__, "stats": monitoring.from_plain(plain)})


def test_a_window_the_total_cannot_take_is_refused_before_anything_changes(
    rows: Callable[[], Rows],
) -> None:
    store = WindowStore(rows())
    # A sum beyond what its pairs can add is junk on its own (1.7e308 twice is inf).
    plain = {**monitoring.to_plain(stats(1, 1)), "abs_err_sum": 1.7e308}
    with pytest.raises(ValueError, match="abs_err_sum"):
        monitoring.from_plain(plain)
    # Counts that each fit an Avro long but not their total: refused, nothing changed.
    huge = Window(
        **{**window(1).__dict__, "stats": replace(stats(0), dead_letters=monitoring.MAX_COUNT)}
    )
    again = Window(
        **{**window(2).__dict__, "stats": replace(stats(0), dead_letters=monitoring.MAX_COUNT)}
    )
    added = store.apply(0, [(0, huge), (1, again), (2, window(3))])
    assert added.refused == 1 and [w.start_ms for w in added.windows] == [1000, 3000]
    assert [w.start_ms for w in store.windows("churn")] == [1000, 3000]
    total, count = store.cumulative("churn")[BASE]
    assert count == 2 and total.dead_letters == monitoring.MAX_COUNT
    assert store.next_offsets == {0: 3}
    # Memory and rows agree, and a restart loads.
    reopened = WindowStore(rows())
    assert reopened.cumulative("churn") == store.cumulative("churn")
    assert reopened.windows("churn") == store.windows("churn")


def test_sums_at_their_bounds_still_merge_into_a_record(rows: Callable[[], Rows]) -> None:
    store = WindowStore(rows())
    most = monitoring.MAX_ERROR
    store.apply(0, [(i, _heavy(i, abs_err_sum=most, sq_err_sum=most * most)) for i in range(3)])
    total, count = store.cumulative("churn")[BASE]
    assert count == 3 and total.abs_err_sum == pytest.approx(3 * most)
    assert WindowStore(rows()).cumulative("churn") == store.cumulative("churn")


def test_a_failed_write_leaves_memory_as_the_rows_are() -> None:
    class Failing(MemoryRows):
        fail = False

        def write(self, puts: Mapping[bytes, bytes], deletes: Sequence[bytes]) -> None:
            if self.fail:
                raise OSError("disk full")
            super().write(puts, deletes)

    rows = Failing()
    store = WindowStore(rows)
    store.apply(0, [(0, window(1))])
    rows.fail = True
    with pytest.raises(OSError):
        store.apply(0, [(1, window(2))])
    assert [w.start_ms for w in store.windows("churn")] == [1000]
    assert store.cumulative("churn")[BASE][1] == 1 and store.next_offsets == {0: 1}


def test_the_commit_filter_picks_one_arms_commit(rows: Callable[[], Rows]) -> None:
    store = WindowStore(rows())
    stray = Version("production", "f" * 64, CANDIDATE.rollout_id, CANDIDATE.arm)
    store.apply(0, [(0, window(1, CANDIDATE)), (1, window(2, stray))])
    picked = store.windows("churn", rollout_id=CANDIDATE.rollout_id, commit_id="d" * 64)
    assert [w.start_ms for w in picked] == [1000]
