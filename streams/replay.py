"""The replay check: fold the whole events log with the auditor's rules, from offset 0.

One home for what ``modelvc audit replay`` runs and what the server runs for
``POST /v1/audit/replay``: records are located (decoded, or said why not), the
:class:`~streams.core.audit.Auditor` folds them (chains, signatures against each
partition's ring, the partitioning rule) and the per-model digest inputs give the
state digest, defined as ``GET /v1/state/digest`` defines it. Reading an archive, a
second decoder and partition groups in parallel processes are the CLI's
(``modelvc.audit``), on top of this.

Writer keys: without pinned ``trusted`` key ids, the first key of each ring is
trusted on first use (:func:`noting_first_keys`, :func:`first_use`) and reported.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from streams import topics
from streams.codec import EVENTS, HEADER_SIZE, MAGIC, decode_event
from streams.core.audit import DUPLICATE, Auditor, Finding, Where
from streams.core.events import ModelEvent, WriterKeyAdded
from streams.core.fold import Fold, digest_of_inputs, model_digest_input
from streams.core.signatures import keys_partition
from streams.errors import UndecodableMessage
from streams.kafka_access import KafkaAccess
from streams.logreader import log_consumer, read_topic, topic_partitions
from streams.signing import verify

Located = tuple[ModelEvent | None, Where, str, bool]
Locate = Callable[[str, int, int, bytes | None], Located]
# Something located (a Located, or a subtype a caller passes through).
L = TypeVar("L", bound=Located)
MAX_LISTED = 1000  # duplicates listed by coordinates (they are counted all the same)
# The server's replay: how long a caller waits, and how many findings its answer lists.
REPLAY_TIMEOUT_S = 60.0
MAX_SHOWN_FINDINGS = 20


def locate(topic: str, partition: int, offset: int, value: bytes | None) -> Located:
    """The event at these coordinates, or None with why not and whether it is garbage."""
    where = Where(topic, partition, offset)
    try:
        return decode_event(value), where, "", False  # type: ignore[arg-type]
    except UndecodableMessage as exc:
        return None, where, str(exc), never_an_event(value)


def never_an_event(value: bytes | None) -> bool:
    """Bytes no released modelvc ever wrote as an event: skipped, not damage.

    Without the Avro magic, or naming a schema fingerprint no release has (garbage
    from a foreign producer, a restore placeholder, ten forged header bytes). An
    event they displaced still shows as a gap in its model's chain. Bytes naming a
    released schema that do not decode are damage.
    """
    data = bytes(value or b"")
    return not data.startswith(MAGIC) or data[2:HEADER_SIZE] not in EVENTS.writers


def from_kafka(
    kafka: KafkaAccess,
    topic: str,
    ends: dict[int, int],
    partitions: set[int] | None = None,
    locate: Locate = locate,
) -> Iterator[Located]:
    for r in read_topic(kafka, topic, partitions=partitions):
        ends[r.partition] = r.offset
        yield locate(topic, r.partition, r.offset, r.value)


def finding_dict(f: Finding) -> dict[str, Any]:
    return {
        "kind": f.kind,
        "model": f.model,
        "seq": f.seq,
        "topic": f.where.topic,
        "partition": f.where.partition,
        "offset": f.where.offset,
        "detail": f.detail,
    }


def finding_from(d: dict[str, Any]) -> Finding:
    """A finding back from :func:`finding_dict` (a partition group's JSON)."""
    where = Where(d["topic"], d["partition"], d["offset"])
    return Finding(d["kind"], d["model"], d["seq"], where, d["detail"])


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it restarts at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- writer keys trusted on first use ---------------------------------------------------
def noting_first_keys(located: Iterator[L], seen: dict[int, str]) -> Iterator[L]:
    """``located``, noting in ``seen`` the first key each partition's ring introduces."""
    for item in located:
        event, where = item[0], item[1]
        if (
            event is not None
            and event.seq == 1
            and isinstance(event.payload, WriterKeyAdded)
            and keys_partition(event.model) == where.partition
            and where.partition not in seen
        ):
            seen[where.partition] = event.payload.key_id
        yield item


def first_use(fold: Fold, seen: dict[int, str]) -> dict[int, str]:
    """The first keys of ``seen`` the fold took (trust on first use): partition -> key id."""
    taken = {}
    for partition, key_id in seen.items():
        ring = fold.rings.get(partition)
        if ring is not None and (key_id in ring.active or key_id in ring.retired):
            taken[partition] = key_id
    return taken


@dataclass
class Replay:
    """What a replay found: counts, findings, where it stopped, and the state digest."""

    source: str
    decoder: str = "fastavro"  # "reference": every message also decoded by Apache Avro
    events: int = 0
    duplicates: int = 0
    violations: list[Finding] = field(default_factory=list)
    skipped: list[Finding] = field(default_factory=list)  # garbage that never was an event
    duplicate_events: list[Finding] = field(default_factory=list)
    # An archive's segments that do not match its index (streams.archive.SegmentProblem).
    problems: list[Any] = field(default_factory=list)
    ends: dict[int, int] = field(default_factory=dict)  # last offset read per partition
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-model digest inputs
    seconds: float = 0.0
    auditor: Auditor | None = None  # the fold itself, for in-process replays
    peak_mb: float = 0.0
    trusted: frozenset[str] | None = None  # pinned writer key ids; None: trust on first use
    first_keys: dict[int, str] = field(
        default_factory=dict
    )  # partition -> key trusted on first use
    # The applied events a ``keep`` predicate chose, in log order, where each was read.
    kept: list[tuple[ModelEvent, Where]] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return digest_of_inputs(self.inputs)

    @property
    def clean(self) -> bool:
        return not self.violations and not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "decoder": self.decoder,
            "events": self.events,
            "models": len(self.inputs),
            "last_offsets": {str(p): o for p, o in sorted(self.ends.items())},
            "duplicates": self.duplicates,
            "violations": [finding_dict(f) for f in self.violations],
            "skipped": [
                {
                    "topic": f.where.topic,
                    "partition": f.where.partition,
                    "offset": f.where.offset,
                    "detail": f.detail,
                }
                for f in self.skipped
            ],
            # Where each re-emission is (a replayed genuine event looks the same): never
            # applied twice, but an auditor may want to see when a copy came back.
            "duplicate_events": [finding_dict(f) for f in self.duplicate_events[:MAX_LISTED]],
            "segment_problems": [p.__dict__ for p in self.problems],
            "trusted_keys": None if self.trusted is None else sorted(self.trusted),
            "trusted_on_first_use": [
                {"partition": p, "key_id": k} for p, k in sorted(self.first_keys.items())
            ],
            "digest": self.digest,
            "seconds": round(self.seconds, 3),
            "peak_mb": round(self.peak_mb, 1),
        }

    def partial(self) -> dict[str, Any]:
        """What a partition-group child hands back to the parent (JSON, no pickle)."""
        return {**self.to_dict(), "inputs": self.inputs, "peak_mb": peak_rss_mb()}


