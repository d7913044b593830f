"""Events: the only facts the version graph is built from (past tense).

``ModelEvent`` is the envelope every event travels in; its ``payload`` is one
of the records below. Field names match ``schemas/*.avsc`` one for one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streams.core.hashing import canonical, sha256_hex
from streams.core.model_signature import ModelSignature
from streams.core.rollout import Policy


@dataclass(frozen=True)
class Commit:
    id: str
    parents: tuple[str, ...]
    artifact_sha256: str
    params: Mapping[str, str]
    metrics: Mapping[str, float]
    message: str
    author: str
    at: int
    # The model's input signature, read from the file by the server (issue 11). None in
    # commits written before signatures existed: their ids hash no signature at all.
    signature: ModelSignature | None = None
    # sha256 of the training data's reference bins (monitoring.Reference, issue 12) in the
    # artifact store: what the monitor measures drift against. Hashed into the id only when
    # set, like ``signature``, so every older commit keeps its id.
    reference_sha256: str | None = None


@dataclass(frozen=True)
class ModelCreated:
    default_branch: str


@dataclass(frozen=True)
class Committed:
    branch: str
    commit: Commit


@dataclass(frozen=True)
class BranchCreated:
    branch: str
    head: str | None


@dataclass(frozen=True)
class BranchDeleted:
    branch: str
    head: str | None


@dataclass(frozen=True)
class Merged:
    source: str
    target: str
    source_head: str
    previous_head: str | None
    fast_forward: bool
    strategy: str | None
    commit: Commit | None  # the merge commit; None for a fast-forward

    @property
    def new_head(self) -> str:
        return self.commit.id if self.commit is not None else self.source_head


@dataclass(frozen=True)
class RolledBack:
    branch: str
    from_commit: str
    to_commit: str
    reason: str


@dataclass(frozen=True)
class AliasMoved:
    alias: str
    from_commit: str | None
    to_commit: str
    # The mover accepted a target that needs features the current commit's producers do not
    # send (--allow-signature-change). Hashed only when true, so older events keep their hash.
    allow_signature_change: bool = False


# -- the security chain (``~security``): who may do what ------------------------------
@dataclass(frozen=True)
class TokenIssued:
    token_id: str
    actor: str
    role: str
    token_sha256: str  # sha256 hex of the whole token: the secret itself is never written
    expires_at: int  # milliseconds since the epoch; 0 = never


@dataclass(frozen=True)
class TokenRevoked:
    token_id: str
    reason: str


@dataclass(frozen=True)
class RefProtected:
    kind: str  # "branch" | "alias"
    model: str  # "" = every model
    name: str
    role: str  # the least role that may move it


@dataclass(frozen=True)
class RefUnprotected:
    kind: str
    model: str
    name: str


# -- a partition's writer-key ring (``~keys.P``) --------------------------------------
@dataclass(frozen=True)
class WriterKeyAdded:
    key_id: str  # sha256 hex of the raw public key
    public_key: str  # the raw Ed25519 public key, 64 lowercase hex
    note: str


@dataclass(frozen=True)
class WriterKeyRetired:
    key_id: str
    reason: str


# -- shadows and canary rollouts of an alias (issue 12; state in streams.core.rollout) --
@dataclass(frozen=True)
class ShadowStarted:
    alias: str
    candidate: str  # commit id, scored beside the alias's commit, never served


@dataclass(frozen=True)
class ShadowStopped:
    alias: str
    candidate: str


@dataclass(frozen=True)
class RolloutStarted:
    rollout_id: str
    alias: str
    baseline: str  # the commit the alias pointed at
    candidate: str
    # The rollout.Policy, flat as the Avro record holds it.
    steps: tuple[int, ...]
    min_labels: int
    max_regression: Mapping[str, float]
    max_p99_ms: float | None = None
    max_dead_letter_rate: float | None = None
    step_timeout_ms: int = 0
    allow_signature_change: bool = False

    @property
    def policy(self) -> Policy:
        return Policy(
            steps=tuple(self.steps),
            min_labels=self.min_labels,
            max_regression=dict(self.max_regression),
            max_p99_ms=self.max_p99_ms,
            max_dead_letter_rate=self.max_dead_letter_rate,
            step_timeout_ms=self.step_timeout_ms,
        )


@dataclass(frozen=True)
class RolloutAdvanced:
    rollout_id: str
    from_step: int
    to_step: int  # the last step's index when completed
    percent: int  # the candidate's share from now on
    completed: bool  # the alias moves to the candidate (an AliasMoved follows)
    evidence: str  # canonical JSON of what the decision saw (refs.evidence_problem)


@dataclass(frozen=True)
class RolloutAborted:
    rollout_id: str
    step: int
    reason: str
    evidence: str


@dataclass(frozen=True)
class RolloutPaused:
    rollout_id: str
    reason: str


@dataclass(frozen=True)
class RolloutResumed:
    rollout_id: str


Payload = (
    ModelCreated
    | Committed
    | BranchCreated
    | BranchDeleted
    | Merged
    | RolledBack
    | AliasMoved
    | TokenIssued
    | TokenRevoked
    | RefProtected
    | RefUnprotected
    | WriterKeyAdded
    | WriterKeyRetired
    | ShadowStarted
    | ShadowStopped
    | RolloutStarted
    | RolloutAdvanced
    | RolloutAborted
    | RolloutPaused
    | RolloutResumed
)
PAYLOAD_TYPES: tuple[type, ...] = (
    ModelCreated,
    Committed,
    BranchCreated,
    BranchDeleted,
    Merged,
    RolledBack,
    AliasMoved,
    TokenIssued,
    TokenRevoked,
    RefProtected,
    RefUnprotected,
    WriterKeyAdded,
    WriterKeyRetired,
    ShadowStarted,
    ShadowStopped,
    RolloutStarted,
    RolloutAdvanced,
    RolloutAborted,
    RolloutPaused,
    RolloutResumed,
)


@dataclass(frozen=True)
class ModelEvent:
    model: str
    seq: int
    prev_hash: str
    command_id: str
    actor: str
    at: int
    payload: Payload
    # sha256 of the request that caused the event (commands.command_digest); "" in
    # events written before it existed, which every reader treats as "unknown".
    command_digest: str = ""
    # The writer key that signed the event (sha256 hex of its public key): hashed when
    # set, so the chain covers which key signed. "" in unsigned (legacy) history.
    key_id: str = ""
    # Ed25519 over signatures.event_message(self.hash()); never part of the hash itself.
    signature: bytes = b""

    @property
    def type(self) -> str:
        return type(self.payload).__name__

    def to_plain(self) -> dict[str, object]:
        """Plain-data view of the event (its JSON form); ``command_digest`` only when set."""
        plain: dict[str, object] = {
            "model": self.model,
            "seq": self.seq,
            "prev_hash": self.prev_hash,
            "command_id": self.command_id,
            "actor": self.actor,
            "at": self.at,
            "type": self.type,
            "payload": plain_payload(self.payload),
        }
        if self.command_digest:
            plain["command_digest"] = self.command_digest
        if self.key_id:
            plain["key_id"] = self.key_id
        if self.signature:
            plain["signature"] = self.signature.hex()
        return plain

    def hash(self) -> str:
        """sha256 of the event's canonical form; the next event's ``prev_hash``.

        The input is the canonical JSON of ``model, seq, prev_hash, command_id,
        actor, at, type, payload``, plus ``command_digest`` *only when it is not
        empty*: events written before the digest existed keep the hash they were
        chained with, and a digest, once written, is covered by the chain.

        A commit enters by its id alone: the id is itself the hash of the
        commit's content (checked by the fold), so hashing the content twice
        would add nothing but time. ``allow_signature_change`` enters only when
        true, as ``command_digest`` does only when set. A ``RolloutStarted`` enters
        as its plain form (``steps`` a list, ``max_regression`` an object).
        """
        if type(self.payload) is RolloutStarted:
            payload = plain_payload(self.payload)
        else:
            payload = dict(self.payload.__dict__)
            commit = payload.get("commit")
            if isinstance(commit, Commit):
                payload["commit"] = commit.id
            elif payload.get("allow_signature_change") is False:
                del payload["allow_signature_change"]
        hashed: dict[str, object] = {
            "model": self.model,
            "seq": self.seq,
            "prev_hash": self.prev_hash,
            "command_id": self.command_id,
            "actor": self.actor,
            "at": self.at,
            "type": type(self.payload).__name__,
            "payload": payload,
        }
        if self.command_digest:
            hashed["command_digest"] = self.command_digest
        if self.key_id:
            hashed["key_id"] = self.key_id
        return sha256_hex(canonical(hashed))


def plain_commit(commit: Commit) -> dict[str, object]:
    """The commit's plain form; ``signature`` and ``reference_sha256`` are None for a commit
    recorded without one."""
    return {
        "id": commit.id,
        "parents": list(commit.parents),
        "artifact_sha256": commit.artifact_sha256,
        "params": dict(commit.params),
        "metrics": dict(commit.metrics),
        "message": commit.message,
        "author": commit.author,
        "at": commit.at,
        "signature": None if commit.signature is None else commit.signature.plain(),
        "reference_sha256": commit.reference_sha256,
    }


def commit_from_plain(plain: Mapping[str, Any]) -> Commit:
    """Inverse of :func:`plain_commit` (for the codec and the projection).

    The signature and the reference may be absent (an older projection or JSON form);
    ValueError when the signature is junk.
    """
    return Commit(
        id=plain["id"],
        parents=tuple(plain["parents"]),
        artifact_sha256=plain["artifact_sha256"],
        params=dict(plain["params"]),
        metrics=dict(plain["metrics"]),
        message=plain["message"],
        author=plain["author"],
        at=plain["at"],
        signature=signature_from_plain(plain.get("signature")),
        reference_sha256=plain.get("reference_sha256"),
    )


def signature_from_plain(value: object) -> ModelSignature | None:
    """A recorded signature: None, its plain form, or the ``(name, record)`` pair an Avro
    union branch decodes to (``return_record_name``). ValueError when it is junk."""
    if value is None:
        return None
    if isinstance(value, tuple) and len(value) == 2:
        value = value[1]
    if not isinstance(value, Mapping):
        raise ValueError(f"not a model signature: {type(value).__name__}")
    return ModelSignature.from_plain(value)


def plain_payload(payload: Payload) -> dict[str, object]:
    """The payload's plain form (the event's JSON and Avro record).

    Fields added since the first release are left out at their defaults (the Avro
    writer fills them in), so an old event reads back to the JSON it was written as.
    """
    # Shallow on purpose (hot in replay): only a nested Commit, and the rare
    # RolloutStarted's tuple and mapping, need converting.
    plain = dict(payload.__dict__)
    commit = plain.get("commit")
    if isinstance(commit, Commit):
        plain["commit"] = converted = plain_commit(commit)
        for key in ("signature", "reference_sha256"):
            if converted[key] is None:
                del converted[key]
        return plain
    if type(payload) is RolloutStarted:
        plain["steps"] = list(payload.steps)
        plain["max_regression"] = dict(payload.max_regression)
    if plain.get("allow_signature_change") is False:
        del plain["allow_signature_change"]
    return plain
