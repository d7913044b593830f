"""Between consumed bytes and prediction bytes: decode, group by (model, ref), pick the
version once per batch, predict off the event loop, encode. No Kafka client here: the
loop (:mod:`workers.loop`) fetches and delivers.

A (model, ref) whose alias has an active canary rollout is split by entity between the
rollout's baseline and candidate (:meth:`workers.scoring.Route.split`), each part scored
by one version and stamped with the rollout and arm; when the alias has a shadow, the
rows served are scored again by the shadow commit, for ``modelvc.shadow-predictions``
only. A shadow never refuses an event nor fails a batch: what it cannot do is counted.

A feature event is decoded by its writer schema's fingerprint (:mod:`workers.typed`):
the map-of-union form or a typed one. A typed event is scored only when its schema
carries every feature the served version needs, with its type; else it is dead-lettered
(``signature_mismatch``) with the command that prints the schema to write now.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from streams.codec import PREDICTIONS
from streams.core.model_signature import Feature, mismatch
from streams.core.rollout import routing_key
from workers import scoring
from workers.errors import ModelFailed, Rejected, SignatureMismatch, Undecodable
from workers.metrics import Metrics
from workers.scoring import Route, Version
from workers.signing import Signer, sign_prediction
from workers.typed import TypedRegistry, UnknownSchema, fetch_hint

R = TypeVar("R", bound=Rejected)

log = logging.getLogger("modelvc.workers")

# A decoded event; for a typed one the features its schema carries (None: map form), and
# for an all-double typed one its raw features (workers.typed.Read).
Member = tuple["Incoming", dict[str, Any], tuple[Feature, ...] | None, bytes | None]


class Versions(Protocol):
    """Which version serves a (model, ref) now (workers.versions.VersionTracker follows the
    log for it); raises :class:`workers.errors.Rejected` when none can. Its ``registry``
    holds the typed feature schemas of every signature it has seen."""

    registry: TypedRegistry

    async def version_for(self, model: str, ref: str | None) -> Version: ...

    async def route_for(self, model: str, ref: str | None) -> Route: ...


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
    # For the shadow-predictions topic, as ``predictions``.
    shadow_predictions: list[tuple[int, bytes | None, bytes]] = field(default_factory=list)


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
        # Models score on this one thread, off the event loop: a large model's batch takes
        # seconds, and /healthz, /metrics and the group heartbeat must go on meanwhile. One
        # thread also keeps each predictor called by one thread at a time (its contract).
        self.predictor = predictor or ThreadPoolExecutor(1, thread_name_prefix="predict")

    async def predict(self, version: Version, matrix: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.predictor, scoring.predict, version, matrix)

    async def score(self, batch: list[Incoming]) -> Scored:
        out, groups, unknown = self._decode(batch)
        if unknown:
            await self._learn(unknown)
            out, groups, unknown = self._decode(batch)  # rare: keeps the batch's order
            out.rejected += unknown
        # Routes are fixed for the whole batch before any scoring: each group of rows is
        # scored by one version.
        routes: dict[tuple[str, str | None], Route] = {}
        for key, members in groups.items():
            try:
                routes[key] = await self.tracker.route_for(*key)
            except Rejected as exc:
                out.rejected += [(item, exc) for item, *_ in members]
        scored_at = int(time.time() * 1000)
        for key, route in routes.items():
            out.versions[key] = route.version.commit_id
            served: list[Member] = []
            for version, part in route.split(groups[key], _entity_key):
                served += await self._score_group(version, part, scored_at, out)
            if route.shadow is not None and served:
                await self._shadow(route.shadow, served, scored_at, out)
        return out

    def _decode(
        self, batch: list[Incoming]
    ) -> tuple[Scored, dict[tuple[str, str | None], list[Member]], list[tuple[Incoming, Rejected]]]:
        """Each event by its schema's fingerprint, grouped by (model, ref); the refused ones;
        the ones of a schema not registered yet."""
        out = Scored()
        groups: dict[tuple[str, str | None], list[Member]] = defaultdict(list)
        unknown: list[tuple[Incoming, Rejected]] = []
        read = self.tracker.registry.read
        for item in batch:
            try:
                event, carried, doubles = read(item.value)
            except UnknownSchema as exc:
                unknown.append((item, exc))
                continue
            except Undecodable as exc:
                out.rejected.append((item, exc))
                continue
            groups[(event["model"], event["ref"])].append((item, event, carried, doubles))
        return out, groups, unknown

    async def _learn(self, unknown: list[tuple[Incoming, Rejected]]) -> None:
        """Learn the signature each (model, ref) of an event of an unregistered schema
        serves (loading it, as its first event would): a producer may fetch the schema of
        a legacy commit (none in the log) before any worker loads it, and its first events
        must not be dead-lettered for that. Whatever is still unknown then is refused."""
        wanted = {(e.model, e.ref) for _, e in unknown if isinstance(e, UnknownSchema)}
        for model, ref in wanted:
            if model is None:
                continue  # not even the envelope decodes: nothing to learn
            try:
                version = await self.tracker.version_for(model, ref)
            except Rejected:
                continue  # refused below for its unknown schema, the producer's first fix
            self.tracker.registry.add(version.loaded.summary.signature)

    async def _score_group(
        self,
        version: Version,
        members: Sequence[Member],
        scored_at: int,
        out: Scored,
    ) -> list[Member]:
        """Score ``members`` by ``version`` into ``out``; the members it scored."""
        matrix, kept = self._rows(version, members, out.rejected)
        if not kept:
            return kept
        started = time.perf_counter()
        scores, failed = await self._predicted(version, matrix)
        self.metrics.predict_took(time.perf_counter() - started)
        if failed:
            out.rejected += [(kept[i][0], _about(why, version)) for i, why in failed.items()]
            keep = [i for i in range(len(kept)) if i not in failed]
            kept, scores = [kept[i] for i in keep], scores[keep]
            if not kept:
                return kept
        out.predictions += await self._encoded(version, kept, scores, scored_at)
        event_ms = np.fromiter((item.timestamp_ms for item, *_ in kept), np.int64, len(kept))
        self.metrics.end_to_end(np.maximum(0.0, (scored_at - event_ms) / 1000))
        self.metrics.predicted(version.model, version.commit_id, "stream", len(kept), version.arm)
        return kept

    async def _predicted(
        self, version: Version, matrix: np.ndarray
    ) -> tuple[np.ndarray, dict[int, ModelFailed]]:
        """Scores, and the rows the model failed on. A batch the model fails on is scored
        again a row at a time, so one hostile row is a dead letter, never a worker that
        crashes on the same batch after every restart; scores that are NaN or infinite
        are refused the same way."""
        failed: dict[int, ModelFailed] = {}
        try:
            scores = await self.predict(version, matrix)
        except Exception:  # whatever the native library raises: found row by row below
            rows = []
            for i in range(len(matrix)):
                try:
                    rows.append((await self.predict(version, matrix[i : i + 1]))[0])
                except Exception as exc:
                    failed[i] = ModelFailed(f"the model failed on this event: {str(exc)[:300]}")
                    rows.append(np.full(version.loaded.summary.signature.outputs, np.nan))
            scores = np.asarray(rows, dtype=np.float64)
        for i in np.flatnonzero(~np.isfinite(scores).all(axis=1)).tolist():
            failed.setdefault(i, ModelFailed("the model's scores for this event are not finite"))
        return scores, failed

    async def _shadow(
        self, shadow: Version, members: list[Member], scored_at: int, out: Scored
    ) -> None:
        """The rows just served, scored by the shadow commit too; what it cannot score is
        counted and left out (the event was served: it is no dead letter)."""
        refused: list[tuple[Incoming, Rejected]] = []
        matrix, kept = self._rows(shadow, members, refused)
        if refused:
            self.metrics.shadow_failed(shadow.model, "refused", len(refused))
        if not kept:
            return
        try:
            scores = await self.predict(shadow, matrix)
        except Exception as exc:  # whatever the shadow's model raises, serving goes on
            log.warning(
                "shadow %s of %s@%s failed (%r)",
                shadow.commit_id[:12],
                shadow.model,
                shadow.ref,
                exc,
            )
            self.metrics.shadow_failed(shadow.model, "predict", len(kept))
            return
        out.shadow_predictions += await self._encoded(shadow, kept, scores, scored_at)
        self.metrics.predicted(shadow.model, shadow.commit_id, "stream", len(kept), "shadow")

    async def _encoded(
        self, version: Version, kept: list[Member], scores: np.ndarray, scored_at: int
    ) -> list[tuple[int, bytes | None, bytes]]:
        if self.signer is None:
            return self._encode(version, kept, scores, scored_at)
        # Signing costs tens of microseconds a record: on the predict thread, so a large
        # batch does not hold up /healthz and the group heartbeat on the event loop.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.predictor, self._encode, version, kept, scores, scored_at
        )

    def _rows(
        self,
        version: Version,
        members: Sequence[Member],
        rejected: list[tuple[Incoming, Rejected]],
    ) -> tuple[np.ndarray, list[Member]]:
        """The matrix of ``members`` for ``version`` and the members in it; each refused one
        goes to ``rejected``, attributed to the version."""
        names = version.loaded.feature_names
        # Each kept event's row: the raw float64s of an all-double typed event already in
        # the served order (the common case: one numpy.frombuffer for the whole batch), or
        # a list of numbers.
        parts: list[bytes | list[float]] = []
        kept: list[Member] = []
        # Once per typed schema in this batch, not per event (each object lives as long
        # as the batch, so its id is its identity here): refused, and in the served order.
        fits: dict[int, tuple[SignatureMismatch | None, bool]] = {}
        for member in members:
            item, event, carried, doubles = member
            if carried is not None:
                fit = fits.get(id(carried))
                if fit is None:
                    in_order = tuple(f.name for f in carried) == tuple(names)
                    fit = fits[id(carried)] = (self._mismatch(version, carried), in_order)
                refused, in_order = fit
                if refused is not None:
                    rejected.append((item, refused))
                    continue
                if doubles is not None:
                    if in_order:
                        parts.append(doubles)
                        kept.append(member)
                        continue
                    values = struct.unpack(f"<{len(carried)}d", doubles)
                    event["features"] = dict(zip((f.name for f in carried), values, strict=True))
            try:
                parts.append(scoring.feature_row(event["features"], names))
                kept.append(member)
            except Rejected as exc:
                rejected.append((item, _about(exc, version)))
        if not parts:
            return np.empty((0, len(names))), kept
        if all(type(p) is bytes for p in parts):
            raw = b"".join(parts)  # type: ignore[arg-type]
            matrix = np.frombuffer(raw, dtype="<f8").reshape(len(parts), len(names))
        else:
            matrix = np.asarray(
                [np.frombuffer(p, dtype="<f8") if type(p) is bytes else p for p in parts],
                dtype=np.float64,
            )
        verdicts = scoring.check_finite(matrix, names)
        if any(v is not None for v in verdicts):
            good = [i for i, v in enumerate(verdicts) if v is None]
            rejected += [
                (kept[i][0], _about(v, version)) for i, v in enumerate(verdicts) if v is not None
            ]
            matrix, kept = matrix[good], [kept[i] for i in good]
        return matrix, kept

    @staticmethod
    def _mismatch(version: Version, carried: tuple[Feature, ...]) -> SignatureMismatch | None:
        why = mismatch(carried, version.loaded.summary.signature)
        if why is None:
            return None
        return _about(
            SignatureMismatch(f"{why}; {fetch_hint(version.model, version.ref)}"), version
        )

    def _encode(
        self,
        version: Version,
        kept: list[Member],
        scores: np.ndarray,
        scored_at: int,
    ) -> list[tuple[int, bytes | None, bytes]]:
        rows = scores.tolist()
        if self.signer is None:
            # The byte-identical encoder writes what is constant per version and batch once:
            # half the cost of building and encoding a record per prediction.
            encoder = scoring.PredictionEncoder(version, self.worker_id, scored_at)
            return [
                (
                    item.partition,
                    item.key,
                    encoder.encode(
                        event["event_id"],
                        item.topic,
                        item.partition,
                        item.offset,
                        event["event_time"],
                        row,
                        event["entity_key"],
                    ),
                )
                for (item, event, _, _), row in zip(kept, rows, strict=True)
            ]
        encoded = []
        for (item, event, _, _), row in zip(kept, rows, strict=True):
            source = scoring.Source(item.topic, item.partition, item.offset, item.timestamp_ms)
            record = scoring.prediction_record(
                event, source, version, row, self.worker_id, scored_at
            )
            # Said explicitly: fastavro would write the schema's default for bytes as a str.
            record |= {"key_id": "", "signature": b""}
            assert self.signer is not None  # else the encoder above
            sign_prediction(record, self.signer)
            encoded.append((item.partition, item.key, PREDICTIONS.encode(record)))
        return encoded


def _entity_key(member: Member) -> str:
    event = member[1]
    return routing_key(str(event["entity_key"]), str(event["event_id"]))


def _about(rejected: R, version: Version) -> R:
    """``rejected`` attributed to the version that refused it, as its predictions are stamped."""
    return rejected.about(
        version.model,
        version.commit_id,
        rollout_id=version.rollout_id,
        arm=version.arm,
        ref=version.ref,
    )
