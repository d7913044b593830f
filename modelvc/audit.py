"""Audit tools: replay and check the log, explain a prediction, re-score predictions.

Nothing here trusts the running service: the log (Kafka or the archive) is
read and folded with the same pure core, artifacts are re-hashed, features are
fetched from their recorded coordinates.

Signatures: every event on a partition whose writer-key ring (``~keys.P``) has a
key must be signed by an active key of that ring (``unsigned`` / ``bad_signature``
violations otherwise). Which first key of each ring to believe is the auditor's
call: the key ids given with ``trusted`` (``--trust-key FILE``, ``--trust-digest
KEY_ID``), or, without any, whichever came first (trust on first use), reported in
``Replay.first_keys`` so it can be pinned next time. Predictions signed by a
worker (``workers.signing``) are checked with the worker public keys given.
Which keys to believe, and what a prediction's signature says against them, is
:mod:`modelvc.trust`; this module reads, folds and re-scores.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import random
import struct
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from kafka import TopicPartition

from modelvc import trust
from modelvc.reference_decoder import (
    MAX_DETAIL,
    ReferenceDecodeError,
    ReferenceDecoder,
    first_difference,
)
from streams.archive import Archive, SegmentProblem
from streams.codec import EVENT_SCHEMA_FILES, EVENTS, PREDICTIONS
from streams.core import refs, rollout
from streams.core.audit import SKIPPED, Auditor, Finding, Where
from streams.core.errors import VersionGraphError
from streams.core.events import AliasMoved, ModelEvent
from streams.core.evolve import evolve
from streams.core.fold import Fold
from streams.core.state import ModelState
from streams.errors import UndecodableMessage
from streams.kafka_access import KafkaAccess
from streams.logreader import log_consumer, read_topic

# The replay itself lives with the service, which runs it too (POST /v1/audit/replay);
# these names stay importable from here for the CLI, the benches and the tests.
from streams.replay import (
    Locate,
    Located,
    Replay,
    finding_from,
    locate,
    partitions_of,
    replay_kafka,
    run,
)
from streams.replay import peak_rss_mb as peak_rss_mb  # bench.audit adds its children's
from streams.signing import verify
from workers.signing import WorkerKeys

DECODERS = ("fastavro", "reference")


def cross_checked(auditor: Auditor, reference: ReferenceDecoder | None = None) -> Locate:
    """:func:`~streams.replay.locate`, plus a second decoding by Apache Avro compared with
    fastavro's.

    Any difference (one refuses what the other decodes, or they decode other
    values) is reported to ``auditor`` as a ``decoder_mismatch``; the event the
    audit folds is still fastavro's, the one the service and workers read.
    """
    decoder = reference or ReferenceDecoder.from_files(EVENT_SCHEMA_FILES)

    def located_twice(topic: str, partition: int, offset: int, value: bytes | None) -> Located:
        located = locate(topic, partition, offset, value)
        event, where = located[0], located[1]
        fast: dict[str, Any] | None = None
        ours: dict[str, Any] | None = None
        try:
            fast = EVENTS.decode(value)  # type: ignore[arg-type]
        except UndecodableMessage as exc:
            fast_error = str(exc)
        try:
            ours = decoder.decode(value)
        except ReferenceDecodeError as exc:
            ours_error = str(exc)
        if fast is None and ours is None:
            return located  # both refuse: undecodable (or garbage) either way
        if fast is None:
            detail = f"fastavro refused it ({fast_error:.{MAX_DETAIL}}); Apache Avro decoded it"
        elif ours is None:
            detail = f"Apache Avro refused it ({ours_error:.{MAX_DETAIL}}); fastavro decoded it"
        else:
            difference = first_difference(fast, ours)
            if difference is None:
                return located
            detail = f"fastavro and Apache Avro decode it differently: {difference}"
        model, seq = (event.model, event.seq) if event is not None else ("?", 0)
        auditor.decoder_mismatch(where, detail, model, seq)
        return located

    return located_twice


def from_archive(
    archive: Archive,
    problems: list[SegmentProblem],
    ends: dict[int, int],
    partitions: set[int] | None = None,
    locate: Locate = locate,
) -> Iterator[Located]:
    expected: dict[int, int] = {}
    for r in archive.records(problems, partitions):
        if r.offset != expected.get(r.partition, 0):
            # Offsets inside the archive must be contiguous: a hole is a dropped message.
            problems.append(
                SegmentProblem(
                    "?",
                    r.partition,
                    expected.get(r.partition, 0),
                    r.offset - 1,
                    f"offsets {expected.get(r.partition, 0)}..{r.offset - 1} are missing",
                )
            )
        expected[r.partition] = r.offset + 1
        ends[r.partition] = r.offset
        yield locate(r.topic, r.partition, r.offset, r.value)


def merge(result: Replay, part: dict[str, Any]) -> None:
    """Add a partition group's :meth:`Replay.partial` to ``result``."""
    result.events += part["events"]
    result.peak_mb += part["peak_mb"]  # children run at once: their peaks add up
    result.duplicates += part["duplicates"]
    result.violations += [finding_from(v) for v in part["violations"]]
    result.problems += [SegmentProblem(**p) for p in part["segment_problems"]]
    result.skipped += [
        Finding(
            SKIPPED,
            "?",
            0,
            Where(s["topic"], s["partition"], s["offset"]),
            s["detail"],
        )
        for s in part["skipped"]
    ]
    result.ends.update({int(p): o for p, o in part["last_offsets"].items()})
    result.duplicate_events += [finding_from(d) for d in part["duplicate_events"]]
    result.first_keys.update(
        {int(k["partition"]): k["key_id"] for k in part["trusted_on_first_use"]}
    )
    for model, digest_input in part["inputs"].items():
        if model in result.inputs:
            result.violations.append(
                Finding(
                    "conflict",
                    model,
                    0,
                    Where(result.source, -1, -1),
                    "the model has events in more than one partition",
                )
            )
        result.inputs[model] = digest_input


