"""Who may do what, and which writer keys vouch for the log (pure: no clock, no crypto).

Two kinds of system chains live in ``modelvc.events`` beside the models, folded
by the same rules (gap-free ``seq``, ``prev_hash``):

- ``~security``: tokens (only their hashes) and protection rules;
- ``~keys.P``: the writer-key ring of events partition P, living *on* partition P,
  so whether a key was active when an event was written is decided by offset
  order within one partition, the same way by every reader.

Signatures are verified by a ``Verify`` function the shell injects (the core has
no cryptography); see ``streams.signing``. The rules that both ``decide`` (which
refuses a command) and the fold (which voids an event) apply live here, once:
``rule_problem``, ``token_problem``, ``add_key_problem``, ``retire_key_problem``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from streams.core import refs
from streams.core.commands import (
    Command,
    CreateBranch,
    CreateModel,
    DeleteBranch,
    IssueToken,
    MakeCommit,
    Merge,
    MoveAlias,
    Rollback,
    command_digest,
)
from streams.core.errors import Forbidden, Unauthenticated
from streams.core.events import ModelEvent, WriterKeyAdded
from streams.core.hashing import SHA256_HEX, canonical, sha256_hex
from streams.core.state import ModelState, Receipt

ROLES = ("reader", "committer", "releaser", "admin")  # each includes the ones before it
PROTECTING_ROLES = ROLES[1:]  # a rule asking for "reader" would protect nothing
REF_KINDS = ("branch", "alias")
SECURITY_STREAM = "~security"
KEYS_STREAM = re.compile(r"~keys\.(0|[1-9][0-9]{0,3})", re.ASCII)  # fullmatch
TOKEN = re.compile(r"mvc_([0-9a-f]{16})_[A-Za-z0-9_-]{43}", re.ASCII)  # fullmatch; 1 = token id
TOKEN_FORMAT = "mvc_<16 hex>_<43 characters>"  # TOKEN, as people read it in messages
TOKEN_ID = re.compile(r"[0-9a-f]{16}", re.ASCII)
ACTOR = refs.NAME  # actors are names, by the model-name rule
# The stream writer's own name in the events it signs; no token may carry it, so a
# person can never be mistaken for the writer in the audit trail.
WRITER_ACTOR = "modelvc-writer"
PUBLIC_KEY = re.compile(r"[0-9a-f]{64}", re.ASCII)  # raw Ed25519, lowercase hex
SIGNATURE_BYTES = 64  # Ed25519; anything longer is refused before it reaches a verifier
MAX_TEXT = 1024  # reasons and notes: free text from strangers, bounded
MAX_TOKEN_LENGTH = 256  # longer than any token: refused before it is parsed

EVENT_CONTEXT = b"modelvc event v1\x00"
COMMAND_CONTEXT = b"modelvc command v1\x00"

# (public key hex, message, signature) -> whether it verifies; never raises.
Verify = Callable[[str, bytes, bytes], bool]

# A signature problem's kind, as the audit names it -> how a void reason starts.
VOID_PREFIX = {
    "unsigned": "unsigned: ",
    "bad_signature": "bad signature: ",
    "untrusted_key": "untrusted key: ",
}


def at_least(role: str, needed: str) -> bool:
    """Whether ``role`` includes ``needed`` (an unknown role includes nothing)."""
    if role not in ROLES or needed not in ROLES:
        return False
    return ROLES.index(role) >= ROLES.index(needed)


def highest(roles: tuple[str, ...]) -> str:
    """The highest of ``roles`` (all known)."""
    return max(roles, key=ROLES.index)


def keys_stream(partition: int) -> str:
    return f"~keys.{partition}"


def keys_partition(name: str) -> int | None:
    match = KEYS_STREAM.fullmatch(name)
    return None if match is None else int(match.group(1))


def is_system_stream(name: str) -> bool:
    return name == SECURITY_STREAM or keys_partition(name) is not None


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


@dataclass(frozen=True)
class KeyRing:
    partition: int
    seq: int
    last_hash: str
    active: Mapping[str, str]  # key id -> public key hex
    retired: Mapping[str, str]
    receipts: Mapping[str, Receipt]

    @property
    def signed(self) -> bool:
        """Whether the partition has had a key: from then on every event must be signed."""
        return bool(self.active) or bool(self.retired)


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


def public_key_problem(public_key: str) -> str | None:
    if not isinstance(public_key, str) or not PUBLIC_KEY.fullmatch(public_key):
        return "a writer public key is 64 lowercase hex characters (a raw Ed25519 key)"
    return None


def shown_key(key_id: str) -> str:
    """A key id for a message: its first 12 hex, or escaped when it is not one."""
    return f"{key_id[:12]}…" if SHA256_HEX.fullmatch(key_id) else refs.shown(key_id, 16)


def key_id_of(public_key: str) -> str:
    """A writer key's id: the sha256 hex of its raw public key bytes."""
    return sha256_hex(bytes.fromhex(public_key))


def _signer(signer: str) -> str:
    return shown_key(signer) if signer else "an unsigned writer"


