"""evolve(state, event) -> state: one small function per event type.

These assume the event is admissible (see ``fold.void_reason``); they never
validate and never mutate: each returns a new ``ModelState``. Its maps are
:class:`~streams.core.state.PersistentMap` versions of the old state's, so an
event costs O(1) whatever the size of its model (a replay is linear).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

from streams.core.events import (
    AliasMoved,
    BranchCreated,
    BranchDeleted,
    Commit,
    Committed,
    Merged,
    ModelCreated,
    ModelEvent,
    RefProtected,
    RefUnprotected,
    RolledBack,
    RolloutAborted,
    RolloutAdvanced,
    RolloutPaused,
    RolloutResumed,
    RolloutStarted,
    ShadowStarted,
    ShadowStopped,
    TokenIssued,
    TokenRevoked,
    WriterKeyAdded,
    WriterKeyRetired,
)
from streams.core.rollout import ABORTED, COMPLETED, PAUSED, RUNNING, Rollout, Shadow
from streams.core.security import SecurityState, Token
from streams.core.signatures import KeyRing
from streams.core.state import ModelState, PersistentMap, Receipt, Reflog, RefMove

K = TypeVar("K")
V = TypeVar("V")


def _persistent(mapping: Mapping[K, V]) -> PersistentMap[K, V]:
    """``mapping`` as a persistent map; a plain one (a loaded state's) is copied once."""
    return mapping if isinstance(mapping, PersistentMap) else PersistentMap(mapping)


def _move(
    state: ModelState,
    event: ModelEvent,
    event_hash: str,
    *,
    kind: str,
    name: str,
    old: str | None,
    new: str | None,
    reason: str = "",
    commit: Commit | None = None,
    branches: Mapping[str, str | None] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> ModelState:
    move = RefMove(event.seq, kind, name, old, new, event.type, reason, event.actor, event.at)
    commits = state.commits
    if commit is not None:
        commits = _persistent(commits).set(commit.id, commit)
    # Built directly rather than with dataclasses.replace: this is the replay hot path.
    return ModelState(
        state.name,
        state.default_branch,
        state.created_at,
        event.seq,
        event_hash,
        commits,
        state.branches if branches is None else branches,
        state.aliases if aliases is None else aliases,
        _persistent(state.receipts).set(
            event.command_id, Receipt(event.seq, event.type, name, new, event.command_digest)
        ),
        Reflog(move, state.reflog),
        state.shadows,
        state.rollouts,
    )


def model_created(_: ModelState | None, event: ModelEvent, event_hash: str) -> ModelState:
    payload: ModelCreated = event.payload  # type: ignore[assignment]
    return ModelState(
        name=event.model,
        default_branch=payload.default_branch,
        created_at=event.at,
        seq=event.seq,
        last_hash=event_hash,
        commits=PersistentMap(),
        branches=PersistentMap({payload.default_branch: None}),
        aliases=PersistentMap(),
        receipts=PersistentMap(
            {
                event.command_id: Receipt(
                    event.seq, event.type, payload.default_branch, None, event.command_digest
                )
            }
        ),
    )


def committed(state: ModelState, event: ModelEvent, event_hash: str) -> ModelState:
    p: Committed = event.payload  # type: ignore[assignment]
    return _move(
        state,
        event,
        event_hash,
        kind="branch",
        name=p.branch,
        old=state.branches[p.branch],
        new=p.commit.id,
        commit=p.commit,
        branches=_persistent(state.branches).set(p.branch, p.commit.id),
    )


def branch_created(state: ModelState, event: ModelEvent, event_hash: str) -> ModelState:
    p: BranchCreated = event.payload  # type: ignore[assignment]
    return _move(
        state,
        event,
        event_hash,
        kind="branch",
        name=p.branch,
        old=None,
        new=p.head,
        branches=_persistent(state.branches).set(p.branch, p.head),
    )


def branch_deleted(state: ModelState, event: ModelEvent, event_hash: str) -> ModelState:
    p: BranchDeleted = event.payload  # type: ignore[assignment]
    branches = (
        state.branches if type(state.branches) is PersistentMap else PersistentMap(state.branches)
    ).without(p.branch)
    return _move(
        state,
        event,
        event_hash,
        kind="branch",
        name=p.branch,
        old=p.head,
        new=None,
        branches=branches,
    )


def merged(state: ModelState, event: ModelEvent, event_hash: str) -> ModelState:
    p: Merged = event.payload  # type: ignore[assignment]
    return _move(
        state,
        event,
        event_hash,
        kind="branch",
        name=p.target,
        old=p.previous_head,
        new=p.new_head,
        commit=p.commit,
        reason=f"merge {p.source}",
        branches=_persistent(state.branches).set(p.target, p.new_head),
    )


def rolled_back(state: ModelState, event: ModelEvent, event_hash: str) -> ModelState:
    p: RolledBack = event.payload  # type: ignore[assignment]
    return _move(
        state,
        event,
        event_hash,
        kind="branch",
        name=p.branch,
        old=p.from_commit,
        new=p.to_commit,
        reason=p.reason,
        branches=_persistent(state.branches).set(p.branch, p.to_commit),
    )


def alias_moved(state: ModelState, event: ModelEvent, event_hash: str) -> ModelState:
    p: AliasMoved = event.payload  # type: ignore[assignment]
    return _move(
        state,
        event,
        event_hash,
        kind="alias",
        name=p.alias,
        old=p.from_commit,
        new=p.to_commit,
        aliases=_persistent(state.aliases).set(p.alias, p.to_commit),
    )


# -- shadows and rollouts: no ref moves (the alias moves by its own AliasMoved) ----------


def _noted(
    state: ModelState,
    event: ModelEvent,
    event_hash: str,
    ref: str,
    head: str | None,
    *,
    shadows: Mapping[str, Shadow] | None = None,
    rollouts: Mapping[str, Rollout] | None = None,
) -> ModelState:
    return replace(
        state,
        seq=event.seq,
        last_hash=event_hash,
        receipts=_persistent(state.receipts).set(
            event.command_id, Receipt(event.seq, event.type, ref, head, event.command_digest)
        ),
        shadows=state.shadows if shadows is None else shadows,
        rollouts=state.rollouts if rollouts is None else rollouts,
    )


def shadow_started(state: ModelState, event: ModelEvent, event_hash: str) -> ModelState:
    p: ShadowStarted = event.payload  # type: ignore[assignment]
    shadow = Shadow(p.alias, p.candidate, event.at)
    shadows = _persistent(state.shadows).set(p.alias, shadow)
    return _noted(state, event, event_hash, p.alias, p.candidate, shadows=shadows)


def shadow_stopped(state: ModelState, event: ModelEvent, event_hash: str) -> ModelState:
    p: ShadowStopped = event.payload  # type: ignore[assignment]
    shadows = _persistent(state.shadows).without(p.alias)
    return _noted(state, event, event_hash, p.alias, None, shadows=shadows)


def rollout_started(state: ModelState, event: ModelEvent, event_hash: str) -> ModelState:
    p: RolloutStarted = event.payload  # type: ignore[assignment]
    rollout = Rollout(
        id=p.rollout_id,
        alias=p.alias,
        baseline=p.baseline,
        candidate=p.candidate,
        policy=p.policy,
        step=0,
        status=RUNNING,
        started_at=event.at,
        step_started_at=event.at,
        allow_signature_change=p.allow_signature_change,
    )
    rollouts = _persistent(state.rollouts).set(p.rollout_id, rollout)
    return _noted(state, event, event_hash, p.rollout_id, p.candidate, rollouts=rollouts)


def _changed(
    state: ModelState, event: ModelEvent, event_hash: str, rollout: Rollout, head: str | None
) -> ModelState:
    rollouts = _persistent(state.rollouts).set(rollout.id, rollout)
    return _noted(state, event, event_hash, rollout.id, head, rollouts=rollouts)


def _evidence_reason(evidence: str) -> str:
    # A person's promotion says why in its evidence (decide._manual); the fold checked
    # that the evidence is a JSON object.
    try:
        reason = json.loads(evidence).get("reason", "")
    except (ValueError, AttributeError, RecursionError):
        return ""
    return reason if isinstance(reason, str) else ""


def rollout_advanced(state: ModelState, event: ModelEvent, event_hash: str) -> ModelState:
    p: RolloutAdvanced = event.payload  # type: ignore[assignment]
    before = state.rollouts[p.rollout_id]
    after = replace(before, step=p.to_step, step_started_at=event.at)
    if p.completed:
        after = replace(after, status=COMPLETED, reason=_evidence_reason(p.evidence))
    return _changed(state, event, event_hash, after, before.candidate)


def rollout_aborted(state: ModelState, event: ModelEvent, event_hash: str) -> ModelState:
    p: RolloutAborted = event.payload  # type: ignore[assignment]
    before = state.rollouts[p.rollout_id]
    after = replace(before, status=ABORTED, reason=p.reason)
    return _changed(state, event, event_hash, after, before.baseline)


def rollout_paused(state: ModelState, event: ModelEvent, event_hash: str) -> ModelState:
    p: RolloutPaused = event.payload  # type: ignore[assignment]
    after = replace(state.rollouts[p.rollout_id], status=PAUSED, reason=p.reason)
    return _changed(state, event, event_hash, after, None)


def rollout_resumed(state: ModelState, event: ModelEvent, event_hash: str) -> ModelState:
    p: RolloutResumed = event.payload  # type: ignore[assignment]
    # The step starts again: the time it waited paused does not count against its timeout.
    after = replace(state.rollouts[p.rollout_id], status=RUNNING, step_started_at=event.at)
    return _changed(state, event, event_hash, after, None)


_EVOLVERS: dict[type, Callable[[Any, ModelEvent, str], ModelState]] = {
    ModelCreated: model_created,
    Committed: committed,
    BranchCreated: branch_created,
    BranchDeleted: branch_deleted,
    Merged: merged,
    RolledBack: rolled_back,
    AliasMoved: alias_moved,
    ShadowStarted: shadow_started,
    ShadowStopped: shadow_stopped,
    RolloutStarted: rollout_started,
    RolloutAdvanced: rollout_advanced,
    RolloutAborted: rollout_aborted,
    RolloutPaused: rollout_paused,
    RolloutResumed: rollout_resumed,
}


def evolve(
    state: ModelState | None, event: ModelEvent, event_hash: str | None = None
) -> ModelState:
    """The state after ``event``; ``event_hash`` may be passed when already computed."""
    return _EVOLVERS[type(event.payload)](
        state, event, event.hash() if event_hash is None else event_hash
    )


# -- the system chains: rare events, so one function each keeps them readable -----------


def evolve_security(
    state: SecurityState | None, event: ModelEvent, event_hash: str | None = None
) -> SecurityState:
    """The ``~security`` state after ``event`` (admissible: see ``fold.security_void_reason``)."""
    tokens: Mapping[str, Token] = PersistentMap() if state is None else state.tokens
    rules: Mapping[tuple[str, str, str], str] = PersistentMap() if state is None else state.rules
    p = event.payload
    ref: str
    if isinstance(p, TokenIssued):
        token = Token(
            p.token_id, p.actor, p.role, p.token_sha256, p.expires_at, event.at, event.actor
        )
        tokens, ref = _persistent(tokens).set(p.token_id, token), p.token_id
    elif isinstance(p, TokenRevoked):
        revoked = replace(
            tokens[p.token_id], revoked_at=event.at, revoked_by=event.actor, reason=p.reason
        )
        tokens, ref = _persistent(tokens).set(p.token_id, revoked), p.token_id
    elif isinstance(p, RefProtected):
        rules, ref = _persistent(rules).set((p.kind, p.model, p.name), p.role), p.name
    else:
        assert isinstance(p, RefUnprotected)
        rules, ref = _persistent(rules).without((p.kind, p.model, p.name)), p.name
    receipts: Mapping[str, Receipt] = PersistentMap() if state is None else state.receipts
    receipt = Receipt(event.seq, event.type, ref, None, event.command_digest)
    return SecurityState(
        event.seq,
        event.hash() if event_hash is None else event_hash,
        tokens,
        rules,
        _persistent(receipts).set(event.command_id, receipt),
    )


def evolve_ring(
    ring: KeyRing | None, event: ModelEvent, partition: int, event_hash: str | None = None
) -> KeyRing:
    """Partition ``partition``'s key ring after ``event`` (admissible: ``fold.ring_void``)."""
    active: Mapping[str, str] = PersistentMap() if ring is None else ring.active
    retired: Mapping[str, str] = PersistentMap() if ring is None else ring.retired
    p = event.payload
    if isinstance(p, WriterKeyAdded):
        active = _persistent(active).set(p.key_id, p.public_key)
    else:
        assert isinstance(p, WriterKeyRetired)
        public_key = active[p.key_id]
        active = _persistent(active).without(p.key_id)
        retired = _persistent(retired).set(p.key_id, public_key)
    receipts: Mapping[str, Receipt] = PersistentMap() if ring is None else ring.receipts
    receipt = Receipt(event.seq, event.type, p.key_id, None, event.command_digest)
    return KeyRing(
        partition,
        event.seq,
        event.hash() if event_hash is None else event_hash,
        active,
        retired,
        _persistent(receipts).set(event.command_id, receipt),
    )
