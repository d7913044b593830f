"""One contract, two stores: every test runs over the local directory and over S3 (moto's
server on a loopback port, IAM enforced), through the ArtifactStore protocol only.

The backend is touched directly only to play someone else: a writer racing a put, a
hand that alters an object, a look for leftovers (temp files, unfinished uploads).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from modelvc.processes import free_port
from streams.artifacts import (
    ArtifactStore,
    Intake,
    LocalStore,
    S3Location,
    open_checked_store,
    open_store,
    parse_location,
)
from streams.artifacts.s3 import S3Store
from streams.artifacts.store import key_for, read
from streams.errors import (
    ArtifactCorrupted,
    ArtifactNotFound,
    ArtifactStoreRefused,
    ArtifactStoreUnavailable,
)
from tests.conftest import train_model
from tests.s3server import BUCKET, REGION, S3Server

MiB = 1 << 20
SMALL_PART = 5 * MiB  # the least S3 takes: multipart paths run on a few MiB
BIG = 200 * MiB


class Generated(io.RawIOBase):
    """``size`` deterministic bytes, made as they are read (never held whole); every MiB
    differs (parts sent out of order would not hash right). Raises ``fault`` once
    ``fail_at`` bytes were read, and calls ``on_first_read`` before the first byte."""

    def __init__(
        self,
        size: int,
        fail_at: int | None = None,
        fault: BaseException | None = None,
        on_first_read: object = None,
    ) -> None:
        self.size = size
        self.pos = 0
        self.fail_at = fail_at
        self.fault = fault
        self.on_first_read = on_first_read
        self._block = hashlib.sha256(str(size).encode()).digest() * (MiB // 32)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.pos == 0 and callable(self.on_first_read):
            self.on_first_read()
        if self.fail_at is not None and self.pos >= self.fail_at:
            assert self.fault is not None
            raise self.fault
        view = memoryview(buffer)
        n = min(len(view), self.size - self.pos)
        if self.fail_at is not None:
            n = min(n, self.fail_at - self.pos)
        done = 0
        while done < n:
            index, offset = divmod(self.pos + done, MiB)
            piece = min(n - done, MiB - offset)
            chunk = index.to_bytes(8, "big") + self._block[8:]
            view[done : done + piece] = chunk[offset : offset + piece]
            done += piece
        self.pos += n
        return n


@functools.cache
def digest_of(size: int) -> str:
    hasher = hashlib.sha256()
    stream = Generated(size)
    while chunk := stream.read(4 * MiB):
        hasher.update(chunk)
    return hasher.hexdigest()


class HashingSink(io.RawIOBase):
    """Takes what ``get`` writes without keeping it."""

    def __init__(self) -> None:
        self.hasher = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.hasher.update(data)
        self.size += len(data)
        return len(data)


class Backend:
    """What lies under a store, reached around it."""

    def __init__(self, store: ArtifactStore, kind: str, s3: S3Server | None) -> None:
        self.store = store
        self.kind = kind
        self.s3 = s3

    def plant(self, digest: str, data: bytes) -> None:
        """Write ``data`` under ``digest``'s key as someone else would."""
        if isinstance(self.store, S3Store):
            assert self.s3 is not None
            self.s3.client().put_object(Bucket=BUCKET, Key=self.store.key(digest), Body=data)
        else:
            assert isinstance(self.store, LocalStore)
            path = self.store.root / key_for(digest)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def raw(self, digest: str) -> bytes:
        if isinstance(self.store, S3Store):
            assert self.s3 is not None
            answer = self.s3.client().get_object(Bucket=BUCKET, Key=self.store.key(digest))
            return answer["Body"].read()
        assert isinstance(self.store, LocalStore)
        return (self.store.root / key_for(digest)).read_bytes()

    def leftovers(self) -> list[str]:
        """Unfinished multipart uploads under the prefix, or temp files in the directory."""
        if isinstance(self.store, S3Store):
            assert self.s3 is not None
            answer = self.s3.client().list_multipart_uploads(
                Bucket=BUCKET, Prefix=self.store.prefix + "/"
            )
            return [u["Key"] for u in answer.get("Uploads", [])]
        assert isinstance(self.store, LocalStore)
        tmp = self.store.root / "tmp"
        return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []

    def parts(self, digest: str) -> int:
        """How many parts the object was sent in (1 for a single put or a file)."""
        if isinstance(self.store, S3Store):
            assert self.s3 is not None
            etag = self.s3.client().head_object(Bucket=BUCKET, Key=self.store.key(digest))["ETag"]
            _, _, count = etag.strip('"').partition("-")
            return int(count) if count else 1
        return 1


