"""decide(state, command) -> events: the only place commands become facts.

Pure: no clock, no random ids, no I/O. The same command against the same
state yields byte-identical events, which makes retries and replays safe.

The system chains (``~security``, ``~keys.P``; see :mod:`streams.core.security`
and :mod:`streams.core.signatures`) are decided here too, by the same envelope
rules. Authorization is not: the writer calls ``security.authorize`` first.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from streams.core import model_signature, refs, security, signatures
from streams.core.commands import (
    AbortRollout,
    AddWriterKey,
    AdvanceRollout,
    Command,
    CreateBranch,
    CreateModel,
    DeleteBranch,
    IssueToken,
    MakeCommit,
    Merge,
    MoveAlias,
    PauseRollout,
    PromoteRollout,
    ProtectRef,
    ResumeRollout,
    RetireWriterKey,
    RevokeToken,
    Rollback,
    StartRollout,
    StartShadow,
    StopShadow,
    UnprotectRef,
    command_digest,
)
from streams.core.errors import (
    BranchExists,
    CommandIdReused,
    EmptyBranch,
    Hint,
    HintCode,
    InvalidCommand,
    MergeConflict,
    ModelExists,
    NotAnAncestor,
    NothingToDo,
    ProtectedBranch,
    RolloutActive,
    RolloutMoved,
    SignatureChangeRefused,
    StaleHead,
    UnknownRef,
    UnknownRollout,
)
from streams.core.events import (
    AliasMoved,
    BranchCreated,
    BranchDeleted,
    Commit,
    Committed,
    Merged,
    ModelCreated,
    ModelEvent,
    Payload,
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
from streams.core.hashing import GENESIS_HASH, SHA256_HEX, canonical, commit_id
from streams.core.model_signature import ModelSignature
from streams.core.rollout import RUNNING, Rollout, active_rollout, rollout_id
from streams.core.security import SecurityState
from streams.core.signatures import KeyRing
from streams.core.state import ModelState, Receipt

if TYPE_CHECKING:
    from streams.core.fold import Fold

STRATEGIES = ("theirs", "ours")
# A commit's signature travels in its command and its event, and a Kafka message holds
# 1 MiB: this leaves room for the rest of either (the API bounds its bodies at 256 KiB).
MAX_SIGNATURE_BYTES = 192 * 1024
# Features a refused alias move names in its message (the body carries all of them).
SHOWN_FEATURES = 10


def _check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
        raise InvalidCommand(
            f"artifact digest {digest!r} is not a sha256 hex string; upload the file "
            "first (POST /v1/artifacts) and use the digest it returns",
            field="artifact_sha256",
        )
    return digest


def _check_reference(digest: str | None) -> str | None:
    if digest is not None and (not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest)):
        raise InvalidCommand(
            f"reference digest {digest!r:.80} is not a sha256 hex string; upload the "
            "reference first (POST /v1/references, or modelvc commit FILE --reference "
            "SAMPLE.csv) and use the digest it returns",
            field="reference_sha256",
        )
    return digest


def _check_metrics(metrics: Mapping[str, float]) -> Mapping[str, float]:
    for key, value in metrics.items():
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            raise InvalidCommand(
                f"metric {key}={value!r} is not a finite number", field="metrics", key=key
            )
    return {k: float(v) for k, v in metrics.items()}


def _make_commit(
    command: Command,
    parents: tuple[str, ...],
    artifact: str,
    params: Mapping[str, str],
    metrics: Mapping[str, float],
    message: str,
    signature: ModelSignature | None,
    reference_sha256: str | None = None,
) -> Commit:
    fields: dict[str, Any] = {
        "parents": parents,
        "artifact_sha256": artifact,
        "params": dict(params),
        "metrics": dict(metrics),
        "message": message,
        "author": command.actor,
        "at": command.at,
    }
    plain = None if signature is None else _check_signature(signature).plain()
    reference = _check_reference(reference_sha256)
    return Commit(
        id=commit_id(**fields, signature=plain, reference_sha256=reference),
        **fields,
        signature=signature,
        reference_sha256=reference,
    )


def _check_signature(signature: ModelSignature) -> ModelSignature:
    size = len(canonical(signature.plain()))
    if size > MAX_SIGNATURE_BYTES:
        raise InvalidCommand(
            f"the model's signature ({len(signature.inputs)} inputs) takes {size:,} bytes, "
            f"over the {MAX_SIGNATURE_BYTES:,} a commit records; train it with shorter "
            "feature names (LightGBM's feature_name) and commit that file",
            field="signature",
        )
    return signature


def _branch_head(state: ModelState, branch: str, *, to_write: bool = False) -> str | None:
    """Head of ``branch``; ``to_write`` when the command adds to it (commit, merge into)."""
    if branch not in state.branches:
        # Creating the branch is the next step for a command that writes to it,
        # and only when it could be created; otherwise, pick an existing one.
        if to_write and refs.name_problem("branch", branch) is None and branch not in state.aliases:
            advice = "create it first"
            hint = Hint(HintCode.CREATE_BRANCH, {"model": state.name, "branch": branch})
        else:
            advice = "list its branches to pick one"
            hint = refs.list_refs(state)
        raise UnknownRef(
            f"model {state.name!r} has no branch {refs.shown(branch)}; {advice}",
            ref=branch,
            hint=hint,
        )
    return state.branches[branch]


def _check_free_name(state: ModelState, kind: str, name: str) -> None:
    refs.check_name(kind, name)
    if kind == "alias" and name in state.branches:
        raise InvalidCommand(f"{name!r} is already a branch; pick another alias name", field=kind)
    if kind == "branch" and name in state.aliases:
        raise InvalidCommand(f"{name!r} is already an alias; pick another branch name", field=kind)


def create_model(state: ModelState | None, command: Command) -> Payload:
    body: CreateModel = command.body  # type: ignore[assignment]
    if state is not None:
        raise ModelExists(f"model {command.model!r} already exists", model=command.model)
    refs.check_name("model", command.model)
    refs.check_name("branch", body.default_branch)
    return ModelCreated(default_branch=body.default_branch)


def make_commit(state: ModelState, command: Command) -> Payload:
    body: MakeCommit = command.body  # type: ignore[assignment]
    head = _branch_head(state, body.branch, to_write=True)
    if body.expect_head is not None:
        expected = (
            None if body.expect_head in ("", "none") else refs.resolve(state, body.expect_head)
        )
        if expected != head:
            raise StaleHead(
                f"branch {body.branch!r} moved: its head is {head}, not {body.expect_head}; "
                "look at the new head, then retry expecting it",
                branch=body.branch,
                current=head,
                hint=Hint(
                    HintCode.RETRY_COMMIT,
                    {"model": state.name, "branch": body.branch, "expect_head": head or "none"},
                ),
            )
    commit = _make_commit(
        command,
        (head,) if head is not None else (),
        _check_digest(body.artifact_sha256),
        body.params,
        _check_metrics(body.metrics),
        body.message,
        body.signature,
        body.reference_sha256,
    )
    if commit.id in state.commits:
        raise InvalidCommand(
            f"an identical commit {commit.id} already exists; change the message or time",
            commit=commit.id,
        )
    return Committed(branch=body.branch, commit=commit)


def create_branch(state: ModelState, command: Command) -> Payload:
    body: CreateBranch = command.body  # type: ignore[assignment]
    _check_free_name(state, "branch", body.branch)
    if body.branch in state.branches:
        raise BranchExists(
            f"branch {body.branch!r} already exists at {state.branches[body.branch]}",
            branch=body.branch,
            current=state.branches[body.branch],
        )
    head = refs.resolve(state, body.from_ref or state.default_branch)
    return BranchCreated(branch=body.branch, head=head)


def delete_branch(state: ModelState, command: Command) -> Payload:
    body: DeleteBranch = command.body  # type: ignore[assignment]
    head = _branch_head(state, body.branch)
    if body.branch == state.default_branch:
        raise ProtectedBranch(
            f"{body.branch!r} is the default branch of {state.name!r} and cannot be deleted",
            branch=body.branch,
        )
    return BranchDeleted(branch=body.branch, head=head)


def merge(state: ModelState, command: Command) -> Payload:
    body: Merge = command.body  # type: ignore[assignment]
    target_head = _branch_head(state, body.target, to_write=True)
    source_head = refs.resolve(state, body.source)
    if target_head is not None and refs.is_ancestor(state, source_head, target_head):
        raise NothingToDo(
            f"{body.target!r} already contains {body.source!r} ({source_head}); nothing to merge",
            head=target_head,
        )
    if target_head is None or refs.is_ancestor(state, target_head, source_head):
        return Merged(body.source, body.target, source_head, target_head, True, None, None)
    if body.strategy is not None and body.strategy not in STRATEGIES:
        raise InvalidCommand(
            f"unknown merge strategy {body.strategy!r}; use one of {', '.join(STRATEGIES)}",
            field="strategy",
        )
    if body.strategy is None and body.artifact_sha256 is None:
        bases = refs.merge_bases(state, target_head, source_head)
        # Two roots share no ancestor; no command makes them, but an old log might.
        named = f"merge base{'s' if len(bases) > 1 else ''} {', '.join(bases) or 'none'}"
        raise MergeConflict(
            f"{body.target!r} and {body.source!r} have diverged ({named}, "
            f"{body.target} at {target_head}, {body.source} at {source_head}); choose the "
            "merged model: keep the target's (strategy ours), take the source's (strategy "
            "theirs), or give a model file",
            merge_base=bases[0] if bases else None,
            merge_bases=bases,
            target_head=target_head,
            source_head=source_head,
            hint=Hint(
                HintCode.MERGE, {"model": state.name, "source": body.source, "into": body.target}
            ),
        )
    ours, theirs = state.commits[target_head], state.commits[source_head]
    picked = theirs if body.strategy == "theirs" else ours
    artifact = (
        _check_digest(body.artifact_sha256) if body.artifact_sha256 else picked.artifact_sha256
    )
    strategy = body.strategy if body.strategy is not None else "artifact"
    # The merge keeps a parent's file: it keeps what that file was recorded with (its
    # signature, and the reference bins of the data it was trained on).
    kept = next((c for c in (picked, ours, theirs) if c.artifact_sha256 == artifact), None)
    signature = body.signature
    if signature is None and kept is not None:
        signature = kept.signature
    reference = body.reference_sha256
    if reference is None and kept is not None:
        reference = kept.reference_sha256
    commit = _make_commit(
        command,
        (target_head, source_head),
        artifact,
        picked.params,
        picked.metrics,
        body.message or f"Merge {body.source} into {body.target} ({strategy})",
        signature,
        reference,
    )
    return Merged(body.source, body.target, source_head, target_head, False, strategy, commit)


def rollback(state: ModelState, command: Command) -> Payload:
    body: Rollback = command.body  # type: ignore[assignment]
    if not body.reason.strip():
        raise InvalidCommand("a rollback needs a reason that is not blank", field="reason")
    head = _branch_head(state, body.branch)
    retry = f"modelvc -M {state.name} rollback {body.branch} --to {_arg(body.to_ref)} --reason WHY"
    _check_expected(state, "branch", body.branch, head, body.expect, retry)
    if head is None:
        raise EmptyBranch(f"branch {body.branch!r} has no commits to roll back", ref=body.branch)
    target = refs.resolve(state, body.to_ref)
    if target == head:
        raise NothingToDo(f"{body.branch!r} is already at {target}", head=target)
    if target not in refs.first_parent_history(state, head):
        raise NotAnAncestor(
            f"{target} is not on the first-parent history of {body.branch!r} (head {head}); "
            f"the log of {body.branch!r} shows the commits it can go back to",
            branch=body.branch,
            current=head,
            hint=Hint(HintCode.SHOW_LOG, {"model": state.name, "ref": body.branch}),
        )
    return RolledBack(body.branch, head, target, body.reason)


def move_alias(state: ModelState, command: Command) -> Payload:
    body: MoveAlias = command.body  # type: ignore[assignment]
    _check_free_name(state, "alias", body.alias)
    current = state.aliases.get(body.alias)
    hint = Hint(
        HintCode.RETRY_ALIAS,
        {"model": state.name, "alias": body.alias, "ref": body.ref, "expect": current or "none"},
    )
    _check_expected(state, "alias", body.alias, current, body.expect, hint=hint)
    target = refs.resolve(state, body.ref)
    if target == current:
        raise NothingToDo(f"alias {body.alias!r} already points at {target}", head=target)
    _check_no_rollout(state, body.alias, "move")
    if current is not None and not body.allow_signature_change:
        retry = f"modelvc -M {state.name} alias set {body.alias} {target[:12]}"
        _check_signature_change(state, body.alias, current, target, retry)
    return AliasMoved(body.alias, current, target, body.allow_signature_change)


def _check_expected(
    state: ModelState,
    kind: str,
    name: str,
    current: str | None,
    expect: str | None,
    retry: str = "",
    hint: Hint | None = None,
) -> None:
    """Compare-and-set: StaleHead (with ``current``) unless the branch or alias ``name``
    points where the caller saw it (``expect``; "none" or "" for nowhere yet)."""
    if expect is None:
        return
    expected = None if expect in ("", "none") else refs.resolve(state, expect)
    if expected == current:
        return
    how = f": {retry} --expect {current or 'none'}" if retry else ""
    raise StaleHead(
        f"{kind} {name!r} points at {current}, not {expect}; "
        f"re-read it and retry expecting where it points now{how}",
        **{kind: name},
        current=current,
        hint=hint or refs.list_refs(state),
    )


def _arg(ref: str) -> str:
    """``ref`` as a shell argument in a message (a placeholder when it is no short text)."""
    return shlex.quote(ref) if len(ref) <= 80 and ref.isprintable() else "REF"


def _check_signature_change(
    state: ModelState, alias: str, current: str, target: str, retry: str
) -> None:
    """Refuse a move whose target needs features the current commit's producers do not send.

    A commit recorded before signatures existed (either side) has none to compare: such a
    move is not checked, as it was not before.
    """
    was, will = state.commits[current].signature, state.commits[target].signature
    if was is None or will is None:
        return
    added = model_signature.required_missing(was, will)
    if not added:
        return
    shown = ", ".join(repr(name) for name in added[:SHOWN_FEATURES])
    if len(added) > SHOWN_FEATURES:
        shown += f" and {len(added) - SHOWN_FEATURES} more"
    raise SignatureChangeRefused(
        f"moving alias {alias} from {current[:12]} to {target[:12]} would require "
        f"feature(s) {shown} that producers for {current[:12]} do not send; publish them "
        f"first, or run: {retry} --allow-signature-change",
        features=added,
        current=current,
        target=target,
    )


# -- shadows and canary rollouts -------------------------------------------------------


def _alias_commit(state: ModelState, alias: str, doing: str) -> str:
    refs.check_name("alias", alias)
    if alias not in state.aliases:
        raise UnknownRef(
            f"model {state.name!r} has no alias {refs.shown(alias)} to {doing}; point it at "
            f"a commit first: modelvc -M {state.name} alias set {alias} REF",
            ref=alias,
            hint=refs.list_refs(state),
        )
    return state.aliases[alias]


def _check_no_rollout(state: ModelState, alias: str, doing: str) -> None:
    rollout = active_rollout(state.rollouts, alias)
    if rollout is not None:
        raise RolloutActive(
            f"alias {alias!r} is in rollout {rollout.id} ({rollout.status}, "
            f"{rollout.percent}% on {rollout.candidate[:12]}); {doing} it once the rollout "
            f"ends: modelvc -M {state.name} rollout abort {rollout.id} --reason ..., or "
            f"modelvc -M {state.name} rollout promote {rollout.id} --reason ...",
            rollout_id=rollout.id,
            alias=alias,
        )


def _reason(reason: object, *, required: bool) -> str:
    _refused(security.text_problem("reason", reason), "reason")  # type: ignore[arg-type]
    assert isinstance(reason, str)
    if required and not reason.strip():
        raise InvalidCommand("give a reason that is not blank (--reason ...)", field="reason")
    return reason


def _manual(command: Command, reason: str) -> str:
    """The evidence of a person's decision: who, and why."""
    evidence: dict[str, object] = {"manual": True, "by": command.actor}
    if reason:
        evidence["reason"] = reason
    return canonical(evidence).decode()


