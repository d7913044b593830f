"""Drift references in the artifact store: checked, kept canonical, named by their sha256.

A reference is a commit's training data in per-feature quantile bins
(``streams.core.monitoring.Reference``); the monitor computes each window's PSI against
it. The API takes one from anybody with a committer token, so it is parsed by the core's
bounded reader before anything is stored, and stored in its canonical form: the same
reference uploaded twice, spaced differently, is one object. These run in the API's
store threads (each call is store I/O).
"""

from __future__ import annotations

import hashlib
import io
from typing import Final

from streams.artifacts import ArtifactStore
from streams.core import monitoring
from streams.errors import ArtifactError

MAX_REFERENCE_BYTES: Final = monitoring.MAX_REFERENCE_BYTES  # the API refuses more too


class ReferenceRejected(ArtifactError):
    """The bytes are not a reference the monitor could use (the reason says why)."""


def canonical_reference(data: bytes) -> bytes:
    """``data`` parsed and written back canonical; ReferenceRejected with the reason."""
    try:
        # Written back too: canonical numbers may be longer than the ones sent ("1.0").
        return monitoring.reference_to_json(monitoring.reference_from_json(data))
    except ValueError as exc:
        raise ReferenceRejected(
            f"not a drift reference: {str(exc)[:300]}; `modelvc commit FILE --reference "
            "SAMPLE.csv` makes one from training data"
        ) from None


def put_reference(store: ArtifactStore, data: bytes) -> tuple[str, bool]:
    """Store ``data``'s canonical form; its sha256, and whether it was new."""
    body = canonical_reference(data)
    digest = hashlib.sha256(body).hexdigest()
    return digest, store.put(io.BytesIO(body), digest)


class _Bounded(io.BytesIO):
    """Refuses to hold more than a reference may be: a digest may name a whole model."""

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.tell() + len(data) > MAX_REFERENCE_BYTES:
            raise ReferenceRejected(
                f"the stored object is over {MAX_REFERENCE_BYTES} bytes: not a drift "
                "reference (a model's digest?)"
            )
        return super().write(data)


def get_reference(store: ArtifactStore, digest: str) -> bytes:
    """The stored reference ``digest``, checked again (ArtifactNotFound when absent,
    ReferenceRejected when the object there is no reference: a model's digest, say)."""
    buffer = _Bounded()
    store.get(digest, buffer)  # re-hashed on the way: ArtifactCorrupted if altered
    data = buffer.getvalue()
    canonical_reference(data)
    return data
