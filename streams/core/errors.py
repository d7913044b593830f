"""Typed faults of the version graph.

Every fault a command can hit is one subclass of :class:`VersionGraphError`.
Each carries a stable ``code`` (the HTTP edge, ``streams/statuses.py``, maps
codes to statuses: the core knows no transport), a message that says in words
what to do, and, when a command would help, a :class:`Hint`: a code and its
arguments. The core knows no front end, so it never spells a command line;
each front end renders a hint in its own syntax (the CLI in
``modelvc/hints.py``), and the HTTP API returns it as data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class HintCode(StrEnum):
    """What a hint suggests doing next; every front end must render each one."""

    CREATE_MODEL = "create_model"
    CREATE_BRANCH = "create_branch"
    COMMIT = "commit"
    RETRY_COMMIT = "retry_commit"
    LIST_REFS = "list_refs"
    SHOW_LOG = "show_log"
    MERGE = "merge"
    RETRY_ALIAS = "retry_alias"


# The arguments each hint carries: exactly these, all strings. A front end can
# rely on them, and a test renders every code with them.
HINT_ARGS: Mapping[HintCode, tuple[str, ...]] = {
    HintCode.CREATE_MODEL: ("model",),
    HintCode.CREATE_BRANCH: ("model", "branch"),
    HintCode.COMMIT: ("model", "branch"),
    # expect_head: the head to compare against, "none" for an empty branch.
    HintCode.RETRY_COMMIT: ("model", "branch", "expect_head"),
    HintCode.LIST_REFS: ("model",),
    HintCode.SHOW_LOG: ("model", "ref"),
    HintCode.MERGE: ("model", "source", "into"),
    # expect: where the alias points now, "none" when it does not exist yet.
    HintCode.RETRY_ALIAS: ("model", "alias", "ref", "expect"),
}


@dataclass(frozen=True)
class Hint:
    """A next step: ``code`` with exactly the arguments :data:`HINT_ARGS` names for it."""

    code: HintCode
    args: Mapping[str, str]

    def __post_init__(self) -> None:
        expected = HINT_ARGS[self.code]
        if sorted(self.args) != sorted(expected) or not all(
            isinstance(v, str) for v in self.args.values()
        ):
            raise TypeError(f"hint {self.code} takes string arguments {expected}, got {self.args}")

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code.value, "args": dict(self.args)}


class VersionGraphError(Exception):
    """Root of every fault the pure core raises."""

    code = "invalid"

    def __init__(self, message: str, *, hint: Hint | None = None, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details: Mapping[str, object] = details

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"error": self.code, "message": self.message, **self.details}
        if self.hint is not None:
            body["hint"] = self.hint.to_dict()
        return body


class InvalidCommand(VersionGraphError):
    """Raised when a command is malformed: bad names, non-finite metrics, bad digests."""


class UnknownModel(VersionGraphError):
    """Raised when a command or query names a model that was never created."""

    code = "unknown_model"


class UnknownRef(VersionGraphError):
    """Raised when a ref is neither a branch, an alias, nor a known commit id (prefix)."""

    code = "unknown_ref"


class AmbiguousRef(VersionGraphError):
    """Raised when a commit-id prefix matches more than one commit."""

    code = "ambiguous_ref"


class ModelExists(VersionGraphError):
    """Raised when ``create`` names a model that already exists."""

    code = "model_exists"


class BranchExists(VersionGraphError):
    """Raised when ``branch create`` names a branch that already exists."""

    code = "branch_exists"


class StaleHead(VersionGraphError):
    """Raised when ``--expect-head``/``--expect`` does not match the current target.

    The body carries ``current`` so the caller can rebase and retry.
    """

    code = "stale_head"


class MergeConflict(VersionGraphError):
    """Raised when a merge is not a fast-forward and names no strategy or artifact.

    The body carries ``merge_bases`` (git's ``merge-base --all``: every best
    common ancestor, newest first) and ``merge_base``, the first of them.
    """

    code = "merge_conflict"


class SignatureChangeRefused(VersionGraphError):
    """Raised when an alias would move to a commit that requires features its current
    commit does not (``model_signature.required_missing``): producers feeding the alias
    do not send them, so their events would be dead-lettered.

    The body carries ``features`` (the added ones), ``current`` and ``target`` (commit
    ids); the mover may accept it with ``allow_signature_change``.
    """

    code = "signature_change"


class UnknownRollout(VersionGraphError):
    """Raised when a command names a rollout id the model never started."""

    code = "unknown_rollout"


class RolloutActive(VersionGraphError):
    """Raised when an alias with a running or paused rollout would be moved, or given a
    second rollout: the rollout must be aborted or promoted first. Body: ``rollout_id``."""

    code = "rollout_active"


class RolloutMoved(VersionGraphError):
    """Raised when a rollout is not where the command expected it (another step, paused,
    ended): the decision was made on an old view. Body: ``rollout_id``, ``step``, ``status``."""

    code = "rollout_moved"


class NotAnAncestor(VersionGraphError):
    """Raised when a rollback target is not on the branch's first-parent history."""

    code = "not_an_ancestor"


class ProtectedBranch(VersionGraphError):
    """Raised when deleting the model's default branch."""

    code = "protected_branch"


class EmptyBranch(VersionGraphError):
    """Raised when an operation needs a commit on a branch that has none yet."""

    code = "empty_branch"


class NothingToDo(VersionGraphError):
    """Raised when a command would not change anything (already merged, already there)."""

    code = "up_to_date"


class WriteRaced(VersionGraphError):
    """Raised by the shell when its event lost a race with another writer.

    The fold voided the event (its sequence number or previous hash no longer
    continued the chain), so the command had no effect; retrying is safe.
    """

    code = "write_raced"


class CommandIdReused(VersionGraphError):
    """Raised when a command id already accepted on a model comes back with another request.

    The idempotency key is (model, command id): an exact repeat is answered with
    the first result, but a different body or actor under the same key would be
    silently dropped, so it is refused and the first request's event is named.
    """

    code = "command_id_reused"


class Unauthenticated(VersionGraphError):
    """No valid credentials: a missing, unknown, expired or revoked token."""

    code = "unauthenticated"


class Forbidden(VersionGraphError):
    """Authenticated, but the role does not allow this (fields: needed, role, actor)."""

    code = "forbidden"


class ActorMismatch(VersionGraphError):
    """The request claims an actor other than the token's identity."""

    code = "actor_mismatch"
