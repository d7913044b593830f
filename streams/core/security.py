"""Who may do what: tokens, roles and protected refs (pure: no clock, no crypto).

Who may *ask* for a change lives here; who *wrote* the log (writer-key rings and
signatures) is :mod:`streams.core.signatures`. The ``~security`` chain in
``modelvc.events`` holds tokens (only their hashes) and protection rules, folded
by the same rules as a model (gap-free ``seq``, ``prev_hash``). A token proves an
``Identity`` (``authenticate``); ``required_role`` and ``authorize`` decide whether
that identity may have a command decided. The rules that both ``decide`` (which
refuses a command) and the fold (which voids an event) apply live here, once:
``rule_problem``, ``token_problem``, ``text_problem``.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from streams.core import refs
from streams.core.commands import (
    AbortRollout,
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
    ResumeRollout,
    Rollback,
    StartRollout,
    StartShadow,
    StopShadow,
)
from streams.core.errors import Forbidden, Unauthenticated
from streams.core.hashing import SHA256_HEX, sha256_hex
from streams.core.state import ModelState, Receipt

ROLES = ("reader", "committer", "releaser", "admin")  # each includes the ones before it
PROTECTING_ROLES = ROLES[1:]  # a rule asking for "reader" would protect nothing
REF_KINDS = ("branch", "alias")
SECURITY_STREAM = "~security"
TOKEN = re.compile(r"mvc_([0-9a-f]{16})_[A-Za-z0-9_-]{43}", re.ASCII)  # fullmatch; 1 = token id
TOKEN_FORMAT = "mvc_<16 hex>_<43 characters>"  # TOKEN, as people read it in messages
TOKEN_ID = re.compile(r"[0-9a-f]{16}", re.ASCII)
ACTOR = refs.NAME  # actors are names, by the model-name rule
# The stream writer's own name in the events it signs; no token may carry it, so a
# person can never be mistaken for the writer in the audit trail.
WRITER_ACTOR = "modelvc-writer"
MAX_TEXT = 1024  # reasons and notes: free text from strangers, bounded
MAX_TOKEN_LENGTH = 256  # longer than any token: refused before it is parsed


def at_least(role: str, needed: str) -> bool:
    """Whether ``role`` includes ``needed`` (an unknown role includes nothing)."""
    if role not in ROLES or needed not in ROLES:
        return False
    return ROLES.index(role) >= ROLES.index(needed)


def highest(roles: tuple[str, ...]) -> str:
    """The highest of ``roles`` (all known)."""
    return max(roles, key=ROLES.index)


@dataclass(frozen=True)
class Identity:
    actor: str
    role: str
    token_id: str
    expires_at: int  # 0 = never


@dataclass(frozen=True)
class Token:
    token_id: str
    actor: str
    role: str
    token_sha256: str
    expires_at: int
    issued_at: int
    issued_by: str
    revoked_at: int | None = None
    revoked_by: str | None = None
    reason: str = ""

    def status(self, now_ms: int) -> str:
        """ "active", "revoked" or "expired" at ``now_ms``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at != 0 and now_ms >= self.expires_at:
            return "expired"
        return "active"


@dataclass(frozen=True)
class SecurityState:
    seq: int
    last_hash: str
    tokens: Mapping[str, Token]
    rules: Mapping[tuple[str, str, str], str]  # (kind, model or "", name) -> least role
    receipts: Mapping[str, Receipt]


# -- authentication --------------------------------------------------------------------


