"""Canonical encodings and the hashes built on them.

One canonical form (sorted-key, compact, ASCII JSON) is the basis of commit
ids, command digests, the event hash chain and the state digest. It is Python's
``json.dumps`` output, whose doubles are written as Python's ``repr`` writes them
(``1e-07``, ``1e+16``, ``1.0``), so another JSON library does not in general
reproduce it (nor is it RFC 8785). ``schemas/CANONICAL.md`` states the exact rule
for an auditor in any language, and ``schemas/vectors/canonical.json`` holds test
vectors; these bytes never change, as every hash in a log depends on them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

GENESIS_HASH = "0" * 64
SHA256_HEX = re.compile(r"[0-9a-f]{64}")  # use with fullmatch: `$` would admit a final newline


# json.dumps' own C encoder with json.dumps' arguments, built once: the bytes are the same,
# without building an encoder per call (twice per replayed commit: 40% of the hashing time).
# No cycle check (markers None): plain data has no cycles (one would hit the recursion limit).
_MAKE_ENCODER = getattr(json.encoder, "c_make_encoder", None)  # None without the C module
_ENCODE: Callable[[object, int], Iterable[str]] | None = (
    None
    if _MAKE_ENCODER is None
    else _MAKE_ENCODER(
        None,
        json.JSONEncoder().default,
        json.encoder.encode_basestring_ascii,
        None,
        ":",
        ",",
        True,  # sort_keys
        False,  # skipkeys
        False,  # allow_nan
    )
)


def canonical(value: object) -> bytes:
    """Deterministic bytes for plain data (dicts, lists, str, int, float, bool, None).

    The rule is schemas/CANONICAL.md; NaN and infinities raise ValueError.
    """
    if _ENCODE is not None:
        return "".join(_ENCODE(value, 0)).encode("ascii")
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def commit_id(
    *,
    parents: Sequence[str],
    artifact_sha256: str,
    params: Mapping[str, str],
    metrics: Mapping[str, float],
    message: str,
    author: str,
    at: int,
    signature: Mapping[str, object] | None = None,
    reference_sha256: str | None = None,
) -> str:
    """Content address of a commit: two commits with equal content share one id.

    ``signature`` (the model signature's plain form) and ``reference_sha256`` are hashed
    only when not None, so every commit recorded before they existed keeps its id.
    """
    content: dict[str, object] = {
        "parents": list(parents),
        "artifact_sha256": artifact_sha256,
        "params": dict(params),
        "metrics": dict(metrics),
        "message": message,
        "author": author,
        "at": at,
    }
    if signature is not None:
        content["signature"] = dict(signature)
    if reference_sha256 is not None:
        content["reference_sha256"] = reference_sha256
    return sha256_hex(canonical(content))