def _replay_here(
    kafka: KafkaAccess | None,
    topic: str,
    archive_dir: Path | None,
    partitions: set[int] | None,
    decoder: str = "fastavro",
    trusted: frozenset[str] | None = None,
    keep: Callable[[ModelEvent], bool] | None = None,
) -> Replay:
    checked = cross_checked if decoder == "reference" else None
    if archive_dir is None:
        assert kafka is not None
        return replay_kafka(kafka, topic, partitions, decoder, trusted, keep, checked)
    started = time.perf_counter()
    fold = Fold(verify=verify, trusted=trusted)
    auditor = Auditor(fold=fold)  # the archive does not record the topic's partition count
    archive = Archive(archive_dir)
    if archive.empty:
        raise FileNotFoundError(
            2, "no archive index (or an empty one)", str(archive_dir / "index.json")
        )
    result = Replay(f"archive {archive_dir}", decoder, auditor=auditor, trusted=trusted)
    located = checked(auditor) if checked is not None else locate
    records = from_archive(archive, result.problems, result.ends, partitions, located)
    return run(result, auditor, records, keep, started)


def _partitions(kafka: KafkaAccess | None, topic: str, archive_dir: Path | None) -> list[int]:
    if archive_dir is not None:
        return sorted(Archive(archive_dir).segments)
    assert kafka is not None  # replay() is given one of the two
    return partitions_of(kafka, topic)


