"""The projection in memory: the same fold, gone when the process ends.

For tests (the same suite runs over this and RocksDB) and for tools that fold
the log once. A batch is staged and made visible whole at commit, as in RocksDB.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from streams.core.events import ModelEvent
from streams.core.signatures import Verify
from streams.core.state import ModelState
from streams.projection.base import Projection, Transaction
from streams.signing import verify as verify_signature


class _Staged(Transaction):
    def __init__(self, target: MemoryProjection) -> None:
        self._target = target
        self._events: list[tuple[int, ModelEvent]] = []

    def event(
        self, partition: int, offset: int, value: bytes, event: ModelEvent, state: ModelState | None
    ) -> None:
        self._events.append((offset, event))

    def void(self, model: str, count: int) -> None:
        pass  # the fold counts void events; nothing else is kept for them

    def commit(self, partition: int, next_offset: int, touched: Mapping[str, ModelState]) -> None:
        for offset, event in self._events:
            self._target._history.setdefault(event.model, []).append((offset, event))
            self._target._offsets[(event.model, event.seq)] = offset


class MemoryProjection(Projection):
    def __init__(
        self, verify: Verify | None = verify_signature, trusted: frozenset[str] | None = None
    ) -> None:
        super().__init__(verify, trusted)
        self._history: dict[str, list[tuple[int, ModelEvent]]] = {}
        self._offsets: dict[tuple[str, int], int] = {}

    def _transaction(self) -> Transaction:
        return _Staged(self)

    def history(self, model: str) -> Iterator[tuple[int, ModelEvent]]:
        # Applied events of a model come in seq order: the fold accepts only seq + 1.
        yield from list(self._history.get(model, ()))

    def event_offset(self, model: str, seq: int) -> int | None:
        return self._offsets.get((model, seq))

    def close(self) -> None:
        pass  # nothing outside this process to release
