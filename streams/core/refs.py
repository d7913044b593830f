"""Read-side questions about one model's graph: refs, ancestry, log and diff.

Names and ref expressions come from strangers (HTTP bodies, URL paths, feature
events on the broker), so both are bounded and parsed in one linear pass, and
the rule for what a branch or alias may be called lives here, once: decide,
the fold and the API all ask :func:`name_problem` / :func:`check_name`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import pairwise

from streams.core.errors import (
    AmbiguousRef,
    EmptyBranch,
    Hint,
    HintCode,
    InvalidCommand,
    UnknownModel,
    UnknownRef,
)
from streams.core.events import Commit
from streams.core.hashing import canonical
from streams.core.monitoring import finite_number
from streams.core.rollout import (
    CANDIDATE,
    LOWER_IS_BETTER,
    MAX_STEP_TIMEOUT_MS,
    MAX_STEPS,
    Policy,
    arm,
    routing_key,
)
from streams.core.state import ModelState

# ASCII-only and used with fullmatch: no newline, control, format or bidi
# character can be part of a name (`$` with `.match` used to let "x\n" through).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)
# What a commit id or a prefix of one looks like. A branch or alias spelled like
# this would shadow (or be shadowed by) a commit, so such names are refused;
# case-insensitively, so that `DEADBEEF` cannot pass for a prefix either.
_HEX = re.compile(r"[0-9a-f]{4,64}", re.ASCII)
_HEX_LIKE = re.compile(r"[0-9a-fA-F]{4,64}", re.ASCII)
MIN_PREFIX = 4
# Longest ref expression accepted: a 128-character name plus room for suffixes.
MAX_REF_LENGTH = 256
# A `~N` with more digits than this names more generations than any history has.
_MAX_GENERATION_DIGITS = 9
_NAMED_KINDS = ("branch", "alias")


def shown(text: str, limit: int = 64) -> str:
    """``text`` quoted for a message: escaped by repr, and cut when long."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text):,} characters)"


def name_problem(kind: str, name: str) -> str | None:
    """Why ``name`` cannot name a ``kind`` (model, branch, alias); None when it can."""
    if not NAME.fullmatch(name):
        if any(not ch.isprintable() for ch in name):
            why = "control, format and bidi characters are not allowed"
        else:
            why = "use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        return f"invalid {kind} name {shown(name)}: {why}"
    if kind in _NAMED_KINDS and _HEX_LIKE.fullmatch(name):
        return (
            f"invalid {kind} name {name!r}: 4-64 hex characters read as a commit id; "
            f"add a letter outside a-f or a separator (e.g. '{kind}-{name}')"
        )
    return None


def check_name(kind: str, name: str) -> str:
    problem = name_problem(kind, name)
    if problem is not None:
        raise InvalidCommand(problem, field=kind)
    return name


def unknown_model(name: str) -> UnknownModel:
    """The fault for a model that was never created, by decide and by readers alike."""
    # Creating it is the next step only when the name could be created at all.
    hint = None if name_problem("model", name) else Hint(HintCode.CREATE_MODEL, {"model": name})
    return UnknownModel(
        f"model {shown(name)} does not exist; create it first", model=name, hint=hint
    )


def list_refs(state: ModelState) -> Hint:
    """The hint to read what ``state``'s refs are called, for any ref it does not know."""
    return Hint(HintCode.LIST_REFS, {"model": state.name})