def replay(
    kafka: KafkaAccess | None,
    topic: str,
    archive_dir: Path | None = None,
    jobs: int = 1,
    partitions: set[int] | None = None,
    decoder: str = "fastavro",
    trusted: frozenset[str] | None = None,
    keep: Callable[[ModelEvent], bool] | None = None,
) -> Replay:
    """Fold and check the whole log; ``jobs`` > 1 replays partition groups in parallel processes.

    Models never span partitions, so partition groups fold independently and their
    per-model digest inputs merge into the same digest a single pass would give.
    ``decoder="reference"`` also decodes every message with Apache Avro and reports
    each difference from fastavro as a ``decoder_mismatch`` violation (slower).
    ``trusted``: the writer key ids a ring's first key must be one of (None: the first
    key of each ring is trusted on first use, and reported in ``first_keys``).
    ``keep``: which applied events to hand back in ``Replay.kept`` (one process only).
    """
    if keep is not None and jobs > 1:
        raise ValueError("keep works in one process: replay with jobs=1")
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; use one of {', '.join(DECODERS)}")
    # The fold allocates no reference cycles; pausing the cyclic collector keeps it from
    # rescanning the growing graph over and over (a third of replay time at 1M events).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if jobs <= 1:
            return _replay_here(kafka, topic, archive_dir, partitions, decoder, trusted, keep)
        return _replay_parallel(kafka, topic, archive_dir, jobs, decoder, trusted)
    finally:
        if was_enabled:
            gc.enable()


def _replay_parallel(
    kafka: KafkaAccess | None,
    topic: str,
    archive_dir: Path | None,
    jobs: int,
    decoder: str,
    trusted: frozenset[str] | None,
) -> Replay:
    started = time.perf_counter()
    parts = _partitions(kafka, topic, archive_dir)
    # Children read the access from their environment: the credentials path, not a password.
    env = dict(os.environ) | ({} if kafka is None else kafka.to_env())
    groups = [parts[i::jobs] for i in range(min(jobs, len(parts)))]
    children = []
    for group in groups:
        argv = [
            sys.executable,
            "-m",
            "modelvc.audit",
            "--topic",
            topic,
            "--partitions",
            ",".join(map(str, group)),
            "--decoder",
            decoder,
        ]
        argv += ["--archive", str(archive_dir)] if archive_dir else []
        argv += [f"--trust={key_id}" for key_id in sorted(trusted or ())]
        children.append(
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        )
    source = (
        f"archive {archive_dir}"
        if archive_dir or kafka is None
        else f"{topic} on {kafka.bootstrap}"
    )
    result = Replay(source, decoder, trusted=trusted)
    for child in children:
        out, err = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"replay of a partition group failed: {err.decode()[-2000:]}")
        merge(result, json.loads(out))
    result.violations.sort(key=lambda f: (f.where.partition, f.where.offset))
    result.seconds = time.perf_counter() - started
    return result


# -- which version served a prediction ----------------------------------------------------
Prediction = tuple[dict[str, Any], Where]  # a decoded prediction and where it was read


def _predictions(kafka: KafkaAccess, topic: str, needle: bytes = b"") -> Iterator[Prediction]:
    """Every decodable prediction (containing ``needle``); anyone may write garbage there."""
    for r in read_topic(kafka, topic):
        if r.value and needle in r.value:
            try:
                yield PREDICTIONS.decode(r.value), Where(topic, r.partition, r.offset)
            except UndecodableMessage:
                continue


def find_prediction(kafka: KafkaAccess, topic: str, prediction_id: str) -> list[Prediction]:
    return [
        (p, where)
        for p, where in _predictions(kafka, topic, prediction_id.encode())
        if p["prediction_id"] == prediction_id
    ]


def plain_prediction(record: dict[str, Any]) -> dict[str, Any]:
    """The record as JSON can carry it: the signature as hex."""
    return record | {"signature": bytes(record.get("signature") or b"").hex()}