def token_id_of(token: str) -> str | None:
    """The id a well-formed token carries, or None (the token is never echoed)."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        return None
    match = TOKEN.fullmatch(token)
    return None if match is None else match.group(1)


def token_sha256(token: str) -> str:
    """What the log keeps of a token: the sha256 hex of its whole text."""
    return sha256_hex(token.encode("ascii"))


def authenticate(security: SecurityState | None, token: str, now_ms: int) -> Identity:
    """The identity ``token`` proves at ``now_ms``; raises Unauthenticated (never echoing it)."""
    token_id = token_id_of(token)
    if token_id is None:
        raise Unauthenticated(
            f"the bearer token is not a modelvc token ({TOKEN_FORMAT}); "
            "send the token an admin gave you, or ask for one: "
            "modelvc token create <actor> --role <role>"
        )
    found = None if security is None else security.tokens.get(token_id)
    # The id only selects the record; the whole text must hash to it (compared in
    # constant time), so knowing an id from the log proves nothing.
    if found is None or not hmac.compare_digest(found.token_sha256, token_sha256(token)):
        raise Unauthenticated(
            f"token {token_id} is not known here; ask an admin for a token: "
            "modelvc token create <actor> --role <role>",
            token_id=token_id,
        )
    status = found.status(now_ms)
    if status != "active":
        how = (
            f"was revoked ({found.reason or 'no reason given'})"
            if status == "revoked"
            else ("has expired")
        )
        raise Unauthenticated(
            f"token {token_id} of {found.actor!r} {how}; ask an admin for a new one: "
            f"modelvc token create {found.actor} --role {found.role}",
            token_id=token_id,
        )
    return Identity(found.actor, found.role, found.token_id, found.expires_at)


# -- authorization -----------------------------------------------------------------------


def protection(security: SecurityState | None, model: str, kind: str, name: str) -> str | None:
    """The highest role a rule asks to move ``kind`` ``name`` of ``model`` (None: unprotected)."""
    if security is None or not security.rules:
        return None
    asked = tuple(
        role
        for role in (
            security.rules.get((kind, model, name)),
            security.rules.get((kind, "", name)),
        )
        if role is not None
    )
    return highest(asked) if asked else None


def _ref_role(
    security: SecurityState | None, model: str, kind: str, name: str, doing: str
) -> tuple[str, str]:
    role = protection(security, model, kind, name)
    if role is None or not at_least(role, "committer"):
        return "committer", doing
    return role, f"{doing} ({kind} {name!r} is protected: {role} and above)"


def required_role(
    security: SecurityState | None, state: ModelState | None, command: Command
) -> tuple[str, str]:
    """The least role ``command`` needs, and why in words (for the 403)."""
    body, model = command.body, command.model
    if isinstance(body, CreateModel):
        return "committer", f"creating model {model!r}"
    if isinstance(body, MakeCommit):
        return _ref_role(
            security, model, "branch", body.branch, f"committing to {model}/{body.branch}"
        )
    if isinstance(body, Merge):
        return _ref_role(
            security, model, "branch", body.target, f"merging into {model}/{body.target}"
        )
    if isinstance(body, Rollback):
        return _ref_role(
            security, model, "branch", body.branch, f"rolling back {model}/{body.branch}"
        )
    if isinstance(body, MoveAlias):
        return _ref_role(security, model, "alias", body.alias, f"moving alias {model}/{body.alias}")
    # Shadows and rollouts (issue 12) change what an alias serves: its protection applies.
    if isinstance(body, StartShadow | StopShadow | StartRollout):
        doing = "rolling out" if isinstance(body, StartRollout) else "shadowing"
        return _ref_role(
            security, model, "alias", body.alias, f"{doing} alias {model}/{body.alias}"
        )
    if isinstance(
        body, AdvanceRollout | AbortRollout | PauseRollout | ResumeRollout | PromoteRollout
    ):
        rollout = None if state is None else state.rollouts.get(body.rollout_id)
        if rollout is None:
            return "committer", f"rollout {body.rollout_id} of {model}"  # decide refuses it
        return _ref_role(
            security, model, "alias", rollout.alias, f"rollout of alias {model}/{rollout.alias}"
        )
    if isinstance(body, CreateBranch):
        return _ref_role(
            security, model, "branch", body.branch, f"creating branch {model}/{body.branch}"
        )
    if isinstance(body, DeleteBranch):
        if protection(security, model, "branch", body.branch) is not None:
            return "admin", f"deleting protected branch {model}/{body.branch}"
        return "committer", f"deleting branch {model}/{body.branch}"
    if isinstance(body, IssueToken):
        # Nobody hands out more than they hold (admin is the top today; the rule stays
        # right if a role is ever added above it).
        asked = (body.role,) if body.role in ROLES else ()
        return highest(("admin", *asked)), f"issuing a {body.role} token"
    # Every other command (token revocation, protection rules, writer keys) and any
    # body this table does not know: admin, so an unknown command fails closed.
    return "admin", f"{type(body).__name__} on {model}"


def authorize(security: SecurityState | None, state: ModelState | None, command: Command) -> None:
    """Raise Forbidden unless the command's authenticated role covers what it needs."""
    needed, why = required_role(security, state, command)
    if not at_least(command.role, needed):
        actor = command.actor
        raise Forbidden(
            f"{why} needs role {needed}, and {actor!r} has {command.role or 'no role'}; "
            f"ask an admin for a token with that role: modelvc token create {actor} "
            f"--role {needed}",
            needed=needed,
            role=command.role,
            actor=actor,
        )


# -- rules shared by decide (refuse) and the fold (void) --------------------------------


def text_problem(field: str, text: str) -> str | None:
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        return f"the {field} must be text of at most {MAX_TEXT} characters"
    return None


def rule_problem(kind: str, model: str, name: str, role: str) -> str | None:
    """Why (kind, model, name) -> role is not a protection rule; None when it is."""
    if kind not in REF_KINDS:
        return f"protection kind {refs.shown(kind)}: use branch or alias"
    problem = refs.name_problem(kind, name)
    if problem is not None:
        return problem
    if model != "":
        problem = refs.name_problem("model", model)
        if problem is not None:
            return problem
    if role not in PROTECTING_ROLES:
        return f"protection role {refs.shown(role)}: use one of {', '.join(PROTECTING_ROLES)}"
    return None


def token_problem(
    tokens: Mapping[str, Token], token_id: str, actor: str, role: str, digest: str, expires: int
) -> str | None:
    """Why a token record cannot be issued on top of ``tokens``; None when it can."""
    if not isinstance(token_id, str) or not TOKEN_ID.fullmatch(token_id):
        return f"token id {refs.shown(str(token_id))} is not 16 lowercase hex characters"
    if token_id in tokens:
        # Ids are never reused, not even a revoked one's: a log reader could not
        # tell which record a token later presented belongs to.
        return f"token id {token_id} is already used"
    if not isinstance(actor, str) or not ACTOR.fullmatch(actor):
        return refs.name_problem("actor", actor if isinstance(actor, str) else repr(actor))
    if actor == WRITER_ACTOR:
        return (
            f"the actor {WRITER_ACTOR} is reserved for the stream writer; "
            "issue the token to another name (modelvc token create NAME --role ROLE)"
        )
    if role not in ROLES:
        return f"token role {refs.shown(str(role))}: use one of {', '.join(ROLES)}"
    if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
        return "token_sha256 is not a sha256 hex string"
    if not isinstance(expires, int) or isinstance(expires, bool) or expires < 0:
        return "expires_at must be milliseconds since the epoch, or 0 for never"
    return None
