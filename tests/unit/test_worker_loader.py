"""Where a worker's artifact bytes come from (cache, store, API), each source verified."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import BinaryIO, ClassVar

import pytest

from modelvc.processes import free_port
from streams.artifacts import LocalStore
from streams.errors import ArtifactStoreUnavailable
from streams.settings import Settings
from tests.httpserver import running_http
from workers.__main__ import main
from workers.artifacts import MAX_FAILURES, ArtifactLoader
from workers.bootstrap import open_loader
from workers.cache import ArtifactCache
from workers.errors import ArtifactLoadFailed
from workers.metrics import Metrics, sample_sum
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


class CountingStore(LocalStore):
    """A store directory that counts its reads, each slow enough for concurrent loads
    of one digest to overlap."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gets = 0
        self._count = threading.Lock()

    def get(self, digest: str, into: BinaryIO) -> int:
        with self._count:
            self.gets += 1
        time.sleep(0.05)
        return super().get(digest, into)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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
    clock = Clock()
    loader = ArtifactLoader(url=api, cache=cache, clock=clock)
    Api.served[DIGEST] = DATA + b"tampered"
    with pytest.raises(ArtifactLoadFailed, match="digest check"):
        loader.fetch(DIGEST)
    assert cache.digests() == []
    Api.served[DIGEST] = DATA
    clock.now += 1  # past the failed fetch's backoff
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
    # directly unless told otherwise, and through the cache.
    s3 = worker_settings(tmp_path, S3, api_url=api)
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


def test_the_model_size_limit_bounds_every_source(tmp_path: Path, api: str) -> None:
    """MODELVC_MAX_MODEL_MB bounds what a worker reads from its cache, the store and the API."""
    big = b"tree\n" + b"x" * (1 << 20)
    digest = hashlib.sha256(big).hexdigest()
    store = LocalStore(tmp_path / "store")
    store.put(io.BytesIO(big), digest)
    Api.served[digest] = big
    topics = Settings(data_dir=tmp_path / "home" / "streams", artifacts=S3, max_model_bytes=1 << 20)
    direct = WorkerSettings(topics=topics, worker_id="w1", api_url=api)
    entry = direct.cache_path / digest
    entry.parent.mkdir(parents=True)
    entry.write_bytes(big)  # one a worker with a larger limit kept
    with pytest.raises(ArtifactLoadFailed, match="over 1048576 bytes"):
        open_loader(direct, store).fetch(digest)
    assert not entry.exists()
    proxied = dataclasses.replace(direct, shared_store=False, worker_id="w2")
    with pytest.raises(ArtifactLoadFailed):
        open_loader(proxied).fetch(digest)
    assert Api.requests == [f"/v1/artifacts/{digest}"]


def test_a_worker_told_not_to_share_an_s3_store_uses_the_api_only(tmp_path: Path) -> None:
    """Teams used to MLflow's proxied artifacts give workers no store credentials."""
    env = {"MODELVC_HOME": str(tmp_path), "MODELVC_WORKER_ID": "w1", "MODELVC_ARTIFACTS": S3}
    assert WorkerSettings.from_env(env).artifact_store == S3  # the default: direct
    proxied = WorkerSettings.from_env(env | {"MODELVC_WORKER_SHARED_STORE": "0"})
    assert proxied.artifact_store is None and proxied.uses_cache
    assert WorkerSettings.from_env(proxied.to_env()) == proxied
    with pytest.raises(ValueError, match="MODELVC_WORKER_SHARED_STORE"):
        WorkerSettings.from_env(env | {"MODELVC_WORKER_SHARED_STORE": "no"})


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


def run_main(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> object:
    """``python -m workers``'s exit status with ``env`` (tests/integration/test_worker_startup
    runs the process itself). It must stop before consuming: it runs in a thread, so a
    worker that went on (nothing listens on its broker) fails this test, not hangs it."""
    stopped: list[SystemExit] = []

    def run() -> None:
        try:
            main()
        except SystemExit as exc:
            stopped.append(exc)

    with monkeypatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("MODELVC_")]:
            patch.delenv(name)
        patch.setenv("OMP_NUM_THREADS", "1")  # main sets it; restored after the test
        patch.setenv("KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
        for name, value in env.items():
            patch.setenv(name, value)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(timeout=60)
    assert stopped, "python -m workers did not stop at startup"
    return stopped[0].code


@pytest.mark.parametrize(
    "setting",
    [
        {"MODELVC_ARTIFACTS": "gs://x/y"},
        {"MODELVC_WORKER_CACHE_MB": "-1"},
        {"MODELVC_WORKER_SHARED_STORE": "yes"},
    ],
)
def test_a_bad_setting_stops_the_worker_with_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    setting: dict[str, str],
) -> None:
    home = {"MODELVC_HOME": str(tmp_path), "MODELVC_WORKER_ID": "w1"}
    with caplog.at_level(logging.ERROR):
        assert run_main(monkeypatch, home | setting) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    name = next(iter(setting))
    assert len(errors) == 1 and errors[0].startswith("cannot start:") and name in errors[0]