def _evidence(command: Command, evidence: object, reason: str) -> str:
    if evidence == "":
        return _manual(command, reason)
    _refused(refs.evidence_problem(evidence), "evidence")
    assert isinstance(evidence, str)
    return evidence


def start_shadow(state: ModelState, command: Command) -> Payload:
    body: StartShadow = command.body  # type: ignore[assignment]
    serving = _alias_commit(state, body.alias, "shadow")
    candidate = refs.resolve(state, body.candidate_ref)
    if candidate == serving:
        raise InvalidCommand(
            f"alias {body.alias!r} already serves {candidate[:12]}; shadow another commit",
            field="candidate",
        )
    current = state.shadows.get(body.alias)
    if current is not None and current.candidate == candidate:
        raise NothingToDo(f"{candidate[:12]} already shadows alias {body.alias!r}", head=candidate)
    return ShadowStarted(body.alias, candidate)


def stop_shadow(state: ModelState, command: Command) -> Payload:
    body: StopShadow = command.body  # type: ignore[assignment]
    refs.check_name("alias", body.alias)
    current = state.shadows.get(body.alias)
    if current is None:
        raise NothingToDo(
            f"alias {body.alias!r} has no shadow; see the shadows: modelvc -M {state.name} shadow"
        )
    return ShadowStopped(body.alias, current.candidate)