def served(
    kafka: KafkaAccess,
    events_topic: str,
    predictions_topic: str,
    prediction_id: str,
    keys: WorkerKeys | None = None,
    trusted: frozenset[str] | None = None,
) -> dict[str, Any]:
    """Which version scored ``prediction_id`` and the event that made its ref point there.

    Every copy of the prediction on the topic has its signature checked with ``keys``
    (a copy a stranger wrote under the same id is how a forged score would look);
    ``answer["signatures"]`` lists each problem, with the copy's coordinates.
    """
    found = find_prediction(kafka, predictions_topic, prediction_id)
    if not found:
        raise LookupError(f"no prediction {prediction_id} in {predictions_topic}")
    keys = keys if keys is not None else WorkerKeys({})
    problems = [f for f in map(functools.partial(trust.check_signature, keys=keys), found) if f]
    # Shown: the first copy whose signature holds, if any does.
    bad = {(f.where.partition, f.where.offset) for f in problems if f.violation}
    p, at = next((c for c in found if (c[1].partition, c[1].offset) not in bad), found[0])
    routed = bool(p.get("rollout_id") or p.get("arm"))
    # A rollout's arm is checked against the model as it was when the prediction was
    # scored, so its history is kept (one model's events; the rest are only folded).
    done = replay(
        kafka,
        events_topic,
        trusted=trusted,
        keep=(lambda e: e.model == p["model"]) if routed else None,
    )
    auditor = done.auditor
    assert auditor is not None  # an in-process replay keeps its fold
    state = auditor.fold.models.get(p["model"])
    answer: dict[str, Any] = {
        "prediction": plain_prediction(p),
        "at": {"topic": at.topic, "partition": at.partition, "offset": at.offset},
        "copies": len(found),
        "signed": bool(p.get("signature")),
        "signatures": [f.to_dict() for f in problems],
        "findings": [str(f) for f in problems],
    }
    if state is None or p["commit_id"] not in state.commits:
        answer["findings"].append(
            f"commit {p['commit_id']} is not in the log of model {p['model']}"
        )
        return answer
    commit = state.commits[p["commit_id"]]
    answer["commit"] = {
        "id": commit.id,
        "artifact_sha256": commit.artifact_sha256,
        "message": commit.message,
        "author": commit.author,
        "at": commit.at,
    }
    if commit.artifact_sha256 != p["artifact_sha256"]:
        answer["findings"].append(
            f"prediction names artifact {p['artifact_sha256']} but commit {commit.id} has "
            f"{commit.artifact_sha256}"
        )
    behind: dict[str, Any] | None = None
    if routed:
        behind, findings = rollout_behind(p, done.kept)
        answer["rollout"] = behind
        answer["findings"] += findings
    ref = p["requested_ref"]
    moves = [m for m in state.ref_moves() if m.name == ref and m.at <= p["scored_at"]]
    in_effect = moves[0] if moves else None
    making = next((m for m in moves if m.new == commit.id), None)
    if making is not None:
        where = auditor.places[p["model"]][making.seq - 1]
        answer["ref_move"] = {
            "seq": making.seq,
            "event": making.cause,
            "kind": making.kind,
            "ref": ref,
            "from": making.old,
            "to": making.new,
            "actor": making.actor,
            "at": making.at,
            "reason": making.reason,
            "topic": where.topic,
            "partition": where.partition,
            "offset": where.offset,
        }
        if in_effect is not None and in_effect is not making:
            answer["findings"].append(
                f"{ref} had already moved on to {in_effect.new} (event #{in_effect.seq}) "
                f"{p['scored_at'] - in_effect.at} ms before this prediction was scored "
                "(the worker had not switched yet)"
            )
    elif ref.startswith(commit.id[: len(ref)]) and len(ref) >= 4:
        answer["ref_move"] = None  # the ref named the commit directly
    elif behind is not None and commit.id == behind["candidate"]:
        answer["ref_move"] = None  # the rollout's candidate arm: the alias had not moved
    else:
        answer["findings"].append(
            f"no event ever pointed {ref!r} at {commit.id} before it was scored"
        )
    return answer


def _decision(event: ModelEvent, where: Where) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "event": event.type,
        "actor": event.actor,
        "at": event.at,
        "topic": where.topic,
        "partition": where.partition,
        "offset": where.offset,
    }


def _moves_routing(event: ModelEvent, rollout_id: str, ref: str) -> bool:
    """Whether ``event`` can change what ``ref`` serves under rollout ``rollout_id``."""
    payload = event.payload
    if isinstance(payload, AliasMoved):
        return payload.alias == ref
    return getattr(payload, "rollout_id", None) == rollout_id


