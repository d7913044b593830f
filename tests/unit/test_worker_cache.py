"""The worker's artifact cache: LRU by bytes on local disk, verified on every read."""

from __future__ import annotations

import hashlib
import io
import stat
from pathlib import Path

import pytest

from streams.artifacts import LocalStore
from streams.errors import ArtifactNotFound
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
    return {path.name for path in root.iterdir()}


def test_the_least_recently_used_go_when_the_bytes_exceed_the_bound(
    tmp_path: Path, store: LocalStore
) -> None:
    a, b, c, d = stored(store, 4)
    cache = ArtifactCache(tmp_path / "cache", 3 * SIZE)
    for i, digest in enumerate((a, b, c)):
        assert cache.fill(digest, store) == bytes([i]) * SIZE
    assert cache.get(a) is not None  # a is now the most recently used: b is the oldest
    cache.fill(d, store)
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
        cache.fill(digest, store)
    cache.get(a)
    cache.get(b)
    restarted = ArtifactCache(tmp_path / "cache", 3 * SIZE)
    assert restarted.digests() == [c, a, b]
    restarted.fill(d, store)
    assert restarted.digests() == [a, b, d]
    smaller = ArtifactCache(tmp_path / "cache", 2 * SIZE)
    assert smaller.digests() == [b, d] and on_disk(tmp_path / "cache") == {b, d}


def test_a_damaged_entry_is_deleted_and_reads_as_missing(tmp_path: Path, store: LocalStore) -> None:
    (a,) = stored(store, 1)
    cache = ArtifactCache(tmp_path / "cache", 3 * SIZE)
    original = cache.fill(a, store)
    (tmp_path / "cache" / a).write_bytes(original[:-1] + b"!")
    assert cache.get(a) is None
    assert not (tmp_path / "cache" / a).exists() and cache.digests() == []
    assert cache.fill(a, store) == original  # fetched again
    assert cache.get(a) == original


def test_an_artifact_larger_than_the_cache_is_returned_but_not_kept(
    tmp_path: Path, store: LocalStore
) -> None:
    (small,) = stored(store, 1)
    big = put(store, b"b" * 3 * SIZE)
    cache = ArtifactCache(tmp_path / "cache", 2 * SIZE)
    cache.fill(small, store)
    assert cache.fill(big, store) == b"b" * 3 * SIZE
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
    cache.fill(a, store)
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "cache" / a).stat().st_mode) == 0o600
    for forged in ("../store/x", a.upper(), a + "\n", ""):
        with pytest.raises(ArtifactNotFound):
            cache.get(forged)
        with pytest.raises(ArtifactNotFound):
            cache.add(forged, b"x")
