"""Commands: requests to change a model's version graph (imperative verbs).

The shell fills in ``command_id``, ``actor`` and ``at`` at the edge, so
deciding the same command against the same state always yields the same
bytes; the core never reads a clock or draws a random id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CreateModel:
    default_branch: str = "main"


@dataclass(frozen=True)
class MakeCommit:
    artifact_sha256: str
    message: str
    branch: str = "main"
    params: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    expect_head: str | None = None


@dataclass(frozen=True)
class CreateBranch:
    branch: str
    from_ref: str | None = None


@dataclass(frozen=True)
class DeleteBranch:
    branch: str


@dataclass(frozen=True)
class Merge:
    source: str
    target: str = "main"
    strategy: str | None = None  # "theirs" | "ours"
    artifact_sha256: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Rollback:
    branch: str
    to_ref: str
    reason: str


@dataclass(frozen=True)
class MoveAlias:
    alias: str
    ref: str
    expect: str | None = None


Body = CreateModel | MakeCommit | CreateBranch | DeleteBranch | Merge | Rollback | MoveAlias
BODY_TYPES: tuple[type, ...] = (
    CreateModel,
    MakeCommit,
    CreateBranch,
    DeleteBranch,
    Merge,
    Rollback,
    MoveAlias,
)


@dataclass(frozen=True)
class Command:
    command_id: str
    model: str
    actor: str
    at: int  # milliseconds since the epoch, stamped at the edge
    body: Body