def _serving(
    state: ModelState | None, ref: str, entity: str, event_id: str
) -> tuple[str, str, str]:
    """What the worker's rule serves the feature event ``event_id`` of ``entity`` for
    ``ref`` in ``state`` ("?" when nothing)."""
    if state is None:
        return ("?", "", "")
    try:
        return refs.serving(state, ref, entity, event_id)
    except VersionGraphError:
        return ("?", "", "")


def rollout_behind(
    prediction: Mapping[str, Any], history: Sequence[tuple[ModelEvent, Where]]
) -> tuple[dict[str, Any] | None, list[str]]:
    """Which rollout and arm served ``prediction``, checked against its model's ``history``.

    ``history``: the model's applied events in log order, each where it was read. The
    model is folded up to the prediction's ``scored_at``, and the routing rule the worker
    uses (:func:`streams.core.refs.serving`) must give the prediction's commit, rollout
    and arm. If it gives them only as of just before the decision then in effect, the
    worker had not switched yet: a finding with how long before. Returns the rollout's
    plain description (None when the prediction names no rollout that ever started) and
    the findings.
    """
    rid = str(prediction.get("rollout_id") or "")
    side = str(prediction.get("arm") or "")
    ref, entity = str(prediction["requested_ref"]), str(prediction.get("entity_key") or "")
    event_id = str(prediction.get("feature_event_id") or "")
    scored_at = int(prediction["scored_at"])
    state: ModelState | None = None
    before: ModelState | None = None
    last: tuple[ModelEvent, Where] | None = None  # the last routing change at scored_at
    decision: tuple[ModelEvent, Where] | None = None  # the rollout's last event at scored_at
    ever = False
    for event, where in history:
        named = bool(rid) and getattr(event.payload, "rollout_id", None) == rid
        ever = ever or bool(named)
        if event.at > scored_at:
            continue  # later events only tell whether the rollout exists at all
        if _moves_routing(event, rid, ref):
            before, last = state, (event, where)
        if named:
            decision = (event, where)
        state = evolve(state, event, "")
    model = str(prediction["model"])
    if not rid:
        return None, [f"the prediction names arm {side!r:.40} but no rollout"]
    if not ever:
        return None, [
            f"the prediction names rollout {rid!r:.40}, which is not in the log of {model}"
        ]
    found = state.rollouts.get(rid) if state is not None else None
    if found is None or decision is None:
        return None, [f"rollout {rid} had not started when the prediction was scored"]
    answer: dict[str, Any] = {
        "id": rid,
        "alias": found.alias,
        "arm": side,
        "baseline": found.baseline,
        "candidate": found.candidate,
        "entity_key": entity,
        # What the workers hash: the entity, or the event's own id when it has none.
        "bucket": rollout.bucket(rid, rollout.routing_key(entity, event_id)),
        "percent": found.percent,  # as of scored_at
        "status": found.status,
        "decision": _decision(*decision),
    }
    served = (str(prediction["commit_id"]), rid, side)
    expected = _serving(state, ref, entity, event_id)
    if expected == served:
        return answer, []
    if last is not None and _serving(before, ref, entity, event_id) == served:
        event = last[0]
        return answer, [
            f"{event.type} #{event.seq} had changed what {ref} serves {scored_at - event.at} ms "
            "before this prediction was scored (the worker had not switched yet)"
        ]
    return answer, [
        f"as of its scoring, {ref} served entity {entity!r:.80} with commit {expected[0]} "
        f"(rollout {expected[1] or 'none'}, arm {expected[2] or 'none'}), not commit "
        f"{served[0]} on arm {side!r:.40} of rollout {rid}"
    ]


# -- re-scoring predictions ----------------------------------------------------------------
@dataclass
class Mismatch:
    prediction_id: str
    feature_event_id: str
    recorded: list[float]
    recomputed: list[float] | None
    detail: str

    @property
    def difference(self) -> float:
        if self.recomputed is None or len(self.recomputed) != len(self.recorded):
            return float("inf")
        return max(abs(a - b) for a, b in zip(self.recorded, self.recomputed, strict=True))


@dataclass(frozen=True)
class OtherRuntime:
    """A prediction that re-scores differently, made under another runtime than this
    auditor's: not evidence of a wrong score (another library version or CPU may round
    otherwise), nor proof of a right one."""

    prediction_id: str
    feature_event_id: str
    recorded: list[float]
    recomputed: list[float]
    detail: str


