"""The version graph of one model, as an immutable value.

Commits are content-addressed and never removed, so ``commits`` only grows;
it keeps insertion order, which is a topological order (parents first).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from streams.core.events import Commit


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

    def ref_moves(self) -> list[RefMove]:
        return list(self.reflog) if self.reflog is not None else []


Graph = Mapping[str, ModelState]