def start_rollout(state: ModelState, command: Command) -> Payload:
    body: StartRollout = command.body  # type: ignore[assignment]
    baseline = _alias_commit(state, body.alias, "roll out")
    retry = f"modelvc -M {state.name} rollout start {body.alias} --to {_arg(body.to_ref)}"
    _check_expected(state, "alias", body.alias, baseline, body.expect, retry)
    candidate = refs.resolve(state, body.to_ref)
    if candidate == baseline:
        raise NothingToDo(
            f"alias {body.alias!r} already serves {candidate[:12]}; roll out another commit",
            head=candidate,
        )
    _refused(refs.policy_problem(body.policy), "policy")
    _check_no_rollout(state, body.alias, "start another rollout of")
    if not body.allow_signature_change:
        retry = f"modelvc -M {state.name} rollout start {body.alias} --to {candidate[:12]}"
        _check_signature_change(state, body.alias, baseline, candidate, retry)
    rid = rollout_id(state.name, command.command_id)
    if rid in state.rollouts:  # 44 bits of a hash: not expected, but never overwrite one
        raise InvalidCommand(
            f"rollout id {rid} is taken; send the command again with another command id",
            field="command_id",
        )
    policy = body.policy
    return RolloutStarted(
        rollout_id=rid,
        alias=body.alias,
        baseline=baseline,
        candidate=candidate,
        steps=tuple(policy.steps),
        min_labels=policy.min_labels,
        max_regression={k: float(v) for k, v in policy.max_regression.items()},
        max_p99_ms=None if policy.max_p99_ms is None else float(policy.max_p99_ms),
        max_dead_letter_rate=None
        if policy.max_dead_letter_rate is None
        else float(policy.max_dead_letter_rate),
        step_timeout_ms=policy.step_timeout_ms,
        allow_signature_change=body.allow_signature_change,
    )