@dataclass
class Verification:
    checked: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    seconds: float = 0.0
    signed: int = 0  # how many of those checked carry a signature
    signatures: list[trust.SignatureFinding] = field(default_factory=list)
    other_runtime: list[OtherRuntime] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        # A score this auditor could not reproduce is not verified, whatever the reason.
        return (
            not self.mismatches
            and not self.other_runtime
            and not any(f.violation for f in self.signatures)
        )

    @property
    def largest_difference(self) -> float:
        return max((m.difference for m in self.mismatches), default=0.0)


def _fetch_sources(
    kafka: KafkaAccess, wanted: dict[tuple[str, int], set[int]]
) -> dict[tuple[str, int, int], bytes]:
    """The feature events at the recorded coordinates (read once per partition range)."""
    found: dict[tuple[str, int, int], bytes] = {}
    consumer = log_consumer(kafka, max_poll_records=20_000)
    try:
        for (topic, partition), offsets in wanted.items():
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, min(offsets))
            last, idle = max(offsets), time.monotonic()
            while consumer.position(tp) <= last and time.monotonic() - idle < 10:
                for message in consumer.poll(timeout_ms=200).get(tp, []):
                    idle = time.monotonic()
                    if message.offset in offsets and message.value is not None:
                        found[(topic, partition, message.offset)] = message.value
    finally:
        consumer.close()
    return found


def verify_predictions(
    kafka: KafkaAccess,
    events_topic: str,
    predictions_topic: str,
    loader: Any,
    model: str | None = None,
    sample: int | None = None,
    seed: int = 0,
    keys: WorkerKeys | None = None,
    trusted: frozenset[str] | None = None,
) -> Verification:
    """Re-score recorded predictions with the recorded commit's artifact; compare exactly.

    ``loader`` is the worker's (:class:`workers.artifacts.ArtifactLoader`): the same checks,
    the same :func:`streams.formats.load` and ``predict``, so the same session options. Scores
    are compared bit for bit (as IEEE doubles). A prediction that differs and was stamped
    with another ``runtime`` than the loaded predictor's goes to
    ``Verification.other_runtime``, not to the mismatches: only that runtime can say.
    Signed ones also have their signature checked with ``keys`` (``Verification.signatures``).
    """
    from workers import scoring
    from workers.errors import Rejected, Undecodable
    from workers.typed import TypedRegistry, UnknownSchema

    started = time.perf_counter()
    located = list(_predictions(kafka, predictions_topic))
    if model is not None:
        located = [c for c in located if c[0]["model"] == model]
    if sample is not None and sample < len(located):
        located = random.Random(seed).sample(located, sample)
    keys = keys if keys is not None else WorkerKeys({})
    result = Verification(
        checked=len(located), signed=sum(bool(p.get("signature")) for p, _ in located)
    )
    result.signatures = [
        f for f in map(functools.partial(trust.check_signature, keys=keys), located) if f
    ]
    predictions = [p for p, _ in located]
    auditor = replay(kafka, events_topic, trusted=trusted).auditor
    assert auditor is not None
    wanted: dict[tuple[str, int], set[int]] = defaultdict(set)
    for p in predictions:
        wanted[(p["source_topic"], p["source_partition"])].add(p["source_offset"])
    sources = _fetch_sources(kafka, wanted)
    by_commit: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    # Feature events come typed (by a signature in the log, or of a legacy commit's file)
    # or in the map form: decoded by fingerprint, as the worker did.
    registry = TypedRegistry()
    for folded in auditor.fold.models.values():
        for known in folded.commits.values():
            if known.signature is not None:
                registry.add(known.signature)
    for p in predictions:
        raw = sources.get((p["source_topic"], p["source_partition"], p["source_offset"]))
        state = auditor.fold.models.get(p["model"])
        commit = state.commits.get(p["commit_id"]) if state else None
        problem = None
        if raw is None:
            problem = "its feature event is gone from the recorded coordinates"
        elif commit is None:
            problem = f"commit {p['commit_id']} is not in the log"
        elif commit.artifact_sha256 != p["artifact_sha256"]:
            problem = (
                f"commit {commit.id} has artifact {commit.artifact_sha256}, "
                f"not {p['artifact_sha256']}"
            )
        else:
            try:
                try:
                    event, _ = registry.decode(raw)
                except UnknownSchema:
                    registry.add(loader.load(commit.artifact_sha256).summary.signature)
                    event, _ = registry.decode(raw)
            except Undecodable as exc:
                problem = f"the bytes at the recorded coordinates are no feature event: {exc}"
            else:
                if event["event_id"] != p["feature_event_id"]:
                    problem = f"the event at the recorded coordinates is {event['event_id']}"
                else:
                    by_commit[commit.artifact_sha256].append((p, event))
        if problem is not None:
            result.mismatches.append(
                Mismatch(p["prediction_id"], p["feature_event_id"], p["scores"], None, problem)
            )
    for digest, pairs in by_commit.items():
        loaded = loader.load(digest)
        rows, kept = [], []
        for p, event in pairs:
            try:
                rows.append(scoring.feature_row(event["features"], loaded.feature_names))
                kept.append(p)
            except Rejected as exc:
                result.mismatches.append(
                    Mismatch(
                        p["prediction_id"],
                        p["feature_event_id"],
                        p["scores"],
                        None,
                        f"its feature event cannot be scored: {exc}",
                    )
                )
        if not rows:
            continue
        runtime = loaded.predictor.runtime
        scores = loaded.predictor.predict(np.asarray(rows, dtype=np.float64))
        for p, row in zip(kept, scores.tolist(), strict=True):
            verdict = rescored(p, row, runtime)
            if isinstance(verdict, OtherRuntime):
                result.other_runtime.append(verdict)
            elif verdict is not None:
                result.mismatches.append(verdict)
    result.seconds = time.perf_counter() - started
    return result


