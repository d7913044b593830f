"""The read side's questions, as pure functions over folded models and their history.

No HTTP and no I/O: the API parses a request, asks one of these, and sends
the answer as JSON; the unit tests ask them directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from streams.core import graph, model_signature, refs
from streams.core.errors import InvalidCommand, UnknownModel, UnknownRollout
from streams.core.events import Commit, ModelEvent, plain_commit
from streams.core.evolve import evolve
from streams.core.fold import state_digest
from streams.core.rollout import Policy, Rollout, Shadow
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


def commit_json(
    state: ModelState, commit_id: str, labels: Mapping[str, list[str]] | None = None
) -> dict[str, Any]:
    """``commit_id`` as JSON with the refs naming it. ``labels`` (``refs.labels(state)``)
    is passed by callers answering many commits: computing it costs a pass over every ref."""
    out = plain_commit(state.commits[commit_id])
    names = refs.labels(state) if labels is None else labels
    out["refs"] = list(names.get(commit_id, []))
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
        "format": None if d.format is None else {"old": d.format[0], "new": d.format[1]},
        "graph": [
            {"kind": kind, "name": name, "old": old, "new": new} for kind, name, old, new in d.graph
        ],
    }


def reachable(state: ModelState) -> set[str]:
    """Commits some branch or alias still reaches."""
    found: set[str] = set()
    for head in [*(h for h in state.branches.values() if h), *state.aliases.values()]:
        if head not in found:  # a head already reached brings nothing new: skip its walk
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


# Lane cells a graph answer may hold (~6 bytes each in JSON): a history drawn wider than
# this is asked for one ref at a time.
MAX_GRAPH_CELLS = 2_000_000


def log(
    state: ModelState,
    ref: str | None,
    as_of: str | None = None,
    history: Iterable[ModelEvent] = (),
    with_graph: bool = False,
) -> dict[str, Any]:
    """The commits of ``ref`` (every one when None), the ref moves, and the shadow and
    rollout events, read from ``history`` (the model's events in seq order) only when the
    model ever had one: the reflog keeps moves of refs, which those are not.
    ``with_graph`` adds the lane layout of ``log --graph`` (``graph``)."""
    seen = reachable(state)
    labels = refs.labels(state)  # once: per commit it would cost commits x refs
    entries = [
        commit_json(state, c.id, labels) | {"reachable": c.id in seen} for c in refs.log(state, ref)
    ]
    moves = [m.__dict__ for m in state.ref_moves()]
    drawn = {"graph": graph_json(state.name, entries)} if with_graph else {}
    return {
        "model": state.name,
        "ref": ref,
        "as_of": as_of,
        "commits": entries,
        "ref_moves": moves,
        "traffic_events": traffic_events(state, history),
        # What else serves each commit: `log --graph` labels shadows and canaries.
        "shadows": shadows(state),
        "rollouts": rollouts(state),
        **drawn,
    }


def graph_json(model: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lane layout of ``entries`` (a log's commits) as JSON rows, bounded."""
    try:
        rows = graph.layout(((c["id"], c["parents"]) for c in entries), MAX_GRAPH_CELLS)
    except graph.GraphTooWide:
        raise InvalidCommand(
            f"the graph of {len(entries):,} commits is too wide to send "
            f"(more than {MAX_GRAPH_CELLS:,} lane cells); ask for one "
            f"branch's history (`modelvc -M {model} log --graph main`, ?ref=main&graph=1)",
            field="graph",
        ) from None
    return graph.rows_json(rows)


def ref_table(state: ModelState, as_of: str | None = None) -> dict[str, Any]:
    return {
        "model": state.name,
        "as_of": as_of,
        "default_branch": state.default_branch,
        "created_at": state.created_at,  # the console's first step in time
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


# -- shadows and canary rollouts (issue 12) ---------------------------------------------
# The events that decide a rollout's course, each naming it by ``rollout_id``.
ROLLOUT_EVENTS = frozenset(
    {"RolloutStarted", "RolloutAdvanced", "RolloutAborted", "RolloutPaused", "RolloutResumed"}
)
TRAFFIC_EVENTS = ROLLOUT_EVENTS | {"ShadowStarted", "ShadowStopped"}
_FIRST_TRAFFIC_EVENTS = frozenset({"RolloutStarted", "ShadowStarted"})


def plain_policy(policy: Policy) -> dict[str, Any]:
    return {
        "steps": list(policy.steps),
        "min_labels": policy.min_labels,
        "max_regression": dict(policy.max_regression),
        "max_p99_ms": policy.max_p99_ms,
        "max_dead_letter_rate": policy.max_dead_letter_rate,
        "step_timeout_ms": policy.step_timeout_ms,
    }


def plain_rollout(rollout: Rollout) -> dict[str, Any]:
    """A rollout's plain form (the API's JSON and the projection's stored row)."""
    return {
        "id": rollout.id,
        "alias": rollout.alias,
        "baseline": rollout.baseline,
        "candidate": rollout.candidate,
        "policy": plain_policy(rollout.policy),
        "step": rollout.step,
        "percent": rollout.percent,
        "status": rollout.status,
        "started_at": rollout.started_at,
        "step_started_at": rollout.step_started_at,
        "allow_signature_change": rollout.allow_signature_change,
        "reason": rollout.reason,
    }


def rollout_from_plain(plain: Mapping[str, Any]) -> Rollout:
    """Inverse of :func:`plain_rollout` (``percent`` is derived, so it is not read)."""
    policy = plain["policy"]
    return Rollout(
        id=plain["id"],
        alias=plain["alias"],
        baseline=plain["baseline"],
        candidate=plain["candidate"],
        policy=Policy(
            steps=tuple(policy["steps"]),
            min_labels=policy["min_labels"],
            max_regression=dict(policy["max_regression"]),
            max_p99_ms=policy["max_p99_ms"],
            max_dead_letter_rate=policy["max_dead_letter_rate"],
            step_timeout_ms=policy["step_timeout_ms"],
        ),
        step=plain["step"],
        status=plain["status"],
        started_at=plain["started_at"],
        step_started_at=plain["step_started_at"],
        allow_signature_change=plain["allow_signature_change"],
        reason=plain["reason"],
    )


def plain_shadow(shadow: Shadow) -> dict[str, Any]:
    return {"alias": shadow.alias, "candidate": shadow.candidate, "started_at": shadow.started_at}


def shadow_from_plain(plain: Mapping[str, Any]) -> Shadow:
    return Shadow(plain["alias"], plain["candidate"], plain["started_at"])


def rollouts(state: ModelState) -> list[dict[str, Any]]:
    """Every rollout of the model, ended ones too, in the order they started."""
    return [plain_rollout(r) for r in state.rollouts.values()]


def rollout(state: ModelState, rollout_id: str) -> dict[str, Any]:
    found = state.rollouts.get(rollout_id)
    if found is None:
        raise UnknownRollout(
            f"model {refs.shown(state.name)} has no rollout {refs.shown(rollout_id)}; "
            f"list them with `modelvc -M {state.name} rollout status`",
            model=state.name,
            rollout_id=rollout_id,
        )
    return plain_rollout(found)


def rollout_decisions(events: Iterable[ModelEvent], rollout_id: str) -> list[dict[str, Any]]:
    """Every event of rollout ``rollout_id`` in log order: who decided what, when, and on
    which evidence (parsed back from its canonical JSON)."""
    return [
        _event_row(event, evidence=True)
        for event in events
        if event.type in ROLLOUT_EVENTS and event.payload.rollout_id == rollout_id  # type: ignore[union-attr]
    ]


def _event_row(event: ModelEvent, evidence: bool) -> dict[str, Any]:
    """A shadow or rollout event as plain data: who, when, and its payload's fields."""
    fields = dict(event.payload.__dict__)
    if "steps" in fields:
        fields["steps"] = list(fields["steps"])
    if "max_regression" in fields:
        fields["max_regression"] = dict(fields["max_regression"])
    if "evidence" in fields:
        if evidence:
            fields["evidence"] = _evidence(fields["evidence"])
        else:
            del fields["evidence"]
    return {
        "seq": event.seq,
        "type": event.type,
        "actor": event.actor,
        "at": event.at,
        "command_id": event.command_id,
        **fields,
    }


def _evidence(text: str) -> Any:
    """The evidence as JSON; an empty one is None, and text that is no JSON (a forged event
    can carry anything) is kept as written under ``unparsed``."""
    if not text:
        return None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return {"unparsed": text}


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity: canonical JSON never holds them


def traffic_events(state: ModelState, history: Iterable[ModelEvent]) -> list[dict[str, Any]]:
    """Each shadow and rollout event of ``state``'s model up to its seq, newest first, with
    the alias it concerns; ``history`` is not read at all when the receipts show none
    (each started shadow or rollout left one), so a model without any costs no replay."""
    had = state.rollouts or state.shadows  # a stopped shadow leaves only its receipt
    if not had and not any(r.event in _FIRST_TRAFFIC_EVENTS for r in state.receipts.values()):
        return []
    rows = []
    for event in history:
        if event.seq > state.seq:
            break  # past an as_of cut
        if event.type in TRAFFIC_EVENTS:
            row = _event_row(event, evidence=False)
            if "alias" not in row:
                started = state.rollouts.get(row["rollout_id"])
                row["alias"] = started.alias if started is not None else ""
            rows.append(row)
    return rows[::-1]


def shadows(state: ModelState) -> list[dict[str, Any]]:
    """The shadow of each alias that has one, by alias."""
    return [plain_shadow(s) for _, s in sorted(state.shadows.items())]
