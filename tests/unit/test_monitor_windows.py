"""The monitor's windows and watermark (workers.monitor.windows): no broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.monitor.settings import MonitorSettings
from workers.monitor.windows import NEVER, Watermark, WindowKey, Windows, window_id

KEY = WindowKey("m", "production", "c" * 64, "", "", False)


def test_window_id_names_every_part_of_the_key() -> None:
    base = window_id(KEY, 60_000)
    assert len(base) == 32
    assert window_id(KEY, 60_000) == base
    variants = [
        KEY._replace(model="n"),
        KEY._replace(ref="staging"),
        KEY._replace(commit_id="d" * 64),
        KEY._replace(rollout_id="r1"),
        KEY._replace(arm="candidate"),
        KEY._replace(shadow=True),
    ]
    ids = {window_id(v, 60_000) for v in variants} | {window_id(KEY, 120_000), base}
    assert len(ids) == len(variants) + 2


def test_windows_close_when_the_watermark_passes_their_end() -> None:
    windows = Windows(1000)
    windows.at(KEY, 1500).add_prediction(1.0, 1500)
    windows.at(KEY, 2500).add_prediction(1.0, 2500)
    assert windows.close(1999) == []
    closed = windows.close(2000)
    assert [(c.start_ms, c.end_ms, c.stats.predictions) for c in closed] == [(1000, 2000, 1)]
    # A record of a closed window counts in the earliest open one: never a second copy.
    windows.at(KEY, 1200).add_prediction(1.0, 1200)
    closed = windows.close(3000)
    assert [(c.start_ms, c.stats.predictions) for c in closed] == [(2000, 2)]


def test_dirty_windows_are_reported_once_with_none_for_closed() -> None:
    windows = Windows(1000)
    windows.at(KEY, 10).add_dead_letter()
    assert [(slot, s.dead_letters if s else None) for slot, s in windows.take_dirty()] == [
        ((KEY, 0), 1)
    ]
    assert windows.take_dirty() == []
    windows.close(5000)
    assert windows.take_dirty() == [((KEY, 0), None)]


def test_a_partition_behind_holds_the_watermark_at_its_own_time() -> None:
    mark = Watermark(lateness_ms=100)
    mark.seen("labels/0", 50_000)
    mark.seen("predictions/0", 10_000)
    assert mark.advance(["predictions/0"], now_ms=10**12, idle=False) == 9_900
    # A partition not fetched yet holds it where it is.
    assert mark.advance(["features/0"], now_ms=10**12, idle=False) == 9_900
    # All at their ends: the newest record; idle: the wall clock.
    assert mark.advance([], now_ms=10**12, idle=False) == 49_900
    assert mark.advance([], now_ms=60_000, idle=True) == 59_900
    # Never backwards, never past the wall clock.
    assert mark.advance(["predictions/0"], now_ms=60_000, idle=False) == 59_900
    future = Watermark(lateness_ms=0)
    future.seen("p/0", 10**15)
    assert future.advance([], now_ms=1000, idle=False) == 1000


def test_a_monitor_that_saw_nothing_has_no_watermark() -> None:
    assert Watermark(10).advance(["p/0"], now_ms=1000, idle=True) == NEVER


@given(st.lists(st.integers(0, 10_000), max_size=50), st.integers(1, 5000))
def test_every_record_lands_in_exactly_one_closed_window(times: list[int], width: int) -> None:
    windows = Windows(width)
    for t in times:
        windows.at(KEY, t).add_prediction(1.0, t)
    closed = windows.close(10**9)
    assert sum(c.stats.predictions for c in closed) == len(times)
    assert len({c.window_id for c in closed}) == len(closed)
    assert all(c.start_ms % width == 0 and c.end_ms == c.start_ms + width for c in closed)


def test_the_monitor_settings_survive_the_environment_and_refuse_bad_windows(
    tmp_path: Path,
) -> None:
    settings = MonitorSettings(
        monitor_id="m-1",
        window_ms=5000,
        horizon_ms=60_000,
        lateness_ms=100,
        web_port=7001,
        state_dir=tmp_path / "state",
        api_url="http://127.0.0.1:9",
        admin_token_file=tmp_path / "admin.token",
    )
    assert MonitorSettings.from_env(settings.to_env()) == settings
    assert MonitorSettings(topics=settings.topics).state_path.name == "monitor-local"
    for bad in ({"window_ms": 0}, {"lateness_ms": -1}, {"monitor_id": "../x"}):
        with pytest.raises(ValueError, match="MODELVC_MONITOR_"):
            MonitorSettings(**bad)  # type: ignore[arg-type]