def same_bits(a: Sequence[float], b: Sequence[float]) -> bool:
    """Equal as IEEE doubles, bit for bit (``==`` takes -0.0 for 0.0 and NaN for no NaN)."""
    return len(a) == len(b) and struct.pack(f"<{len(a)}d", *a) == struct.pack(f"<{len(b)}d", *b)


def rescored(
    prediction: Mapping[str, Any], row: list[float], runtime: str
) -> Mismatch | OtherRuntime | None:
    """What re-scoring ``prediction`` to ``row`` under ``runtime`` says: None when the
    scores are the same bits; else a mismatch, unless it was stamped with another runtime
    (a prediction from before the stamp, ``None``, is held to this auditor's)."""
    recorded = prediction["scores"]
    if same_bits(row, recorded):
        return None
    made_under = prediction.get("runtime")
    if made_under is not None and made_under != runtime:
        return OtherRuntime(
            prediction["prediction_id"],
            prediction["feature_event_id"],
            recorded,
            row,
            f"made under {made_under!r:.200}; this auditor runs {runtime!r}: "
            "install that version to re-score exactly",
        )
    return Mismatch(
        prediction["prediction_id"],
        prediction["feature_event_id"],
        recorded,
        row,
        "re-scored differently",
    )


def _child_main() -> None:
    """`python -m modelvc.audit --partitions 0,2 ...`: one partition group of a parallel replay."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--topic", required=True)
    p.add_argument("--partitions", required=True)
    p.add_argument("--archive")
    p.add_argument("--decoder", choices=DECODERS, default="fastavro")
    p.add_argument("--trust", action="append", default=[])
    args = p.parse_args()
    gc.disable()
    result = _replay_here(
        None if args.archive else KafkaAccess.from_env(os.environ),
        args.topic,
        Path(args.archive) if args.archive else None,
        {int(x) for x in args.partitions.split(",")},
        args.decoder,
        frozenset(args.trust) if args.trust else None,
    )
    print(json.dumps(result.partial()))


if __name__ == "__main__":
    _child_main()
