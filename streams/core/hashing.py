"""Canonical encodings and the hashes built on them.

One canonical form (sorted-key, compact, ASCII JSON) is the basis of commit
ids, command digests, the event hash chain and the state digest, so an auditor
can recompute every hash from decoded events with nothing but a JSON library
and sha256.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence

GENESIS_HASH = "0" * 64
SHA256_HEX = re.compile(r"[0-9a-f]{64}")  # use with fullmatch: `$` would admit a final newline


def canonical(value: object) -> bytes:
    """Deterministic bytes for plain data (dicts, lists, str, int, float, bool, None)."""
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
) -> str:
    """Content address of a commit: two commits with equal content share one id."""
    return sha256_hex(
        canonical(
            {
                "parents": list(parents),
                "artifact_sha256": artifact_sha256,
                "params": dict(params),
                "metrics": dict(metrics),
                "message": message,
                "author": author,
                "at": at,
            }
        )
    )
