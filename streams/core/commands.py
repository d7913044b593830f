"""Commands: requests to change a model's version graph (imperative verbs).

The shell fills in ``command_id``, ``actor`` and ``at`` at the edge, so
deciding the same command against the same state always yields the same
bytes; the core never reads a clock or draws a random id.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from streams.core.hashing import canonical, sha256_hex
from streams.core.model_signature import ModelSignature
from streams.core.rollout import Policy


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
    # Read by the API from the uploaded file itself, never taken from the request body.
    signature: ModelSignature | None = None
    # The training data's reference bins in the artifact store (64 hex; the API checks
    # that they exist and parse).
    reference_sha256: str | None = None


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
    # The signature of ``artifact_sha256`` (read by the API from the file) when the merge
    # gives a new model file; a merge that keeps a parent's file keeps its signature.
    signature: ModelSignature | None = None
    # Likewise the reference bins: a kept parent's file keeps that parent's, a new file
    # has none unless given.
    reference_sha256: str | None = None


@dataclass(frozen=True)
class Rollback:
    branch: str
    to_ref: str
    reason: str
    # The branch head the caller saw (compare-and-set): refused when the branch moved.
    expect: str | None = None


@dataclass(frozen=True)
class MoveAlias:
    alias: str
    ref: str
    expect: str | None = None
    # Move even though the target needs features producers for the current commit do not
    # send (modelvc alias set NAME REF --allow-signature-change).
    allow_signature_change: bool = False


# -- shadows and canary rollouts of an alias (issue 12) -------------------------------
@dataclass(frozen=True)
class StartShadow:
    alias: str
    candidate_ref: str


@dataclass(frozen=True)
class StopShadow:
    alias: str


@dataclass(frozen=True)
class StartRollout:
    alias: str
    to_ref: str
    policy: Policy
    allow_signature_change: bool = False
    # The commit the caller saw the alias serve (compare-and-set): refused when it moved.
    expect: str | None = None


@dataclass(frozen=True)
class AdvanceRollout:
    """The controller's step: sent with the step it judged, so a stale decision is refused."""

    rollout_id: str
    expect_step: int
    evidence: str  # canonical JSON (refs.evidence_problem)


@dataclass(frozen=True)
class AbortRollout:
    rollout_id: str
    reason: str
    evidence: str = ""  # "" for a person's abort: decide records who did it
    expect_step: int | None = None  # the controller's: refused when the rollout moved on


@dataclass(frozen=True)
class PauseRollout:
    rollout_id: str
    reason: str = ""


@dataclass(frozen=True)
class ResumeRollout:
    rollout_id: str


@dataclass(frozen=True)
class PromoteRollout:
    rollout_id: str
    reason: str


# -- admin commands: the security chain and the writer-key rings ---------------------
@dataclass(frozen=True)
class IssueToken:
    token_id: str
    actor: str
    role: str
    token_sha256: str
    expires_at: int = 0


@dataclass(frozen=True)
class RevokeToken:
    token_id: str
    reason: str


@dataclass(frozen=True)
class ProtectRef:
    kind: str
    name: str
    model: str = ""
    role: str = "releaser"


@dataclass(frozen=True)
class UnprotectRef:
    kind: str
    name: str
    model: str = ""


@dataclass(frozen=True)
class AddWriterKey:
    public_key: str  # 64 hex; sent once per events partition, to signatures.keys_stream(p)
    note: str = ""


@dataclass(frozen=True)
class RetireWriterKey:
    key_id: str
    reason: str


