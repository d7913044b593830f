"""What `modelvc artifacts gc` may delete: objects no event mentions, older than a cutoff.

References are found in the raw bytes of the events topic, not in decoded events:
any record that mentions a digest keeps its object, whether it decodes or not,
whether its signature holds or not. A forged or damaged event can keep an object
alive (it costs storage), but nothing an attacker writes can get one deleted that a
commit still needs, and no decoder change can make a referenced object look free.

Every object a record names is live, whatever names it: a model's artifact, and the
drift reference (``commit --reference``) a commit links by ``reference_sha256``, which
the monitor reads for as long as the commit is served.

Age is the second guard: an upload is visible in the store before the commit that
names it reaches the log, so only objects older than the cutoff (30 days by default)
are ever candidates.

Both topics are scanned: a commit the API accepted but the streams app has not decided
yet names its digest only on the commands topic. The logs keep moving while the
command runs. :func:`collect` reads where they end before scanning and again right
before deleting; partitions written in between are scanned again, and a candidate
they now mention is spared. What remains is a commit whose command lands between that
last look and the delete: it must name an object older than the cutoff that no event
and no pending command named, within the milliseconds between the two; uploading the
same model file again puts the object back under the digest the commit names.

An events topic with no record at all, next to a store that holds objects, means the
wrong cluster or namespace (every object would look unreferenced): :func:`collect`
refuses (:class:`LogEmpty`) and deletes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Set
from dataclasses import dataclass, field
from typing import Protocol

from streams.artifacts.store import ArtifactStore, StoredObject

# A digest in an event is a 64-character string; a run of hex digits may be longer (a
# digest right after hex text, two digests side by side), so every window is a mention.
_HEX_RUN = re.compile(rb"[0-9a-fA-F]{64,}")
DIGEST_CHARS = 64


def mentioned(data: bytes | None, wanted: Set[str]) -> set[str]:
    """The digests of ``wanted`` that ``data`` mentions, in either case, anywhere in it.

    Only the digests asked about are kept: a log holds many other hashes (event ids,
    previous-event hashes, key ids), and remembering them all would grow with the log.
    """
    found: set[str] = set()
    if not data or not wanted:
        return found
    for run in _HEX_RUN.finditer(data):
        text = run.group().decode("ascii").lower()
        for start in range(len(text) - DIGEST_CHARS + 1):
            window = text[start : start + DIGEST_CHARS]
            if window in wanted:
                found.add(window)
    return found


def referenced(values: Iterable[bytes | None], wanted: Set[str]) -> set[str]:
    """The digests of ``wanted`` that any of ``values`` mentions."""
    found: set[str] = set()
    for value in values:
        found |= mentioned(value, wanted)
    return found


def candidates(
    objects: Iterable[StoredObject], referenced: Set[str], cutoff: float
) -> list[StoredObject]:
    """Objects last modified at or before ``cutoff`` (seconds since the epoch) that nothing
    references, in the order given."""
    return [o for o in objects if o.modified <= cutoff and o.digest not in referenced]


class EventLog(Protocol):
    """One topic (events or commands) as :func:`collect` reads it."""

    def ends(self) -> dict[int, int]:
        """Where each partition ends now (its high watermark)."""
        ...

    def values(self, partitions: Iterable[int] | None = None) -> Iterator[bytes | None]:
        """The raw bytes of every record (of ``partitions``, else of all), up to the ends."""
        ...


class LogEmpty(Exception):
    """The events topic holds no record while the store holds old objects: most likely
    the wrong cluster or namespace, so nothing is deleted."""

    def __init__(self, objects: int) -> None:
        super().__init__(f"the events topic holds no record, the store {objects} objects")
        self.objects = objects


@dataclass
class Collected:
    objects: int = 0  # in the store
    chosen: list[StoredObject] = field(default_factory=list)  # deleted, or would be (dry run)
    spared: list[StoredObject] = field(default_factory=list)  # named by records written meanwhile

    @property
    def total_bytes(self) -> int:
        return sum(o.size for o in self.chosen)


def collect(
    store: ArtifactStore,
    events: EventLog,
    commands: EventLog,
    cutoff: float,
    dry_run: bool,
) -> Collected:
    """List the store, scan both topics, then delete (unless ``dry_run``) each object chosen.

    :class:`LogEmpty` when ``events`` holds no record and the store holds old objects.
    A failure of the store part-way leaves what was deleted deleted and the rest in
    place: running the command again finishes the job.
    """
    objects = list(store.list())
    result = Collected(objects=len(objects))
    old = {o.digest for o in objects if o.modified <= cutoff}
    if not old:
        return result  # nothing is old enough: the logs need not be read
    logs = (events, commands)
    before = [log.ends() for log in logs]
    if not any(before[0].values()):
        raise LogEmpty(len(objects))
    found: set[str] = set()
    for log in logs:
        found |= referenced(log.values(), old)
    chosen = candidates(objects, found, cutoff)
    if chosen and not dry_run:
        wanted = {o.digest for o in chosen}
        late: set[str] = set()
        for log, ends in zip(logs, before, strict=True):
            moved = sorted(p for p, end in log.ends().items() if ends.get(p) != end)
            if moved:
                late |= referenced(log.values(moved), wanted)
        result.spared = [o for o in chosen if o.digest in late]
        chosen = [o for o in chosen if o.digest not in late]
    for o in chosen:
        if not dry_run:
            store.delete(o.digest)
        result.chosen.append(o)
    return result
