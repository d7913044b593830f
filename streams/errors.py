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


class ArtifactTooLarge(ArtifactRejected):
    """Raised when an upload or a stored model is above the size limit (HTTP 413)."""


class ArtifactEmpty(ArtifactRejected):
    """Raised when an upload has no bytes at all."""


class ArtifactStoreUnavailable(StreamsError, OSError):
    """Raised when the store cannot do its part: a directory full, read-only or refused
    (HTTP 507), an S3 endpoint unreachable or not answering (HTTP 503).

    An ``OSError`` carrying the original ``errno``, but not an ``ArtifactError``:
    the upload was fine, the operator must free space or fix permissions.
    """


class ArtifactStoreRefused(ArtifactStoreUnavailable):
    """Raised when the store refuses this process's credentials or permissions (an S3 403:
    unknown key, wrong secret, a policy that forbids the action) (HTTP 503).

    Retrying changes nothing until the operator fixes the credentials or the policy.
    """


class SandboxUnavailable(ArtifactError):
    """Raised when the child that loads a model cannot be started; nothing was decided."""


class UploadsBusy(ArtifactError):
    """Raised when the store already takes its limit of uploads at once; retry later (503)."""


class UploadStalled(ArtifactError):
    """Raised when an upload's body sent nothing for too long; it is dropped (408)."""


class ArtifactNotFound(ArtifactError):
    """Raised when no artifact with the requested digest is stored."""


class ArtifactCorrupted(ArtifactError):
    """Raised when stored bytes no longer hash to their digest, or an upload to its claim."""


class TopicMismatch(StreamsError):
    """Raised at start when modelvc.commands and modelvc.events differ in partition count.

    The single-writer rule maps commands partition N to events partition N.
    """


class UnsafeTopic(TopicMismatch):
    """Raised at start when a topic that already exists would break a guarantee of modelvc.

    An events topic that expires or compacts records, too few replicas, a partition
    count unlike the commands topic's: the message names each problem and the command
    that fixes it. Nothing was created, and the topic was not used.
    """


class TopicUnreadable(StreamsError, LookupError):
    """Kafka lists no partition of the topic: it does not exist, or this login may not read it
    (a broker hides topics a principal may not describe)."""


class ReplicationUnavailable(StreamsError):
    """Raised at start when MODELVC_REPLICATION_FACTOR asks for more replicas than brokers.

    Only when a topic must be created: existing topics are checked, not recreated.
    """
