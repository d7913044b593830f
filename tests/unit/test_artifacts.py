"""The upload intake keeps LightGBM text models by digest, and nothing else.

Over a real local store (the intake is store-agnostic; tests/store runs the store
contract over both stores). Temp files never outlive a failed upload (issue 7,
finding 10).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json
import os
import resource
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.artifacts import MAX_MODEL_BYTES, Intake, LocalStore, check_model, sha256_of
from streams.artifacts.store import read
from streams.errors import (
    ArtifactCorrupted,
    ArtifactEmpty,
    ArtifactNotFound,
    ArtifactRejected,
    ArtifactStoreRefused,
    ArtifactStoreUnavailable,
    ArtifactTooLarge,
    UploadsBusy,
    UploadStalled,
)
from streams.sandbox import Sandbox
from tests.conftest import train_model


def intake_at(root: Path, **limits: Any) -> Intake:
    """An intake over a local store at ``root``, staging where the streams app does."""
    return Intake(LocalStore(root), root / "tmp", **limits)


def stored(intake: Intake, digest: str) -> bytes:
    return read(intake.store, digest, MAX_MODEL_BYTES)


def test_put_is_idempotent_and_reads_verify_the_digest(tmp_path: Path) -> None:
    intake = intake_at(tmp_path / "store")
    data = train_model(tmp_path / "m.txt").read_bytes()
    first = intake.put(data)
    digest = first.digest
    assert digest == sha256_of(data) and first.summary.details["num_features"] == 4
    assert (first.size, first.stored) == (len(data), True)
    again = intake.put(data)
    assert (again.digest, again.stored) == (digest, False)
    assert stored(intake, digest) == data
    (tmp_path / "store" / "sha256" / digest[:2] / digest).write_bytes(data + b"\n")
    with pytest.raises(ArtifactCorrupted):
        stored(intake, digest)


def test_uploading_a_damaged_model_again_repairs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The store held altered bytes under the digest: a put alone answers "already there";
    # the intake reads it back, finds it damaged, and replaces it with the checked upload.
    intake = intake_at(tmp_path / "store")
    data = train_model(tmp_path / "m.txt").read_bytes()
    digest = intake.put(data).digest
    path = intake.store.path_for(digest)  # type: ignore[attr-defined]
    path.write_bytes(data[:-10])
    with caplog.at_level("WARNING", logger="modelvc.artifacts"):
        assert intake.put(data).stored is True
    assert stored(intake, digest) == data
    assert f"artifact {digest} in {tmp_path / 'store'} was damaged" in caplog.text
    path.write_bytes(b"altered")
    received = asyncio.run(intake.receive(chunks_of(data)))
    assert (received.digest, received.stored) == (digest, True)
    assert stored(intake, digest) == data and not leftovers(intake)
    # Intact: nothing is replaced, and the answer says so.
    assert asyncio.run(intake.receive(chunks_of(data))).stored is False


def test_a_stored_object_over_the_read_limit_is_corrupted_not_too_large(tmp_path: Path) -> None:
    # No upload may exceed the limit, so a stored object above it was altered: the
    # store's fault (ArtifactCorrupted), not a client that sent too much (ArtifactTooLarge).
    store = LocalStore(tmp_path / "store")
    data = b"x" * 5000
    digest = sha256_of(data)
    assert store.put(io.BytesIO(data), digest)
    with pytest.raises(ArtifactCorrupted, match=f"{digest} in {store.root} is over 4000 bytes"):
        read(store, digest, 4000)
    assert read(store, digest, 5000) == data


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x80\x04\x95\x00", "pickle"),
        (b"\x78\x9c\x00\x00", "joblib"),
        (b"\xff\xfe\x00binary", "not a model format modelvc knows"),
        (b"hello world", r"LightGBM text or ONNX.*booster\.save_model\('model\.txt'\)"),
        (b"tree\nversion=v4\nnum_class=oops\n", "not a valid LightGBM text model"),
    ],
)
def test_anything_but_a_lightgbm_text_model_is_refused(
    tmp_path: Path, data: bytes, why: str
) -> None:
    with pytest.raises(ArtifactRejected, match=why):
        intake_at(tmp_path).put(data)
    assert not (tmp_path / "sha256").exists()  # nothing stored


def test_user_input_never_becomes_a_path(tmp_path: Path) -> None:
    intake = intake_at(tmp_path)
    for bad in ("../../etc/passwd", "a" * 63, "A" * 64, ""):
        with pytest.raises(ArtifactNotFound):
            stored(intake, bad)


def test_an_upload_that_does_not_hash_to_its_claim_is_not_stored(tmp_path: Path) -> None:
    intake = intake_at(tmp_path / "store")
    data = train_model(tmp_path / "m.txt").read_bytes()
    with pytest.raises(ArtifactCorrupted, match="re-send"):
        asyncio.run(intake.receive(chunks_of(data), expected="0" * 64))
    assert not intake.store.has(sha256_of(data))
    assert not leftovers(intake)


def leftovers(intake: Intake) -> list[Path]:
    tmp = intake.staging
    return list(tmp.iterdir()) if tmp.is_dir() else []


async def chunks_of(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)


def test_receive_streams_checks_and_stores_an_upload(tmp_path: Path) -> None:
    intake = intake_at(tmp_path / "store")
    data = train_model(tmp_path / "m.txt").read_bytes()
    received = asyncio.run(intake.receive(chunks_of(data), sha256_of(data)))
    assert (
        received.digest,
        received.size,
        received.summary.details["num_trees"],
        received.stored,
    ) == (
        sha256_of(data),
        len(data),
        5,
        True,
    )
    assert stored(intake, received.digest) == data and not leftovers(intake)


@contextlib.contextmanager
def file_size_limit() -> Iterator[None]:
    """Writes past 4 KiB fail with EFBIG in this process, as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_finding_10_a_full_store_is_unavailable_and_leaves_no_temp_file(tmp_path: Path) -> None:
    intake = intake_at(tmp_path / "store")
    data = train_model(tmp_path / "m.txt").read_bytes()
    assert len(data) > 4096
    with pytest.raises(ArtifactStoreUnavailable, match="free space") as caught, file_size_limit():
        intake.put(data)
    assert isinstance(caught.value, OSError) and caught.value.errno
    assert not leftovers(intake)
    with pytest.raises(ArtifactStoreUnavailable), file_size_limit():
        asyncio.run(intake.receive(chunks_of(data)))
    assert not leftovers(intake)
    assert intake.put(data).digest == sha256_of(data)  # space back: uploads work again


