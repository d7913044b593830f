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
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelvc.processes import free_port
from streams.artifacts import ArtifactStore, LocalStore, S3Location, open_store, parse_location
from streams.artifacts.s3 import S3Store
from streams.artifacts.store import key_for, read
from streams.errors import ArtifactCorrupted, ArtifactNotFound, ArtifactStoreUnavailable
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


def s3_store(s3: S3Server, part_size: int = SMALL_PART) -> S3Store:
    prefix = f"contract-{uuid.uuid4().hex[:10]}"  # each test its own prefix
    return S3Store(
        s3.client(),
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
    with pytest.raises(ArtifactStoreUnavailable) as caught:
        store.check()
    message = str(caught.value.strerror)
    assert f"credentials refused by {s3.endpoint} for s3://{BUCKET}/models" in message
    assert "InvalidAccessKeyId" in message and "AWS_SECRET_ACCESS_KEY" in message
    assert "not-the-secret" not in message and "AKIAWRONG" not in message
    # A wrong secret for a real key is refused too.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    with pytest.raises(ArtifactStoreUnavailable, match="SignatureDoesNotMatch"):
        open_store(f"s3://{BUCKET}/models", s3.endpoint).check()


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


def test_uploads_a_killed_process_left_are_swept(s3: S3Server) -> None:
    store = s3_store(s3)
    key = store.key("b" * 64)
    s3.client().create_multipart_upload(Bucket=BUCKET, Key=key)
    assert store.sweep_uploads(older_than_s=0) == 1
    answer = s3.client().list_multipart_uploads(Bucket=BUCKET, Prefix=store.prefix + "/")
    assert answer.get("Uploads", []) == []


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