def _rollout(state: ModelState, rid: object) -> Rollout:
    rollout = state.rollouts.get(rid) if isinstance(rid, str) else None
    if rollout is None:
        raise UnknownRollout(
            f"model {state.name!r} has no rollout {refs.shown(str(rid))}; see its rollouts: "
            f"modelvc -M {state.name} rollout status",
            rollout_id=str(rid)[:64],
        )
    return rollout


def _moved(state: ModelState, rollout: Rollout, why: str) -> RolloutMoved:
    return RolloutMoved(
        f"rollout {rollout.id} of alias {rollout.alias!r} {why} (it is {rollout.status} at "
        f"step {rollout.step}, {rollout.percent}%); see it now: "
        f"modelvc -M {state.name} rollout status {rollout.id}",
        rollout_id=rollout.id,
        step=rollout.step,
        status=rollout.status,
        # Where the rollout is now, as every conflict names what it is now.
        current={"step": rollout.step, "status": rollout.status, "percent": rollout.percent},
    )


def _check_step(state: ModelState, rollout: Rollout, expect_step: object) -> None:
    if expect_step is not None and (
        not isinstance(expect_step, int) or isinstance(expect_step, bool)
    ):
        raise InvalidCommand(f"expect_step {expect_step!r:.40} is not a step number", field="step")
    if expect_step is not None and expect_step != rollout.step:
        raise _moved(state, rollout, f"is no longer at step {expect_step}")


