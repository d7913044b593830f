"""Artifacts: the store protocol, its local-disk store, where a store is, and the upload intake.

The S3 store (:mod:`streams.artifacts.s3`) is not re-exported: importing this package
never imports boto3; :func:`open_store` loads it for an ``s3://`` location only.
"""

from streams.artifacts.intake import MAX_MODEL_BYTES, Intake, Received, check_model, sha256_of
from streams.artifacts.local import LocalStore
from streams.artifacts.location import S3Location, open_checked_store, open_store, parse_location
from streams.artifacts.store import ArtifactStore, StoredObject

__all__ = [
    "MAX_MODEL_BYTES",
    "ArtifactStore",
    "Intake",
    "LocalStore",
    "Received",
    "S3Location",
    "StoredObject",
    "check_model",
    "open_checked_store",
    "open_store",
    "parse_location",
    "sha256_of",
]
