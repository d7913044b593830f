"""Faults of the inference workers. ``WorkerError`` is the root.

``Rejected`` and its subclasses describe one bad feature event: the worker
sends it to the dead-letter topic with ``reason`` and carries on.
"""

from __future__ import annotations

from typing import Self


class WorkerError(Exception):
    """Root of every fault the workers raise."""


class Rejected(WorkerError):
    """Raised for a feature event that cannot be scored; ``reason`` labels the metric.

    ``for_model`` and ``for_commit`` say which version refused it, when one did (set
    with :meth:`about`), and ``for_rollout``/``for_arm``/``for_ref`` how the event was
    routed to it (the rollout and arm, the ref requested), as its prediction would have
    said: its dead letter carries them, so the monitor counts it against that version and
    arm. Never a name straight from the event: only one the version log knows (an unknown
    schema's ``model`` is the event's own, and is not used; a ref is set once it resolved)."""

    reason = "rejected"
    for_model = ""
    for_commit = ""
    for_rollout = ""
    for_arm = ""
    for_ref = ""

    def about(
        self,
        model: str,
        commit_id: str = "",
        *,
        rollout_id: str = "",
        arm: str = "",
        ref: str = "",
    ) -> Self:
        self.for_model, self.for_commit = model, commit_id
        self.for_rollout, self.for_arm, self.for_ref = rollout_id, arm, ref
        return self


class Undecodable(Rejected):
    """Raised when the bytes are not a single-object-encoded FeatureEvent."""

    reason = "undecodable"


class SignatureMismatch(Rejected):
    """Raised for a typed feature event whose schema lacks (or mistypes) a feature the
    served version needs: the producer fetches the current schema (``modelvc schema``)."""

    reason = "signature_mismatch"


class UnknownModel(Rejected):
    """Raised when the event names a model the version log has never created."""

    reason = "unknown_model"


class UnknownRef(Rejected):
    """Raised when the event's ref (or the default ref) resolves to no commit."""

    reason = "unknown_ref"


class MissingFeature(Rejected):
    """Raised when a feature the model was trained on is absent or null."""

    reason = "missing_feature"


class NonFiniteValue(Rejected):
    """Raised when a feature value is NaN or infinite."""

    reason = "non_finite_value"


class ModelFailed(Rejected):
    """Raised when the served model fails on an event's row, or gives scores that are NaN or
    infinite: a checked ONNX graph may still fail on some values (an index out of range, a
    shape that changes with its input)."""

    reason = "model_failed"


class WrongType(Rejected):
    """Raised when a feature value is a string or boolean instead of a number."""

    reason = "wrong_type"


class ArtifactUnavailable(Rejected):
    """Raised when no version of the ref could be loaded yet (missing or corrupt artifact)."""

    reason = "artifact_unavailable"


class ArtifactLoadFailed(WorkerError):
    """Raised when an artifact cannot be fetched, fails its digest check, or won't load.

    The previous version keeps serving; the load is retried.
    """