def _completion(rollout: Rollout, state: ModelState, evidence: str) -> tuple[Payload, ...]:
    """The rollout's last decision: the candidate takes all traffic and the alias moves."""
    last = len(rollout.policy.steps) - 1
    return (
        RolloutAdvanced(rollout.id, rollout.step, last, 100, True, evidence),
        AliasMoved(
            rollout.alias,
            state.aliases.get(rollout.alias),
            rollout.candidate,
            rollout.allow_signature_change,
        ),
    )


def advance_rollout(state: ModelState, command: Command) -> tuple[Payload, ...]:
    body: AdvanceRollout = command.body  # type: ignore[assignment]
    rollout = _rollout(state, body.rollout_id)
    if rollout.status != RUNNING:
        raise _moved(state, rollout, "is not running")
    _check_step(state, rollout, body.expect_step)
    _refused(refs.evidence_problem(body.evidence), "evidence")
    steps = rollout.policy.steps
    if rollout.step + 1 < len(steps):
        to = rollout.step + 1
        return (RolloutAdvanced(rollout.id, rollout.step, to, steps[to], False, body.evidence),)
    return _completion(rollout, state, body.evidence)


def abort_rollout(state: ModelState, command: Command) -> Payload:
    body: AbortRollout = command.body  # type: ignore[assignment]
    rollout = _rollout(state, body.rollout_id)
    if not rollout.active:
        raise _moved(state, rollout, "has ended")
    _check_step(state, rollout, body.expect_step)
    reason = _reason(body.reason, required=True)
    evidence = _evidence(command, body.evidence, reason)
    return RolloutAborted(rollout.id, rollout.step, reason, evidence)


