"""The monitor's metric windows as the streams app keeps them: per model, bounded, deduplicated.

The monitor (``python -m workers.monitor``) writes one record per closed window on
``modelvc.metrics``; :mod:`streams.monitoring.follower` reads them into a
:class:`WindowStore`, which answers the monitor route and the rollout controller.

A store keeps the last :data:`MAX_WINDOWS_PER_MODEL` windows of each model (by end time);
an older one is dropped from the list, but it stays in its version's cumulative
:class:`~streams.core.monitoring.Stats`, which merges every window ever kept. A window is
kept once per ``window_id`` (a monitor restarted after a kill writes a closed window again,
with the same id and the same stats); one that ends no later than the newest window already
dropped for its model cannot be told from one that was dropped, so it is ignored too.

Like the projection, the store is a throwaway fold of one log (``modelvc.metrics`` is kept
forever): the windows and the topic's next offsets are written together, in one batch, so a
restart resumes exactly where it stopped, and deleting the directory rebuilds it from 0.
Two row stores hold it: RocksDB on disk, and memory (tests); the same tests run over both.

Layout (raw bytes keys, JSON values):
  o/<partition>               next offset of the metrics topic to read
  i/<model>/<window_id>       a kept window without its stats (what the index is loaded from)
  w/<model>/<window_id>       its stats (Stats in its plain, Avro record form)
  c/<model>/<version key>     a version's cumulative stats and its count of windows
  x/<model>                   end_ms of the newest window dropped for the bound
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import re
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from rocksdict import Options, Rdict, WriteBatch

from streams.codec import METRIC_WINDOWS
from streams.core import monitoring, refs
from streams.core.monitoring import Stats
from streams.core.rollout import BASELINE, CANDIDATE

log = logging.getLogger("modelvc.streams")

MAX_WINDOWS_PER_MODEL: Final = 10_000
WINDOW_ID: Final = re.compile(r"[0-9a-f]{32}", re.ASCII)  # sha256(...)[:32], see the schema
ARMS: Final = ("", BASELINE, CANDIDATE)
MAX_FIELD_CHARS: Final = 256  # ref, commit id, rollout id, monitor id: ours are shorter
# Parsed stats kept for the controller's evaluation every second (a window's stats are
# read back from the rows otherwise): about a rollout's worth of windows.
STATS_CACHED: Final = 4096


@dataclass(frozen=True, order=True)
class Version:
    """What a window measures: the predictions of one commit, for one ref, arm and role."""

    ref: str
    commit_id: str
    rollout_id: str = ""
    arm: str = ""
    shadow: bool = False

    def plain(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "commit_id": self.commit_id,
            "rollout_id": self.rollout_id,
            "arm": self.arm,
            "shadow": self.shadow,
        }

    @property
    def key(self) -> str:
        """A fixed-size name for rows (a ref may hold characters a key should not)."""
        text = json.dumps(self.plain(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Window:
    window_id: str
    model: str
    version: Version
    start_ms: int
    end_ms: int
    stats: Stats
    monitor_id: str = ""
    emitted_at: int = 0

    @property
    def window_ms(self) -> int:
        return self.end_ms - self.start_ms


def _text(record: Mapping[str, Any], name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or len(value) > MAX_FIELD_CHARS:
        raise ValueError(f"{name} is not text of at most {MAX_FIELD_CHARS} characters")
    return value


def _ms(record: Mapping[str, Any], name: str) -> int:
    value = record.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 62:
        raise ValueError(f"{name} is not a time in ms")
    return value


def window_from_record(record: Mapping[str, Any]) -> Window:
    """A decoded MetricWindow record as a :class:`Window`; ValueError (the reason) on junk.

    Anyone who may write to the metrics topic could write anything a decoder accepts:
    names, arms, times and the stats are checked before a window is kept.
    """
    window_id = _text(record, "window_id")
    if not WINDOW_ID.fullmatch(window_id):
        raise ValueError("window_id is not 32 lowercase hex characters")
    model = _text(record, "model")
    problem = refs.name_problem("model", model)
    if problem is not None:
        raise ValueError(problem)
    arm = _text(record, "arm")
    if arm not in ARMS:
        raise ValueError(f"arm {arm[:32]!r} is not one of {', '.join(map(repr, ARMS))}")
    shadow = record.get("shadow")
    if not isinstance(shadow, bool):
        raise ValueError("shadow is not a boolean")
    start_ms, end_ms = _ms(record, "start_ms"), _ms(record, "end_ms")
    if end_ms <= start_ms:
        raise ValueError(f"the window ends ({end_ms}) before it starts ({start_ms})")
    stats = record.get("stats")
    if not isinstance(stats, Mapping):
        raise ValueError("stats is not a record")
    version = Version(
        _text(record, "ref"), _text(record, "commit_id"), _text(record, "rollout_id"), arm, shadow
    )
    derived = monitoring.window_id(
        model, version.ref, version.commit_id, version.rollout_id, arm, shadow, start_ms
    )
    if window_id != derived:
        # Else a record could take a real window's id and make it a repeat, or one window
        # be counted twice under two ids.
        raise ValueError(f"window_id {window_id} is not the id of its own fields ({derived})")
    return Window(
        window_id=window_id,
        model=model,
        version=version,
        start_ms=start_ms,
        end_ms=end_ms,
        stats=monitoring.from_plain(dict(stats)),
        monitor_id=_text(record, "monitor_id"),
        emitted_at=_ms(record, "emitted_at"),
    )


def window_to_record(window: Window) -> dict[str, Any]:
    """The MetricWindow record of ``window`` (what the monitor writes; tests write it too)."""
    return {
        "window_id": window.window_id,
        "model": window.model,
        **window.version.plain(),
        "start_ms": window.start_ms,
        "end_ms": window.end_ms,
        "stats": monitoring.to_plain(window.stats),
        "monitor_id": window.monitor_id,
        "emitted_at": window.emitted_at,
    }


def decode_window(data: bytes) -> Window:
    """A metrics topic record's value as a Window; ValueError (or UndecodableMessage) on junk."""
    return window_from_record(METRIC_WINDOWS.decode(data))