def test_a_store_or_cache_that_cannot_be_used_stops_the_worker_with_status_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The same status as `python -m streams` for the same fault."""
    (tmp_path / "file").write_bytes(b"")
    home = {"MODELVC_HOME": str(tmp_path), "MODELVC_WORKER_ID": "w1"}
    with caplog.at_level(logging.ERROR):
        assert run_main(monkeypatch, home | {"MODELVC_ARTIFACTS": str(tmp_path / "file")}) == 1
        with ArtifactCache(tmp_path / "cache" / "w1", 1 << 20):  # another worker's
            assert run_main(monkeypatch, home) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and "not a directory" in errors[0], errors
    assert "its own MODELVC_WORKER_CACHE" in errors[1], errors


def test_a_worker_without_a_source_is_told_the_documented_setting() -> None:
    with pytest.raises(ArtifactLoadFailed, match="MODELVC_URL"):
        ArtifactLoader()


def test_a_cache_that_faults_costs_speed_never_a_load(
    tmp_path: Path, store: LocalStore, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "cache"
    metrics = Metrics()
    loader = ArtifactLoader(store, cache=ArtifactCache(root, 1 << 20), metrics=metrics)
    # The disk under the cache went bad (full, read-only, unmounted): every read and
    # write there faults, while the store still answers with verified bytes.
    shutil.rmtree(root)
    root.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="modelvc.workers"):
        for _ in range(3):
            assert loader.fetch(DIGEST) == DATA
    exposition = metrics.render().decode()
    for operation in ("read", "write"):
        counted = sample_sum(exposition, "modelvc_artifact_cache_errors_total", operation=operation)
        assert counted == 3, (operation, exposition)
    logged = [r.getMessage() for r in caplog.records if "artifact cache" in r.getMessage()]
    assert len(logged) == 2, logged  # once per kind of fault, not once per load


def test_concurrent_fetches_of_one_digest_read_the_store_once(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    store.put(io.BytesIO(DATA), DIGEST)
    loader = ArtifactLoader(store, cache=ArtifactCache(tmp_path / "cache", 1 << 20))
    results: list[bytes] = []
    start = threading.Barrier(8)

    def fetch() -> None:
        start.wait()
        results.append(loader.fetch(DIGEST))

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [DATA] * 8 and store.gets == 1


def test_a_failed_fetch_is_not_repeated_before_its_backoff_ends(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    clock = Clock()
    loader = ArtifactLoader(store, clock=clock)

    def attempt() -> str:
        with pytest.raises(ArtifactLoadFailed) as failed:
            loader.fetch(DIGEST)
        return str(failed.value)

    assert "not fetched again" not in attempt() and store.gets == 1
    assert "not fetched again for 1 s" in attempt() and store.gets == 1
    for wait, fetched in ((1.0, 2), (1.5, 2), (0.5, 3), (3.9, 3), (0.1, 4)):  # 1, 2, 4 s
        clock.now += wait
        attempt()
        assert store.gets == fetched, (wait, store.gets)
    for _ in range(10):  # the wait stops doubling at 60 s
        clock.now += 60
        attempt()
    assert store.gets == 14 and "for 60 s more" in attempt()
    store.put(io.BytesIO(DATA), DIGEST)  # uploaded again: fetched once the wait ends
    clock.now += 60
    assert loader.fetch(DIGEST) == DATA and loader.fetch(DIGEST) == DATA


def test_the_failed_fetches_remembered_are_bounded(tmp_path: Path) -> None:
    loader = ArtifactLoader(LocalStore(tmp_path / "empty"), clock=Clock())
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(MAX_FAILURES + 1)]
    for digest in digests:
        with pytest.raises(ArtifactLoadFailed, match="no artifact"):
            loader.fetch(digest)
    # The oldest was forgotten (fetched again at once); the newest is still backing off.
    with pytest.raises(ArtifactLoadFailed) as oldest:
        loader.fetch(digests[0])
    with pytest.raises(ArtifactLoadFailed, match="not fetched again"):
        loader.fetch(digests[-1])
    assert "not fetched again" not in str(oldest.value)
