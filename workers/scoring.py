"""From decoded feature events to prediction records, one matrix per version.

Pure apart from LightGBM itself: no Kafka, no clock (``scored_at`` comes in).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.artifacts import LoadedModel
from workers.errors import MissingFeature, NonFiniteValue, Rejected, WrongType


@dataclass(frozen=True)
class Version:
    """The version a batch is scored by: what a ref resolved to, and its loaded model."""

    model: str
    ref: str  # the ref as requested, or the default ref it stood for
    commit_id: str
    artifact_sha256: str
    loaded: LoadedModel


@dataclass(frozen=True)
class Source:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


def prediction_id(feature_event_id: str, commit_id: str) -> str:
    """Deterministic: a redelivered event scored by the same version keeps its id."""
    return hashlib.sha256(f"{feature_event_id}|{commit_id}".encode()).hexdigest()


_FLOAT_MAX = int(np.finfo(np.float64).max)


def feature_row(features: Mapping[str, Any], names: Sequence[str]) -> list[float]:
    """The model's features in its training order, or the reason the event is refused."""
    try:
        row = [features[name] for name in names]
    except KeyError as exc:
        raise MissingFeature(f"feature {exc.args[0]!r} is missing") from None
    for name, value in zip(names, row, strict=True):
        if type(value) is float:
            continue  # the common case, checked for finiteness on the whole matrix
        if value is None:
            raise MissingFeature(f"feature {name!r} is null")
        if isinstance(value, bool) or not isinstance(value, int | float):
            # Quote at most 200 characters: the value may be megabytes (it is dead-lettered).
            raise WrongType(
                f"feature {name!r:.200} is {type(value).__name__} {value!r:.200}, not a number"
            )
        if isinstance(value, int) and not -_FLOAT_MAX < value < _FLOAT_MAX:
            # JSON (the predict endpoint) has integers of any size; a float64 does not.
            raise NonFiniteValue(f"feature {name!r:.200} is an integer too large for a float")
    return row


def check_finite(matrix: np.ndarray, names: Sequence[str]) -> list[Rejected | None]:
    """Per row: None when finite, else the rejection naming the first bad feature."""
    ok = np.isfinite(matrix).all(axis=1)
    if ok.all():
        return [None] * len(matrix)
    out: list[Rejected | None] = []
    for row, good in zip(matrix, ok, strict=True):
        if good:
            out.append(None)
            continue
        bad = next(i for i, v in enumerate(row) if not math.isfinite(v))
        out.append(NonFiniteValue(f"feature {names[bad]!r} is {row[bad]}"))
    return out


def predict(version: Version, matrix: np.ndarray) -> np.ndarray:
    """Scores as a 2-D array (rows x outputs) for one batch, one LightGBM thread."""
    scores = version.loaded.booster.predict(matrix, num_threads=1)
    return np.asarray(scores, dtype=np.float64).reshape(len(matrix), -1)


def prediction_record(
    event: Mapping[str, Any],
    source: Source,
    version: Version,
    scores: Sequence[float],
    worker_id: str,
    scored_at: int,
) -> dict[str, Any]:
    return {
        "prediction_id": prediction_id(event["event_id"], version.commit_id),
        "feature_event_id": event["event_id"],
        "source_topic": source.topic,
        "source_partition": source.partition,
        "source_offset": source.offset,
        "model": version.model,
        "requested_ref": version.ref,
        "commit_id": version.commit_id,
        "artifact_sha256": version.artifact_sha256,
        "scores": list(scores),
        "worker_id": worker_id,
        "event_time": event["event_time"],
        "scored_at": scored_at,
    }
