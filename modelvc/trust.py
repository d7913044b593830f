"""Whom an auditor believes: pinned or first-used writer keys, and worker keys for predictions.

Split from :mod:`modelvc.audit`, which replays the log and looks up and re-scores
predictions; this module holds the auditor's side of trust, once: which writer key
ids it pins (``--trust-key FILE``, ``--trust-digest KEY_ID``, :func:`trusted_keys`),
which first keys it took on first use when it pinned none (:func:`noting_first_keys`,
:func:`first_use`, reported so they can be pinned next time), which worker public
keys it checks predictions with (``--trust-worker-key FILE`` or the local stack's,
:func:`worker_keys`), and what a prediction's signature says against them
(:func:`check_signature`, a :class:`SignatureFinding`). The rules of a signature
itself live in ``streams.core.signatures`` and ``workers.signing``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.core.audit import Where
from streams.core.hashing import SHA256_HEX
from streams.replay import first_use as first_use  # the replay's, with it
from streams.replay import noting_first_keys as noting_first_keys
from streams.signing import KeyFileError, key_id_of, read_public_key, verify
from workers.signing import BAD_SIGNATURE, UNPINNED, UNSIGNED, WorkerKeys, signature_finding

PREDICTION_VIOLATIONS = (UNSIGNED, BAD_SIGNATURE, UNPINNED)


# -- writer keys: pinned, or trusted on first use -------------------------------------------


def trusted_keys(files: Sequence[Path], digests: Sequence[str]) -> frozenset[str] | None:
    """Writer key ids an auditor pins (``--trust-key FILE``, ``--trust-digest KEY_ID``);
    None when neither is given (trust each ring's first key on first use)."""
    if not files and not digests:
        return None
    ids = {key_id_of(read_public_key(path)) for path in files}
    for digest in digests:
        if not SHA256_HEX.fullmatch(digest.lower()):
            raise ValueError(
                f"--trust-digest {digest[:80]!r} is not a key id (64 hex digits): see "
                "`modelvc key list`, or pass the key itself with --trust-key FILE"
            )
        ids.add(digest.lower())
    return frozenset(ids)


def worker_keys(files: Sequence[Path], home: Path | None = None) -> WorkerKeys:
    """The worker public keys to check predictions with: pinned with ``--trust-worker-key
    FILE``, else those the local stack keeps in ``home/keys`` (found, not pinned)."""
    if files:
        publics = [read_public_key(path) for path in files]
        return WorkerKeys({key_id_of(k): k for k in publics}, pinned=True)
    found: dict[str, str] = {}
    if home is not None:
        for path in sorted((home / "keys").glob("worker-*.pub"))[:1000]:
            try:
                public = read_public_key(path)
            except KeyFileError:
                continue  # unreadable: the predictions it signed are reported unverified
            found[key_id_of(public)] = public
    return WorkerKeys(found)


# -- predictions: worker keys and signatures --------------------------------------------


@dataclass(frozen=True)
class SignatureFinding:
    """A prediction whose signature is missing (when keys were pinned), wrong or unpinned."""

    kind: str  # workers.signing: UNSIGNED, BAD_SIGNATURE, UNPINNED or UNKNOWN_KEY
    prediction_id: str
    key_id: str
    where: Where
    detail: str

    @property
    def violation(self) -> bool:
        return self.kind in PREDICTION_VIOLATIONS

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "prediction_id": self.prediction_id,
            "key_id": self.key_id,
            "topic": self.where.topic,
            "partition": self.where.partition,
            "offset": self.where.offset,
            "detail": self.detail,
        }

    def __str__(self) -> str:
        return f"{self.kind}: prediction {self.prediction_id} at {self.where}: {self.detail}"


def check_signature(
    prediction: tuple[dict[str, Any], Where], keys: WorkerKeys
) -> SignatureFinding | None:
    record, where = prediction
    found = signature_finding(record, keys, verify)
    if found is None:
        return None
    return SignatureFinding(
        found[0], str(record["prediction_id"]), str(record.get("key_id", "")), where, found[1]
    )