def encode_window(window: Window) -> bytes:
    return METRIC_WINDOWS.encode(window_to_record(window))


# -- rows: where a store keeps what it holds ------------------------------------------------
class Rows(ABC):
    """An ordered key-value store that writes a batch whole or not at all."""

    @abstractmethod
    def get(self, key: bytes) -> bytes | None: ...

    @abstractmethod
    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) whose key starts with ``prefix``, in key order."""

    @abstractmethod
    def write(self, puts: Mapping[bytes, bytes], deletes: Sequence[bytes]) -> None: ...

    @abstractmethod
    def close(self) -> None: ...


class MemoryRows(Rows):
    def __init__(self) -> None:
        self._rows: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self._rows.get(key)

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key in sorted(k for k in self._rows if k.startswith(prefix)):
            yield key, self._rows[key]

    def write(self, puts: Mapping[bytes, bytes], deletes: Sequence[bytes]) -> None:
        for key in deletes:
            self._rows.pop(key, None)
        self._rows.update(puts)

    def close(self) -> None:
        pass  # nothing outside this process to release


class RocksDBRows(Rows):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self._db = Rdict(str(path), options)

    def get(self, key: bytes) -> bytes | None:
        value = self._db.get(key)
        return None if value is None else bytes(value)

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for raw_key, value in self._db.items(from_key=prefix):
            key = bytes(raw_key)  # type: ignore[arg-type]  # raw mode: keys are bytes
            if not key.startswith(prefix):
                break
            yield key, bytes(value)

    def write(self, puts: Mapping[bytes, bytes], deletes: Sequence[bytes]) -> None:
        batch = WriteBatch(raw_mode=True)
        for key in deletes:
            batch.delete(key)
        for key, value in puts.items():
            batch.put(key, value)
        self._db.write(batch)

    def close(self) -> None:
        self._db.close()


def _total(cumulative: Stats, stats: Stats) -> Stats | str:
    """``cumulative`` with ``stats`` merged in, when the total is still a valid record (the
    counts Avro longs, the sums bounded by them); else why not."""
    total = monitoring.merge(cumulative, stats)
    try:
        monitoring.from_plain(monitoring.to_plain(total))
    except ValueError as exc:
        return f"the version's total would break its bounds: {exc}"
    return total


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


# -- the store ---------------------------------------------------------------------------
@dataclass
class _Model:
    """One model's index: its kept windows (no stats) and its versions' cumulative stats."""

    windows: dict[str, Window] = field(default_factory=dict)  # stats: monitoring.EMPTY
    oldest: list[tuple[int, int, str]] = field(default_factory=list)  # heap (end, start, id)
    cumulative: dict[Version, tuple[Stats, int]] = field(default_factory=dict)
    dropped_until: int = -1


@dataclass(frozen=True)
class Added:
    """What one batch did: the windows kept, and how many were repeats, too old or refused."""

    windows: tuple[Window, ...]
    repeated: int = 0
    too_old: int = 0
    refused: int = 0  # windows whose version's total they would take past a record's bounds

    @property
    def models(self) -> frozenset[str]:
        return frozenset(w.model for w in self.windows)


class WindowStore:
    """Metric windows per model; one follower task writes it, everyone else reads."""

    def __init__(self, rows: Rows, limit: int = MAX_WINDOWS_PER_MODEL) -> None:
        if limit < 1:
            raise ValueError("a window store keeps at least one window per model")
        self._rows = rows
        self.limit = limit
        self._models: dict[str, _Model] = {}
        self._next_offsets: dict[int, int] = {}
        self._stats: OrderedDict[str, Stats] = OrderedDict()  # LRU by window id
        self._load()

    @classmethod
    def in_memory(cls, limit: int = MAX_WINDOWS_PER_MODEL) -> WindowStore:
        return cls(MemoryRows(), limit)

    @classmethod
    def on_disk(cls, path: Path, limit: int = MAX_WINDOWS_PER_MODEL) -> WindowStore:
        return cls(RocksDBRows(path), limit)

    def close(self) -> None:
        self._rows.close()

    def _load(self) -> None:
        for key, value in self._rows.scan(b"o/"):
            self._next_offsets[int(key[2:])] = int(value)
        for _, value in self._rows.scan(b"i/"):
            row = json.loads(value)
            window = Window(
                window_id=row["window_id"],
                model=row["model"],
                version=Version(**row["version"]),
                start_ms=row["start_ms"],
                end_ms=row["end_ms"],
                stats=monitoring.EMPTY,
                monitor_id=row["monitor_id"],
                emitted_at=row["emitted_at"],
            )
            kept = self._model(window.model)
            kept.windows[window.window_id] = window
            kept.oldest.append((window.end_ms, window.start_ms, window.window_id))
        for key, value in self._rows.scan(b"c/"):
            row = json.loads(value)
            model = key.decode().split("/")[1]
            version = Version(**row["version"])
            self._model(model).cumulative[version] = (
                monitoring.from_plain(row["stats"]),
                row["windows"],
            )
        for key, value in self._rows.scan(b"x/"):
            self._model(key.decode()[2:]).dropped_until = int(value)
        for kept in self._models.values():
            heapq.heapify(kept.oldest)

    def _model(self, model: str) -> _Model:
        return self._models.setdefault(model, _Model())

    # -- writing ---------------------------------------------------------------------
    def apply(self, partition: int, records: Sequence[tuple[int, Window | None]]) -> Added:
        """Keep a fetched batch of (offset, window; None: a record that was not one) of
        ``partition`` and the partition's next offset, in one write."""
        if not records:
            return Added(())
        puts: dict[bytes, bytes] = {}
        deletes: list[bytes] = []
        added: list[Window] = []
        repeated = too_old = refused = 0
        touched: dict[tuple[str, Version], None] = {}
        for _, window in records:
            if window is None:
                continue
            kept = self._model(window.model)
            if window.window_id in kept.windows:
                repeated += 1
                continue
            if window.end_ms <= kept.dropped_until:
                too_old += 1
                continue
            stats, count = kept.cumulative.get(window.version, (monitoring.EMPTY, 0))
            total = _total(stats, window.stats)
            if isinstance(total, str):
                # Checked before anything changes: a window the total cannot take is not
                # kept at all, so memory, disk and a restart agree.
                refused += 1
                log.warning(
                    "metric window %s of %s not kept: %s", window.window_id, window.model, total
                )
                continue
            self._keep(kept, window, puts)
            kept.cumulative[window.version] = (total, count + 1)
            touched[(window.model, window.version)] = None
            added.append(window)
            while len(kept.windows) > self.limit:
                self._drop(window.model, kept, puts, deletes)
        for model, version in touched:
            stats, count = self._models[model].cumulative[version]
            row = {
                "version": version.plain(),
                "stats": monitoring.to_plain(stats),
                "windows": count,
            }
            puts[f"c/{model}/{version.key}".encode()] = _dumps(row)
        next_offset = records[-1][0] + 1
        puts[f"o/{partition}".encode()] = str(next_offset).encode()
        try:
            self._rows.write(puts, deletes)
        except BaseException:
            # Memory already holds the batch: read back what the rows hold instead.
            self._models, self._next_offsets, self._stats = {}, {}, OrderedDict()
            self._load()
            raise
        self._next_offsets[partition] = next_offset
        return Added(tuple(added), repeated, too_old, refused)

    def _keep(self, kept: _Model, window: Window, puts: dict[bytes, bytes]) -> None:
        index = {
            "window_id": window.window_id,
            "model": window.model,
            "version": window.version.plain(),
            "start_ms": window.start_ms,
            "end_ms": window.end_ms,
            "monitor_id": window.monitor_id,
            "emitted_at": window.emitted_at,
        }
        name = f"{window.model}/{window.window_id}".encode()
        puts[b"i/" + name] = _dumps(index)
        puts[b"w/" + name] = _dumps(monitoring.to_plain(window.stats))
        kept.windows[window.window_id] = Window(
            window.window_id,
            window.model,
            window.version,
            window.start_ms,
            window.end_ms,
            monitoring.EMPTY,
            window.monitor_id,
            window.emitted_at,
        )
        heapq.heappush(kept.oldest, (window.end_ms, window.start_ms, window.window_id))
        self._remember(window.window_id, window.stats)

    def _drop(
        self, model: str, kept: _Model, puts: dict[bytes, bytes], deletes: list[bytes]
    ) -> None:
        end_ms, _, window_id = heapq.heappop(kept.oldest)
        del kept.windows[window_id]
        self._stats.pop(window_id, None)
        kept.dropped_until = max(kept.dropped_until, end_ms)
        name = f"{model}/{window_id}".encode()
        for key in (b"i/" + name, b"w/" + name):
            puts.pop(key, None)  # kept and dropped in one batch
            deletes.append(key)
        puts[f"x/{model}".encode()] = str(kept.dropped_until).encode()

    def _remember(self, window_id: str, stats: Stats) -> None:
        self._stats[window_id] = stats
        self._stats.move_to_end(window_id)
        while len(self._stats) > STATS_CACHED:
            self._stats.popitem(last=False)

    # -- reading ---------------------------------------------------------------------
    @property
    def next_offsets(self) -> Mapping[int, int]:
        """Each metrics partition's next offset to read (absent: 0)."""
        return self._next_offsets

    def models(self) -> list[str]:
        return sorted(self._models)

    def cumulative(self, model: str) -> dict[Version, tuple[Stats, int]]:
        """Each version's stats over every window kept so far, and how many windows."""
        kept = self._models.get(model)
        return {} if kept is None else dict(sorted(kept.cumulative.items()))

    def window_ms(self, model: str) -> int | None:
        """The length of the model's newest window (the monitor's MODELVC_MONITOR_WINDOW_MS)."""
        kept = self._models.get(model)
        if kept is None or not kept.windows:
            return None
        newest = max(kept.windows.values(), key=lambda w: (w.end_ms, w.window_id))
        return newest.window_ms

    def _stats_of(self, model: str, window_id: str) -> Stats:
        known = self._stats.get(window_id)
        if known is not None:
            self._stats.move_to_end(window_id)
            return known
        value = self._rows.get(f"w/{model}/{window_id}".encode())
        if value is None:  # dropped meanwhile (the follower runs on the same loop: not here)
            return monitoring.EMPTY
        stats = monitoring.from_plain(json.loads(value))
        self._remember(window_id, stats)
        return stats

    def windows(
        self,
        model: str,
        *,
        version: Version | None = None,
        rollout_id: str | None = None,
        arm: str | None = None,
        commit_id: str | None = None,
        shadow: bool | None = None,
        starting_from: int | None = None,
        last: int | None = None,
    ) -> list[Window]:
        """The kept windows of ``model`` that match every filter given, oldest first, with
        their stats; ``starting_from``: only windows that start at that ms or later;
        ``last``: only the newest that many."""
        kept = self._models.get(model)
        if kept is None:
            return []
        chosen = [
            w
            for w in kept.windows.values()
            if (version is None or w.version == version)
            and (rollout_id is None or w.version.rollout_id == rollout_id)
            and (arm is None or w.version.arm == arm)
            and (commit_id is None or w.version.commit_id == commit_id)
            and (shadow is None or w.version.shadow == shadow)
            and (starting_from is None or w.start_ms >= starting_from)
        ]
        chosen.sort(key=lambda w: (w.end_ms, w.start_ms, w.window_id))
        if last is not None:
            chosen = chosen[-last:] if last > 0 else []
        return [
            Window(
                w.window_id,
                w.model,
                w.version,
                w.start_ms,
                w.end_ms,
                self._stats_of(model, w.window_id),
                w.monitor_id,
                w.emitted_at,
            )
            for w in chosen
        ]


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (in dicts and lists too) as None: JSON has none."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
