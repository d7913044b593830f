"""The fold: how every reader turns the event log into the same graph.

An event that does not continue its model's chain (wrong sequence number or
previous hash) or does not make sense on the state (a commit whose id is not
its content hash, a move from a head that is not current...) is *void*: the
fold ignores and counts it. That settles a race between two writers the same
way for every reader, without transactions.

On a partition whose key ring (``~keys.P``) has had a key, every event must
first be signed by a key active there (``signatures.signature_problem``); on one
that has not, only unsigned user-model events are legacy history. The system
chains (``~security``, ``~keys.P``) fold into ``Fold.security`` and
``Fold.rings``, never into ``Fold.models``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.core import refs, security, signatures
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
from streams.core.evolve import evolve, evolve_ring, evolve_security
from streams.core.hashing import GENESIS_HASH, SHA256_HEX, canonical, commit_id, sha256_hex
from streams.core.rollout import RUNNING, Rollout, active_rollout, rollout_id
from streams.core.security import SecurityState
from streams.core.signatures import KeyRing, Verify
from streams.core.state import ModelState

# A void reason's kind, as the audit names it: (kind, detail).
Problem = tuple[str, str]


def _bad_commit(state: ModelState, commit: Commit, parents: tuple[str, ...]) -> str | None:
    if commit.parents != parents:
        return f"commit {commit.id} has parents {list(commit.parents)}, expected {list(parents)}"
    if commit.id in state.commits:
        return f"commit {commit.id} already exists"
    if not SHA256_HEX.fullmatch(commit.artifact_sha256):
        # A forged commit must not point a worker at anything but a content address.
        return f"commit {commit.id} names no sha256 artifact digest"
    reference = commit.reference_sha256
    if reference is not None and not SHA256_HEX.fullmatch(reference):
        return f"commit {commit.id} names a reference that is no sha256 digest"
    if not all(math.isfinite(v) for v in commit.metrics.values()):
        # The canonical form has no NaN: hashing such a forged commit would raise.
        return f"commit {commit.id} has a metric that is not a finite number"
    recomputed = commit_id(
        parents=commit.parents,
        artifact_sha256=commit.artifact_sha256,
        params=commit.params,
        metrics=commit.metrics,
        message=commit.message,
        author=commit.author,
        at=commit.at,
        signature=None if commit.signature is None else commit.signature.plain(),
        reference_sha256=reference,
    )
    if recomputed != commit.id:
        return f"commit id {commit.id} is not the hash of its content ({recomputed})"
    return None


def _committed(s: ModelState, p: Committed) -> str | None:
    if p.branch not in s.branches:
        return f"branch {p.branch!r} does not exist"
    head = s.branches[p.branch]
    return _bad_commit(s, p.commit, (head,) if head else ())


def _branch_created(s: ModelState, p: BranchCreated) -> str | None:
    # The same name rule as decide, so a forged event cannot bring in a name
    # decide would refuse (one spelled like a commit id, or with a newline).
    problem = refs.name_problem("branch", p.branch)
    if problem is not None:
        return problem
    if p.branch in s.branches or p.branch in s.aliases:
        return f"branch {p.branch!r} exists or is already an alias"
    return None if p.head in s.commits else f"head {p.head} is not a commit"


def _branch_deleted(s: ModelState, p: BranchDeleted) -> str | None:
    if p.branch == s.default_branch or p.branch not in s.branches:
        return f"branch {p.branch!r} cannot be deleted"
    return None if s.branches[p.branch] == p.head else f"branch {p.branch!r} is not at {p.head}"


def _merged(s: ModelState, p: Merged) -> str | None:
    if p.target not in s.branches or s.branches[p.target] != p.previous_head:
        return f"branch {p.target!r} is not at {p.previous_head}"
    if p.source_head not in s.commits:
        return f"source head {p.source_head} is not a commit"
    if p.fast_forward:
        if p.commit is not None:
            return "a fast-forward carries no commit"
        ok = p.previous_head is None or refs.is_ancestor(s, p.previous_head, p.source_head)
        return None if ok else "not a fast-forward"
    if p.commit is None or p.previous_head is None:
        return "a merge commit is missing"
    return _bad_commit(s, p.commit, (p.previous_head, p.source_head))


def _rolled_back(s: ModelState, p: RolledBack) -> str | None:
    if s.branches.get(p.branch) != p.from_commit or p.from_commit is None:
        return f"branch {p.branch!r} is not at {p.from_commit}"
    history = refs.first_parent_history(s, p.from_commit)
    ok = p.to_commit != p.from_commit and p.to_commit in history
    return None if ok else f"{p.to_commit} is not a first-parent ancestor of {p.from_commit}"


def _alias_moved(s: ModelState, p: AliasMoved) -> str | None:
    problem = refs.name_problem("alias", p.alias)
    if problem is not None:
        return problem
    if p.alias in s.branches:
        return f"alias {p.alias!r} is already a branch"
    if s.aliases.get(p.alias) != p.from_commit:
        return f"alias {p.alias!r} is not at {p.from_commit}"
    rollout = active_rollout(s.rollouts, p.alias) if s.rollouts else None
    if rollout is not None:
        # Only the rollout's own decision moves the alias, after it ended the rollout.
        return f"alias {p.alias!r} is in rollout {rollout.id}"
    return None if p.to_commit in s.commits else f"{p.to_commit} is not a commit"


def _shadow_started(s: ModelState, p: ShadowStarted) -> str | None:
    if p.alias not in s.aliases:
        return f"alias {refs.shown(p.alias)} does not exist"
    if p.candidate not in s.commits or p.candidate == s.aliases[p.alias]:
        return f"{p.candidate} is not a commit other than the alias's"
    return None


def _shadow_stopped(s: ModelState, p: ShadowStopped) -> str | None:
    shadow = s.shadows.get(p.alias)
    if shadow is None or shadow.candidate != p.candidate:
        return f"{p.candidate} does not shadow alias {refs.shown(p.alias)}"
    return None


def _rollout_started(s: ModelState, p: RolloutStarted, command_id: str) -> str | None:
    if p.rollout_id != rollout_id(s.name, command_id) or p.rollout_id in s.rollouts:
        return f"rollout id {refs.shown(p.rollout_id)} is not the new one of its command"
    if p.alias not in s.aliases or s.aliases[p.alias] != p.baseline:
        return f"alias {refs.shown(p.alias)} is not at {p.baseline}"
    if p.candidate not in s.commits or p.candidate == p.baseline:
        return f"{p.candidate} is not a commit other than the baseline"
    active = active_rollout(s.rollouts, p.alias)
    if active is not None:
        return f"alias {p.alias!r} is already in rollout {active.id}"
    return refs.policy_form_problem(p.policy)


def _rollout_of(s: ModelState, rid: str, running: bool) -> Rollout | str:
    """The rollout an event names, or why it cannot change it (active, or RUNNING)."""
    rollout = s.rollouts.get(rid)
    if rollout is None:
        return f"no rollout {refs.shown(rid)}"
    if not rollout.active or (running and rollout.status != RUNNING):
        return f"rollout {rid} is {rollout.status}"
    return rollout


def _rollout_advanced(s: ModelState, p: RolloutAdvanced) -> str | None:
    # A promotion completes a paused rollout too; an ordinary step needs it running.
    rollout = _rollout_of(s, p.rollout_id, running=not p.completed)
    if isinstance(rollout, str):
        return rollout
    steps = rollout.policy.steps
    if p.from_step != rollout.step:
        return f"rollout {rollout.id} is at step {rollout.step}, not {p.from_step}"
    to = len(steps) - 1 if p.completed else rollout.step + 1
    if p.to_step != to or to >= len(steps) or p.percent != steps[to]:
        return f"rollout {rollout.id} cannot go from step {p.from_step} to {p.to_step}"
    return refs.evidence_problem(p.evidence)


def _rollout_aborted(s: ModelState, p: RolloutAborted) -> str | None:
    rollout = _rollout_of(s, p.rollout_id, running=False)
    if isinstance(rollout, str):
        return rollout
    if p.step != rollout.step:
        return f"rollout {rollout.id} is at step {rollout.step}, not {p.step}"
    return security.text_problem("reason", p.reason) or refs.evidence_problem(p.evidence)


def _rollout_paused(s: ModelState, p: RolloutPaused) -> str | None:
    rollout = _rollout_of(s, p.rollout_id, running=True)
    if isinstance(rollout, str):
        return rollout
    return security.text_problem("reason", p.reason)


def _rollout_resumed(s: ModelState, p: RolloutResumed) -> str | None:
    rollout = _rollout_of(s, p.rollout_id, running=False)
    if isinstance(rollout, str):
        return rollout
    return None if rollout.status != RUNNING else f"rollout {rollout.id} is running"


_CHECKS: dict[type, Callable[[ModelState, Any], str | None]] = {
    Committed: _committed,
    BranchCreated: _branch_created,
    BranchDeleted: _branch_deleted,
    Merged: _merged,
    RolledBack: _rolled_back,
    AliasMoved: _alias_moved,
    ShadowStarted: _shadow_started,
    ShadowStopped: _shadow_stopped,
    RolloutAdvanced: _rollout_advanced,
    RolloutAborted: _rollout_aborted,
    RolloutPaused: _rollout_paused,
    RolloutResumed: _rollout_resumed,
}


def chain_problem(seq: int, last_hash: str, event: ModelEvent) -> str | None:
    """Why ``event`` does not continue a chain at ``seq``/``last_hash`` (0/GENESIS: empty)."""
    if event.seq != seq + 1:
        return f"sequence number {event.seq}, expected {seq + 1}"
    if event.prev_hash != last_hash:
        return f"previous hash {event.prev_hash[:12]}… does not match {last_hash[:12]}…"
    return None


def void_reason(state: ModelState | None, event: ModelEvent) -> str | None:
    """Why ``event`` cannot extend ``state`` (None when it can)."""
    if state is None:
        problem = chain_problem(0, GENESIS_HASH, event)
        if problem is not None:
            return problem
        if not isinstance(event.payload, ModelCreated):
            return "the first event of a model must be ModelCreated"
        return refs.name_problem("model", event.model) or refs.name_problem(
            "branch", event.payload.default_branch
        )
    problem = chain_problem(state.seq, state.last_hash, event)
    if problem is not None:
        return problem
    check = _CHECKS.get(type(event.payload))
    if check is None:
        if isinstance(event.payload, RolloutStarted):
            # Its id is derived from the command that started it.
            return _rollout_started(state, event.payload, event.command_id)
        if isinstance(event.payload, ModelCreated):
            return "model already created"
        return f"a {event.type} is no model event"
    return check(state, event.payload)


def security_void_reason(state: SecurityState | None, event: ModelEvent) -> str | None:
    """Why ``event`` cannot extend the ``~security`` chain ``state`` (None when it can)."""
    problem = (
        chain_problem(0, GENESIS_HASH, event)
        if state is None
        else chain_problem(state.seq, state.last_hash, event)
    )
    if problem is not None:
        return problem
    p = event.payload
    tokens = {} if state is None else state.tokens
    if isinstance(p, TokenIssued):
        return security.token_problem(
            tokens, p.token_id, p.actor, p.role, p.token_sha256, p.expires_at
        )
    if isinstance(p, TokenRevoked):
        token = tokens.get(p.token_id)
        if token is None or token.revoked_at is not None:
            return f"token {refs.shown(p.token_id)} is not an unrevoked token"
        return security.text_problem("reason", p.reason)
    if isinstance(p, RefProtected):
        return security.rule_problem(p.kind, p.model, p.name, p.role)
    if isinstance(p, RefUnprotected):
        if state is None or (p.kind, p.model, p.name) not in state.rules:
            return f"{p.kind} {refs.shown(p.name)} has no protection rule to remove"
        return None
    return f"a {event.type} is no {security.SECURITY_STREAM} event"


def ring_void(
    ring: KeyRing | None,
    event: ModelEvent,
    partition: int,
    verify: Verify | None,
    trusted: frozenset[str] | None,
) -> Problem | None:
    """Why ``event`` cannot extend ``partition``'s key ring: (kind, detail), None when it can.

    The first key vouches for itself (trust on first use): it must be signed by
    itself, and be one of ``trusted`` when a reader pinned keys. An untrusted one
    leaves the ring empty, so a trusted key can still start it later (what the
    untrusted key signed is void anyway: signed, on a partition without keys).
    Every later ring event was already checked against the ring's active keys.
    """
    named = signatures.keys_partition(event.model)
    if named != partition:
        return "invalid", f"{event.model} belongs on partition {named}, not {partition}"
    problem = (
        chain_problem(0, GENESIS_HASH, event)
        if ring is None
        else chain_problem(ring.seq, ring.last_hash, event)
    )
    if problem is not None:
        return "invalid", problem
    p = event.payload
    if isinstance(p, WriterKeyRetired):
        problem = signatures.retire_key_problem(ring, p.key_id, event.key_id)
        problem = problem or security.text_problem("reason", p.reason)
        return None if problem is None else ("invalid", problem)
    if not isinstance(p, WriterKeyAdded):
        return "invalid", f"a {event.type} is no key-ring event"
    problem = signatures.public_key_problem(p.public_key) or security.text_problem("note", p.note)
    if problem is None and signatures.key_id_of(p.public_key) != p.key_id:
        problem = f"key id {signatures.shown_key(p.key_id)} is not the sha256 of its public key"
    problem = problem or signatures.add_key_problem(ring, p.key_id, event.key_id)
    if problem is not None:
        return "invalid", problem
    if ring is not None and ring.signed:
        return None
    if trusted is not None and p.key_id not in trusted:
        return "untrusted_key", (
            f"the first key of partition {partition}, {p.key_id}, is not one of the pinned keys"
        )
    # Without a verifier the key is taken unchecked, which is fail-closed: every later
    # event of the partition is then void for want of a verifier.
    if verify is not None and not (
        len(event.signature) == signatures.SIGNATURE_BYTES
        and verify(p.public_key, signatures.event_message(event.hash()), event.signature)
    ):
        return "bad_signature", (
            f"the first key of partition {partition}, {signatures.shown_key(p.key_id)}, "
            "is not signed by itself"
        )
    return None


def _unhashable(event: ModelEvent) -> bool:
    # The only payload with free floats: the canonical form refuses NaN and infinities,
    # so a forged one must be void before anything hashes it.
    try:
        event.hash()
    except ValueError:
        return True
    return False


def _reason(problem: Problem) -> str:
    kind, detail = problem
    return signatures.VOID_PREFIX.get(kind, "") + detail


@dataclass
class Fold:
    """A running fold over the log: the shell's and the auditor's accumulator.

    Mutable on purpose: it is the imperative holder of immutable model states
    (one per model), so applying an event costs O(that model), not O(graph).

    ``verify`` checks signatures (the shell's ``streams.signing.verify``);
    ``trusted`` pins the key ids a reader accepts as a partition's first key
    (None: trust each ring's first key on first use).
    """

    models: dict[str, ModelState] = field(default_factory=dict)
    voided: int = 0
    void_reasons: dict[str, int] = field(default_factory=dict)
    verify: Verify | None = None
    trusted: frozenset[str] | None = None
    security: SecurityState | None = None
    rings: dict[int, KeyRing] = field(default_factory=dict)

    def void(self, model: str) -> None:
        """Count an event of ``model`` that was not applied (here, or by the shell's rules)."""
        self.voided += 1
        self.void_reasons[model] = self.void_reasons.get(model, 0) + 1

    def chain(self, name: str, partition: int = 0) -> ModelState | SecurityState | KeyRing | None:
        """The state of the chain called ``name`` (a model, ``~security`` or ``~keys.P``)."""
        if name == security.SECURITY_STREAM:
            return self.security
        ring_partition = signatures.keys_partition(name)
        if ring_partition is not None:
            return self.rings.get(ring_partition)
        return self.models.get(name)

    def signature_void(
        self, event: ModelEvent, partition: int, event_hash: str | None = None
    ) -> Problem | None:
        """Why ``event`` is not vouched for on ``partition`` (see signature_problem)."""
        return signatures.signature_problem(
            self.rings.get(partition), event, self.verify, event_hash, partition
        )

    def chain_void(self, event: ModelEvent, partition: int) -> Problem | None:
        """Why ``event`` cannot extend its chain: (kind, detail); kind "invalid" or a key's."""
        name = event.model
        if name == security.SECURITY_STREAM:
            reason = security_void_reason(self.security, event)
        elif signatures.keys_partition(name) is not None:
            return ring_void(self.rings.get(partition), event, partition, self.verify, self.trusted)
        else:
            reason = void_reason(self.models.get(name), event)
        return None if reason is None else ("invalid", reason)

    def admit(self, event: ModelEvent, partition: int, event_hash: str | None = None) -> None:
        """Extend ``event``'s chain with it; only after ``chain_void`` found nothing."""
        name = event.model
        if name == security.SECURITY_STREAM:
            self.security = evolve_security(self.security, event, event_hash)
        elif signatures.keys_partition(name) is not None:
            self.rings[partition] = evolve_ring(
                self.rings.get(partition), event, partition, event_hash
            )
        else:
            self.models[name] = evolve(self.models.get(name), event, event_hash)

    def apply(self, event: ModelEvent, partition: int = 0) -> str | None:
        """Apply one event read from ``partition``; None when applied, else why it was void."""
        model = event.model
        event_hash = None
        if type(event.payload) is RolloutStarted and _unhashable(event):
            self.void(model)
            return "a rollout policy with a number JSON cannot hold (NaN or infinity)"
        # Legacy logs have no ring and unsigned events: their hot path skips this.
        checked = self.rings or event.key_id or event.signature
        if checked:
            ring = self.rings.get(partition)
            if ring is not None and ring.signed:
                event_hash = event.hash()  # once: for the signature and for the chain
            problem = self.signature_void(event, partition, event_hash)
            if problem is not None:
                self.void(model)
                return _reason(problem)
        if model[:1] != "~":
            state = self.models.get(model)
            reason = void_reason(state, event)
            if reason is not None:
                self.void(model)
                return reason
            self.models[model] = evolve(state, event, event_hash)
            return None
        # Unless checked above, this is an unsigned system event before any key.
        problem = None if checked else self.signature_void(event, partition)
        problem = problem or self.chain_void(event, partition)
        if problem is not None:
            self.void(model)
            return _reason(problem)
        self.admit(event, partition, event_hash)
        return None


def fold(events: Iterable[ModelEvent], verify: Verify | None = None) -> Fold:
    """Fold ``events`` as read from partition 0."""
    result = Fold(verify=verify)
    for event in events:
        result.apply(event)
    return result


def model_digest_input(state: ModelState) -> dict[str, object]:
    return {
        "seq": state.seq,
        "last_hash": state.last_hash,
        "default_branch": state.default_branch,
        "branches": dict(state.branches),
        "aliases": dict(state.aliases),
        "commits": sorted(state.commits),
    }


def state_digest(models: Mapping[str, ModelState]) -> str:
    """sha256 over the canonical form of the whole graph; equal graphs, equal digests."""
    return digest_of_inputs({name: model_digest_input(state) for name, state in models.items()})


def digest_of_inputs(inputs: Mapping[str, Mapping[str, object]]) -> str:
    """The state digest from per-model digest inputs (merged from partial replays)."""
    return sha256_hex(canonical({name: dict(inputs[name]) for name in sorted(inputs)}))
