"""Read-side questions about one model's graph: refs, ancestry, log and diff."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from streams.core.errors import AmbiguousRef, EmptyBranch, InvalidCommand, UnknownRef
from streams.core.events import Commit
from streams.core.state import ModelState

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX = re.compile(r"^[0-9a-f]{4,64}$")
_SUFFIX = re.compile(r"(~\d*|\^)$")
MIN_PREFIX = 4


def check_name(kind: str, name: str) -> str:
    if not NAME.match(name):
        raise InvalidCommand(
            f"invalid {kind} name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            field=kind,
        )
    return name


def _resolve_base(state: ModelState, ref: str) -> str:
    if ref in state.branches:
        head = state.branches[ref]
        if head is None:
            raise EmptyBranch(
                f"branch {ref!r} of model {state.name!r} has no commits yet; "
                f"commit to it first: modelvc commit MODEL FILE --branch {ref} -m MSG",
                ref=ref,
            )
        return head
    if ref in state.aliases:
        return state.aliases[ref]
    if ref in state.commits:
        return ref
    if _HEX.match(ref):
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
        f"{ref!r} is not a branch, alias or commit of model {state.name!r}; "
        f"see `modelvc refs {state.name}`",
        ref=ref,
    )


def resolve(state: ModelState, ref: str) -> str:
    """Commit id that ``ref`` names: branch, alias, full/unique-prefix id, with ``~N``/``^``."""
    steps = 0
    base = ref
    while (m := _SUFFIX.search(base)) is not None:
        token = m.group(1)
        steps += 1 if token in ("^", "~") else int(token[1:])
        base = base[: m.start()]
    if not base:
        raise UnknownRef(f"empty ref {ref!r}", ref=ref)
    commit_id = _resolve_base(state, base)
    for _ in range(steps):
        parents = state.commits[commit_id].parents
        if not parents:
            raise UnknownRef(
                f"{ref!r} goes back past the first commit of model {state.name!r}", ref=ref
            )
        commit_id = parents[0]
    return commit_id


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


def merge_base(state: ModelState, a: str, b: str) -> str | None:
    """Nearest common ancestor of ``a`` and ``b`` (breadth-first from ``b``)."""
    of_a = ancestors(state.commits, a)
    seen = {b}
    queue = deque([b])
    while queue:
        current = queue.popleft()
        if current in of_a:
            return current
        for parent in state.commits[current].parents:
            if parent not in seen:
                seen.add(parent)
                queue.append(parent)
    return None


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
