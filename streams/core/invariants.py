"""Invariants every folded model satisfies; tests and auditors call these."""

from __future__ import annotations

from collections.abc import Sequence

from streams.core.events import ModelEvent
from streams.core.hashing import GENESIS_HASH
from streams.core.state import ModelState


def violations(state: ModelState, events: Sequence[ModelEvent] = ()) -> list[str]:
    """Every broken invariant of ``state``; ``events`` (its applied log) adds chain checks."""
    found: list[str] = []
    seen: set[str] = set()
    for cid, commit in state.commits.items():
        if cid != commit.id:
            found.append(f"commit stored under {cid} has id {commit.id}")
        # Insertion order is topological, so a parent not yet seen is missing or a cycle.
        found += [f"{cid} has unknown or later parent {p}" for p in commit.parents if p not in seen]
        seen.add(cid)
    found += [
        f"branch {b} points at unknown {h}"
        for b, h in state.branches.items()
        if h is not None and h not in state.commits
    ]
    found += [
        f"alias {a} points at unknown {t}"
        for a, t in state.aliases.items()
        if t not in state.commits
    ]
    if state.default_branch not in state.branches:
        found.append(f"default branch {state.default_branch} is missing")
    if events:
        prev = GENESIS_HASH
        for expected_seq, event in enumerate(events, start=1):
            if event.seq != expected_seq:
                found.append(f"sequence gap: {event.seq} where {expected_seq} was due")
            if event.prev_hash != prev:
                found.append(f"event {event.seq} does not chain to its predecessor")
            prev = event.hash()
        if state.seq != len(events) or state.last_hash != prev:
            found.append("state does not end where its events end")
    return found
