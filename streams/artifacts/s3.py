"""The artifact store in an S3-compatible bucket: ``<prefix>/sha256/ab/<digest>``.

The one module that talks to boto3. A put never makes an object visible before its
bytes hashed to its name, and never replaces one:

- small streams are read whole (at most ``threshold`` bytes), checked, then sent with
  ``put_object(IfNoneMatch="*")``;
- larger ones go as a multipart upload, a few parts in flight at once (memory stays at
  ``(workers + 1) × part_size``); the digest is compared before
  ``complete_multipart_upload(IfNoneMatch="*")``, and any failure (a mismatch, a fault,
  KeyboardInterrupt, a cancelled task) aborts the upload, so no part is left behind.
  Uploads a killed process left are aborted by :meth:`S3Store.sweep_uploads`, which the
  first multipart put runs (and by the bucket's lifecycle rule,
  :meth:`S3Store.ensure_bucket`).

A put of an object that exists copies it onto itself (new LastModified, same bytes), so
``artifacts gc`` sees a re-uploaded object as fresh.

Calls are bounded in time by kind: metadata calls (HEAD, list, delete) wait 10 s for an
answer and try 3 times; data transfers wait 60 s; the startup :meth:`S3Store.check` tries
once and waits 5 s, so an endpoint that takes connections and never answers fails a
process's start within seconds.

A conditional write refused because the object exists (412; a 409 conflict after which
it exists) makes put answer False. Every botocore fault is translated here: callers see
ArtifactNotFound, ArtifactCorrupted or ArtifactStoreUnavailable naming the bucket, the
endpoint and what to fix, never a botocore type, and never a credential.
"""

from __future__ import annotations

import builtins  # `list` is also a method of the store
import errno
import hashlib
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, BinaryIO

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from streams.artifacts.location import USERINFO as _USERINFO
from streams.artifacts.location import endpoint_problem
from streams.artifacts.store import (
    HashingReader,
    StoredObject,
    check_digest,
    copy_hashed,
    digest_of_key,
    key_for,
)
from streams.errors import ArtifactNotFound, ArtifactStoreRefused, ArtifactStoreUnavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, LifecycleRuleTypeDef

log = logging.getLogger("modelvc.artifacts")

MiB = 1 << 20
PART_SIZE = 16 * MiB
WORKERS = 4  # parts in flight per put: 200 MiB to moto in ~3.7 s against ~5.6 s one at a time
# Connections a client keeps: the intake's uploads at once (8) × parts in flight, and room
# for the HEADs and reads beside them (a put waiting for a connection only waits).
POOL_CONNECTIONS = 8 * WORKERS + 8
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0  # a part, an object's body, a copy: data moves
METADATA_READ_TIMEOUT_S = 10.0  # HEAD, list, delete, abort: a small answer or none
METADATA_ATTEMPTS = 3
CHECK_TIMEOUT_S = 5.0  # startup: one attempt, fail fast
DEFAULT_REGION = "us-east-1"
# Where boto3 finds an endpoint when MODELVC_S3_ENDPOINT is unset, for messages.
BOTO_ENDPOINT_SETTINGS = (
    "AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL, or endpoint_url in ~/.aws/config)"
)
STALE_UPLOAD_SECONDS = 3600.0  # a multipart upload older than this was left by a killed process