def run(
    result: Replay,
    auditor: Auditor,
    records: Iterator[Located],
    keep: Callable[[ModelEvent], bool] | None = None,
    started: float | None = None,
) -> Replay:
    """Fold ``records`` with ``auditor`` and fill ``result`` with what it found."""
    started = time.perf_counter() if started is None else started
    seen: dict[int, str] = {}
    if keep is not None:
        records = _keeping(records, keep, result.kept)
    auditor.run(noting_first_keys(records, seen))
    # Only what the fold applied: a forged, duplicated or out-of-order copy explains nothing.
    result.kept = [(e, w) for e, w in result.kept if _applied_at(auditor, e, w)]
    if result.trusted is None:
        result.first_keys = first_use(auditor.fold, seen)
    result.auditor = auditor
    result.events = auditor.events
    result.duplicates = auditor.duplicates()
    result.violations = list(auditor.violations())
    result.skipped = list(auditor.skipped())
    result.duplicate_events = [f for f in auditor.findings if f.kind == DUPLICATE][:MAX_LISTED]
    result.inputs = {name: model_digest_input(state) for name, state in auditor.fold.models.items()}
    result.seconds = time.perf_counter() - started
    result.peak_mb = peak_rss_mb()
    return result


def replay_kafka(
    kafka: KafkaAccess,
    topic: str,
    partitions: set[int] | None = None,
    decoder: str = "fastavro",
    trusted: frozenset[str] | None = None,
    keep: Callable[[ModelEvent], bool] | None = None,
    checked: Callable[[Auditor], Locate] | None = None,
    deadline: float | None = None,
) -> Replay:
    """Replay ``topic`` (or some of its partitions) up to each high watermark.

    ``checked``: how to locate records with the auditor at hand (a second decoder),
    instead of :func:`locate`. ``deadline`` (``time.monotonic()``): TimeoutError once
    passed, checked between records.
    """
    started = time.perf_counter()
    # Kafka knows the partition count, so the partitioning rule can be checked too.
    count = len(partitions_of(kafka, topic))
    fold = Fold(verify=verify, trusted=trusted)
    auditor = Auditor(fold=fold, misplaced=functools.partial(topics.misplaced, partitions=count))
    result = Replay(f"{topic} on {kafka.bootstrap}", decoder, auditor=auditor, trusted=trusted)
    located = checked(auditor) if checked is not None else locate
    records = from_kafka(kafka, topic, result.ends, partitions, located)
    if deadline is not None:
        records = _until(records, deadline)
    return run(result, auditor, records, keep, started)


