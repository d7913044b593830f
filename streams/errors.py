"""Faults of the streams shell (codec, artifact store, service, client side).

``StreamsError`` is the root; the pure core has its own root,
:class:`streams.core.errors.VersionGraphError`.
"""

from __future__ import annotations


class StreamsError(Exception):
    """Root of every fault the streams shell raises."""


class UndecodableMessage(StreamsError):
    """Raised when bytes are not a valid single-object-encoded record of the expected schema.

    The caller sends the original bytes with this message to the dead-letter topic.
    """


class ArtifactError(StreamsError):
    """Root of artifact-store faults."""


class ArtifactRejected(ArtifactError):
    """Raised when an upload is not a loadable LightGBM text model (pickle, joblib, junk)."""


class ArtifactNotFound(ArtifactError):
    """Raised when no artifact with the requested digest is stored."""


class ArtifactCorrupted(ArtifactError):
    """Raised when stored bytes no longer hash to their digest, or an upload to its claim."""


class TopicMismatch(StreamsError):
    """Raised at start when modelvc.commands and modelvc.events differ in partition count.

    The single-writer rule maps commands partition N to events partition N.
    """