Body = (
    CreateModel
    | MakeCommit
    | CreateBranch
    | DeleteBranch
    | Merge
    | Rollback
    | MoveAlias
    | IssueToken
    | RevokeToken
    | ProtectRef
    | UnprotectRef
    | AddWriterKey
    | RetireWriterKey
    | StartShadow
    | StopShadow
    | StartRollout
    | AdvanceRollout
    | AbortRollout
    | PauseRollout
    | ResumeRollout
    | PromoteRollout
)
BODY_TYPES: tuple[type, ...] = (
    CreateModel,
    MakeCommit,
    CreateBranch,
    DeleteBranch,
    Merge,
    Rollback,
    MoveAlias,
    IssueToken,
    RevokeToken,
    ProtectRef,
    UnprotectRef,
    AddWriterKey,
    RetireWriterKey,
    StartShadow,
    StopShadow,
    StartRollout,
    AdvanceRollout,
    AbortRollout,
    PauseRollout,
    ResumeRollout,
    PromoteRollout,
)


@dataclass(frozen=True)
class Command:
    command_id: str
    model: str
    actor: str
    at: int  # milliseconds since the epoch, stamped at the edge
    body: Body
    # Who the API authenticated (the token's role), and its instance's signature over
    # signatures.command_message(self): the writer decides only commands an API signed.
    role: str = ""
    key_id: str = ""
    signature: bytes = b""


def _digest_number(value: object) -> object:
    # 1 and 1.0 are the same metric (decide stores floats); anything the
    # canonical JSON cannot hold (nan, inf, huge ints, bools) enters by its repr,
    # so digesting never fails, even for a request that decide will refuse.
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            return repr(value)
        if math.isfinite(number):
            return number
    return repr(value)


def _digest_policy(policy: object) -> object:
    # Whatever the caller put in (decide refuses junk later), as plain data.
    if not isinstance(policy, Policy):
        return repr(policy)
    regression = policy.max_regression
    return {
        "steps": [_digest_number(s) for s in policy.steps]
        if isinstance(policy.steps, tuple | list)
        else repr(policy.steps),
        "min_labels": _digest_number(policy.min_labels),
        "max_regression": {str(k): _digest_number(v) for k, v in regression.items()}
        if isinstance(regression, Mapping)
        else repr(regression),
        "max_p99_ms": None if policy.max_p99_ms is None else _digest_number(policy.max_p99_ms),
        "max_dead_letter_rate": None
        if policy.max_dead_letter_rate is None
        else _digest_number(policy.max_dead_letter_rate),
        "step_timeout_ms": _digest_number(policy.step_timeout_ms),
    }


# Bodies that gained ``expect`` after they were released (issue 13): without one, a
# request digests as it did before.
_EXPECT_ADDED = (Rollback, StartRollout)


def command_digest(command: Command) -> str:
    """sha256 of what makes two sends "the same request" under one command id.

    The input is the canonical JSON of the model, the actor, the body type and
    the body's fields. ``command_id`` is the key itself, and ``at`` is left out
    because the server stamps it on every send: a retry after a timeout is the
    same request although it arrives later. The fields issue 11 added (a
    ``signature``, ``allow_signature_change``) enter only when set, so a request
    sent before them digests as it did and its retry is still a repeat; so do issue 12's
    ``reference_sha256`` and issue 13's ``expect`` of a rollback or a rollout.
    """
    fields = dict(command.body.__dict__)
    if "signature" in fields:
        signature = fields.pop("signature")
        if signature is not None:
            fields["signature"] = signature.plain()
    if fields.get("allow_signature_change") is False:
        del fields["allow_signature_change"]
    if "reference_sha256" in fields and fields["reference_sha256"] is None:
        del fields["reference_sha256"]
    if isinstance(command.body, _EXPECT_ADDED) and command.body.expect is None:
        del fields["expect"]
    if "policy" in fields:
        fields["policy"] = _digest_policy(fields["policy"])
    if "params" in fields:
        fields["params"] = dict(fields["params"])
    if "metrics" in fields:
        fields["metrics"] = {k: _digest_number(v) for k, v in fields["metrics"].items()}
    return sha256_hex(
        canonical(
            {
                "model": command.model,
                "actor": command.actor,
                "type": type(command.body).__name__,
                "body": fields,
            }
        )
    )
