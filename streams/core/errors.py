"""Typed faults of the version graph.

Every fault a command can hit is one subclass of :class:`VersionGraphError`.
Each carries an HTTP-ish ``status`` (404/409/422) so the shell maps faults to
answers without a lookup table, and a message that tells the user what to do.
"""

from __future__ import annotations

from collections.abc import Mapping


class VersionGraphError(Exception):
    """Root of every fault the pure core raises."""

    status = 422
    code = "invalid"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details: Mapping[str, object] = details

    def to_dict(self) -> dict[str, object]:
        return {"error": self.code, "message": self.message, **self.details}


class InvalidCommand(VersionGraphError):
    """Raised when a command is malformed: bad names, non-finite metrics, bad digests."""


class UnknownModel(VersionGraphError):
    """Raised when a command or query names a model that was never created."""

    status = 404
    code = "unknown_model"


class UnknownRef(VersionGraphError):
    """Raised when a ref is neither a branch, an alias, nor a known commit id (prefix)."""

    status = 404
    code = "unknown_ref"


class AmbiguousRef(VersionGraphError):
    """Raised when a commit-id prefix matches more than one commit."""

    code = "ambiguous_ref"


class ModelExists(VersionGraphError):
    """Raised when ``create`` names a model that already exists."""

    status = 409
    code = "model_exists"


class BranchExists(VersionGraphError):
    """Raised when ``branch create`` names a branch that already exists."""

    status = 409
    code = "branch_exists"


class StaleHead(VersionGraphError):
    """Raised when ``--expect-head``/``--expect`` does not match the current target.

    The body carries ``current`` so the caller can rebase and retry.
    """

    status = 409
    code = "stale_head"


class MergeConflict(VersionGraphError):
    """Raised when a merge is not a fast-forward and names no strategy or artifact."""

    status = 409
    code = "merge_conflict"


class NotAnAncestor(VersionGraphError):
    """Raised when a rollback target is not on the branch's first-parent history."""

    status = 409
    code = "not_an_ancestor"


class ProtectedBranch(VersionGraphError):
    """Raised when deleting the model's default branch."""

    status = 409
    code = "protected_branch"


class EmptyBranch(VersionGraphError):
    """Raised when an operation needs a commit on a branch that has none yet."""

    status = 409
    code = "empty_branch"


class NothingToDo(VersionGraphError):
    """Raised when a command would not change anything (already merged, already there)."""

    status = 409
    code = "up_to_date"


class WriteRaced(VersionGraphError):
    """Raised by the shell when its event lost a race with another writer.

    The fold voided the event (its sequence number or previous hash no longer
    continued the chain), so the command had no effect; retrying is safe.
    """

    status = 409
    code = "write_raced"


class CommandIdReused(VersionGraphError):
    """Raised when a command id already accepted on a model comes back with another request.

    The idempotency key is (model, command id): an exact repeat is answered with
    the first result, but a different body or actor under the same key would be
    silently dropped, so it is refused and the first request's event is named.
    """

    code = "command_id_reused"
