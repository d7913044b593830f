"""Integrity checks over the event log, for auditors (pure: events and coordinates in).

Per model, the log must be a gap-free sequence whose every event names the
hash of its predecessor. An identical re-emission of an applied event (what
at-least-once delivery produces) is a harmless duplicate; anything else that
does not continue the chain is a violation, reported with enough coordinates
to find the bytes: model, sequence number, topic, partition and offset.

Bytes that carry the Avro single-object magic claim to be an event, so when
they do not decode that is damage: a violation. Bytes without it never were an
event (garbage from a foreign producer, an archive-restore placeholder): they
are ``skipped`` with their coordinates (the streams app dead-letters them),
not violations; an event they displaced still shows as a gap in its chain.

When the shell decodes each message with a second, independent decoder, any
difference between the two decodings is a ``decoder_mismatch`` violation.

On a partition whose key ring has had a key, an event that is not signed by a
key active there is ``unsigned`` or ``bad_signature``, checked before the
chain: a forged but correctly chained event is reported as what it is. A
partition's first key outside the keys an auditor pinned is ``untrusted_key``,
and every event that key signed is then ``bad_signature`` (signed, on a
partition whose ring holds no key), so a wrong pin shows all it would trust.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from streams.core.events import ModelEvent
from streams.core.fold import Fold

DUPLICATE = "duplicate"
SKIPPED = "skipped"
VIOLATIONS = (
    "undecodable",
    "gap",
    "conflict",
    "broken_hash",
    "invalid",
    "reordered",
    "misplaced",
    "decoder_mismatch",
    "unsigned",
    "bad_signature",
    "untrusted_key",
)


@dataclass(frozen=True)
class Where:
    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class Finding:
    kind: str  # "duplicate", "skipped" or one of VIOLATIONS
    model: str
    seq: int
    where: Where
    detail: str

    @property
    def violation(self) -> bool:
        return self.kind not in (DUPLICATE, SKIPPED)


@dataclass
class Auditor:
    """Folds like every reader does, and says what it skipped and why."""

    fold: Fold = field(default_factory=Fold)
    # (model, partition) -> why the model's events do not belong on that partition, or None;
    # the shell's partitioning rule (streams.topics.misplaced), when the partition count is known.
    misplaced: Callable[[str, int], str | None] | None = None
    findings: list[Finding] = field(default_factory=list)
    events: int = 0
    # per model: hash and location of every applied event, by seq - 1
    hashes: dict[str, list[str]] = field(default_factory=dict)
    places: dict[str, list[Where]] = field(default_factory=dict)
    _gaps: dict[tuple[str, int], int] = field(default_factory=dict)

    def undecodable(self, where: Where, reason: str, garbage: bool = False) -> None:
        """Bytes that did not decode; ``garbage`` when they never claimed to be an event."""
        self.findings.append(Finding(SKIPPED if garbage else "undecodable", "?", 0, where, reason))

    def decoder_mismatch(self, where: Where, detail: str, model: str = "?", seq: int = 0) -> None:
        """Two independent decoders read the message at ``where`` differently."""
        self.findings.append(Finding("decoder_mismatch", model, seq, where, detail))

    def _report(self, finding: Finding) -> Finding:
        """Record ``finding``; a violation is an event readers void, so the fold counts it."""
        self.findings.append(finding)
        if finding.violation:
            self.fold.void(finding.model)
        return finding

    def check(self, event: ModelEvent, where: Where) -> Finding | None:
        """Apply ``event`` if it continues its chain; else record and return why not."""
        self.events += 1
        model, partition = event.model, where.partition
        wrong_place = None if self.misplaced is None else self.misplaced(model, partition)
        if wrong_place is not None:
            # Readers void it (their order would otherwise depend on which partition came first).
            return self._report(Finding("misplaced", model, event.seq, where, wrong_place))
        event_hash = event.hash()
        signature = self.fold.signature_void(event, partition, event_hash)
        if signature is not None:
            return self._report(Finding(signature[0], model, event.seq, where, signature[1]))
        state = self.fold.chain(model, partition)
        applied = 0 if state is None else state.seq
        hashes = self.hashes.setdefault(model, [])
        finding: Finding | None = None
        if event.seq <= applied:
            if event_hash == hashes[event.seq - 1]:
                finding = Finding(
                    DUPLICATE,
                    model,
                    event.seq,
                    where,
                    f"identical re-emission of the event at {self.places[model][event.seq - 1]}",
                )
            else:
                finding = Finding(
                    "conflict",
                    model,
                    event.seq,
                    where,
                    f"a different event already holds seq {event.seq} "
                    f"(at {self.places[model][event.seq - 1]})",
                )
        elif event.seq > applied + 1:
            finding = Finding(
                "gap",
                model,
                event.seq,
                where,
                f"seq {applied + 1}..{event.seq - 1} missing before this event",
            )
        else:
            problem = self.fold.chain_void(event, partition)
            if problem is not None and event.prev_hash != (
                hashes[-1] if hashes else event.prev_hash
            ):
                culprit = self.places[model][-1] if hashes else where
                finding = Finding(
                    "broken_hash",
                    model,
                    event.seq - 1,
                    culprit,
                    f"the event at {culprit} does not hash to the prev_hash that seq "
                    f"{event.seq} at {where} records (altered after it was written?)",
                )
            elif problem is not None:
                finding = Finding(problem[0], model, event.seq, where, problem[1])
        if finding is not None and finding.kind == "gap":
            self._gaps[(model, applied + 1)] = len(self.findings)
        if finding is not None:
            return self._report(finding)
        # chain_void was checked above: admit directly instead of Fold.apply checking again.
        self.fold.admit(event, partition, event_hash)
        hashes.append(event_hash)
        self.places.setdefault(model, []).append(where)
        index = self._gaps.pop((model, event.seq), None)
        if index is not None:
            # The "missing" event came after all: the two were swapped in the log.
            early = self.findings[index]
            self.findings[index] = Finding(
                "reordered",
                model,
                early.seq,
                early.where,
                f"seq {early.seq} was written before seq {event.seq} (at {where}); readers void it",
            )
        return None

    def run(self, located: Iterable[tuple[ModelEvent | None, Where, str, bool]]) -> Auditor:
        """Check a whole log: (event or None when undecodable, where, reason, garbage)."""
        for event, where, reason, garbage in located:
            if event is None:
                self.undecodable(where, reason, garbage)
            else:
                self.check(event, where)
        return self

    def violations(self) -> Iterator[Finding]:
        return (f for f in self.findings if f.violation)

    def duplicates(self) -> int:
        return sum(1 for f in self.findings if f.kind == DUPLICATE)

    def skipped(self) -> Iterator[Finding]:
        return (f for f in self.findings if f.kind == SKIPPED)
