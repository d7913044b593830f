"""Where the artifacts are (MODELVC_ARTIFACTS): a directory, or ``s3://bucket/prefix``.

:func:`parse_location` and :func:`endpoint_problem` are pure (settings validate with
them; no boto3 import); :func:`open_store` builds the store, importing boto3 only for a
bucket, and :func:`open_checked_store` also reaches it once (a process's startup).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from streams.artifacts.local import LocalStore
from streams.artifacts.store import ArtifactStore

MAX_PREFIX = 512
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,100}")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)
FORMS = "a directory (/var/lib/modelvc/artifacts) or s3://bucket/prefix"
# Where an S3-compatible store answers (MinIO, Ceph, moto): a scheme, a host and maybe a
# port, nothing else (no credentials in a URL, no path to smuggle a key prefix through).
S3_ENDPOINT = re.compile(
    r"https?://(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])"
    r"(?::(?P<port>[0-9]{1,5}))?/?"
)
USERINFO = re.compile(r"//[^/?#]*@")  # the user:secret@ a URL may carry


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or segments joined by "/", no leading or trailing slash

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_location(text: str) -> Path | S3Location:
    """A directory, or the bucket and prefix of ``s3://bucket[/prefix]``; ValueError saying
    the accepted forms for anything else."""
    match = _SCHEME.fullmatch(text)
    if match is None:
        # "s3:/bucket" or "s3:bucket" is a mistyped bucket, not a directory named "s3:".
        if not text or "\0" in text or text[:3].lower() == "s3:":
            raise ValueError(f"{text[:80]!r} is not a place for artifacts: give {FORMS}")
        return Path(text)
    scheme, rest = match.groups()
    if scheme != "s3":
        raise ValueError(f"{scheme[:20]}:// is not a supported artifact store: give {FORMS}")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(
            f"{bucket[:80]!r} is not an S3 bucket name (3-63 of a-z, 0-9, '.', '-', starting and "
            f"ending with a letter or digit): give {FORMS}"
        )
    prefix = prefix.rstrip("/")
    if len(prefix) > MAX_PREFIX:
        raise ValueError(f"the prefix of s3://{bucket}/ is over {MAX_PREFIX} characters")
    for segment in prefix.split("/") if prefix else []:
        if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise ValueError(
                f"{segment[:80]!r} in s3://{bucket}/… is not a prefix segment (1-100 of A-Z, a-z, "
                f"0-9, '.', '_', '-'; not '.' or '..'): give {FORMS}"
            )
    return S3Location(bucket, prefix)


def endpoint_problem(url: str, setting: str = "MODELVC_S3_ENDPOINT") -> str | None:
    """What is wrong with an S3 endpoint URL that ``setting`` gave, or None.

    The message never repeats credentials written into the URL (``user:secret@``).
    """
    endpoint = S3_ENDPOINT.fullmatch(url)
    if endpoint is not None and 1 <= int(endpoint["port"] or 443) <= 65535:
        return None
    shown = USERINFO.sub("//…@", url[:200])[:80]
    return (
        f"{setting}={shown!r} is not an endpoint URL: set it to http(s)://host[:port], e.g. "
        "http://127.0.0.1:9000 for a local MinIO (credentials go in AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, never in the URL), or unset it for AWS"
    )


def open_store(text: str, s3_endpoint: str | None = None) -> ArtifactStore:
    """The store ``text`` (MODELVC_ARTIFACTS) names; ``s3_endpoint`` (MODELVC_S3_ENDPOINT)
    for an S3-compatible server that is not AWS."""
    where = parse_location(text)
    if isinstance(where, Path):
        return LocalStore(where)
    from streams.artifacts.s3 import S3Store  # boto3 only for a bucket

    return S3Store.from_location(where.bucket, where.prefix, s3_endpoint)


def open_checked_store(text: str, s3_endpoint: str | None, *, writable: bool) -> ArtifactStore:
    """:func:`open_store`, then reached once (:meth:`ArtifactStore.check`): a process's
    startup fails here, saying what to fix, rather than at its first upload or load.
    ``writable`` for a process that writes (the streams app)."""
    store = open_store(text, s3_endpoint)
    store.check(writable=writable)
    return store
