"""Where a worker's artifact bytes come from (cache, store, API), each source verified."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

import pytest

from modelvc.processes import free_port
from streams.artifacts import LocalStore
from streams.errors import ArtifactStoreUnavailable
from streams.settings import Settings
from tests.httpserver import running_http
from workers.artifacts import ArtifactLoader
from workers.bootstrap import open_loader
from workers.cache import ArtifactCache
from workers.errors import ArtifactLoadFailed
from workers.settings import WorkerSettings

DATA = b"tree\nversion=v4\n" * 64
DIGEST = hashlib.sha256(DATA).hexdigest()
S3 = "s3://modelvc-artifacts/models"


class Api(BaseHTTPRequestHandler):
    """The streams API's artifact route: ``served`` by digest, 404 otherwise."""

    served: ClassVar[dict[str, bytes]] = {}
    requests: ClassVar[list[str]] = []

    def log_message(self, *_: object) -> None:
        pass

    def do_GET(self) -> None:
        Api.requests.append(self.path)
        body = Api.served.get(self.path.removeprefix("/v1/artifacts/"))
        self.send_response(404 if body is None else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")


@pytest.fixture
def api() -> Iterator[str]:
    Api.served.clear()
    Api.requests.clear()
    with running_http(Api) as url:
        yield url


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "store")
    store.put(io.BytesIO(DATA), DIGEST)
    return store


def alter(store: LocalStore, digest: str) -> None:
    store.path_for(digest).write_bytes(DATA + b"tampered")


def test_bytes_from_the_store_are_verified_with_or_without_a_cache(
    tmp_path: Path, store: LocalStore
) -> None:
    cache = ArtifactCache(tmp_path / "cache", 1 << 20)
    assert ArtifactLoader(store).fetch(DIGEST) == DATA
    alter(store, DIGEST)
    with pytest.raises(ArtifactLoadFailed, match="altered"):
        ArtifactLoader(store).fetch(DIGEST)
    with pytest.raises(ArtifactLoadFailed, match="altered"):
        ArtifactLoader(store, cache=cache).fetch(DIGEST)
    assert cache.digests() == []  # nothing damaged is kept


def test_a_damaged_cache_entry_is_fetched_again_from_the_store(
    tmp_path: Path, store: LocalStore
) -> None:
    cache = ArtifactCache(tmp_path / "cache", 1 << 20)
    loader = ArtifactLoader(store, cache=cache)
    assert loader.fetch(DIGEST) == DATA
    (tmp_path / "cache" / DIGEST).write_bytes(b"tree\nflipped")
    assert loader.fetch(DIGEST) == DATA
    assert (tmp_path / "cache" / DIGEST).read_bytes() == DATA
    # With the store gone too, a damaged entry is a failed load, never wrong bytes.
    (tmp_path / "cache" / DIGEST).write_bytes(b"tree\nflipped")
    store.delete(DIGEST)
    with pytest.raises(ArtifactLoadFailed, match="no artifact"):
        loader.fetch(DIGEST)


def test_bytes_from_the_api_are_verified_and_only_good_ones_cached(
    tmp_path: Path, api: str
) -> None:
    cache = ArtifactCache(tmp_path / "cache", 1 << 20)
    loader = ArtifactLoader(url=api, cache=cache)
    Api.served[DIGEST] = DATA + b"tampered"
    with pytest.raises(ArtifactLoadFailed, match="digest check"):
        loader.fetch(DIGEST)
    assert cache.digests() == []
    Api.served[DIGEST] = DATA
    assert loader.fetch(DIGEST) == DATA
    assert loader.fetch(DIGEST) == DATA
    assert cache.digests() == [DIGEST] and len(Api.requests) == 2  # the second: from disk


def test_an_artifact_not_in_the_store_is_fetched_from_the_api(tmp_path: Path, api: str) -> None:
    Api.served[DIGEST] = DATA
    loader = ArtifactLoader(LocalStore(tmp_path / "empty"), api)
    assert loader.fetch(DIGEST) == DATA and len(Api.requests) == 1


