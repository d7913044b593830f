"""Wiring in one place: bootstrap builds the collaborators, the app stops them on shutdown,
and `python -m streams` does not start with an artifact store it cannot reach."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from streams.__main__ import checked_store
from streams.app import create_app
from streams.artifacts import LocalStore
from streams.bootstrap import bootstrap
from streams.core.commands import AddWriterKey, Command
from streams.core.decide import decide
from streams.core.signatures import keys_stream
from streams.projection import MemoryProjection, RocksDBProjection
from streams.settings import Settings
from streams.signing import SigningKey, public_path, read_public_key, sign_event
from tests.mounts import read_only_directory


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
        Settings.namespaced(
            "boot", data_dir=tmp_path / "s", artifacts=str(tmp_path / "a"), max_model_bytes=3 << 20
        ),
        projection=MemoryProjection(),
    )
    assert isinstance(local.store, LocalStore) and local.store.location == str(tmp_path / "a")
    assert local.intake.store is local.store and local.intake.staging == tmp_path / "a" / "tmp"
    assert local.intake.max_bytes == 3 << 20  # MODELVC_MAX_MODEL_MB bounds every upload
    remote = bootstrap(
        Settings.namespaced("boot", data_dir=tmp_path / "s", artifacts="s3://bucket/models"),
        projection=MemoryProjection(),
    )
    assert remote.store.location == "s3://bucket/models"  # nothing reached yet
    assert remote.intake.staging == tmp_path / "s" / "uploads"
    assert not (tmp_path / "a").exists()  # nor made: the start checks it


def test_a_store_this_app_cannot_write_stops_the_start_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with read_only_directory(tmp_path / "ro") as ro:
        settings = Settings.namespaced("boot", data_dir=tmp_path / "s", artifacts=str(ro))
        with caplog.at_level(logging.ERROR, "modelvc.streams"), pytest.raises(SystemExit) as exited:
            checked_store(settings)
    assert exited.value.code == 1
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"cannot start: the artifact store {ro} is not writable"), line
    assert "MODELVC_ARTIFACTS" in line and "[Errno" not in line
    caplog.clear()
    settings = Settings.namespaced("boot", data_dir=tmp_path / "s", artifacts=str(tmp_path / "a"))
    reachable = checked_store(settings)  # the settings' own store: a directory, made
    assert reachable.location == str(tmp_path / "a") and (tmp_path / "a").is_dir()
    assert caplog.records == []


def test_modelvc_up_refuses_a_store_its_streams_instances_could_not_write(tmp_path: Path) -> None:
    from modelvc.stack import StackError, check_store

    with read_only_directory(tmp_path / "ro") as ro, pytest.raises(StackError) as refused:
        check_store(str(ro), None)
    assert f"the artifact store {ro} is not writable" in str(refused.value)
    check_store(str(tmp_path / "a"), None)  # a directory it may write: made, and fine


def start_streams(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m streams`` with ``env`` and no broker: a start past the checks would hang."""
    env = os.environ | {"MODELVC_WEB_PORT": "9", "KAFKA_BOOTSTRAP": "127.0.0.1:9"} | env
    return subprocess.run(
        [sys.executable, "-m", "streams"], env=env, capture_output=True, text=True, timeout=60
    )


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
    done = start_streams(
        {
            "MODELVC_ARTIFACTS": artifacts.format(file=blocker),
            "MODELVC_DATA_DIR": str(tmp_path / "s"),
        }
    )
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()  # one line, no traceback
    assert "ERROR cannot start: " in line and says in line, line


def test_python_m_streams_does_not_start_on_a_store_it_cannot_write(tmp_path: Path) -> None:
    with read_only_directory(tmp_path / "ro") as ro:
        done = start_streams(
            {"MODELVC_ARTIFACTS": str(ro), "MODELVC_DATA_DIR": str(tmp_path / "s")}
        )
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"ERROR cannot start: the artifact store {ro} is not writable" in line, line
