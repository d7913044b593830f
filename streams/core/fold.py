"""The fold: how every reader turns the event log into the same graph.

An event that does not continue its model's chain (wrong sequence number or
previous hash) or does not make sense on the state (a commit whose id is not
its content hash, a move from a head that is not current...) is *void*: the
fold ignores and counts it. That settles a race between two writers the same
way for every reader, without transactions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.core import refs
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
from streams.core.hashing import GENESIS_HASH, SHA256_HEX, canonical, commit_id, sha256_hex
from streams.core.state import ModelState


def _bad_commit(state: ModelState, commit: Commit, parents: tuple[str, ...]) -> str | None:
    if commit.parents != parents:
        return f"commit {commit.id} has parents {list(commit.parents)}, expected {list(parents)}"
    if commit.id in state.commits:
        return f"commit {commit.id} already exists"
    if not SHA256_HEX.fullmatch(commit.artifact_sha256):
        # A forged commit must not point a worker at anything but a content address.
        return f"commit {commit.id} names no sha256 artifact digest"
    recomputed = commit_id(
        parents=commit.parents,
        artifact_sha256=commit.artifact_sha256,
        params=commit.params,
        metrics=commit.metrics,
        message=commit.message,
        author=commit.author,
        at=commit.at,
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
    return None if p.to_commit in s.commits else f"{p.to_commit} is not a commit"


_CHECKS: dict[type, Callable[[ModelState, Any], str | None]] = {
    Committed: _committed,
    BranchCreated: _branch_created,
    BranchDeleted: _branch_deleted,
    Merged: _merged,
    RolledBack: _rolled_back,
    AliasMoved: _alias_moved,
}


def void_reason(state: ModelState | None, event: ModelEvent) -> str | None:
    """Why ``event`` cannot extend ``state`` (None when it can)."""
    expected_seq = 1 if state is None else state.seq + 1
    expected_prev = GENESIS_HASH if state is None else state.last_hash
    if event.seq != expected_seq:
        return f"sequence number {event.seq}, expected {expected_seq}"
    if event.prev_hash != expected_prev:
        return f"previous hash {event.prev_hash[:12]}… does not match {expected_prev[:12]}…"
    if state is None:
        if not isinstance(event.payload, ModelCreated):
            return "the first event of a model must be ModelCreated"
        return refs.name_problem("model", event.model) or refs.name_problem(
            "branch", event.payload.default_branch
        )
    if isinstance(event.payload, ModelCreated):
        return "model already created"
    return _CHECKS[type(event.payload)](state, event.payload)


@dataclass
class Fold:
    """A running fold over the log: the shell's and the auditor's accumulator.

    Mutable on purpose: it is the imperative holder of immutable model states
    (one per model), so applying an event costs O(that model), not O(graph).
    """

    models: dict[str, ModelState] = field(default_factory=dict)
    voided: int = 0
    void_reasons: dict[str, int] = field(default_factory=dict)

    def void(self, model: str) -> None:
        """Count an event of ``model`` that was not applied (here, or by the shell's rules)."""
        self.voided += 1
        self.void_reasons[model] = self.void_reasons.get(model, 0) + 1

    def apply(self, event: ModelEvent) -> str | None:
        """Apply one event; returns None when applied, or why it was void."""
        state = self.models.get(event.model)
        reason = void_reason(state, event)
        if reason is not None:
            self.void(event.model)
            return reason
        self.models[event.model] = evolve(state, event)
        return None


def fold(events: Iterable[ModelEvent]) -> Fold:
    result = Fold()
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