def pause_rollout(state: ModelState, command: Command) -> Payload:
    body: PauseRollout = command.body  # type: ignore[assignment]
    rollout = _rollout(state, body.rollout_id)
    if rollout.status != RUNNING:
        raise _moved(state, rollout, "is not running")
    return RolloutPaused(rollout.id, _reason(body.reason, required=False))


def resume_rollout(state: ModelState, command: Command) -> Payload:
    body: ResumeRollout = command.body  # type: ignore[assignment]
    rollout = _rollout(state, body.rollout_id)
    if rollout.status == RUNNING:
        raise NothingToDo(f"rollout {rollout.id} is already running")
    if not rollout.active:
        raise _moved(state, rollout, "has ended")
    return RolloutResumed(rollout.id)


def promote_rollout(state: ModelState, command: Command) -> tuple[Payload, ...]:
    body: PromoteRollout = command.body  # type: ignore[assignment]
    rollout = _rollout(state, body.rollout_id)
    if not rollout.active:
        raise _moved(state, rollout, "has ended")
    reason = _reason(body.reason, required=True)
    return _completion(rollout, state, _manual(command, reason))


# -- the security chain ------------------------------------------------------------


def _tokens(state: SecurityState | None) -> Mapping[str, security.Token]:
    return {} if state is None else state.tokens


def _refused(problem: str | None, field: str) -> None:
    if problem is not None:
        raise InvalidCommand(problem, field=field)


def issue_token(state: SecurityState | None, command: Command) -> Payload:
    body: IssueToken = command.body  # type: ignore[assignment]
    _refused(
        security.token_problem(
            _tokens(state), body.token_id, body.actor, body.role, body.token_sha256, body.expires_at
        ),
        "token",
    )
    if body.expires_at != 0 and body.expires_at <= command.at:
        raise InvalidCommand(
            "the token would expire before it is issued; give an expiry in the future "
            f"(modelvc token create {body.actor} --role {body.role} --expires 30d)",
            field="expires_at",
        )
    return TokenIssued(body.token_id, body.actor, body.role, body.token_sha256, body.expires_at)


def revoke_token(state: SecurityState | None, command: Command) -> Payload:
    body: RevokeToken = command.body  # type: ignore[assignment]
    _refused(security.text_problem("reason", body.reason), "reason")
    token = _tokens(state).get(body.token_id)
    if token is None:
        raise InvalidCommand(
            f"there is no token {refs.shown(body.token_id)}; see the token ids: modelvc token list",
            field="token_id",
        )
    if token.revoked_at is not None:
        raise NothingToDo(f"token {body.token_id} is already revoked", token_id=body.token_id)
    if _last_admin(_tokens(state), token, command.at):
        # Only an admin token can issue tokens: without one nobody could administer again.
        raise InvalidCommand(
            f"token {body.token_id} is the last active admin token; issue another admin first "
            "(modelvc token create NAME --role admin), then revoke this one",
            field="token_id",
        )
    return TokenRevoked(body.token_id, body.reason)