def test_every_failed_fetch_is_an_artifact_load_failure(tmp_path: Path, api: str) -> None:
    (tmp_path / "file").write_bytes(b"")
    unreadable = LocalStore(tmp_path / "file")  # its root is a file: every read faults
    cases = [
        ArtifactLoader(LocalStore(tmp_path / "empty")),  # not there, no API
        ArtifactLoader(url=api),  # the API answers 404
        ArtifactLoader(url=f"http://127.0.0.1:{free_port()}", timeout=2),  # nobody listens
        ArtifactLoader(unreadable, cache=ArtifactCache(tmp_path / "cache", 1 << 20)),
    ]
    for loader in cases:
        with pytest.raises(ArtifactLoadFailed):
            loader.fetch(DIGEST)
    for forged in ("../../etc/passwd", DIGEST + "\n", ""):
        with pytest.raises(ArtifactLoadFailed):
            cases[1].fetch(forged)
    assert Api.requests == ["/v1/artifacts/" + DIGEST]  # no forged digest reached the API


def worker_settings(tmp_path: Path, artifacts: Path | str, **kwargs: object) -> WorkerSettings:
    topics = Settings(data_dir=tmp_path / "home" / "streams", artifacts=str(artifacts))
    return WorkerSettings(topics=topics, worker_id="w1", **kwargs)  # type: ignore[arg-type]


def test_artifacts_over_the_network_are_cached_a_shared_directory_is_not(
    tmp_path: Path, store: LocalStore, api: str
) -> None:
    cache_dir = tmp_path / "home" / "cache" / "w1"
    # An S3 store (a local one stands in: the wiring is what is under test) is read
    # directly, whatever shared_store says, and through the cache.
    s3 = worker_settings(tmp_path, S3, api_url=api, shared_store=False)
    assert s3.artifact_store == S3 and s3.uses_cache and s3.cache_path == cache_dir
    open_loader(s3, store).fetch(DIGEST)
    assert (cache_dir / DIGEST).read_bytes() == DATA and Api.requests == []
    (cache_dir / DIGEST).unlink()

    shared = worker_settings(tmp_path, store.root, api_url=api, shared_store=True)
    assert shared.artifact_store == str(store.root) and not shared.uses_cache
    assert open_loader(shared).fetch(DIGEST) == DATA
    assert not (cache_dir / DIGEST).exists() and Api.requests == []

    Api.served[DIGEST] = DATA
    apart = worker_settings(tmp_path, store.root, api_url=api, shared_store=False)
    assert apart.artifact_store is None and apart.uses_cache
    assert open_loader(apart).fetch(DIGEST) == DATA
    assert (cache_dir / DIGEST).read_bytes() == DATA and len(Api.requests) == 1


def test_cache_settings_read_back_from_the_environment(tmp_path: Path) -> None:
    env = {"MODELVC_HOME": str(tmp_path), "MODELVC_WORKER_ID": "w1"}
    default = WorkerSettings.from_env(env)
    assert default.cache_path == tmp_path / "cache" / "w1" and default.cache_mb == 2048
    moved = WorkerSettings.from_env(
        env | {"MODELVC_WORKER_CACHE": str(tmp_path / "c"), "MODELVC_WORKER_CACHE_MB": "5"}
    )
    assert (moved.cache_path, moved.cache_mb) == (tmp_path / "c", 5)
    assert WorkerSettings.from_env(moved.to_env()) == moved
    with pytest.raises(ValueError, match="MODELVC_WORKER_CACHE_MB"):
        WorkerSettings.from_env(env | {"MODELVC_WORKER_CACHE_MB": "-1"})
    with pytest.raises(ValueError, match="MODELVC_WORKER_CACHE to a directory"):
        _ = WorkerSettings.from_env(env | {"MODELVC_WORKER_ID": "../up"}).cache_path


def test_a_store_that_fails_its_check_stops_the_worker_before_it_consumes(
    tmp_path: Path,
) -> None:
    (tmp_path / "file").write_bytes(b"")
    settings = worker_settings(tmp_path, tmp_path / "file", shared_store=True)
    with pytest.raises(ArtifactStoreUnavailable, match="not a directory"):
        open_loader(settings)
    # The process: one line saying what to fix, no traceback, a non-zero status, and no
    # broker needed to get there (nothing listens on this bootstrap address).
    env = os.environ | settings.to_env() | {"KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    done = subprocess.run(
        [sys.executable, "-m", "workers"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "not a directory" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
