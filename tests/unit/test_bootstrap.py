"""Wiring in one place: bootstrap builds the collaborators, the app stops them on shutdown."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from streams.app import create_app
from streams.bootstrap import bootstrap
from streams.core.commands import AddWriterKey, Command
from streams.core.decide import decide
from streams.core.signatures import keys_stream
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
    settings = Settings.namespaced("boot", data_dir=tmp_path, artifact_root=tmp_path / "a")
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
