"""The join of predictions with their labels, and the state it keeps (RocksDB).

:class:`Joiner` takes records already decoded (:class:`Prediction`, :class:`Label`,
dead letters, feature values) and keeps everything it must remember in a row store
(``streams.monitoring.windows.Rows``: RocksDB, or memory in tests and benchmarks): the
predictions and labels still waiting for their other half, the open windows, the
watermark and the position of every source partition. Each batch's changes are
written in one atomic write (:meth:`Joiner.commit`, a RocksDB ``WriteBatch``): a
monitor killed at any point restarts from the last batch whose state and positions were
written together, so it neither loses nor counts twice.

The rules (``horizon``: ``MODELVC_MONITOR_HORIZON_MS``):

- A label answers a feature event of its model: by ``feature_event_id``, or by
  ``(entity_key, event_time)``. It pairs with every prediction of that model for the
  event (the served commit's and a shadow's), each pair once, whichever comes first.
- A pair is counted in the prediction's version, in the window of
  ``max(scored_at, label_time)``; its join lag is the time between the two.
- A label made before its prediction was scored (``label_time < scored_at``) is an
  *early* label; one made more than the horizon after it is *late*: counted, not
  paired. Both are judged on the records' own times, so a replay counts them alike.
- Predictions are kept twice the horizon (so a late label still finds whose it is),
  labels the horizon: a label that paired with nothing by then is *unmatched*,
  counted for its model with commit "".
- A prediction seen again (same ``prediction_id``: a redelivery) or a label seen
  again (same ``label_id``, under either of its join keys) changes nothing.
"""

from __future__ import annotations

import heapq
import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, NamedTuple

from streams.core import monitoring
from streams.core.labels import validate_prediction
from streams.core.monitoring import Accumulator, Reference
from streams.monitoring.windows import Rows
from workers.monitor.windows import Closed, Watermark, WindowKey, Windows, unattributed

# Store key prefixes (one byte each).
_PREDICTIONS = b"p"
_LABELS = b"l"
_FEATURES = b"f"
_ENTITIES = b"k"  # (model, entity key, event time) -> the feature event id a prediction gave
_WINDOWS = b"w"
_POSITIONS = b"o"
_VERSIONS = b"c"  # (model, commit) -> the version it last served as (for dead letters)
_META = b"m"
# (model, commit) versions remembered in memory (the store keeps them all): bounded, so
# that a stream of made-up commit ids cannot exhaust the monitor's memory.
MAX_VERSIONS_CACHED = 10_000
# Expiry kinds in the heap.
_P, _L, _F = 0, 1, 2


# Predictions and labels are tuples: built once per record, they are a tenth of the
# monitor's time as frozen dataclasses.
class Prediction(NamedTuple):
    prediction_id: str
    feature_event_id: str
    key: WindowKey  # the version that scored: model, requested ref, commit, rollout, arm, shadow
    entity_key: str
    event_time: int
    scored_at: int
    score: float | None  # the first score (None: the prediction has none)


def prediction_from_record(record: Mapping[str, Any], shadow: bool = False) -> Prediction:
    """A decoded ``modelvc.serving.Prediction``; ``shadow``: read from the shadow topic
    (where every record is a shadow's, whatever its flag says). ValueError when it fails
    ``streams.core.labels.validate_prediction``: nothing of it may reach the state."""
    problem = validate_prediction(record)
    if problem:
        raise ValueError(problem)
    scores = record["scores"]
    key = WindowKey(
        record["model"],
        record["requested_ref"],
        record["commit_id"],
        record.get("rollout_id", ""),
        record.get("arm", ""),
        shadow or bool(record.get("shadow", False)),
    )
    return Prediction(
        record["prediction_id"],
        record["feature_event_id"],
        key,
        record.get("entity_key", ""),
        record["event_time"],
        record["scored_at"],
        float(scores[0]) if scores else None,
    )


class Label(NamedTuple):
    label_id: str
    model: str
    feature_event_id: str | None
    entity_key: str | None
    event_time: int | None
    value: float  # the first value (a label carries 1..64)
    label_time: int