def add_key_problem(ring: KeyRing | None, key_id: str, signer: str) -> str | None:
    """Why the key ``key_id``, signed by ``signer``, cannot join ``ring``."""
    if ring is None or not ring.signed:
        if signer != key_id:
            # Trust on first use: the first key vouches for itself, or for nobody.
            return (
                f"the first key of a partition must be added by itself (signed by "
                f"{shown_key(key_id)}), not by {_signer(signer)}"
            )
        return None
    if signer not in ring.active:
        return f"the signer {_signer(signer)} is not an active key of partition {ring.partition}"
    if key_id in ring.retired:
        return (
            f"key {shown_key(key_id)} was retired; a retired key never returns, generate a new one"
        )
    if key_id in ring.active:
        return f"key {shown_key(key_id)} is already active"
    return None


def retire_key_problem(ring: KeyRing | None, key_id: str, signer: str) -> str | None:
    """Why ``signer`` cannot retire ``key_id`` from ``ring``."""
    if ring is None or key_id not in ring.active:
        return f"key {shown_key(key_id)} is not an active key of this partition"
    if signer not in ring.active:
        return f"the signer {_signer(signer)} is not an active key of this partition"
    if len(ring.active) == 1:
        return (
            f"key {shown_key(key_id)} is the last active key; nobody could write the partition "
            "after it, so add its successor first (modelvc key add <pub file>)"
        )
    if key_id == signer:
        # A key cannot vouch for its own end: the retirement would be signed by a key
        # that is no longer active once the event applies.
        return (
            f"key {shown_key(key_id)} signs this very event; retire it from an instance with "
            "another active key"
        )
    return None


# -- signatures --------------------------------------------------------------------------


def event_message(event_hash: str) -> bytes:
    return EVENT_CONTEXT + bytes.fromhex(event_hash)


def command_message(command: Command) -> bytes:
    """What an API instance signs of a command: everything the writer acts on.

    ``at`` is covered as well: it is stamped by the API and becomes part of commit
    ids, so a captured command cannot be replayed under another time.
    """
    signed = {
        "command_id": command.command_id,
        "model": command.model,
        "actor": command.actor,
        "role": command.role,
        "at": command.at,
        "digest": command_digest(command),
    }
    return COMMAND_CONTEXT + hashlib.sha256(canonical(signed)).digest()


def signature_problem(
    ring: KeyRing | None,
    event: ModelEvent,
    verify: Verify | None,
    event_hash: str | None = None,
    partition: int | None = None,
) -> tuple[str, str] | None:
    """Why ``event`` is not vouched for by ``ring``: (kind, detail), or None when it is.

    Kind is "unsigned" or "bad_signature". On a partition that has never had a
    key, only unsigned events of user models are legacy history (None): the
    system chains are never legacy, and a signed event was never written before
    signing existed. A self-signed ``WriterKeyAdded`` on its ring is judged by
    the ring's own rule (trust on first use), not here. ``event_hash`` may be
    passed when already computed; a signed partition costs one ``verify`` per event.
    """
    if ring is None or not ring.signed:
        return _unkeyed_problem(event, partition)
    where = f"{refs.shown(event.model)}#{event.seq}"
    if not event.key_id or not event.signature:
        return "unsigned", (
            f"event {where} carries no signature, but partition {ring.partition} is signed"
        )
    public_key = ring.active.get(event.key_id)
    if public_key is None:
        state = "a retired" if event.key_id in ring.retired else "an unknown"
        return "bad_signature", (
            f"event {where} is signed by {state} key {shown_key(event.key_id)} "
            f"of partition {ring.partition}"
        )
    if verify is None:
        return "bad_signature", f"event {where}: no verifier to check its signature"
    message = event_message(event.hash() if event_hash is None else event_hash)
    if len(event.signature) != SIGNATURE_BYTES or not verify(public_key, message, event.signature):
        return "bad_signature", (
            f"event {where}: the signature does not verify with key {shown_key(event.key_id)}"
        )
    return None


def _unkeyed_problem(event: ModelEvent, partition: int | None) -> tuple[str, str] | None:
    """Why ``event`` cannot stand on a partition whose ring has no key (None: legacy)."""
    if not event.key_id and not event.signature:
        if event.model != SECURITY_STREAM:
            return None
        # Otherwise anyone who can write to Kafka could issue themselves an admin token
        # on a partition no writer has signed yet.
        return "unsigned", (
            f"event {SECURITY_STREAM}#{event.seq} carries no signature; the "
            f"{SECURITY_STREAM} chain is signed from its first event on"
        )
    if (
        isinstance(event.payload, WriterKeyAdded)
        and event.key_id == event.payload.key_id
        and keys_partition(event.model) is not None
    ):
        return None  # a first key vouching for itself: the ring's rule decides
    where = "this partition" if partition is None else f"partition {partition}"
    return "bad_signature", (
        f"event {refs.shown(event.model)}#{event.seq} is signed by key "
        f"{shown_key(event.key_id)}, which {where}'s ring does not hold"
    )
