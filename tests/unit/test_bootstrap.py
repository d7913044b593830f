"""Wiring in one place: bootstrap builds the collaborators, the app stops them on shutdown,
and `python -m streams` does not start with an artifact store it cannot reach."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from streams.__main__ import checked_store
from streams.app import create_app
from streams.artifacts import LocalStore, StoredObject
from streams.bootstrap import bootstrap
from streams.core.commands import AddWriterKey, Command
from streams.core.decide import decide
from streams.core.signatures import keys_stream
from streams.errors import ArtifactStoreUnavailable
from streams.projection import MemoryProjection, RocksDBProjection
from streams.settings import Settings
from streams.signing import SigningKey, public_path, read_public_key, sign_event


def test_bootstrap_injects_one_set_of_collaborators(tmp_path: Path) -> None:
    projection = MemoryProjection()
    streams = bootstrap(
        Settings.namespaced("boot", data_dir=tmp_path), projection=projection, clock=lambda: 0.0
    )
    assert streams.projection is projection
    assert streams.follower.projection is projection and streams.writer.projection is projection
    assert (
        streams.writer.follower is streams.follower and streams.replies.follower is streams.follower
    )
    assert streams.writer.replies is streams.replies
    assert streams.writer.letters is streams.letters and streams.replies.letters is streams.letters
    assert streams.writer.producer is streams.producer is streams.replies.producer
    assert streams.writer.clock() == 0.0
    # One key per instance: the writer signs events with the key the API signs commands with.
    assert streams.writer.signer is streams.signer
    key = tmp_path / "writer.key"
    assert streams.signer.path == key and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert read_public_key(public_path(key)) == streams.signer.public_key
    again = bootstrap(Settings.namespaced("boot", data_dir=tmp_path), projection=projection)
    assert again.signer.key_id == streams.signer.key_id  # kept across restarts


def test_stop_releases_rocksdb_and_the_app_calls_it_on_shutdown(tmp_path: Path) -> None:
    settings = Settings.namespaced("boot", data_dir=tmp_path, artifacts=str(tmp_path / "a"))
    streams = bootstrap(settings)
    app = create_app(streams)
    with pytest.raises(Exception, match=r"(?i)lock"):
        RocksDBProjection(settings.rocksdb_path)  # held by the running instance
    asyncio.run(app.on_shutdown())  # what mode calls once the agent and tasks have stopped
    RocksDBProjection(settings.rocksdb_path).close()  # released: opens without recovery


def test_the_projection_trusts_only_this_instances_key_and_the_pinned_ones(tmp_path: Path) -> None:
    pinned = "ab" * 32
    settings = Settings.namespaced("boot", data_dir=tmp_path, trusted_writer_keys={pinned})
    streams = bootstrap(settings, store=None)
    try:
        stranger = SigningKey.generate()
        first = decide(
            None,
            Command("k", keys_stream(0), "mallory", 0, AddWriterKey(stranger.public_key)),
            stranger.key_id,
        )
        (event,) = [sign_event(stranger, e) for e in first]
        reason = streams.projection.fold.apply(event, 0)
        assert reason is not None and reason.startswith("untrusted key")
        assert 0 not in streams.projection.rings or not streams.projection.rings[0].signed
        assert streams.projection.fold.trusted == {pinned, streams.signer.key_id}
    finally:
        streams.projection.close()


def test_the_store_and_the_intake_come_from_the_settings(tmp_path: Path) -> None:
    local = bootstrap(
        Settings.namespaced("boot", data_dir=tmp_path / "s", artifacts=str(tmp_path / "a")),
        projection=MemoryProjection(),
    )
    assert isinstance(local.store, LocalStore) and local.store.location == str(tmp_path / "a")
    assert local.intake.store is local.store and local.intake.staging == tmp_path / "a" / "tmp"
    remote = bootstrap(
        Settings.namespaced("boot", data_dir=tmp_path / "s", artifacts="s3://bucket/models"),
        projection=MemoryProjection(),
    )
    assert remote.store.location == "s3://bucket/models"  # nothing reached yet
    assert remote.intake.staging == tmp_path / "s" / "uploads"
    assert not (tmp_path / "a").exists()  # nor made: the start checks it


UNREACHABLE = (
    "cannot reach http://127.0.0.1:9 to list s3://bucket/models: check MODELVC_S3_ENDPOINT "
    "and the network, then retry"
)


class Unreachable:
    """A store whose endpoint never answers, as an S3 store behind a wrong endpoint."""

    location = "s3://bucket/models"

    def _fail(self) -> ArtifactStoreUnavailable:
        return ArtifactStoreUnavailable(errno.EHOSTUNREACH, UNREACHABLE)

    def check(self) -> None:
        raise self._fail()

    def has(self, digest: str) -> bool:
        raise self._fail()

    def put(self, stream: BinaryIO, digest: str) -> bool:
        raise self._fail()

    def get(self, digest: str, into: BinaryIO) -> int:
        raise self._fail()

    def list(self) -> Iterator[StoredObject]:
        raise self._fail()

    def delete(self, digest: str) -> None:
        raise self._fail()


def test_a_store_that_cannot_be_reached_stops_the_start_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.namespaced("boot", data_dir=tmp_path / "s", artifacts=str(tmp_path / "a"))
    with caplog.at_level(logging.ERROR, "modelvc.streams"), pytest.raises(SystemExit) as exited:
        checked_store(settings, Unreachable())
    assert exited.value.code == 1
    assert [r.getMessage() for r in caplog.records] == [f"cannot start: {UNREACHABLE}"]
    caplog.clear()
    reachable = checked_store(settings)  # the settings' own store: a directory, made
    assert reachable.location == str(tmp_path / "a") and (tmp_path / "a").is_dir()
    assert caplog.records == []


@pytest.mark.parametrize(
    ("artifacts", "says"),
    [
        ("{file}", "is not a directory; point MODELVC_ARTIFACTS at a directory"),
        ("ftp://bucket/models", "MODELVC_ARTIFACTS='ftp://bucket/models': ftp:// is not"),
    ],
)
def test_python_m_streams_exits_before_serving_with_one_clear_line(
    tmp_path: Path, artifacts: str, says: str
) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    env = os.environ | {
        "MODELVC_ARTIFACTS": artifacts.format(file=blocker),
        "MODELVC_DATA_DIR": str(tmp_path / "s"),
        "MODELVC_WEB_PORT": "9",
        "KAFKA_BOOTSTRAP": "127.0.0.1:9",  # nothing there: a start past the check would hang
    }
    done = subprocess.run(
        [sys.executable, "-m", "streams"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()  # one line, no traceback
    assert "ERROR cannot start: " in line and says in line, line