_CREDENTIALS_REFUSED = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "403",
}
_MISSING = {"NoSuchKey", "NotFound", "404"}
_NO_BUCKET = {"NoSuchBucket", "NotFound", "404"}
_NO_UPLOAD = {"NoSuchUpload", "404"}
_EXISTS = {"PreconditionFailed", "412"}  # If-None-Match: the object is there
_CONFLICT = {"ConditionalRequestConflict", "409"}  # a concurrent write to the key, maybe failed


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Store:
    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str,
        *,
        part_size: int = PART_SIZE,
        threshold: int = PART_SIZE,
        workers: int = WORKERS,
        location: str,
        metadata_client: S3Client | None = None,
        check_client: S3Client | None = None,
    ) -> None:
        """``client`` moves data (parts, bodies); ``metadata_client`` (HEAD, list, delete)
        and ``check_client`` (the startup check) answer faster or fail: both default to
        ``client``."""
        if part_size < 5 * MiB:
            raise ValueError("S3 parts other than the last must be at least 5 MiB")
        self.client = client
        self.metadata = metadata_client or client
        self.prober = check_client or client
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self.threshold = threshold
        self.workers = max(1, workers)
        self._location = location
        self._root = f"{prefix}/" if prefix else ""
        self._swept = False

    @classmethod
    def from_location(cls, bucket: str, prefix: str, endpoint: str | None) -> S3Store:
        """A store with a client built as boto3 users expect: credentials from the default
        chain (AWS_* variables, ~/.aws files, AWS_PROFILE), the region from
        AWS_REGION / AWS_DEFAULT_REGION / the config file (else us-east-1), and
        ``endpoint`` (MODELVC_S3_ENDPOINT) for a store that is not AWS."""
        import boto3
        from botocore.config import Config

        where = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        session = boto3.session.Session()
        # boto3 reads AWS_DEFAULT_REGION and the config file, not AWS_REGION (which the
        # AWS CLI and the other SDKs honour).
        region = session.region_name or os.environ.get("AWS_REGION") or DEFAULT_REGION

        def client(read_timeout: float, attempts: int) -> S3Client:
            config = Config(
                connect_timeout=min(CONNECT_TIMEOUT_S, read_timeout),
                read_timeout=read_timeout,
                retries={"total_max_attempts": attempts, "mode": "standard"},
                max_pool_connections=POOL_CONNECTIONS,
                # MinIO, Ceph and most S3-compatible servers expect path-style addresses.
                s3={"addressing_style": "path"} if endpoint else None,
            )
            return session.client("s3", region_name=region, endpoint_url=endpoint, config=config)

        try:
            data = client(READ_TIMEOUT_S, attempts=3)
            metadata = client(METADATA_READ_TIMEOUT_S, METADATA_ATTEMPTS)
            check = client(CHECK_TIMEOUT_S, attempts=1)
        except (BotoCoreError, ValueError) as exc:
            raise ArtifactStoreUnavailable(
                errno.EINVAL,
                f"cannot set up an S3 client for {where} ({type(exc).__name__}): check "
                "AWS_REGION / AWS_DEFAULT_REGION, AWS_PROFILE and MODELVC_S3_ENDPOINT",
            ) from None
        # boto3 also takes an endpoint from the environment or ~/.aws/config when
        # MODELVC_S3_ENDPOINT is unset: the same rule holds whoever set it.
        setting = "MODELVC_S3_ENDPOINT" if endpoint else BOTO_ENDPOINT_SETTINGS
        problem = endpoint_problem(str(data.meta.endpoint_url), setting)
        if problem is not None:
            raise ArtifactStoreUnavailable(errno.EINVAL, problem)
        return cls(
            data, bucket, prefix, location=where, metadata_client=metadata, check_client=check
        )

    @property
    def location(self) -> str:
        return self._location

    def key(self, digest: str) -> str:
        return self._root + key_for(digest)

    # -- the protocol

    def check(self, writable: bool = False) -> None:
        action = "list the store"
        try:
            self.prober.list_objects_v2(Bucket=self.bucket, Prefix=self._root, MaxKeys=1)
            if writable:
                # A write that leaves nothing: an upload begun, then aborted (under tmp/,
                # never an object's key; the lifecycle rule clears it if the abort fails).
                action = "write to the store"
                key = f"{self._root}tmp/probe-{uuid.uuid4().hex}"
                upload = self.prober.create_multipart_upload(Bucket=self.bucket, Key=key)
                self.prober.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload["UploadId"]
                )
        except (BotoCoreError, ClientError) as exc:
            raise self._fault(exc, action) from exc

    def has(self, digest: str) -> bool:
        key = self.key(digest)
        return self._unless_missing(
            f"look up artifact {digest}",
            lambda: self.metadata.head_object(Bucket=self.bucket, Key=key),
        )

    def put(self, stream: BinaryIO, digest: str) -> bool:
        key = self.key(digest)
        if self.has(digest) and self._refresh(key, digest):
            return False
        reader = HashingReader(stream)
        first = reader.read(self.threshold + 1)
        if len(first) <= self.threshold:
            reader.check(digest)
            return self._put_small(key, first, digest)
        return self._put_multipart(key, reader, first, digest)

    def get(self, digest: str, into: BinaryIO) -> int:
        key = self.key(digest)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise ArtifactNotFound(f"no artifact {digest} in {self._where()}") from exc
            raise self._fault(exc, f"read artifact {digest}") from exc
        except BotoCoreError as exc:
            raise self._fault(exc, f"read artifact {digest}") from exc
        try:
            return copy_hashed(body, into, digest, self._where())  # type: ignore[arg-type]
        except BotoCoreError as exc:
            raise self._fault(exc, f"read artifact {digest}") from exc
        finally:
            body.close()

    def list(self) -> Iterator[StoredObject]:
        pages = self.metadata.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._root + "sha256/"
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    digest = digest_of_key(item["Key"][len(self._root) :])
                    if digest is not None:
                        yield StoredObject(digest, item["Size"], item["LastModified"].timestamp())
        except (BotoCoreError, ClientError) as exc:
            raise self._fault(exc, "list the store") from exc

    def delete(self, digest: str) -> None:
        check_digest(digest)
        try:
            self.metadata.delete_object(Bucket=self.bucket, Key=self.key(digest))
        except (BotoCoreError, ClientError) as exc:
            raise self._fault(exc, f"delete artifact {digest}") from exc

    def sweep_uploads(self, older_than_s: float = STALE_UPLOAD_SECONDS) -> int:
        """Abort the multipart uploads under the prefix started more than ``older_than_s``
        ago (a killed process's); how many."""
        cutoff = time.time() - older_than_s
        aborted = 0
        pages = self.metadata.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self._root + "sha256/"
        )
        try:
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"].timestamp() >= cutoff:
                        continue
                    try:
                        self.metadata.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                    except ClientError as exc:
                        if _code(exc) not in _NO_UPLOAD:
                            raise
                        continue  # another instance's sweep got there first
                    aborted += 1
        except (BotoCoreError, ClientError) as exc:
            raise self._fault(exc, "clear unfinished uploads") from exc
        return aborted

    def ensure_bucket(self, abort_incomplete_days: int = 1) -> bool:
        """Create the bucket if it is missing (in the client's region), and make it abort
        multipart uploads under the prefix left unfinished for ``abort_incomplete_days``
        (a lifecycle rule; other rules are kept). Whether the bucket was created; running
        it again changes nothing."""
        created = False
        try:
            try:
                self.metadata.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if _code(exc) not in _NO_BUCKET:
                    raise
                created = self._create_bucket()
            self._abort_incomplete_after(abort_incomplete_days)
        except (BotoCoreError, ClientError) as exc:
            raise self._fault(exc, "create the bucket or set its lifecycle") from exc
        return created

    def _create_bucket(self) -> bool:
        region = self.client.meta.region_name or DEFAULT_REGION
        try:
            if region == DEFAULT_REGION:
                self.client.create_bucket(Bucket=self.bucket)
            else:
                self.client.create_bucket(
                    Bucket=self.bucket,
                    CreateBucketConfiguration={"LocationConstraint": region},  # type: ignore[typeddict-item]
                )
        except ClientError as exc:
            if _code(exc) == "BucketAlreadyOwnedByYou":
                return False  # another process made it meanwhile
            if _code(exc) == "BucketAlreadyExists":
                raise ArtifactStoreUnavailable(
                    errno.EEXIST,
                    f"the bucket name of {self._location} is taken by another account; choose "
                    "another bucket in MODELVC_ARTIFACTS",
                ) from exc
            raise
        return True

    def _abort_incomplete_after(self, days: int) -> None:
        rule_id = f"modelvc-abort-incomplete-{hashlib.sha256(self._root.encode()).hexdigest()[:12]}"
        rule: LifecycleRuleTypeDef = {
            "ID": rule_id,
            "Filter": {"Prefix": self._root},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": days},
        }
        try:
            rules = self.metadata.get_bucket_lifecycle_configuration(Bucket=self.bucket)["Rules"]
        except ClientError as exc:
            if _code(exc) != "NoSuchLifecycleConfiguration":
                raise
            rules = []
        if rule in rules:
            return
        others = [r for r in rules if r.get("ID") != rule_id]
        self.metadata.put_bucket_lifecycle_configuration(
            Bucket=self.bucket,
            LifecycleConfiguration={"Rules": [*others, rule]},  # type: ignore[list-item]
        )

    # -- puts

    def _put_small(self, key: str, data: bytes, digest: str) -> bool:
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType="application/octet-stream",
                IfNoneMatch="*",
            )
        except ClientError as exc:
            return self._lost_race(exc, digest)
        except BotoCoreError as exc:
            raise self._fault(exc, f"store artifact {digest}") from exc
        return True

    def _refresh(self, key: str, digest: str) -> bool:
        """Copy the object onto itself (new LastModified, same bytes): False when it is
        gone meanwhile (``artifacts gc``), so the put stores it again."""
        return self._unless_missing(
            f"refresh artifact {digest}",
            lambda: self.client.copy_object(
                Bucket=self.bucket,
                Key=key,
                CopySource={"Bucket": self.bucket, "Key": key},
                MetadataDirective="REPLACE",
                ContentType="application/octet-stream",
            ),
        )

    def _unless_missing(self, action: str, call: Callable[[], object]) -> bool:
        """Run ``call`` on an object: False when the object is not there, else True;
        other faults translated."""
        try:
            call()
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return False
            raise self._fault(exc, action) from exc
        except BotoCoreError as exc:
            raise self._fault(exc, action) from exc
        return True

    def _lost_race(self, exc: ClientError, digest: str) -> bool:
        """False when a conditional write failed because the object exists; else the fault."""
        code = _code(exc)
        if code in _EXISTS or (code in _CONFLICT and self.has(digest)):
            return False
        if code in _CONFLICT:
            raise ArtifactStoreUnavailable(
                errno.EAGAIN,
                f"another upload of artifact {digest} to {self._where()} was under way and "
                "neither finished; upload the model again",
            ) from exc
        raise self._fault(exc, f"store artifact {digest}") from exc

    def _put_multipart(self, key: str, reader: HashingReader, first: bytes, digest: str) -> bool:
        self._sweep_once()
        try:
            upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ContentType="application/octet-stream"
            )["UploadId"]
        except (BotoCoreError, ClientError) as exc:
            raise self._fault(exc, f"store artifact {digest}") from exc
        try:
            parts = self._send_parts(key, upload_id, reader, first)
            reader.check(digest)
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
            return True
        except BaseException as exc:
            self._abort(key, upload_id)
            if isinstance(exc, ClientError):
                return self._lost_race(exc, digest)
            if isinstance(exc, BotoCoreError):
                raise self._fault(exc, f"store artifact {digest}") from exc
            raise

    def _sweep_once(self) -> None:
        """Sweep on the first multipart put only: readers (workers, ``artifacts ls``) never
        abort anything, and a writer's startup costs no listing."""
        if self._swept:
            return
        self._swept = True
        try:
            self.sweep_uploads()
        except ArtifactStoreUnavailable as exc:
            # The put itself may still work; leftover parts only cost storage.
            log.warning("%s", exc.strerror)

    def _send_parts(
        self, key: str, upload_id: str, reader: HashingReader, first: bytes
    ) -> builtins.list[CompletedPartTypeDef]:
        """Upload the stream's parts, at most ``workers`` in flight; their ETags in order.

        On any failure, waits for the parts in flight (an abort that races a part upload
        may leave that part behind) before raising.
        """
        parts: builtins.list[CompletedPartTypeDef] = []
        flying: deque[Future[CompletedPartTypeDef]] = deque()
        pending = first
        number = 0
        with ThreadPoolExecutor(self.workers, thread_name_prefix="s3-part") as pool:
            try:
                while True:
                    if len(pending) < self.part_size:
                        pending += reader.read(self.part_size - len(pending))
                    if not pending:
                        break
                    part, pending = pending[: self.part_size], pending[self.part_size :]
                    number += 1
                    if len(flying) >= self.workers:
                        parts.append(flying.popleft().result())
                    flying.append(pool.submit(self._send_part, key, upload_id, number, part))
                    del part  # only the thread holds it now: memory stays bounded
                while flying:
                    parts.append(flying.popleft().result())
            except BaseException:
                for future in flying:
                    future.cancel()
                raise
        return parts

    def _send_part(
        self, key: str, upload_id: str, number: int, data: bytes
    ) -> CompletedPartTypeDef:
        answer = self.client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        return {"ETag": answer["ETag"], "PartNumber": number}

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.metadata.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (BotoCoreError, ClientError) as exc:
            # The original failure matters more; sweep_uploads removes these parts later.
            log.warning("could not abort an upload to %s (%s)", self._where(), type(exc).__name__)

    # -- messages

    def _where(self) -> str:
        return f"{self._location} at {self._endpoint()}"

    def _endpoint(self) -> str:
        # from_location refuses credentials in the URL; a client built elsewhere may not.
        return _USERINFO.sub("//", str(self.client.meta.endpoint_url))

    def _fault(self, exc: BotoCoreError | ClientError, action: str) -> ArtifactStoreUnavailable:
        """What went wrong talking to the store, and what to do, for ``action``."""
        where = self._where()
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return ArtifactStoreUnavailable(
                errno.EACCES,
                f"no AWS credentials to {action} in {where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)",
            )
        if isinstance(exc, ReadTimeoutError):
            return ArtifactStoreUnavailable(
                errno.ETIMEDOUT,
                f"{self._endpoint()} took the connection but did not answer in time to "
                f"{action} in {self._location}: check MODELVC_S3_ENDPOINT (is it an S3 API?) "
                "and the server, then retry",
            )
        if isinstance(exc, (ConnectionError, HTTPClientError)):
            return ArtifactStoreUnavailable(
                errno.EHOSTUNREACH,
                f"cannot reach {self._endpoint()} to {action} in {self._location} "
                f"({type(exc).__name__}): check MODELVC_S3_ENDPOINT and the network, then retry",
            )
        if isinstance(exc, BotoCoreError):
            return ArtifactStoreUnavailable(
                errno.EIO,
                f"could not {action} in {where} ({type(exc).__name__}); "
                "check MODELVC_ARTIFACTS and MODELVC_S3_ENDPOINT, then retry",
            )
        code = _code(exc)
        if code in _CREDENTIALS_REFUSED:
            return ArtifactStoreRefused(
                errno.EACCES,
                f"credentials refused by {self._endpoint()} for {self._location} ({code}) "
                f"trying to {action}: fix AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                "AWS_PROFILE), and allow them to list, read and write the bucket",
            )
        if code == "NoSuchBucket":
            return ArtifactStoreUnavailable(
                errno.ENOENT,
                f"the bucket of {where} does not exist: create it (aws s3 mb s3://{self.bucket}) "
                "or fix MODELVC_ARTIFACTS",
            )
        message = str(exc.response.get("Error", {}).get("Message", ""))[:200]
        return ArtifactStoreUnavailable(
            errno.EIO,
            f"{where} answered {code or 'an error'} ({message}) when asked to {action}; "
            "check MODELVC_ARTIFACTS and MODELVC_S3_ENDPOINT, then retry",
        )
