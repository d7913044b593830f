"""The HTTP edge's one table: which status answers each error code.

Faults carry a stable ``code`` (the core's :class:`VersionGraphError`
subclasses, the shell's answers, the artifact store's refusals); only here
does a code become an HTTP status. An answer with no error is a receipt:
201 when it applied the command, 200 when it repeated an earlier answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams.core import errors

STATUS_BY_CODE: Mapping[str, int] = {
    # The version graph's faults (streams.core.errors).
    errors.VersionGraphError.code: 422,  # "invalid"
    errors.UnknownModel.code: 404,
    errors.UnknownRef.code: 404,
    errors.AmbiguousRef.code: 422,
    errors.ModelExists.code: 409,
    errors.BranchExists.code: 409,
    errors.StaleHead.code: 409,
    errors.MergeConflict.code: 409,
    # An alias move whose target needs features the current commit's producers do not send.
    errors.SignatureChangeRefused.code: 409,
    errors.NotAnAncestor.code: 409,
    # Rollouts (issue 12): a rollout id the model never started; an alias that has a
    # running or paused rollout (abort or promote it first); a rollout that is no longer
    # where the request expected it (another step, paused or ended: read it again).
    errors.UnknownRollout.code: 404,
    errors.RolloutActive.code: 409,
    errors.RolloutMoved.code: 409,
    errors.ProtectedBranch.code: 409,
    errors.EmptyBranch.code: 409,
    errors.NothingToDo.code: 409,
    errors.WriteRaced.code: 409,
    errors.CommandIdReused.code: 422,
    # Who may do what (issue 10): no valid token, a role too low (a protected ref
    # included: the writer refuses it), a claimed actor that is not the token's.
    # streams.auth answers its own 401/403 at the edge with the same statuses.
    errors.Unauthenticated.code: 401,
    errors.Forbidden.code: 403,
    errors.ActorMismatch.code: 403,
    # The service's own answers.
    "misrouted": 422,  # a command on a partition its model does not live on
    "timeout": 504,  # no answer in time; the same command id may be sent again
    "internal": 500,  # a bug
    # This instance's writer key is not in the partition's ring: the operator adds it
    # (modelvc key add) or gives the instance the deployment's key; nothing the client can fix.
    "untrusted_writer": 503,
    # The artifact store's refusals.
    "unknown_artifact": 404,
    "digest_mismatch": 422,
    "too_large": 413,
    "empty": 422,
    "busy": 503,
    "upload_stalled": 408,
    "sandbox_unavailable": 503,
    "artifact_rejected": 422,
    # A drift reference (POST /v1/references) that is not one: bounds, finiteness, order.
    "reference_rejected": 422,
    # The store itself: a directory full or read-only is the operator's to fix (507); a
    # store that does not answer, or refuses this server's credentials, may come back (503).
    "store_full": 507,
    "store_unreachable": 503,
    "store_refused": 503,
    "artifact_corrupted": 500,  # stored bytes no longer match their digest: ours to fix
}


def status_of(body: Mapping[str, Any], fallback: int | None = None) -> int:
    """The status of an answer ``body``: its error code's, or 201/200 for a receipt.

    ``fallback`` is for a code this table does not know (an answer from a newer
    instance, which carries its own status on the wire); without one it is a bug: 500.
    """
    code = body.get("error")
    if code is None:
        return 200 if body.get("repeated") else 201
    known = STATUS_BY_CODE.get(code) if isinstance(code, str) else None
    if known is not None:
        return known
    return fallback if fallback is not None else 500
