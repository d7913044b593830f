"""The pure core of modelvc: commands in, events out, state as a fold.

Standard library only; no clock, randomness or I/O. Everything else in
``streams`` and ``workers`` is shell around this package.
"""

from streams.core.commands import (
    Command,
    CreateBranch,
    CreateModel,
    DeleteBranch,
    MakeCommit,
    Merge,
    MoveAlias,
    Rollback,
)
from streams.core.decide import decide
from streams.core.events import (
    AliasMoved,
    BranchCreated,
    BranchDeleted,
    Commit,
    Committed,
    Merged,
    ModelCreated,
    ModelEvent,
    RolledBack,
)
from streams.core.evolve import evolve
from streams.core.fold import Fold, fold, state_digest, void_reason
from streams.core.state import ModelState

__all__ = [
    "AliasMoved",
    "BranchCreated",
    "BranchDeleted",
    "Command",
    "Commit",
    "Committed",
    "CreateBranch",
    "CreateModel",
    "DeleteBranch",
    "Fold",
    "MakeCommit",
    "Merge",
    "Merged",
    "ModelCreated",
    "ModelEvent",
    "ModelState",
    "MoveAlias",
    "Rollback",
    "RolledBack",
    "decide",
    "evolve",
    "fold",
    "state_digest",
    "void_reason",
]