def test_finding_10_an_unwritable_store_is_unavailable_and_leaves_no_temp_file(
    tmp_path: Path,
) -> None:
    intake = intake_at(tmp_path / "store")
    data = train_model(tmp_path / "m.txt").read_bytes()
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "sha256").write_bytes(b"")  # the final directory cannot be made
    with pytest.raises(ArtifactStoreUnavailable, match="MODELVC_ARTIFACTS"):
        intake.put(data)
    assert not leftovers(intake)
    with pytest.raises(ArtifactStoreUnavailable):
        intake_at(tmp_path / "store" / "sha256").put(data)  # its tmp/ cannot be made


def test_finding_10_a_client_that_disconnects_mid_upload_leaks_no_temp_file(
    tmp_path: Path,
) -> None:
    intake = intake_at(tmp_path / "store")
    data = train_model(tmp_path / "m.txt").read_bytes()

    async def cut_off() -> AsyncIterator[bytes]:
        yield data[:1000]
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        asyncio.run(intake.receive(cut_off()))
    assert not leftovers(intake)

    async def cancelled_mid_upload() -> None:
        stalled = asyncio.Event()

        async def stall() -> AsyncIterator[bytes]:
            yield data[:1000]
            stalled.set()
            await asyncio.Event().wait()
            yield b""  # never reached

        task = asyncio.create_task(intake.receive(stall()))
        await stalled.wait()
        assert len(leftovers(intake)) == 1  # the partial upload exists while it streams
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled_mid_upload())
    assert not leftovers(intake)


def test_too_large_empty_and_refused_uploads_leave_no_temp_file(tmp_path: Path) -> None:
    data = train_model(tmp_path / "m.txt").read_bytes()
    small = intake_at(tmp_path / "store", max_bytes=2000)
    with pytest.raises(ArtifactTooLarge):
        asyncio.run(small.receive(chunks_of(data)))
    intake = intake_at(tmp_path / "store")
    with pytest.raises(ArtifactEmpty):
        asyncio.run(intake.receive(chunks_of(b"")))
    with pytest.raises(ArtifactRejected):
        asyncio.run(intake.receive(chunks_of(data[:3622])))
    with pytest.raises(ArtifactCorrupted):
        asyncio.run(intake.receive(chunks_of(data), "0" * 64))
    assert not leftovers(intake)


