"""Wiring in one place: bootstrap builds the collaborators, the app stops them on shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streams.app import create_app
from streams.bootstrap import bootstrap
from streams.projection import MemoryProjection, RocksDBProjection
from streams.settings import Settings


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


def test_stop_releases_rocksdb_and_the_app_calls_it_on_shutdown(tmp_path: Path) -> None:
    settings = Settings.namespaced("boot", data_dir=tmp_path, artifact_root=tmp_path / "a")
    streams = bootstrap(settings)
    app = create_app(streams)
    with pytest.raises(Exception, match=r"(?i)lock"):
        RocksDBProjection(settings.rocksdb_path)  # held by the running instance
    asyncio.run(app.on_shutdown())  # what mode calls once the agent and tasks have stopped
    RocksDBProjection(settings.rocksdb_path).close()  # released: opens without recovery