def s3_store(s3: S3Server, part_size: int = SMALL_PART, client: Any = None) -> S3Store:
    prefix = f"contract-{uuid.uuid4().hex[:10]}"  # each test its own prefix
    return S3Store(
        client or s3.client(),
        BUCKET,
        prefix,
        part_size=part_size,
        threshold=part_size,
        location=f"s3://{BUCKET}/{prefix}",
    )


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return Backend(LocalStore(tmp_path / "artifacts"), "local", None)
    s3: S3Server = request.getfixturevalue("s3")
    return Backend(s3_store(s3), "s3", s3)


def put_bytes(store: ArtifactStore, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    assert store.put(io.BytesIO(data), digest) is True
    return digest


# Sizes that take the single put and the multipart path of S3 (3 parts).
SIZES = pytest.mark.parametrize("size", [1000, 2 * SMALL_PART + MiB], ids=["small", "multipart"])


@SIZES
def test_put_get_has_list_delete(backend: Backend, size: int) -> None:
    store = backend.store
    digest = digest_of(size)
    assert not store.has(digest)
    assert store.put(Generated(size), digest) is True
    assert store.has(digest)
    sink = HashingSink()
    assert store.get(digest, sink) == size
    assert sink.hasher.hexdigest() == digest
    [listed] = list(store.list())
    assert (listed.digest, listed.size) == (digest, size)
    assert listed.modified > 0
    assert backend.leftovers() == []
    store.delete(digest)
    assert not store.has(digest)
    assert list(store.list()) == []
    store.delete(digest)  # absent is fine


def test_absent_and_malformed_digests_are_not_found(backend: Backend) -> None:
    store = backend.store
    with pytest.raises(ArtifactNotFound):
        store.get("a" * 64, io.BytesIO())
    for bad in ("A" * 64, "../" + "a" * 61, "a" * 63):
        with pytest.raises(ArtifactNotFound):
            store.has(bad)
        with pytest.raises(ArtifactNotFound):
            store.put(io.BytesIO(b"x"), bad)


def test_list_skips_what_is_not_an_object(backend: Backend) -> None:
    store = backend.store
    digest = put_bytes(store, b"model")
    other = hashlib.sha256(b"other").hexdigest()
    # A key whose directory disagrees with its name is not an object of this store.
    wrong_dir = f"sha256/00/{other}"
    if isinstance(store, S3Store):
        assert backend.s3 is not None
        backend.s3.client().put_object(Bucket=BUCKET, Key=f"{store.prefix}/{wrong_dir}", Body=b"x")
    else:
        assert isinstance(store, LocalStore)
        (store.root / wrong_dir).parent.mkdir(parents=True)
        (store.root / wrong_dir).write_bytes(b"x")
    assert [o.digest for o in store.list()] == [digest]


@SIZES
def test_an_existing_object_is_never_overwritten(backend: Backend, size: int) -> None:
    store = backend.store
    digest = digest_of(size)
    backend.plant(digest, b"already there")
    assert store.put(Generated(size), digest) is False
    assert backend.raw(digest) == b"already there"


def test_a_put_of_an_object_there_refreshes_its_time_not_its_bytes(backend: Backend) -> None:
    # `artifacts gc` spares what is younger than --older-than: a model uploaded again
    # must count as new, or gc deletes what a commit is about to reference.
    store = backend.store
    digest = digest_of(1000)
    backend.plant(digest, b"already there")
    [before] = list(store.list())
    time.sleep(1.1)  # S3's LastModified has whole seconds
    assert store.put(Generated(1000), digest) is False
    [after] = list(store.list())
    assert after.modified >= before.modified + 1
    assert backend.raw(digest) == b"already there"


def test_an_upload_of_a_damaged_object_repairs_it(
    backend: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    intake = Intake(backend.store, tmp_path / "staging")
    data = train_model(tmp_path / "m.txt").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    backend.plant(digest, data[: len(data) // 2])  # truncated by an accident
    with caplog.at_level("WARNING", logger="modelvc.artifacts"):
        received = intake.put(data)
    assert (received.digest, received.stored) == (digest, True)
    assert backend.raw(digest) == data
    assert f"artifact {digest} in {backend.store.location} was damaged" in caplog.text
    assert intake.put(data).stored is False  # intact now: left as it is


@SIZES
def test_a_writer_that_wins_the_race_is_not_overwritten(backend: Backend, size: int) -> None:
    # The object appears after the put looked for it (another instance's upload):
    # the conditional write (If-None-Match, a link) refuses to replace it.
    store = backend.store
    digest = digest_of(size)
    stream = Generated(size, on_first_read=lambda: backend.plant(digest, b"the winner"))
    assert store.put(stream, digest) is False
    assert backend.raw(digest) == b"the winner"
    assert backend.leftovers() == []


@SIZES
def test_bytes_that_do_not_match_the_digest_leave_nothing(backend: Backend, size: int) -> None:
    store = backend.store
    claimed = digest_of(size + 1)
    with pytest.raises(ArtifactCorrupted, match=f"hash to {digest_of(size)}"):
        store.put(Generated(size), claimed)
    assert not store.has(claimed)
    assert list(store.list()) == []
    assert backend.leftovers() == []


@SIZES
@pytest.mark.parametrize(
    "fault", [ConnectionResetError("client gone"), KeyboardInterrupt()], ids=["reset", "ctrl-c"]
)
def test_an_interrupted_put_leaves_no_object_and_no_parts(
    backend: Backend, size: int, fault: BaseException
) -> None:
    store = backend.store
    digest = digest_of(size)
    # Multipart: two parts are sent before the stream fails.
    stream = Generated(size, fail_at=size - MiB // 2, fault=fault)
    with pytest.raises(type(fault)):
        store.put(stream, digest)
    assert not store.has(digest)
    assert list(store.list()) == []
    assert backend.leftovers() == []
    # Nothing half-done blocks the next try.
    assert store.put(Generated(size), digest) is True


def test_an_altered_object_is_refused_on_read(backend: Backend) -> None:
    store = backend.store
    digest = put_bytes(store, b"model v1")
    backend.plant(digest, b"model v1, altered")
    with pytest.raises(ArtifactCorrupted, match="altered"):
        store.get(digest, io.BytesIO())
    with pytest.raises(ArtifactCorrupted):
        read(store, digest, 1000)


def test_a_200_mib_model_streams_both_ways_in_parts(
    request: pytest.FixtureRequest, tmp_path: Path, backend: Backend
) -> None:
    # Production part size (16 MiB): the stream is generated, the read hashed as it
    # arrives, so 200 MiB never sit in memory in this test either.
    store = backend.store
    if backend.kind == "s3":
        assert backend.s3 is not None
        store = backend.store = s3_store(backend.s3, part_size=16 * MiB)
    digest = digest_of(BIG)
    assert store.put(Generated(BIG), digest) is True
    if backend.kind == "s3":
        assert backend.parts(digest) == 13  # 200 MiB in 16 MiB parts
    sink = HashingSink()
    assert store.get(digest, sink) == BIG
    assert sink.hasher.hexdigest() == digest
    assert backend.leftovers() == []
    store.delete(digest)


# -- check(): a wrong setting fails at startup, saying what to fix


def test_check_accepts_a_reachable_store(backend: Backend) -> None:
    backend.store.check()
    backend.store.check(writable=True)  # the write probe leaves nothing behind
    assert backend.leftovers() == []
    assert list(backend.store.list()) == []


def read_only_directory(tmp_path: Path) -> Path:
    """A directory this process may read but not write (root ignores modes: /proc/sys)."""
    if os.geteuid() == 0:
        return Path("/proc/sys")
    path = tmp_path / "read-only"
    path.mkdir(mode=0o555)
    return path


def test_open_checked_store_checks_writes_only_for_a_writer(tmp_path: Path) -> None:
    where = read_only_directory(tmp_path)
    assert open_checked_store(str(where), None, writable=False).location == str(where)
    with pytest.raises(ArtifactStoreUnavailable, match=r"not writable.*MODELVC_ARTIFACTS"):
        open_checked_store(str(where), None, writable=True)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ArtifactStoreUnavailable, match="not a directory"):
        open_checked_store(str(tmp_path / "file"), None, writable=False)


def test_list_and_delete_never_reach_outside_the_root_through_a_link(tmp_path: Path) -> None:
    # gc deletes what list() names: a shard directory or an entry linked to elsewhere
    # must name nothing, and a delete must not follow it.
    store = LocalStore(tmp_path / "artifacts")
    kept = put_bytes(store, b"a real object")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    linked_shard = hashlib.sha256(b"outside 1").hexdigest()
    linked_file = hashlib.sha256(b"outside 2").hexdigest()
    (elsewhere / linked_shard).write_bytes(b"outside 1")
    (elsewhere / linked_file).write_bytes(b"outside 2")
    shard = store.root / "sha256" / linked_shard[:2]
    assert not shard.exists()
    shard.symlink_to(elsewhere, target_is_directory=True)
    entry = store.path_for(linked_file)
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.symlink_to(elsewhere / linked_file)
    assert [o.digest for o in store.list()] == [kept]
    store.delete(linked_shard)
    store.delete(linked_file)
    assert sorted(p.name for p in elsewhere.iterdir()) == sorted([linked_shard, linked_file])
    assert entry.is_symlink()  # refused, not removed


def test_local_check_makes_the_directory_and_refuses_a_file(tmp_path: Path) -> None:
    LocalStore(tmp_path / "new" / "artifacts").check()
    assert (tmp_path / "new" / "artifacts").is_dir()
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ArtifactStoreUnavailable, match=r"not a directory.*MODELVC_ARTIFACTS"):
        LocalStore(tmp_path / "file").check()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No AWS setting from the machine running the tests leaks in (files, profile, IMDS)."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name.startswith("MODELVC_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield


def test_open_store_takes_credentials_and_region_as_boto3_does(
    s3: S3Server, aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = s3.env(prefix="from-env")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    store = open_store(env["MODELVC_ARTIFACTS"], env["MODELVC_S3_ENDPOINT"])
    assert isinstance(store, S3Store) and store.location == f"s3://{BUCKET}/from-env"
    assert store.client.meta.region_name == REGION
    store.check()
    digest = put_bytes(store, b"through the default chain")
    assert read(store, digest, 100) == b"through the default chain"


def test_wrong_credentials_are_refused_by_check(
    s3: S3Server, aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-0123456789")
    store = open_store(f"s3://{BUCKET}/models", s3.endpoint)
    with pytest.raises(ArtifactStoreRefused) as caught:
        store.check()
    message = str(caught.value.strerror)
    assert f"credentials refused by {s3.endpoint} for s3://{BUCKET}/models" in message
    assert "InvalidAccessKeyId" in message and "AWS_SECRET_ACCESS_KEY" in message
    assert "not-the-secret" not in message and "AKIAWRONG" not in message
    # A wrong secret for a real key is refused too.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    with pytest.raises(ArtifactStoreRefused, match="SignatureDoesNotMatch"):
        open_store(f"s3://{BUCKET}/models", s3.endpoint).check(writable=True)


def test_a_key_that_may_only_read_passes_a_readers_check_and_fails_a_writers(
    s3: S3Server, aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker needs to read; the streams app must find out at startup that it cannot
    # write, not at its first upload.
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.reader_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.reader_secret)
    assert open_checked_store(f"s3://{BUCKET}/models", s3.endpoint, writable=False)
    with pytest.raises(ArtifactStoreRefused, match=r"AccessDenied.*write to the store"):
        open_checked_store(f"s3://{BUCKET}/models", s3.endpoint, writable=True)
    uploads = s3.client().list_multipart_uploads(Bucket=BUCKET, Prefix="models/")
    assert uploads.get("Uploads", []) == []


def test_missing_credentials_say_which_variables_to_set(s3: S3Server, aws_env: None) -> None:
    with pytest.raises(ArtifactStoreUnavailable, match="set AWS_ACCESS_KEY_ID and AWS_SECRET"):
        open_store(f"s3://{BUCKET}/models", s3.endpoint).check()


def test_a_missing_bucket_says_how_to_create_it(
    s3: S3Server, aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    with pytest.raises(
        ArtifactStoreUnavailable, match=r"create it \(aws s3 mb s3://no-such-bucket\)"
    ):
        open_store("s3://no-such-bucket/models", s3.endpoint).check()


def test_an_unreachable_endpoint_names_the_setting(
    s3: S3Server, aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    nowhere = f"http://127.0.0.1:{free_port()}"
    store = open_store(f"s3://{BUCKET}/models", nowhere)
    with pytest.raises(ArtifactStoreUnavailable, match=f"cannot reach {nowhere}.*MODELVC_S3_END"):
        store.check()


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A loopback port that takes connections and never answers (a hung proxy, a
    firewall that swallows packets after the handshake)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for connection in held:
            connection.close()
        server.close()


def test_an_endpoint_that_never_answers_fails_the_check_within_seconds(
    s3: S3Server, aws_env: None, monkeypatch: pytest.MonkeyPatch, silent_endpoint: str
) -> None:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    store = open_store(f"s3://{BUCKET}/models", silent_endpoint)
    failed: list[BaseException] = []

    def check() -> None:
        try:
            store.check(writable=True)
        except BaseException as exc:
            failed.append(exc)

    # In a thread, so a check that hangs fails this test instead of hanging it.
    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    thread.join(15)
    assert not thread.is_alive(), "check() still waiting after 15 s"
    [fault] = failed
    assert isinstance(fault, ArtifactStoreUnavailable)
    assert re.search(r"did not answer.*MODELVC_S3_ENDPOINT", str(fault.strerror))
    # Lookups and deletes give up sooner than transfers, and the pool takes every part
    # the intake's uploads send at once (8 uploads × 4 parts).
    assert isinstance(store, S3Store)
    assert store.metadata.meta.config.read_timeout <= 10
    assert store.metadata.meta.config.retries["total_max_attempts"] <= 3
    assert store.client.meta.config.max_pool_connections >= 8 * store.workers


def test_the_region_comes_from_aws_region_too(
    aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # boto3 reads AWS_DEFAULT_REGION only; the AWS CLI and the other SDKs take AWS_REGION.
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    store = open_store(f"s3://{BUCKET}/models")
    assert isinstance(store, S3Store) and store.client.meta.region_name == "eu-west-3"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    store = open_store(f"s3://{BUCKET}/models")
    assert isinstance(store, S3Store) and store.client.meta.region_name == "eu-central-1"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    store = open_store(f"s3://{BUCKET}/models")
    assert isinstance(store, S3Store) and store.client.meta.region_name == "us-east-1"


@pytest.mark.parametrize("source", ["AWS_ENDPOINT_URL_S3", "MODELVC_S3_ENDPOINT"])
def test_an_endpoint_from_anywhere_is_held_to_the_rule_and_its_secret_never_shown(
    aws_env: None, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    url = "http://minio:hunter2secret@127.0.0.1:9000/"
    if source == "AWS_ENDPOINT_URL_S3":
        monkeypatch.setenv(source, url)  # boto3 reads it when MODELVC_S3_ENDPOINT is unset
    with pytest.raises(ArtifactStoreUnavailable, match=f"{source}.*not an endpoint URL") as caught:
        open_store(f"s3://{BUCKET}/models", url if source == "MODELVC_S3_ENDPOINT" else None)
    assert "hunter2" not in str(caught.value) and "minio" not in str(caught.value)


def test_uploads_a_killed_process_left_are_swept(s3: S3Server) -> None:
    store = s3_store(s3)
    key = store.key("b" * 64)
    s3.client().create_multipart_upload(Bucket=BUCKET, Key=key)
    assert store.sweep_uploads(older_than_s=0) == 1
    answer = s3.client().list_multipart_uploads(Bucket=BUCKET, Prefix=store.prefix + "/")
    assert answer.get("Uploads", []) == []


def test_a_sweep_goes_on_past_an_upload_another_instance_aborted_first(s3: S3Server) -> None:
    client = s3.client()
    store = s3_store(s3, client=client)
    keys = [store.key(c * 64) for c in "bcd"]
    uploads = [s3.client().create_multipart_upload(Bucket=BUCKET, Key=k) for k in keys]
    other = s3.client()

    def other_instance_first(params: dict[str, Any], **_: Any) -> None:
        # Another instance's sweep aborts the first upload just before this one does.
        if params["Key"] == keys[0]:
            other.abort_multipart_upload(
                Bucket=BUCKET, Key=keys[0], UploadId=uploads[0]["UploadId"]
            )

    client.meta.events.register(
        "provide-client-params.s3.AbortMultipartUpload", other_instance_first
    )
    assert store.sweep_uploads(older_than_s=0) == 2
    answer = other.list_multipart_uploads(Bucket=BUCKET, Prefix=store.prefix + "/")
    assert answer.get("Uploads", []) == []


def test_ensure_bucket_creates_it_in_the_region_and_keeps_other_rules(s3: S3Server) -> None:
    # Outside us-east-1 a bucket is created with its region named (CreateBucketConfiguration).
    bucket = f"ensure-{uuid.uuid4().hex[:10]}"
    eu = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name="eu-west-1",
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
    )
    store = S3Store(eu, bucket, "team/models", location=f"s3://{bucket}/team/models")
    assert store.ensure_bucket(abort_incomplete_days=2) is True
    client = s3.client()
    assert client.get_bucket_location(Bucket=bucket)["LocationConstraint"] == "eu-west-1"
    # The operator's own rules survive a second run (which replaces only its own rule).
    [ours] = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    theirs: Any = {"ID": "keep-me", "Filter": {"Prefix": "logs/"}, "Status": "Enabled"}
    theirs["Expiration"] = {"Days": 30}
    client.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [theirs, ours]}
    )
    assert ours["Filter"] == {"Prefix": "team/models/"}
    assert ours["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 2}
    assert store.ensure_bucket(abort_incomplete_days=3) is False
    rules = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert [r["ID"] for r in rules] == ["keep-me", ours["ID"]]
    assert rules[1]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 3}


# -- where a store is (MODELVC_ARTIFACTS): pure, no store reached


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("s3://modelvc-artifacts", S3Location("modelvc-artifacts", "")),
        ("s3://modelvc-artifacts/", S3Location("modelvc-artifacts", "")),
        ("s3://my.bucket-1/team/models/", S3Location("my.bucket-1", "team/models")),
        ("/var/lib/modelvc/artifacts", Path("/var/lib/modelvc/artifacts")),
        ("relative/dir", Path("relative/dir")),
    ],
)
def test_locations_that_are_accepted(text: str, where: Path | S3Location) -> None:
    assert parse_location(text) == where
    if isinstance(where, S3Location):
        assert str(where) == text.rstrip("/")


@pytest.mark.parametrize(
    "text",
    [
        "gs://bucket/models",
        "file:///tmp/x",
        "s3:/bucket/models",
        "s3://",
        "s3://Bucket/models",
        "s3://ab/models",
        "s3://-bucket/models",
        "s3://bucket..x/models",
        "s3://bucket/../models",
        "s3://bucket/a/./b",
        "s3://bucket/a//b",
        "s3://bucket/models with space",
        "s3://bucket/" + "a" * 101,
        "s3://bucket/" + "/".join(["a" * 99] * 6),
        "",
        "dir\0name",
    ],
)
def test_locations_that_are_refused_say_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"s3://bucket/prefix|over 512"):
        parse_location(text)
