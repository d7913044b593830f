"""Tumbling windows per served version, and the watermark that closes them (pure).

A window is one version's figures (``streams.core.monitoring.Stats``) over
``[start_ms, start_ms + window_ms)``. Its key names the version exactly as a
prediction does: model, requested ref, commit, rollout, arm, shadow; its id is
``sha256(model|ref|commit|rollout|arm|shadow|start_ms)[:32]``, so a window computed
again from the same input (a monitor restarted after a kill) has the same id.

**The watermark.** Each source partition (a partition of predictions, labels,
dead letters or features) reports the largest record time it delivered. While a
partition is behind its end (catching up a backlog), it holds the watermark at its
own largest time: a monitor reading four topics at different speeds never closes a
window that a slower topic still has records for. Partitions at their end (live)
do not hold it back. The watermark is then that minimum (or, when nothing holds it,
the largest time seen) minus the allowed lateness; after a second without records,
the wall clock minus the lateness, so the last windows close on a quiet stream.
It never goes back, and never past the wall clock (a record stamped in the future
does not close the present).

**Late records.** A record whose window is already closed is counted in the
earliest window still open (never dropped, never a second copy of a closed window):
with records in order within the lateness per partition, this never happens, and
the windows are a function of the input alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from streams.core import monitoring
from streams.core.monitoring import Accumulator, Stats

NEVER = -(2**62)  # before any record time: the watermark of a monitor that saw nothing


class WindowKey(NamedTuple):
    """One version's identity in a window, as the metric window record carries it."""

    model: str
    ref: str
    commit_id: str
    rollout_id: str
    arm: str
    shadow: bool


def unattributed(model: str) -> WindowKey:
    """Where labels that matched no prediction of ``model`` are counted (commit "")."""
    return WindowKey(model, "", "", "", "", False)


def window_id(key: WindowKey, start_ms: int) -> str:
    return monitoring.window_id(*key[:5], key.shadow, start_ms)


def window_start(at_ms: int, window_ms: int) -> int:
    return at_ms - at_ms % window_ms


@dataclass(frozen=True)
class Closed:
    """A window whose end the watermark passed: final, to be written to the metrics topic."""

    key: WindowKey
    start_ms: int
    end_ms: int
    stats: Stats

    @property
    def window_id(self) -> str:
        return window_id(self.key, self.start_ms)


class Windows:
    """The open windows, counted in place (:class:`Accumulator`); a record counts in the
    window of its time (or the earliest still open), and :meth:`close` hands back every
    window the watermark passed, frozen."""

    def __init__(self, window_ms: int) -> None:
        if window_ms <= 0:
            raise ValueError(f"window {window_ms} ms: must be positive")
        self.window_ms = window_ms
        self.open: dict[tuple[WindowKey, int], Accumulator] = {}
        # Every window before this start is closed (a multiple of window_ms, or NEVER).
        self.floor = NEVER
        self.dirty: set[tuple[WindowKey, int]] = set()  # changed since taken (persistence)

    def at(self, key: WindowKey, at_ms: int) -> Accumulator:
        """The open window of ``key`` that a record of time ``at_ms`` counts in."""
        start = window_start(max(at_ms, self.floor), self.window_ms)
        slot = (key, start)
        self.dirty.add(slot)
        window = self.open.get(slot)
        if window is None:
            window = self.open[slot] = Accumulator()
        return window

    def close(self, watermark: int) -> list[Closed]:
        """Every open window that ends at or before ``watermark``, oldest first."""
        floor = window_start(watermark, self.window_ms) if watermark > NEVER else NEVER
        if floor <= self.floor:
            return []
        self.floor = floor
        done = sorted(
            (slot for slot in self.open if slot[1] + self.window_ms <= watermark),
            key=lambda slot: (slot[1], slot[0]),
        )
        closed = []
        for slot in done:
            stats = self.open.pop(slot).freeze()
            closed.append(Closed(slot[0], slot[1], slot[1] + self.window_ms, stats))
            self.dirty.add(slot)
        return closed

    def take_dirty(self) -> list[tuple[tuple[WindowKey, int], Stats | None]]:
        """The windows changed since the last call: their stats, or None when closed."""
        out = []
        for slot in sorted(self.dirty):
            window = self.open.get(slot)
            out.append((slot, None if window is None else window.freeze()))
        self.dirty.clear()
        return out


class Watermark:
    """Where event time has got to, from the largest record time of each source partition."""

    def __init__(self, lateness_ms: int) -> None:
        self.lateness_ms = lateness_ms
        self.max_seen: dict[str, int] = {}  # "topic/partition" -> its largest record time
        self.value = NEVER

    def seen(self, source: str, at_ms: int) -> None:
        if at_ms > self.max_seen.get(source, NEVER):
            self.max_seen[source] = at_ms

    def advance(self, behind: Iterable[str], now_ms: int, idle: bool) -> int:
        """The watermark after a batch. ``behind``: the sources not yet at their end (a
        source not fetched yet counts as behind, with no time). ``idle``: no record for a
        second, so the wall clock ``now_ms`` moves it."""
        holding = [self.max_seen.get(s, NEVER) for s in behind]
        if holding:
            candidate = min(holding)
        elif self.max_seen:
            candidate = max(self.max_seen.values())
        else:
            candidate = NEVER
        if idle and not holding:
            candidate = max(candidate, now_ms)
        if candidate > NEVER:
            candidate = min(candidate, now_ms) - self.lateness_ms
        self.value = max(self.value, candidate)
        return self.value

    def to_plain(self) -> dict[str, Any]:
        return {"value": self.value, "max_seen": dict(self.max_seen)}

    def load(self, plain: Mapping[str, Any]) -> None:
        self.value = int(plain["value"])
        self.max_seen = {str(k): int(v) for k, v in plain["max_seen"].items()}
