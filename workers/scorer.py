"""Between consumed bytes and prediction bytes: decode, group by (model, ref), pick the
version once per batch, predict off the event loop, encode. No Kafka client here: the
loop (:mod:`workers.loop`) fetches and delivers.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from streams.codec import FEATURES, PREDICTIONS
from streams.errors import UndecodableMessage
from workers import scoring
from workers.errors import Rejected, Undecodable
from workers.metrics import Metrics
from workers.scoring import Version
from workers.signing import Signer, sign_prediction


class Versions(Protocol):
    """Which version serves a (model, ref) now (workers.versions.VersionTracker follows the
    log for it); raises :class:`workers.errors.Rejected` when none can."""

    async def version_for(self, model: str, ref: str | None) -> Version: ...


@dataclass
class Incoming:
    """One consumed message, whatever the consumer library."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


@dataclass
class Scored:
    predictions: list[tuple[int, bytes | None, bytes]] = field(
        default_factory=list
    )  # (src partition, key, value)
    rejected: list[tuple[Incoming, Rejected]] = field(default_factory=list)
    versions: dict[tuple[str, str | None], str] = field(default_factory=dict)


class Scorer:
    """Everything between consumed bytes and prediction bytes (no Kafka here)."""

    def __init__(
        self,
        tracker: Versions,
        metrics: Metrics,
        worker_id: str,
        predictor: Executor | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.tracker = tracker
        self.metrics = metrics
        self.worker_id = worker_id
        self.signer = signer  # signs each prediction (workers.signing) when given
        # LightGBM runs on this thread, off the event loop: a large model's batch takes
        # seconds, and /healthz, /metrics and the group heartbeat must go on meanwhile.
        self.predictor = predictor or ThreadPoolExecutor(1, thread_name_prefix="predict")

    async def predict(self, version: Version, matrix: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.predictor, scoring.predict, version, matrix)

    async def score(self, batch: list[Incoming]) -> Scored:
        out = Scored()
        groups: dict[tuple[str, str | None], list[tuple[Incoming, dict[str, Any]]]] = defaultdict(
            list
        )
        for item in batch:
            try:
                event = FEATURES.decode(item.value)  # type: ignore[arg-type]
            except UndecodableMessage as exc:
                out.rejected.append((item, Undecodable(str(exc))))
                continue
            groups[(event["model"], event["ref"])].append((item, event))
        # Versions are fixed for the whole batch before any scoring: no batch mixes them.
        versions: dict[tuple[str, str | None], Version] = {}
        for key, members in groups.items():
            try:
                versions[key] = await self.tracker.version_for(*key)
            except Rejected as exc:
                out.rejected += [(item, exc) for item, _ in members]
        scored_at = int(time.time() * 1000)
        for key, version in versions.items():
            out.versions[key] = version.commit_id
            await self._score_group(version, groups[key], scored_at, out)
        return out

    async def _score_group(
        self,
        version: Version,
        members: list[tuple[Incoming, dict[str, Any]]],
        scored_at: int,
        out: Scored,
    ) -> None:
        names = version.loaded.feature_names
        rows: list[list[float]] = []
        kept: list[tuple[Incoming, dict[str, Any]]] = []
        for item, event in members:
            try:
                rows.append(scoring.feature_row(event["features"], names))
                kept.append((item, event))
            except Rejected as exc:
                out.rejected.append((item, exc))
        if not rows:
            return
        matrix = np.asarray(rows, dtype=np.float64)
        verdicts = scoring.check_finite(matrix, names)
        if any(v is not None for v in verdicts):
            good = [i for i, v in enumerate(verdicts) if v is None]
            out.rejected += [(kept[i][0], v) for i, v in enumerate(verdicts) if v is not None]
            matrix, kept = matrix[good], [kept[i] for i in good]
            if not kept:
                return
        started = time.perf_counter()
        scores = await self.predict(version, matrix)
        self.metrics.predict_took(time.perf_counter() - started)
        if self.signer is None:
            out.predictions += self._encode(version, kept, scores, scored_at)
        else:
            # Signing costs tens of microseconds a record: on the predict thread, so a large
            # batch does not hold up /healthz and the group heartbeat on the event loop.
            loop = asyncio.get_running_loop()
            out.predictions += await loop.run_in_executor(
                self.predictor, self._encode, version, kept, scores, scored_at
            )
        event_ms = np.fromiter((item.timestamp_ms for item, _ in kept), np.int64, len(kept))
        self.metrics.end_to_end(np.maximum(0.0, (scored_at - event_ms) / 1000))
        self.metrics.predicted(version.model, version.commit_id, "stream", len(kept))

    def _encode(
        self,
        version: Version,
        kept: list[tuple[Incoming, dict[str, Any]]],
        scores: np.ndarray,
        scored_at: int,
    ) -> list[tuple[int, bytes | None, bytes]]:
        encoded = []
        for (item, event), row in zip(kept, scores.tolist(), strict=True):
            source = scoring.Source(item.topic, item.partition, item.offset, item.timestamp_ms)
            record = scoring.prediction_record(
                event, source, version, row, self.worker_id, scored_at
            )
            # Said explicitly: fastavro would write the schema's default for bytes as a str.
            record |= {"key_id": "", "signature": b""}
            if self.signer is not None:
                sign_prediction(record, self.signer)
            encoded.append((item.partition, item.key, PREDICTIONS.encode(record)))
        return encoded
