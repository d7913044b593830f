"""Which writer keys vouch for the log, and what they sign (pure: no clock, no crypto).

Who may *ask* for a change is :mod:`streams.core.security`; who *wrote* the log is
this module. Each events partition P carries its writer-key ring in the system
chain ``~keys.P``, living *on* partition P, so whether a key was active when an
event was written is decided by offset order within one partition, the same way
by every reader. The ring's rules (``add_key_problem``, ``retire_key_problem``)
are applied by both ``decide`` (which refuses a command) and the fold (which
voids an event), and live here once, as do the signed messages
(``event_message``, ``command_message``, behind context prefixes) and
``signature_problem``, which every reader asks of every event.

Signatures are checked by a ``Verify`` function the shell injects (the core has
no cryptography); see ``streams.signing``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from streams.core import refs
from streams.core.commands import Command, command_digest
from streams.core.events import ModelEvent, WriterKeyAdded
from streams.core.hashing import SHA256_HEX, canonical, sha256_hex
from streams.core.security import SECURITY_STREAM
from streams.core.state import Receipt

KEYS_STREAM = re.compile(r"~keys\.(0|[1-9][0-9]{0,3})", re.ASCII)  # fullmatch
PUBLIC_KEY = re.compile(r"[0-9a-f]{64}", re.ASCII)  # raw Ed25519, lowercase hex
SIGNATURE_BYTES = 64  # Ed25519; anything longer is refused before it reaches a verifier

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


def keys_stream(partition: int) -> str:
    return f"~keys.{partition}"


def keys_partition(name: str) -> int | None:
    match = KEYS_STREAM.fullmatch(name)
    return None if match is None else int(match.group(1))


def is_system_stream(name: str) -> bool:
    return name == SECURITY_STREAM or keys_partition(name) is not None


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


# -- the ring's rules ---------------------------------------------------------------------


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