def _last_admin(tokens: Mapping[str, security.Token], token: security.Token, now_ms: int) -> bool:
    def admin(t: security.Token) -> bool:
        return t.role == "admin" and t.status(now_ms) == "active"

    return admin(token) and not any(
        admin(t) for t in tokens.values() if t.token_id != token.token_id
    )


def _rules(state: SecurityState | None) -> Mapping[tuple[str, str, str], str]:
    return {} if state is None else state.rules


def _rule_shown(kind: str, model: str, name: str) -> str:
    return f"{kind} {name!r} of {f'model {model!r}' if model else 'every model'}"


def protect_ref(state: SecurityState | None, command: Command) -> Payload:
    body: ProtectRef = command.body  # type: ignore[assignment]
    _refused(security.rule_problem(body.kind, body.model, body.name, body.role), "protection")
    if _rules(state).get((body.kind, body.model, body.name)) == body.role:
        raise NothingToDo(
            f"{_rule_shown(body.kind, body.model, body.name)} is already protected ({body.role})"
        )
    return RefProtected(body.kind, body.model, body.name, body.role)


def unprotect_ref(state: SecurityState | None, command: Command) -> Payload:
    body: UnprotectRef = command.body  # type: ignore[assignment]
    _refused(security.rule_problem(body.kind, body.model, body.name, "admin"), "protection")
    if (body.kind, body.model, body.name) not in _rules(state):
        raise NothingToDo(
            f"{_rule_shown(body.kind, body.model, body.name)} has no protection rule "
            "(a rule for every model is removed without -M)"
        )
    return RefUnprotected(body.kind, body.model, body.name)


# -- a partition's writer-key ring ------------------------------------------------------


def add_writer_key(ring: KeyRing | None, command: Command, signer: str) -> Payload:
    body: AddWriterKey = command.body  # type: ignore[assignment]
    _refused(signatures.public_key_problem(body.public_key), "public_key")
    _refused(security.text_problem("note", body.note), "note")
    key_id = signatures.key_id_of(body.public_key)
    problem = signatures.add_key_problem(ring, key_id, signer)
    if problem is not None and ring is not None and ring.signed and signer not in ring.active:
        problem += (
            "; add this instance's key from an instance whose key is active: "
            "modelvc key add <pub file>"
        )
    _refused(problem, "public_key")
    return WriterKeyAdded(key_id, body.public_key, body.note)


def retire_writer_key(ring: KeyRing | None, command: Command, signer: str) -> Payload:
    body: RetireWriterKey = command.body  # type: ignore[assignment]
    _refused(security.text_problem("reason", body.reason), "reason")
    problem = signatures.retire_key_problem(ring, body.key_id, signer)
    if problem is not None and (ring is None or body.key_id not in ring.active):
        problem += "; see the active keys: modelvc key list"
    _refused(problem, "key_id")
    return WriterKeyRetired(body.key_id, body.reason)


# A decider gives one event's payload, or several that one decision appends together
# (a rollout's completion: RolloutAdvanced, then the AliasMoved it causes).
Decided = Payload | tuple[Payload, ...]
_DECIDERS: dict[type, Callable[[Any, Command], Decided]] = {
    CreateModel: create_model,
    MakeCommit: make_commit,
    CreateBranch: create_branch,
    DeleteBranch: delete_branch,
    Merge: merge,
    Rollback: rollback,
    MoveAlias: move_alias,
    StartShadow: start_shadow,
    StopShadow: stop_shadow,
    StartRollout: start_rollout,
    AdvanceRollout: advance_rollout,
    AbortRollout: abort_rollout,
    PauseRollout: pause_rollout,
    ResumeRollout: resume_rollout,
    PromoteRollout: promote_rollout,
}
_SECURITY_DECIDERS: dict[type, Callable[[Any, Command], Payload]] = {
    IssueToken: issue_token,
    RevokeToken: revoke_token,
    ProtectRef: protect_ref,
    UnprotectRef: unprotect_ref,
}
_KEY_DECIDERS: dict[type, Callable[[Any, Command, str], Payload]] = {
    AddWriterKey: add_writer_key,
    RetireWriterKey: retire_writer_key,
}