def test_temp_files_a_killed_process_left_are_swept_on_the_next_write(tmp_path: Path) -> None:
    intake = intake_at(tmp_path / "store")
    (tmp_path / "store" / "tmp").mkdir(parents=True)
    stale, fresh = tmp_path / "store" / "tmp" / "upload-old", tmp_path / "store" / "tmp" / "x"
    stale.write_bytes(b"half an upload")
    fresh.write_bytes(b"an upload in progress")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    intake.put(train_model(tmp_path / "m.txt").read_bytes())
    assert not stale.exists() and fresh.exists()


def test_finding_2_the_worker_loader_refuses_hand_placed_files_and_models_over_budget(
    tmp_path: Path,
) -> None:
    from tests.unit.test_modelfile import edit_tree
    from workers.artifacts import ArtifactLoader, MemoryBudget
    from workers.errors import ArtifactLoadFailed

    intake = intake_at(tmp_path / "store")
    data = train_model(tmp_path / "m.txt").read_bytes()
    received = intake.put(data)
    digest, summary = received.digest, received.summary
    loader = ArtifactLoader(intake.store)
    assert loader.load(digest, MemoryBudget(1 << 30, 5000)).summary == summary
    need = summary.scoring_bytes(5000)
    with pytest.raises(ArtifactLoadFailed, match="MODELVC_WORKER_MEMORY_MB"):
        ArtifactLoader(intake.store).load(digest, MemoryBudget(need - 1, 5000))
    # A cyclic tree written straight into the store, under its own digest.
    poison = edit_tree(data.decode(), 0, "left_child", "0 -1 -2").encode()
    path = LocalStore(tmp_path / "store").path_for(sha256_of(poison))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(poison)
    for _ in range(2):  # the verdict is remembered: refused again, without a new check
        with pytest.raises(ArtifactLoadFailed, match="reached twice"):
            loader.load(sha256_of(poison))


def test_attack_an_upload_that_stops_sending_is_dropped_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """Slow-loris uploads held connections and temp files open for ever."""
    intake = intake_at(tmp_path / "store", idle_timeout_s=0.2)

    async def trickle() -> AsyncIterator[bytes]:
        yield b"tree\n"
        await asyncio.sleep(3600)

    async def run() -> None:
        with pytest.raises(UploadStalled, match="sent nothing"):
            await intake.receive(trickle())

    asyncio.run(run())
    assert leftovers(intake) == []


def test_attack_uploads_beyond_the_limit_are_refused_until_one_ends(tmp_path: Path) -> None:
    """Each upload holds a temp file, a parse and a sandbox child: at most max_uploads."""
    data = train_model(tmp_path / "m.txt").read_bytes()
    intake = intake_at(tmp_path / "store", max_uploads=1)

    async def run() -> None:
        release = asyncio.Event()

        async def held() -> AsyncIterator[bytes]:
            yield data
            await release.wait()

        async def whole() -> AsyncIterator[bytes]:
            yield data

        first = asyncio.create_task(intake.receive(held()))
        await asyncio.sleep(0.05)
        with pytest.raises(UploadsBusy, match="retry"):
            await intake.receive(whole())
        release.set()
        assert (await first).digest == sha256_of(data)
        assert (await intake.receive(whole())).digest == sha256_of(data)  # a slot is free again

    asyncio.run(run())
    assert leftovers(intake) == []


def test_a_store_out_of_room_is_507_and_one_that_does_not_answer_503() -> None:
    from streams.api import domain_error

    full = domain_error(ArtifactStoreUnavailable(errno.ENOSPC, "free space"))
    gone = domain_error(ArtifactStoreUnavailable(errno.EHOSTUNREACH, "check the endpoint"))
    refused = domain_error(ArtifactStoreRefused(errno.EACCES, "fix the credentials"))
    assert full is not None and gone is not None and refused is not None
    # The operator frees space / retry later / the operator fixes the credentials.
    assert (full.status, gone.status, refused.status) == (507, 503, 503)
    assert [json.loads(a.text or "")["error"] for a in (full, gone, refused)] == [
        "store_full",
        "store_unreachable",
        "store_refused",
    ]


def test_the_validator_is_held_to_the_deployments_model_limit(tmp_path: Path) -> None:
    """check_model passes its limit to our parser: MODELVC_MAX_MODEL_MB above 64 must not
    be undone by the parser's own default, nor a lower one ignored."""
    data = train_model(tmp_path / "m.txt").read_bytes()
    with pytest.raises(ArtifactTooLarge):
        check_model(data, Sandbox(), max_bytes=len(data) - 1)
