"""The worker's artifact cache: LRU by bytes on local disk, verified on every read."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import pytest

from streams.artifacts import LocalStore
from streams.artifacts.store import read
from streams.errors import ArtifactNotFound, ArtifactStoreUnavailable
from workers.cache import TEMP_PREFIX, ArtifactCache

SIZE = 1000  # bytes per test artifact: the bounds below count them


def put(store: LocalStore, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    store.put(io.BytesIO(data), digest)
    return digest


def stored(store: LocalStore, count: int) -> list[str]:
    """``count`` distinct artifacts of SIZE bytes put in ``store``; their digests."""
    return [put(store, bytes([i]) * SIZE) for i in range(count)]


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def on_disk(root: Path) -> set[str]:
    """The cache's entries and leftovers (its lock file aside)."""
    return {path.name for path in root.iterdir()} - {".lock"}


def fill(cache: ArtifactCache, digest: str, store: LocalStore) -> bytes:
    """What a worker's loader does on a miss: read the store (verified), keep the bytes."""
    data = read(store, digest, 1 << 20)
    cache.add(digest, data)
    return data


def test_the_least_recently_used_go_when_the_bytes_exceed_the_bound(
    tmp_path: Path, store: LocalStore
) -> None:
    a, b, c, d = stored(store, 4)
    cache = ArtifactCache(tmp_path / "cache", 3 * SIZE)
    for i, digest in enumerate((a, b, c)):
        assert fill(cache, digest, store) == bytes([i]) * SIZE
    assert cache.get(a) is not None  # a is now the most recently used: b is the oldest
    fill(cache, d, store)
    assert cache.digests() == [c, a, d]
    assert on_disk(tmp_path / "cache") == {c, a, d}
    assert cache.total_bytes == 3 * SIZE
    assert cache.get(b) is None


def test_the_order_survives_a_restart_and_a_smaller_bound_evicts_the_oldest(
    tmp_path: Path, store: LocalStore
) -> None:
    a, b, c, d = stored(store, 4)
    cache = ArtifactCache(tmp_path / "cache", 3 * SIZE)
    for digest in (a, b, c):  # filled within the same clock tick, quite likely
        fill(cache, digest, store)
    cache.get(a)
    cache.get(b)
    cache.close()  # the worker stops: the next one may open the directory
    restarted = ArtifactCache(tmp_path / "cache", 3 * SIZE)
    assert restarted.digests() == [c, a, b]
    fill(restarted, d, store)
    assert restarted.digests() == [a, b, d]
    restarted.close()
    smaller = ArtifactCache(tmp_path / "cache", 2 * SIZE)
    assert smaller.digests() == [b, d] and on_disk(tmp_path / "cache") == {b, d}


def test_a_damaged_entry_is_deleted_and_reads_as_missing(tmp_path: Path, store: LocalStore) -> None:
    (a,) = stored(store, 1)
    cache = ArtifactCache(tmp_path / "cache", 3 * SIZE)
    original = fill(cache, a, store)
    (tmp_path / "cache" / a).write_bytes(original[:-1] + b"!")
    assert cache.get(a) is None
    assert not (tmp_path / "cache" / a).exists() and cache.digests() == []
    assert fill(cache, a, store) == original  # fetched again
    assert cache.get(a) == original


def test_an_artifact_larger_than_the_cache_is_returned_but_not_kept(
    tmp_path: Path, store: LocalStore
) -> None:
    (small,) = stored(store, 1)
    big = put(store, b"b" * 3 * SIZE)
    cache = ArtifactCache(tmp_path / "cache", 2 * SIZE)
    fill(cache, small, store)
    assert fill(cache, big, store) == b"b" * 3 * SIZE
    assert cache.digests() == [small] and on_disk(tmp_path / "cache") == {small}


def test_temp_files_a_killed_fill_left_are_swept_at_construction(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    (root / f"{TEMP_PREFIX}abc").write_bytes(b"half an artifact")
    (root / "README").write_bytes(b"not ours to judge")  # neither an entry nor a temp file
    cache = ArtifactCache(root, 3 * SIZE)
    assert on_disk(root) == {"README"} and cache.digests() == []


def test_entries_are_private_and_only_a_digest_reaches_a_path(
    tmp_path: Path, store: LocalStore
) -> None:
    (a,) = stored(store, 1)
    cache = ArtifactCache(tmp_path / "cache", 3 * SIZE)
    fill(cache, a, store)
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "cache" / a).stat().st_mode) == 0o600
    for forged in ("../store/x", a.upper(), a + "\n", ""):
        with pytest.raises(ArtifactNotFound):
            cache.get(forged)
        with pytest.raises(ArtifactNotFound):
            cache.add(forged, b"x")


def test_an_entry_larger_than_a_model_may_be_is_deleted_unread(tmp_path: Path) -> None:
    """Nothing we keep is over the model limit: such a file (even one matching its name)
    is not ours, and reading it would hold up to the whole cache's bound in memory."""
    root = tmp_path / "cache"
    cache = ArtifactCache(root, 1 << 20, max_entry_bytes=SIZE)
    big = b"x" * (SIZE + 1)
    digest = hashlib.sha256(big).hexdigest()
    (root / digest).write_bytes(big)
    assert cache.get(digest) is None
    assert not (root / digest).exists()
    cache.add(digest, big)  # nor is one kept
    assert not (root / digest).exists() and cache.digests() == []


def test_one_worker_per_cache_directory(tmp_path: Path) -> None:
    """Each bounds only its own entries and sweeps temp files at start: a second cache
    over the directory must fail, before it deletes the first one's fill in progress."""
    root = tmp_path / "cache"
    with ArtifactCache(root, 3 * SIZE) as first:
        in_flight = root / f"{TEMP_PREFIX}first"
        in_flight.write_bytes(b"half")
        with pytest.raises(ArtifactStoreUnavailable, match="its own MODELVC_WORKER_CACHE"):
            ArtifactCache(root, 3 * SIZE)
        assert in_flight.exists() and first.digests() == []
    with ArtifactCache(root, 3 * SIZE):  # released when the first closed (or its process died)
        assert not in_flight.exists()


def test_a_cache_directory_others_could_use_is_made_private_or_refused(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o775)
    with ArtifactCache(root, 3 * SIZE):
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
    if os.getuid() != 0:
        pytest.skip("only root can give a directory to another user here")
    os.chown(root, 4242, 4242)
    with pytest.raises(ArtifactStoreUnavailable, match="another user"):
        ArtifactCache(root, 3 * SIZE)