State = ModelState | SecurityState | KeyRing


def _check_repeat(command: Command, receipt: Receipt, digest: str) -> None:
    # An empty receipt digest comes from an event older than digests: nothing to
    # compare with, so it keeps the old rule (any reuse is a repeat).
    if receipt.digest and receipt.digest != digest:
        raise CommandIdReused(
            f"command id {command.command_id!r} was already used on model {command.model!r} "
            f"by another request, which became event {receipt.seq} ({receipt.event}); "
            "this request was not applied. Send it with a new command id (the client "
            "makes one when you give none), or repeat the first request exactly to "
            "read its result",
            command_id=command.command_id,
            model=command.model,
            seq=receipt.seq,
            event=receipt.event,
        )


def _wrong_stream(command: Command, takes: str) -> InvalidCommand:
    return InvalidCommand(
        f"{type(command.body).__name__} cannot be sent to {refs.shown(command.model)}, "
        f"which takes {takes}",
        field="model",
    )


def _payload(state: State | None, command: Command, key_id: str) -> Decided:
    body_type, model = type(command.body), command.model
    if model == security.SECURITY_STREAM:
        if body_type not in _SECURITY_DECIDERS:
            raise _wrong_stream(command, "token and protection commands")
        return _SECURITY_DECIDERS[body_type](state, command)
    if signatures.keys_partition(model) is not None:
        if body_type not in _KEY_DECIDERS:
            raise _wrong_stream(command, "writer-key commands")
        return _KEY_DECIDERS[body_type](state, command, key_id)
    if body_type not in _DECIDERS:
        raise _wrong_stream(command, "model commands")
    if state is None and body_type is not CreateModel:
        raise refs.unknown_model(model)
    return _DECIDERS[body_type](state, command)


def decide(state: State | None, command: Command, key_id: str = "") -> tuple[ModelEvent, ...]:
    """Events that ``command`` produces on ``state``; () when it was already applied.

    ``state`` is the command's chain: a model's state, or for the system chains
    the :class:`SecurityState` (``~security``) or the partition's
    :class:`KeyRing` (``~keys.P``). ``key_id`` is the writer key that will sign
    the events: it is stamped on each, so the chain hash covers it.

    The idempotency key is (model, command id): a state holds the receipts of
    its own chain only. A repeat of the same request (same
    :func:`~streams.core.commands.command_digest`) yields (); another request
    under a used key raises :class:`~streams.core.errors.CommandIdReused`.
    Raises a :class:`~streams.core.errors.VersionGraphError` when it is refused.
    """
    digest = command_digest(command)
    if state is not None and command.command_id in state.receipts:
        _check_repeat(command, state.receipts[command.command_id], digest)
        return ()
    decided = _payload(state, command, key_id)
    payloads = decided if isinstance(decided, tuple) else (decided,)
    seq = 0 if state is None else state.seq
    prev_hash = GENESIS_HASH if state is None else state.last_hash
    events: list[ModelEvent] = []
    for payload in payloads:
        if events:
            prev_hash = events[-1].hash()
        seq += 1
        event = ModelEvent(
            model=command.model,
            seq=seq,
            prev_hash=prev_hash,
            command_id=command.command_id,
            actor=command.actor,
            at=command.at,
            payload=payload,
            command_digest=digest,
            key_id=key_id,
        )
        events.append(event)
    return tuple(events)


def decide_on(
    fold: Fold, partition: int, command: Command, key_id: str = ""
) -> tuple[ModelEvent, ...]:
    """:func:`decide` on the chain ``command`` names, as ``fold`` holds it on ``partition``."""
    ring_partition = signatures.keys_partition(command.model)
    if ring_partition is not None and ring_partition != partition:
        raise InvalidCommand(
            f"{command.model} is the key ring of partition {ring_partition}; "
            f"it cannot be written on partition {partition}",
            field="model",
        )
    return decide(fold.chain(command.model, partition), command, key_id)
