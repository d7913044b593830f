"""What `modelvc artifacts gc` may delete: objects no event mentions, older than a cutoff.

References are found in the raw bytes of the events topic, not in decoded events:
any record that mentions a digest keeps its object, whether it decodes or not,
whether its signature holds or not. A forged or damaged event can keep an object
alive (it costs storage), but nothing an attacker writes can get one deleted that a
commit still needs, and no decoder change can make a referenced object look free.

Age is the second guard: an upload is visible in the store before the commit that
names it reaches the log, so only objects older than the cutoff (30 days by default)
are ever candidates.

The log keeps moving while the command runs. :func:`collect` reads where it ends
before scanning and again right before deleting; partitions written in between are
scanned again, and a candidate they now mention is spared.
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
    """The events topic as :func:`collect` reads it."""

    def ends(self) -> dict[int, int]:
        """Where each partition ends now (its high watermark)."""
        ...

    def values(self, partitions: Iterable[int] | None = None) -> Iterator[bytes | None]:
        """The raw bytes of every record (of ``partitions``, else of all), up to the ends."""
        ...


@dataclass
class Collected:
    objects: int = 0  # in the store
    chosen: list[StoredObject] = field(default_factory=list)  # deleted, or would be (dry run)
    spared: list[StoredObject] = field(default_factory=list)  # named by events written meanwhile

    @property
    def total_bytes(self) -> int:
        return sum(o.size for o in self.chosen)


def collect(
    store: ArtifactStore,
    log: EventLog,
    cutoff: float,
    dry_run: bool,
) -> Collected:
    """List the store, scan the log, then delete (unless ``dry_run``) each object chosen.

    A failure of the store part-way leaves what was deleted deleted and the rest in
    place: running the command again finishes the job.
    """
    objects = list(store.list())
    result = Collected(objects=len(objects))
    old = {o.digest for o in objects if o.modified <= cutoff}
    if not old:
        return result  # nothing is old enough: the log need not be read
    before = log.ends()
    chosen = candidates(objects, referenced(log.values(), old), cutoff)
    if chosen and not dry_run:
        now = log.ends()
        moved = sorted(p for p, end in now.items() if before.get(p) != end)
        if moved:
            late = referenced(log.values(moved), {o.digest for o in chosen})
            result.spared = [o for o in chosen if o.digest in late]
            chosen = [o for o in chosen if o.digest not in late]
    for o in chosen:
        if not dry_run:
            store.delete(o.digest)
        result.chosen.append(o)
    return result
