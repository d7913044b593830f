"""Signed predictions: the one definition of what a worker signs and how an auditor checks it.

A worker started with ``--sign-predictions`` (``MODELVC_SIGN_PREDICTIONS=1``) signs
every prediction with its own Ed25519 key (``MODELVC_WORKER_KEY``): the record
gains ``key_id`` (sha256 hex of the raw public key) and ``signature`` over

    b"modelvc prediction v1\\x00" + sha256(canonical(the v1 fields, key_id included))

The v1 message covers :data:`SIGNED_FIELDS` (every field of the first signed
record but ``signature``) and each field of :data:`OPTIONAL_FIELDS` (appended later:
entity key, rollout, arm, shadow, runtime) only when it is not its default, so a field a later
schema adds, decoded with its default into an old record, cannot change what an old
signature covers, while a new record's rollout stamps are signed. A record carrying
any other field is refused for signing (a new field joins OPTIONAL_FIELDS, with its
schema default, or needs a new message version).

Pure apart from the injected ``verify`` (``streams.signing.verify``): no keys are
read here, the shell passes public keys in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from streams.core.hashing import canonical
from streams.core.signatures import Verify

PREDICTION_CONTEXT = b"modelvc prediction v1\x00"
SIGNED_FIELDS = (
    "prediction_id",
    "feature_event_id",
    "source_topic",
    "source_partition",
    "source_offset",
    "model",
    "requested_ref",
    "commit_id",
    "artifact_sha256",
    "scores",
    "worker_id",
    "event_time",
    "scored_at",
    "key_id",
)
# Appended after signing existed, with their schema defaults: signed only when set.
OPTIONAL_FIELDS: Mapping[str, object] = {
    "entity_key": "",
    "rollout_id": "",
    "arm": "",
    "shadow": False,
    "runtime": None,  # the library and settings that computed the scores (issue 14)
}
# What an auditor reports about a prediction's signature.
UNSIGNED = "unsigned"  # no signature, while the auditor pinned worker keys
BAD_SIGNATURE = "bad_signature"
UNPINNED = "unpinned"  # signed by a key the auditor did not pin
UNKNOWN_KEY = "unknown_key"  # signed by a key whose public half the auditor was not given


class Signer(Protocol):
    """A private key: ``streams.signing.WriterKey`` is one."""

    @property
    def key_id(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...


def prediction_message(record: Mapping[str, Any]) -> bytes:
    """The bytes a worker signs for ``record``; KeyError names a v1 field it lacks."""
    signed = {name: record[name] for name in SIGNED_FIELDS}
    for name, default in OPTIONAL_FIELDS.items():
        value = record.get(name, default)
        # The type too: 0 == False, and a value that is not the default must be signed.
        if value != default or type(value) is not type(default):
            signed[name] = value
    return PREDICTION_CONTEXT + hashlib.sha256(canonical(signed)).digest()


def sign_prediction(record: dict[str, Any], signer: Signer) -> None:
    """Stamp ``key_id`` and ``signature`` on ``record`` (in place: it is encoded next)."""
    extra = set(record) - set(SIGNED_FIELDS) - set(OPTIONAL_FIELDS) - {"signature"}
    if extra:
        raise ValueError(
            f"prediction fields {sorted(extra)} are not covered by the v1 message: add them to "
            "workers.signing.SIGNED_FIELDS under a new PREDICTION_CONTEXT version"
        )
    record["key_id"] = signer.key_id
    record["signature"] = signer.sign(prediction_message(record))


@dataclass(frozen=True)
class WorkerKeys:
    """The worker public keys an auditor checks predictions with, by key id.

    ``pinned``: the auditor named them (``--trust-worker-key FILE``), so a signature
    by any other key, or no signature at all, is a finding; otherwise the keys were
    found lying about (the local stack's key directory) and prove nothing by themselves.
    """

    keys: Mapping[str, str]  # key id -> public key hex
    pinned: bool = False


def signature_finding(
    record: Mapping[str, Any], keys: WorkerKeys, verify: Verify
) -> tuple[str, str] | None:
    """(kind, detail) when the prediction's signature is missing, wrong or from an
    unpinned key; None when it verifies, or when it is unsigned and nothing was pinned."""
    key_id = str(record.get("key_id") or "")
    signature = record.get("signature") or b""
    if not signature:
        if not keys.pinned:
            return None
        worker = str(record.get("worker_id"))[:100]
        return UNSIGNED, (
            f"no signature, but worker keys were pinned (was worker {worker!r} started "
            "without --sign-predictions?)"
        )
    public = keys.keys.get(key_id)
    if public is None:
        if keys.pinned:
            return UNPINNED, (
                f"signed by worker key {key_id[:64]!r}, which no --trust-worker-key FILE names"
            )
        return UNKNOWN_KEY, (
            f"signed by worker key {key_id[:64]!r}, whose public key was not found: pass it "
            "with --trust-worker-key FILE (the worker's key file with .pub appended)"
        )
    try:
        message = prediction_message(record)
    except KeyError as exc:
        return BAD_SIGNATURE, f"the record lacks the signed field {exc.args[0]!r}"
    if not verify(public, message, bytes(signature)):
        return BAD_SIGNATURE, f"the signature does not verify with worker key {key_id}"
    return None
