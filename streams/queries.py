"""The read side's questions, as pure functions over folded models and their history.

No HTTP and no I/O: the API parses a request, asks one of these, and sends
the answer as JSON; the unit tests ask them directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from streams.core import model_signature, refs
from streams.core.errors import UnknownModel
from streams.core.events import Commit, ModelEvent, plain_commit
from streams.core.evolve import evolve
from streams.core.fold import state_digest
from streams.core.security import SecurityState
from streams.core.signatures import KeyRing
from streams.core.state import ModelState

# Where to cut a model's history: at an event offset, or at a time (epoch ms).
Cutoff = tuple[Literal["offset", "time"], int]


def model(models: Mapping[str, ModelState], name: str) -> ModelState:
    state = models.get(name)
    if state is None:
        raise refs.unknown_model(name)
    return state


def as_of(
    name: str, history: Iterable[tuple[int, ModelEvent]], cutoff: Cutoff, label: str
) -> ModelState:
    """``name`` as it was at ``cutoff``, replayed from its (offset, event) history in seq order.

    The longest prefix of the history at or before the cutoff: a later event
    stamped earlier (clock skew between instances) never pulls the state past
    an event that was not yet there at the cutoff. ``label`` names the cutoff
    as the caller wrote it, for the error.
    """
    kind, limit = cutoff
    past: ModelState | None = None
    for offset, event in history:
        if (event.at if kind == "time" else offset) > limit:
            break
        # The history holds only events the projection applied (their chain and signature
        # checked then, against the partition's ring, which this one model's events lack).
        past = evolve(past, event)
    if past is None:
        raise UnknownModel(f"model {name!r} did not exist yet as of {label}", model=name)
    return past


def commit_json(state: ModelState, commit_id: str) -> dict[str, Any]:
    out = plain_commit(state.commits[commit_id])
    out["refs"] = refs.labels(state).get(commit_id, [])
    return out


def signature_changes(a: Commit, b: Commit) -> dict[str, Any] | None:
    """What ``b``'s inputs and outputs change from ``a``'s; None when either commit was
    made before commits recorded a signature (nothing to compare)."""
    if a.signature is None or b.signature is None:
        return None
    d = model_signature.diff(a.signature, b.signature)
    old_types, new_types = a.signature.types(), b.signature.types()
    return {
        "added": [{"name": n, "type": new_types[n]} for n in d.added],
        "removed": [{"name": n, "type": old_types[n]} for n in d.removed],
        "retyped": [{"name": n, "old": old, "new": new} for n, old, new in d.retyped],
        "outputs": None if d.outputs is None else {"old": d.outputs[0], "new": d.outputs[1]},
    }


def reachable(state: ModelState) -> set[str]:
    """Commits some branch or alias still reaches."""
    found: set[str] = set()
    for head in [*(h for h in state.branches.values() if h), *state.aliases.values()]:
        found |= refs.ancestors(state.commits, head)
    return found


def list_models(models: Mapping[str, ModelState]) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": s.name,
                "seq": s.seq,
                "commits": len(s.commits),
                "branches": dict(s.branches),
                "aliases": dict(s.aliases),
            }
            for s in sorted(models.values(), key=lambda s: s.name)
        ]
    }


def log(state: ModelState, ref: str | None, as_of: str | None = None) -> dict[str, Any]:
    seen = reachable(state)
    entries = [commit_json(state, c.id) | {"reachable": c.id in seen} for c in refs.log(state, ref)]
    moves = [m.__dict__ for m in state.ref_moves()]
    return {"model": state.name, "ref": ref, "as_of": as_of, "commits": entries, "ref_moves": moves}


def ref_table(state: ModelState, as_of: str | None = None) -> dict[str, Any]:
    return {
        "model": state.name,
        "as_of": as_of,
        "default_branch": state.default_branch,
        "branches": dict(sorted(state.branches.items())),
        "aliases": dict(sorted(state.aliases.items())),
        "seq": state.seq,
        "last_hash": state.last_hash,
    }


def show(state: ModelState, ref: str) -> dict[str, Any]:
    return commit_json(state, refs.resolve(state, ref))


def diff(state: ModelState, a: str, b: str) -> dict[str, Any]:
    d = refs.diff(state, a, b)
    return {
        "a": plain_commit(d.a),
        "b": plain_commit(d.b),
        "artifact_changed": d.artifact_changed,
        "params": [c.__dict__ for c in d.params],
        "metrics": [c.__dict__ for c in d.metrics],
        "signature": signature_changes(d.a, d.b),
    }


def resolve(state: ModelState, ref: str) -> dict[str, Any]:
    commit = state.commits[refs.resolve(state, ref)]
    return {
        "model": state.name,
        "ref": ref,
        "commit": commit.id,
        "artifact_sha256": commit.artifact_sha256,
    }


def digest(
    models: Mapping[str, ModelState], offsets: Mapping[int, int], voided: int
) -> dict[str, Any]:
    return {
        "digest": state_digest(models),
        "models": len(models),
        "offsets": {str(p): o for p, o in sorted(offsets.items())},
        "void_events": voided,
    }


# -- the security chain and the writer-key rings ---------------------------------------
def tokens(security: SecurityState | None, now_ms: int) -> dict[str, Any]:
    """Every token issued, oldest first, without its hash (the hash is kept, never shown)."""
    issued = sorted(
        security.tokens.values() if security else [], key=lambda t: (t.issued_at, t.token_id)
    )
    return {
        "tokens": [
            {
                "token_id": t.token_id,
                "actor": t.actor,
                "role": t.role,
                "expires_at": t.expires_at,
                "issued_at": t.issued_at,
                "issued_by": t.issued_by,
                "revoked_at": t.revoked_at,
                "revoked_by": t.revoked_by,
                "reason": t.reason,
                "state": t.status(now_ms),
            }
            for t in issued
        ]
    }


def protections(security: SecurityState | None) -> dict[str, Any]:
    rules = sorted(security.rules.items()) if security else []
    return {
        "rules": [
            {"kind": kind, "model": model, "name": name, "role": role}
            for (kind, model, name), role in rules
        ]
    }


def writer_keys(rings: Mapping[int, KeyRing], partitions: int, instance_key: str) -> dict[str, Any]:
    """Each events partition's writer keys (none yet: its events are legacy, unsigned)."""
    out: dict[str, Any] = {}
    for p in range(partitions):
        ring = rings.get(p)
        out[str(p)] = {
            "active": dict(sorted(ring.active.items())) if ring else {},
            "retired": dict(sorted(ring.retired.items())) if ring else {},
        }
    return {"instance_key": instance_key, "partitions": out}
