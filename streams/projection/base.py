"""The read model's interface: the fold of ``modelvc.events``, plus where it stands.

A projection applies a fetched batch of one partition atomically (the
models' rows and the partition's next offset together), and answers what
the service and the API ask of it: the folded models (with their receipts),
each partition's next offset, a model's applied events for point-in-time
questions, the log offset of an event, and the void counts.

The system chains (``~security``, each partition's ``~keys.P``) are folded
into the same :class:`Fold`, which voids an unsigned or badly signed event on a
partition that has a writer key (``verify`` checks the signatures); they are
exposed read-only as :attr:`Projection.security` and :attr:`Projection.rings`.

The folding itself is written once, here; an implementation only says how a
batch is kept, through a :class:`Transaction`. ``rocksdb.py`` keeps it on
disk (a restart resumes from the stored offsets), ``memory.py`` in memory
(tests, and tools that fold once). The same test suite runs over both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from streams.codec import decode_event
from streams.core.events import ModelEvent
from streams.core.fold import Fold
from streams.core.security import SecurityState
from streams.core.signatures import KeyRing, Verify, is_system_stream
from streams.core.state import ModelState, Receipt
from streams.errors import UndecodableMessage
from streams.signing import verify as verify_signature
from streams.topics import misplaced


@dataclass(frozen=True)
class Applied:
    """What happened to one log record."""

    offset: int
    event: ModelEvent | None
    void_reason: str | None = None
    undecodable: str | None = None


class Transaction(ABC):
    """What one batch changes; nothing is visible to readers before :meth:`commit`."""

    @abstractmethod
    def event(
        self, partition: int, offset: int, value: bytes, event: ModelEvent, state: ModelState | None
    ) -> None:
        """``event`` (read as ``value`` at ``offset``) was applied; ``state`` is its model after
        (None for an event of a system chain: the fold keeps their state)."""

    @abstractmethod
    def void(self, model: str, count: int) -> None:
        """An event of ``model`` was void; ``count`` is the model's void events so far."""

    @abstractmethod
    def commit(self, partition: int, next_offset: int, touched: Mapping[str, ModelState]) -> None:
        """Keep the batch and the partition's next offset together, or nothing."""


class Projection(ABC):
    """The fold of the events log; one instance is written by one follower task."""

    def __init__(
        self, verify: Verify | None = verify_signature, trusted: frozenset[str] | None = None
    ) -> None:
        # Without a verifier every signed partition's events would be void: only a test
        # of that very rule passes None. ``trusted``: the key ids a ring may start with
        # (None: trust on first use).
        self.fold = Fold(verify=verify, trusted=trusted)
        self._next_offsets: dict[int, int] = {}

    # -- what readers ask -------------------------------------------------------------
    @property
    def models(self) -> Mapping[str, ModelState]:
        return self.fold.models

    @property
    def security(self) -> SecurityState | None:
        """The ``~security`` chain folded so far: tokens (hashes) and protection rules."""
        return self.fold.security

    @property
    def rings(self) -> Mapping[int, KeyRing]:
        """Each events partition's writer-key ring (absent: no key yet, legacy history)."""
        return self.fold.rings

    @property
    def next_offsets(self) -> Mapping[int, int]:
        """Each partition's next offset to read (absent: 0)."""
        return self._next_offsets

    @property
    def voided(self) -> int:
        """Void events seen, over every model."""
        return self.fold.voided

    def void_counts(self) -> Mapping[str, int]:
        """Void events seen, per model."""
        return self.fold.void_reasons

    def receipt(self, model: str, command_id: str) -> Receipt | None:
        """The receipt of ``command_id`` on ``model``, if that command was applied."""
        state = self.fold.models.get(model)
        return None if state is None else state.receipts.get(command_id)

    def applied(self, partition: int, offset: int) -> bool:
        """Whether ``offset`` of ``partition`` has been applied."""
        return self._next_offsets.get(partition, 0) > offset

    @abstractmethod
    def history(self, model: str) -> Iterator[tuple[int, ModelEvent]]:
        """(offset, event) of every applied event of ``model``, in sequence order."""

    @abstractmethod
    def event_offset(self, model: str, seq: int) -> int | None:
        """Offset in the events log of ``model``'s event ``seq`` (None if not applied here)."""

    @abstractmethod
    def close(self) -> None:
        """Release what the projection holds; it is not used afterwards."""

    @abstractmethod
    def _transaction(self) -> Transaction: ...

    # -- applying ------------------------------------------------------------
    def apply(
        self, partition: int, records: Iterable[tuple[int, bytes]], partitions: int | None = None
    ) -> list[Applied]:
        """Fold a fetched batch of (offset, value) of ``partition`` and keep it atomically.

        With ``partitions`` (the topic's partition count), an event read from a
        partition its model does not live on is void, like one that breaks its chain.
        """
        transaction = self._transaction()
        results: list[Applied] = []
        touched: dict[str, ModelState] = {}
        last = None
        for offset, value in records:
            last = offset
            try:
                event = decode_event(value)
            except UndecodableMessage as exc:
                results.append(Applied(offset, None, undecodable=str(exc)))
                continue
            reason = None if partitions is None else misplaced(event.model, partition, partitions)
            if reason is not None:
                self.fold.void(event.model)
            else:
                reason = self.fold.apply(event, partition)
            if reason is not None:
                transaction.void(event.model, self.fold.void_reasons[event.model])
                results.append(Applied(offset, event, void_reason=reason))
                continue
            if is_system_stream(event.model):
                transaction.event(partition, offset, value, event, None)
            else:
                state = self.fold.models[event.model]
                touched[event.model] = state
                transaction.event(partition, offset, value, event, state)
            results.append(Applied(offset, event))
        if last is None:
            return results
        transaction.commit(partition, last + 1, touched)
        self._next_offsets[partition] = last + 1
        return results
