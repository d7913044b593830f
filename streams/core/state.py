"""The version graph of one model, as an immutable value.

Commits are content-addressed and never removed, so ``commits`` only grows;
it keeps insertion order, which is a topological order (parents first).

The maps of a state built by ``evolve`` are :class:`PersistentMap` values, so
extending a state costs O(1) and not a copy of its maps; any ``Mapping`` is
accepted (a state loaded from the projection holds plain dicts).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final, TypeVar

from streams.core.events import Commit
from streams.core.rollout import Rollout, Shadow

K = TypeVar("K")
V = TypeVar("V")


_ABSENT: Final = object()
_new = object.__new__


class _Store:
    """The entries of a map's newest version, shared by all its versions."""

    __slots__ = ("entries", "version")

    def __init__(self, entries: dict[Any, Any]) -> None:
        self.entries = entries
        self.version = 0


class PersistentMap(Mapping[K, V]):
    """An immutable mapping whose ``set`` costs O(1), so a fold is linear in its events.

    Every version of one map shares a single dict holding the newest version's
    entries. ``set`` on the newest version writes into that dict and leaves, on
    the version it supersedes, how to undo the write (the key and its old value)
    with a link to the newer version. An older version that is read again is
    rebuilt once, on first read, from the newest entries by undoing the writes
    made since (then cached); ``set`` or ``without`` on an older version starts a
    new shared dict from such a copy. So each version reads as the value it was
    made with, as with copying, while a replay that only ever extends the newest
    version never copies. Iteration order is a dict's: insertion order, an
    overwritten key keeps its place.

    Not for concurrent use from several threads (a write to the newest version
    mutates the shared dict); the fold runs in one thread. Links only point from
    older to newer versions, so no reference cycles are made.
    """

    __slots__ = ("_frozen", "_key", "_newer", "_old", "_store", "_version")

    def __init__(self, entries: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._store = _Store(dict(entries))
        self._version = 0
        self._newer: PersistentMap[K, V] | None = None
        self._frozen: dict[K, V] | None = None

    def _entries(self) -> dict[K, V]:
        """This version's entries (a dict the caller must not change)."""
        if self._frozen is not None:
            return self._frozen
        store = self._store
        if store.version == self._version:
            return store.entries
        undo: list[tuple[K, Any]] = []
        node = self
        while node._frozen is None and node._version != store.version:
            undo.append((node._key, node._old))
            assert node._newer is not None  # every superseded version links to its successor
            node = node._newer
        entries = dict(node._entries())
        for key, old in reversed(undo):
            if old is _ABSENT:
                del entries[key]
            else:
                entries[key] = old
        self._frozen = entries
        self._newer = None  # the chain is no longer needed: let newer versions be freed
        return entries

    def set(self, key: K, value: V) -> PersistentMap[K, V]:
        """A map like this one with ``key`` bound to ``value``."""
        store = self._store
        if store.version != self._version:
            return PersistentMap(self._entries()).set(key, value)
        entries = store.entries
        self._key = key
        self._old = entries.get(key, _ABSENT)
        entries[key] = value
        store.version = version = store.version + 1
        # Built without __init__: this is the replay hot path.
        newer: PersistentMap[K, V] = _new(PersistentMap)
        newer._store = store
        newer._version = version
        newer._newer = None
        newer._frozen = None
        self._newer = newer
        return newer

    def without(self, key: K) -> PersistentMap[K, V]:
        """A map like this one without ``key``; O(n), as deleting is rare (a branch deletion)."""
        return PersistentMap((k, v) for k, v in self._entries().items() if k != key)

    def __getitem__(self, key: K) -> V:
        store = self._store
        if store.version == self._version:
            value: V = store.entries[key]
            return value
        return self._entries()[key]

    def get(self, key: K, default: Any = None) -> Any:
        store = self._store
        if store.version == self._version:
            return store.entries.get(key, default)
        return self._entries().get(key, default)

    def __contains__(self, key: object) -> bool:
        store = self._store
        if store.version == self._version:
            return key in store.entries
        return key in self._entries()

    def __len__(self) -> int:
        return len(self._entries())

    def __iter__(self) -> Iterator[K]:
        # A snapshot of the keys: the shared dict may move on while the caller iterates.
        return iter(tuple(self._entries()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PersistentMap):
            return self._entries() == other._entries()
        if isinstance(other, Mapping):
            return self._entries() == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to dicts, so unhashable like them

    def __repr__(self) -> str:
        return f"PersistentMap({self._entries()!r})"


@dataclass(frozen=True)
class RefMove:
    """One movement of a branch or alias: the reflog entry an auditor reads."""

    seq: int
    kind: str  # "branch" | "alias"
    name: str
    old: str | None
    new: str | None
    cause: str  # the event type that moved it
    reason: str
    actor: str
    at: int


@dataclass(frozen=True)
class Reflog:
    """Persistent cons list of ref moves, newest first: O(1) to extend, shared by all states."""

    entry: RefMove
    older: Reflog | None = None

    def __iter__(self) -> Iterator[RefMove]:
        node: Reflog | None = self
        while node is not None:
            yield node.entry
            node = node.older


@dataclass(frozen=True)
class Receipt:
    """What an accepted command did; a repeat of the command answers with this.

    ``digest`` is the accepted request's :func:`~streams.core.commands.command_digest`
    ("" for events written before digests existed), so a reuse of its command id
    for another request can be told from a repeat.
    """

    seq: int
    event: str
    ref: str | None
    head: str | None
    digest: str = ""


@dataclass(frozen=True)
class ModelState:
    name: str
    default_branch: str
    created_at: int
    seq: int
    last_hash: str
    commits: Mapping[str, Commit]
    branches: Mapping[str, str | None]
    aliases: Mapping[str, str]
    receipts: Mapping[str, Receipt]
    reflog: Reflog | None = None
    # alias -> its shadow, until ShadowStopped (issue 12).
    shadows: Mapping[str, Shadow] = field(default_factory=dict)
    # rollout id -> rollout, in the order they started; kept after they end.
    rollouts: Mapping[str, Rollout] = field(default_factory=dict)

    def ref_moves(self) -> list[RefMove]:
        return list(self.reflog) if self.reflog is not None else []

    @cached_property
    def active_rollouts(self) -> Mapping[str, Rollout]:
        """alias -> its running or paused rollout (at most one each: decide and the fold see
        to it), built once per state: serving asks it for every entity it routes."""
        return {r.alias: r for r in self.rollouts.values() if r.active}


Graph = Mapping[str, ModelState]