def partitions_of(kafka: KafkaAccess, topic: str) -> list[int]:
    consumer = log_consumer(kafka)
    try:
        return [tp.partition for tp in topic_partitions(consumer, topic)]
    finally:
        consumer.close()


def _until(records: Iterator[Located], deadline: float) -> Iterator[Located]:
    for located in records:
        if time.monotonic() > deadline:
            raise TimeoutError("the replay ran out of time")
        yield located


def _keeping(
    records: Iterator[Located],
    keep: Callable[[ModelEvent], bool],
    into: list[tuple[ModelEvent, Where]],
) -> Iterator[Located]:
    for located in records:
        if located[0] is not None and keep(located[0]):
            into.append((located[0], located[1]))
        yield located


def _applied_at(auditor: Auditor, event: ModelEvent, where: Where) -> bool:
    places = auditor.places.get(event.model, [])
    return 0 < event.seq <= len(places) and places[event.seq - 1] == where


# -- the server's replay: one at a time, bounded -----------------------------------------
def answer(result: Replay, live_digest: str, took_ms: int) -> dict[str, Any]:
    """``POST /v1/audit/replay``'s answer: the first findings, their count, both digests."""
    violations = result.violations  # the server reads Kafka: no archive segment problems
    return {
        "clean": result.clean,
        "events": result.events,
        "models": len(result.inputs),
        "violations": [finding_dict(f) for f in violations[:MAX_SHOWN_FINDINGS]],
        "violation_count": len(violations),
        "digest": result.digest,
        "live_digest": live_digest,
        "matches": result.digest == live_digest,
        "took_ms": took_ms,
    }


# After a run, calls within max(COOL_DOWN_S, COOL_DOWN_RUNS x its duration) get its answer:
# a reader cannot keep replays running back-to-back inside the server.
COOL_DOWN_S = 30.0
COOL_DOWN_RUNS = 5


class SingleFlight:
    """Runs ``work`` in its own thread, one run at a time: a call while one runs waits for
    that run's outcome. Each caller waits at most ``timeout_s`` (TimeoutError); ``work`` is
    given the same deadline, so a run never outlives it by much. ``finish`` turns a run's
    result into the answer (on the event loop).

    A run's outcome (its answer, or the error it raised) is kept: a call within the
    cool-down after it gets that answer again, with ``"cached": true`` and ``"age_ms"``
    (how long ago the run ended), instead of a new run. ``clock`` (seconds) times it."""

    def __init__(
        self,
        work: Callable[[float], Replay],
        finish: Callable[[Replay], Awaitable[dict[str, Any]]],
        timeout_s: float = REPLAY_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.work = work
        self.finish = finish
        self.timeout_s = timeout_s
        self.clock = clock
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="replay")
        self._running: asyncio.Future[dict[str, Any]] | None = None
        # The last run's outcome, when it ended, and until when it is served again.
        self._last: tuple[dict[str, Any] | BaseException, float, float] | None = None
        self.runs = 0  # how many runs started (a joined or cached call starts none)

    async def __call__(self) -> dict[str, Any]:
        if self._running is None or self._running.done():
            now = self.clock()
            if self._last is not None and now < self._last[2]:
                outcome, ended, _ = self._last
                if isinstance(outcome, BaseException):
                    raise outcome
                return outcome | {"cached": True, "age_ms": round((now - ended) * 1000)}
            self._running = asyncio.ensure_future(self._run())
            self.runs += 1
        return await asyncio.wait_for(asyncio.shield(self._running), self.timeout_s)

    async def _run(self) -> dict[str, Any]:
        started = self.clock()
        deadline = time.monotonic() + self.timeout_s
        outcome: dict[str, Any] | BaseException
        try:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._thread, self.work, deadline)
            outcome = await self.finish(result) | {"cached": False, "age_ms": 0}
        except Exception as exc:
            outcome = exc
        ended = self.clock()
        self._last = (outcome, ended, ended + max(COOL_DOWN_S, COOL_DOWN_RUNS * (ended - started)))
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