def _resolve_base(state: ModelState, ref: str) -> str:
    # A full commit id comes first: it always means that commit, whatever the
    # names (names shaped like ids are refused, but the order makes it certain).
    if ref in state.commits:
        return ref
    if ref in state.branches:
        head = state.branches[ref]
        if head is None:
            raise EmptyBranch(
                f"branch {ref!r} of model {state.name!r} has no commits yet; commit to it first",
                ref=ref,
                hint=Hint(HintCode.COMMIT, {"model": state.name, "branch": ref}),
            )
        return head
    if ref in state.aliases:
        return state.aliases[ref]
    if _HEX.fullmatch(ref):
        matches = [c for c in state.commits if c.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise AmbiguousRef(
                f"commit prefix {ref!r} matches {len(matches)} commits; give more characters",
                ref=ref,
                candidates=sorted(matches),
            )
    raise UnknownRef(
        f"{shown(ref)} is not a branch, alias or commit of model {state.name!r}; "
        "list its branches and aliases to pick one",
        ref=ref,
        hint=list_refs(state),
    )


def _split_suffixes(ref: str) -> tuple[str, int | None]:
    """(base, generations back) of ``ref``; None generations when beyond any history.

    One right-to-left pass: every character is looked at once, however many
    `^`/`~N` suffixes are stacked (a regex search per suffix was quadratic).
    """
    end = len(ref)
    steps: int | None = 0
    while end > 0:
        if ref[end - 1] == "^":
            end -= 1
            steps = None if steps is None else steps + 1
            continue
        start = end
        while start > 0 and "0" <= ref[start - 1] <= "9":  # ASCII digits only
            start -= 1
        if start == 0 or ref[start - 1] != "~":
            break
        digits = ref[start:end]
        if len(digits) > _MAX_GENERATION_DIGITS:
            steps = None
        elif steps is not None:
            steps += int(digits) if digits else 1
        end = start - 1
    return ref[:end], steps


def resolve(state: ModelState, ref: str) -> str:
    """Commit id that ``ref`` names: full id, branch, alias, unique prefix, with ``~N``/``^``."""
    if len(ref) > MAX_REF_LENGTH:
        raise InvalidCommand(
            f"ref {shown(ref)} is too long: a ref is at most {MAX_REF_LENGTH} characters "
            "(a name, a commit id or prefix, then ~N or ^); write main~40 rather than 40 carets",
            field="ref",
        )
    base, steps = _split_suffixes(ref)
    if not base:
        raise UnknownRef(
            f"ref {shown(ref)} names no branch, alias or commit before its ~/^ suffix; "
            "start it with one of the model's branches, aliases or commit ids",
            ref=ref,
            hint=list_refs(state),
        )
    commit_id = _resolve_base(state, base)
    past_root = UnknownRef(
        f"{shown(ref)} goes back past the first commit of model {state.name!r}; "
        f"the log of {shown(base)} shows how far back it goes",
        ref=ref,
        hint=Hint(HintCode.SHOW_LOG, {"model": state.name, "ref": base}),
    )
    if steps is None or steps >= len(state.commits):
        raise past_root  # more generations than the model has commits
    for _ in range(steps):
        parents = state.commits[commit_id].parents
        if not parents:
            raise past_root
        commit_id = parents[0]
    return commit_id


# What a feature event without a ref is scored by, and what the feature schema is for.
DEFAULT_ALIAS = "production"


def default_ref(state: ModelState) -> str:
    """The ref serving uses when none is named: alias production if set, else the default
    branch (workers score by it; the API's feature schema defaults to it)."""
    return DEFAULT_ALIAS if DEFAULT_ALIAS in state.aliases else state.default_branch


def first_parent_history(state: ModelState, commit_id: str) -> Iterator[str]:
    """``commit_id`` and its first parents, newest first."""
    current: str | None = commit_id
    while current is not None:
        yield current
        parents = state.commits[current].parents
        current = parents[0] if parents else None


def ancestors(commits: Mapping[str, Commit], commit_id: str) -> set[str]:
    """``commit_id`` and everything reachable through any parent."""
    seen = {commit_id}
    todo = [commit_id]
    while todo:
        for parent in commits[todo.pop()].parents:
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def is_ancestor(state: ModelState, older: str, newer: str) -> bool:
    return older in ancestors(state.commits, newer)


def merge_bases(state: ModelState, a: str, b: str) -> list[str]:
    """git's ``merge-base --all a b``: the best common ancestors, newest first.

    A best common ancestor is a common ancestor that is not an ancestor of
    another common ancestor; criss-cross merges leave several. The answer does
    not depend on the order of ``a`` and ``b``, and it is found in time linear
    in the graph: two ancestor walks, then one walk below the common ancestors.
    """
    commits = state.commits
    common = ancestors(commits, a) & ancestors(commits, b)
    # Every ancestor of a common ancestor is itself common, so what is reachable
    # from the parents of the common ancestors is exactly the common ancestors
    # that are not best. Each commit is expanded once, however many reach it.
    below: set[str] = set()
    todo = [parent for cid in common for parent in commits[cid].parents]
    while todo:
        cid = todo.pop()
        if cid not in below:
            below.add(cid)
            todo.extend(commits[cid].parents)
    best = common - below
    if len(best) < 2:
        return list(best)
    # Insertion order is topological (state.py), so reversed it is newest first.
    return [cid for cid in reversed(list(commits)) if cid in best]


def log(state: ModelState, ref: str | None = None) -> list[Commit]:
    """Commits newest first; every commit ever made when ``ref`` is None (nothing is deleted)."""
    ordered = list(state.commits.values())[::-1]
    if ref is None:
        return ordered
    reachable = ancestors(state.commits, resolve(state, ref))
    return [c for c in ordered if c.id in reachable]


def labels(state: ModelState) -> dict[str, list[str]]:
    """Commit id -> the branch and alias names pointing at it (branches first)."""
    out: dict[str, list[str]] = {}
    for branch, head in sorted(state.branches.items()):
        if head is not None:
            out.setdefault(head, []).append(branch)
    for alias, target in sorted(state.aliases.items()):
        out.setdefault(target, []).append(f"@{alias}")
    return out


@dataclass(frozen=True)
class Change:
    key: str
    old: object
    new: object


@dataclass(frozen=True)
class Diff:
    a: Commit
    b: Commit
    artifact_changed: bool
    params: tuple[Change, ...]
    metrics: tuple[Change, ...]


def _changes(old: Mapping[str, object], new: Mapping[str, object]) -> tuple[Change, ...]:
    return tuple(
        Change(k, old.get(k), new.get(k))
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    )


def diff(state: ModelState, ref_a: str, ref_b: str) -> Diff:
    a = state.commits[resolve(state, ref_a)]
    b = state.commits[resolve(state, ref_b)]
    return Diff(
        a=a,
        b=b,
        artifact_changed=a.artifact_sha256 != b.artifact_sha256,
        params=_changes(a.params, b.params),
        metrics=_changes(a.metrics, b.metrics),
    )


# -- shadows and rollouts: serving's routing, and the rules decide, the fold and the API share

# A decision's evidence (windows and figures) travels in its event: bounded well below a
# Kafka message.
MAX_EVIDENCE_BYTES = 32 * 1024
MAX_MIN_LABELS = 10**9
# What rollout.rollout_id makes: "r" and 11 hex digits.
ROLLOUT_ID = re.compile(r"r[0-9a-f]{11}", re.ASCII)


def serving(state: ModelState, ref: str, entity_key: str, event_id: str) -> tuple[str, str, str]:
    """(commit id, rollout id, arm) that scores the feature event ``event_id`` of
    ``entity_key`` for ``ref``.

    ``ref`` resolves as :func:`resolve` does; when it names an alias with a running or
    paused rollout, the rollout's hash of the event's routing key (its entity, or its own
    id when it has none: :func:`streams.core.rollout.routing_key`) picks the candidate or
    the baseline (rollout id and arm then set, else both "").
    """
    rollout = state.active_rollouts.get(ref) if ref in state.aliases else None
    if rollout is None:
        return resolve(state, ref), "", ""
    side = arm(rollout, routing_key(entity_key, event_id))
    return (rollout.candidate if side == CANDIDATE else rollout.baseline), rollout.id, side


def shadow_of(state: ModelState, ref: str) -> str | None:
    """The commit that shadows ``ref`` when it names an alias with a shadow (else None).

    None too when the shadow's candidate is the very commit the alias serves (a rollout
    completed to it, or the alias was moved there): scoring it twice tells nothing."""
    shadow = state.shadows.get(ref)
    if shadow is None or state.aliases.get(ref) == shadow.candidate:
        return None
    return shadow.candidate


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    return finite_number(value) is not None


def _steps_problem(steps: object) -> str | None:
    if not isinstance(steps, tuple | list) or not 1 <= len(steps) <= MAX_STEPS:
        return f"a rollout takes 1 to {MAX_STEPS} steps (--steps 10,50,100)"
    if not all(_is_int(s) and 1 <= s <= 100 for s in steps):
        return f"steps {shown(repr(steps))}: each is a whole percentage from 1 to 100"
    if any(a >= b for a, b in pairwise(steps)):
        return f"steps {list(steps)} must increase strictly (--steps 10,50,100)"
    if steps[-1] != 100:
        return f"steps {list(steps)} must end at 100, where the alias moves (--steps 10,50,100)"
    return None


def policy_problem(policy: object) -> str | None:
    """Why ``policy`` cannot start a rollout (None when it can); the CLI's flags in words.

    :func:`policy_form_problem`, and what a new rollout needs besides: a first step below
    100 (the baseline keeps traffic to compare with) and at least one criterion (else
    every step advances, however bad the candidate)."""
    problem = policy_form_problem(policy)
    if problem is not None or not isinstance(policy, Policy):
        return problem
    if policy.steps[0] == 100:
        return (
            "a first step of 100 leaves the baseline no traffic to compare with: start "
            "below 100, e.g. --steps 10,100, or move the alias at once with "
            "`modelvc alias set ALIAS REF`"
        )
    limits = (policy.max_p99_ms, policy.max_dead_letter_rate)
    if not policy.max_regression and all(limit is None for limit in limits):
        return (
            "a rollout needs at least one criterion to judge the candidate by: "
            f"--max-regression logloss=0.01 (repeatable; {', '.join(sorted(LOWER_IS_BETTER))}"
            "), --max-p99-ms MS or --max-dead-letter-rate RATE"
        )
    return None


def policy_form_problem(policy: object) -> str | None:
    """Why ``policy`` is not a well-formed rollout policy (None when it is): what a
    RolloutStarted already in the log must hold to be folded."""
    if not isinstance(policy, Policy):
        return f"a rollout needs a policy, not {type(policy).__name__}"
    problem = _steps_problem(policy.steps)
    if problem is not None:
        return problem
    if not _is_int(policy.min_labels) or not 0 <= policy.min_labels <= MAX_MIN_LABELS:
        shown_labels = shown(repr(policy.min_labels))
        return f"--min-labels {shown_labels}: a whole number from 0 to {MAX_MIN_LABELS:,}"
    regression = policy.max_regression
    if not isinstance(regression, Mapping):
        return "max_regression must map metric names to the worsening allowed"
    for metric, limit in regression.items():
        if metric not in LOWER_IS_BETTER:
            return (
                f"--max-regression names {shown(str(metric))}; use one of "
                f"{', '.join(sorted(LOWER_IS_BETTER))} (e.g. logloss=0.01)"
            )
        if not _is_finite(limit) or limit < 0:
            return f"--max-regression {metric}={limit!r:.40}: a finite number 0 or more"
    p99 = policy.max_p99_ms
    if p99 is not None and (not _is_finite(p99) or p99 <= 0):
        return f"--max-p99-ms {p99!r:.40}: a finite number of milliseconds above 0"
    rate = policy.max_dead_letter_rate
    if rate is not None and (not _is_finite(rate) or not 0 <= rate <= 1):
        return f"--max-dead-letter-rate {rate!r:.40}: a fraction from 0 to 1"
    timeout = policy.step_timeout_ms
    if not _is_int(timeout) or not 0 <= timeout <= MAX_STEP_TIMEOUT_MS:
        return (
            f"step timeout {timeout!r:.40} ms: from 0 (wait for labels forever) to 30 days "
            "(--step-timeout 10m)"
        )
    return None


def evidence_problem(evidence: object) -> str | None:
    """Why ``evidence`` is not a decision's evidence: a JSON object in canonical form
    (hashing.canonical) of at most MAX_EVIDENCE_BYTES. None when it is."""
    if not isinstance(evidence, str):
        return "evidence must be text"
    if len(evidence) > MAX_EVIDENCE_BYTES:
        return f"evidence of {len(evidence):,} characters; at most {MAX_EVIDENCE_BYTES:,}"
    try:
        parsed = json.loads(evidence)
        exact = isinstance(parsed, dict) and canonical(parsed).decode() == evidence
    except (ValueError, RecursionError):
        exact = False
    if not exact:
        return "evidence must be a JSON object in canonical form (streams.core.hashing.canonical)"
    return None