def label_from_record(record: Mapping[str, Any]) -> Label:
    """A decoded label that passed ``streams.core.labels.validate_label``."""
    return Label(
        record["label_id"],
        record["model"],
        record.get("feature_event_id"),
        record.get("entity_key"),
        record.get("event_time"),
        float(record["values"][0]),
        record["label_time"],
    )


# NaN and the infinities allowed: a model may score NaN, and the state must keep the
# score as the join counts it (json.loads reads them back).
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _refuse(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# json.JSONEncoder.encode builds its C encoder again at every call, half the cost of a
# small row: the same encoder (compact, ASCII), built once.
_C_ENCODER = getattr(json.encoder, "c_make_encoder", None)
_ITERENCODE = (
    None
    if _C_ENCODER is None
    else _C_ENCODER(
        None, _refuse, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True
    )
)


def _dumps(value: object) -> bytes:
    if _ITERENCODE is None:
        return _ENCODER.encode(value).encode()
    return "".join(_ITERENCODE(value, 0)).encode()


def _join_key(model: str, feature_event_id: str) -> bytes:
    return f"{model}\0{feature_event_id}".encode("utf-8", "backslashreplace")


def _entity_key(model: str, entity_key: str, event_time: int) -> bytes:
    return f"{model}\0\1{entity_key}\0{event_time}".encode("utf-8", "backslashreplace")


class Joiner:
    """The join and its windows over a row store; feed it decoded records, then
    :meth:`advance` and :meth:`commit` once per batch."""

    def __init__(self, store: Rows, window_ms: int, horizon_ms: int, lateness_ms: int) -> None:
        self.store = store
        self.horizon_ms = horizon_ms
        self.windows = Windows(window_ms)
        self.watermark = Watermark(lateness_ms)
        # Commit -> (reference digest, bins): PSI is computed for these commits' predictions.
        self.references: dict[str, tuple[str, Reference]] = {}
        # This batch's changes, decoded (each value encoded once, at the commit); None: deleted.
        self._changes: dict[bytes, Any] = {}
        self._expiry: list[tuple[int, int, bytes]] = []  # (expires at, kind, join key)
        # (model, commit) -> the version as last written under _VERSIONS
        self._versions: OrderedDict[tuple[str, str], WindowKey] = OrderedDict()  # LRU
        self.positions: dict[str, int] = self._load()

    # -- state ---------------------------------------------------------------
    def _get(self, key: bytes) -> Any:
        """The decoded value of ``key`` (this batch's, else the store's), or None. A list
        taken here and changed is :meth:`_put` back by the caller."""
        if key in self._changes:
            return self._changes[key]
        raw = self.store.get(key)
        return None if raw is None else json.loads(raw)

    def _put(self, key: bytes, value: Any) -> None:
        self._changes[key] = value

    def _load(self) -> dict[str, int]:
        meta = self.store.get(_META)
        if meta is not None:
            plain = json.loads(meta)
            self.watermark.load(plain["watermark"])
            self.windows.floor = int(plain["floor"])
        for _, value in self.store.scan(_WINDOWS):
            plain = json.loads(value)
            stats = monitoring.from_plain(plain["stats"])
            slot = (WindowKey(*plain["key"]), int(plain["start"]))
            self.windows.open[slot] = Accumulator(stats)
        horizon = self.horizon_ms
        for row, value in self.store.scan(_PREDICTIONS):
            for entry in json.loads(value):
                self._expiry.append((entry[1] + 2 * horizon, _P, row[1:]))
        for row, value in self.store.scan(_LABELS):
            for entry in json.loads(value):
                self._expiry.append((entry[1] + horizon, _L, row[1:]))
        for row, value in self.store.scan(_FEATURES):
            self._expiry.append((json.loads(value)[0] + horizon, _F, row[1:]))
        heapq.heapify(self._expiry)
        return {row[1:].decode(): int(value) for row, value in self.store.scan(_POSITIONS)}

    # -- records -------------------------------------------------------------
    def prediction(self, p: Prediction, source: str) -> None:
        self.watermark.seen(source, p.scored_at)
        key = p.key
        join_key = _join_key(key.model, p.feature_event_id)
        entries: list[list[Any]] = self._get(_PREDICTIONS + join_key) or []
        if any(entry[0] == p.prediction_id for entry in entries):
            return  # a redelivery: counted when it first came
        latency = max(0, p.scored_at - p.event_time)
        self.windows.at(key, p.scored_at).add_prediction(latency, p.scored_at)
        version_of = (key.model, key.commit_id)
        if self._versions.get(version_of) != key:
            # Kept for dead letters that name only the model and commit.
            self._versions[version_of] = key
            if len(self._versions) > MAX_VERSIONS_CACHED:
                self._versions.popitem(last=False)
            version = f"{key.model}\0{key.commit_id}".encode("utf-8", "backslashreplace")
            self._put(_VERSIONS + version, list(key[1:]))
        else:
            self._versions.move_to_end(version_of)
        entries.append(
            [p.prediction_id, p.scored_at, *key[1:], p.score, p.entity_key, p.event_time]
        )
        self._put(_PREDICTIONS + join_key, entries)
        heapq.heappush(self._expiry, (p.scored_at + 2 * self.horizon_ms, _P, join_key))
        waiting = [join_key]
        if p.entity_key:
            entity = _entity_key(key.model, p.entity_key, p.event_time)
            self._put(_ENTITIES + entity, p.feature_event_id)
            waiting.append(entity)
        for label_key in waiting:
            labels = self._get(_LABELS + label_key)
            if labels is None:
                continue
            for label in labels:
                self._pair(key, p.scored_at, p.score, label)
            self._put(_LABELS + label_key, labels)
        if key.commit_id in self.references:
            features = self._get(_FEATURES + join_key)
            if features is not None:
                values = features[1]
                digest, reference = self.references[key.commit_id]
                self.windows.at(key, p.scored_at).add_features(reference, digest, values)

    def label(self, label: Label, source: str) -> None:
        self.watermark.seen(source, label.label_time)
        if label.feature_event_id is not None:
            join_key = _join_key(label.model, label.feature_event_id)
        else:
            assert label.entity_key is not None and label.event_time is not None  # validated
            entity = _entity_key(label.model, label.entity_key, label.event_time)
            found = self._get(_ENTITIES + entity)
            join_key = _join_key(label.model, found) if found is not None else entity
            # Waiting before its prediction came, it stays under the entity key once paired:
            # a redelivery now finds the event's key, and must not pair a second time.
            if join_key != entity and any(
                entry[0] == label.label_id for entry in self._get(_LABELS + entity) or ()
            ):
                return
        labels: list[list[Any]] = self._get(_LABELS + join_key) or []
        if any(entry[0] == label.label_id for entry in labels):
            return
        entry: list[Any] = [label.label_id, label.label_time, label.value, 0]
        for p in self._get(_PREDICTIONS + join_key) or ():
            self._pair(WindowKey(label.model, *p[2:7]), p[1], p[7], entry)
        labels.append(entry)
        self._put(_LABELS + join_key, labels)
        heapq.heappush(self._expiry, (label.label_time + self.horizon_ms, _L, join_key))

    def _pair(self, key: WindowKey, scored_at: int, score: float | None, label: list[Any]) -> None:
        """Count one (prediction, label) pair; marks the label matched."""
        label_time, value = label[1], label[2]
        label[3] = 1
        lag = label_time - scored_at
        if lag > self.horizon_ms:
            self.windows.at(key, label_time).late_labels += 1
            return
        window = self.windows.at(key, max(scored_at, label_time))
        if score is not None:
            window.add_pair(score, value, abs(lag))
        if lag < 0:
            window.early_labels += 1

    def dead_letter(
        self,
        model: str,
        commit_id: str,
        at_ms: int,
        source: str,
        ref: str = "",
        rollout_id: str = "",
        arm: str = "",
    ) -> None:
        """A feature event a worker could not score for ``model``/``commit_id``.

        A letter that names its version (``ref``, and ``rollout_id``/``arm`` when a
        rollout routed it) counts against that version: a candidate arm that fails every
        event is counted against its arm, where the controller looks. One that names only
        the model and commit (written before letters said more) counts against the
        version that commit last served as."""
        self.watermark.seen(source, at_ms)
        if ref or rollout_id or arm:
            key = WindowKey(model, ref, commit_id, rollout_id, arm, False)
        else:
            version = f"{model}\0{commit_id}".encode("utf-8", "backslashreplace")
            shown = self._get(_VERSIONS + version)
            if shown is not None:
                key = WindowKey(model, *shown)
            else:
                key = WindowKey(model, "", commit_id, "", "", False)
        self.windows.at(key, at_ms).add_dead_letter()

    def features(
        self,
        model: str,
        feature_event_id: str,
        values: Mapping[str, float],
        at_ms: int,
        source: str,
    ) -> None:
        """A feature event of a model with a reference: its values, for the PSI of the
        predictions made of it (before or after this)."""
        self.watermark.seen(source, at_ms)
        join_key = _join_key(model, feature_event_id)
        if self._get(_FEATURES + join_key) is not None:
            return
        self._put(_FEATURES + join_key, [at_ms, dict(values)])
        heapq.heappush(self._expiry, (at_ms + self.horizon_ms, _F, join_key))
        for p in self._get(_PREDICTIONS + join_key) or ():
            found = self.references.get(p[3])
            if found is not None:
                digest, reference = found
                window = self.windows.at(WindowKey(model, *p[2:7]), p[1])
                window.add_features(reference, digest, values)

    # -- batches -------------------------------------------------------------
    def advance(self, behind: list[str], now_ms: int, idle: bool) -> list[Closed]:
        """Move the watermark, expire what the horizon passed, and close the windows it
        passed: the windows to write to the metrics topic before :meth:`commit`."""
        watermark = self.watermark.advance(behind, now_ms, idle)
        while self._expiry and self._expiry[0][0] < watermark:
            _, kind, join_key = heapq.heappop(self._expiry)
            self._expire(kind, join_key, watermark)
        return self.windows.close(watermark)

    def _expire(self, kind: int, join_key: bytes, watermark: int) -> None:
        if kind == _F:
            stored = self._get(_FEATURES + join_key)
            if stored is not None and stored[0] + self.horizon_ms < watermark:
                self._put(_FEATURES + join_key, None)
            return
        prefix = _PREDICTIONS if kind == _P else _LABELS
        entries = self._get(prefix + join_key)
        if entries is None:
            return
        keep = 2 * self.horizon_ms if kind == _P else self.horizon_ms
        left = [e for e in entries if e[1] + keep >= watermark]
        for gone in (e for e in entries if e[1] + keep < watermark):
            if kind == _P and gone[8]:
                model = join_key.split(b"\0", 1)[0].decode()
                self._put(_ENTITIES + _entity_key(model, gone[8], gone[9]), None)
            elif kind == _L and not gone[3]:
                model = join_key.split(b"\0", 1)[0].decode()
                self.windows.at(unattributed(model), gone[1]).unmatched_labels += 1
        if len(left) != len(entries):
            self._put(prefix + join_key, left or None)

    def commit(self, positions: Mapping[str, int]) -> None:
        """Write this batch's state and the sources' next positions in one atomic write."""
        for (key, start), stats in self.windows.take_dirty():
            slot = _WINDOWS + _dumps([*key, start])
            if stats is None:
                self._put(slot, None)
            else:
                plain = {"key": list(key), "start": start, "stats": monitoring.to_plain(stats)}
                self._put(slot, plain)
        self._put(_META, {"watermark": self.watermark.to_plain(), "floor": self.windows.floor})
        for source, offset in positions.items():
            if self.positions.get(source) != offset:
                self._put(_POSITIONS + source.encode(), offset)
        self.positions.update(positions)
        puts = {k: _dumps(v) for k, v in self._changes.items() if v is not None}
        self.store.write(puts, [k for k, v in self._changes.items() if v is None])
        self._changes = {}
