"""The artifact store keeps LightGBM text models by digest, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.artifacts import ArtifactStore, sha256_of
from streams.errors import ArtifactCorrupted, ArtifactNotFound, ArtifactRejected
from tests.conftest import train_model


def test_put_is_idempotent_and_reads_verify_the_digest(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    data = train_model(tmp_path / "m.txt").read_bytes()
    digest, summary = store.put(data)
    assert digest == sha256_of(data) and summary.num_features == 4
    assert store.put(data)[0] == digest
    assert store.read(digest) == data
    store.path_for(digest).write_bytes(data + b"\n")
    with pytest.raises(ArtifactCorrupted):
        store.read(digest)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x80\x04\x95\x00", "pickle"),
        (b"\x78\x9c\x00\x00", "joblib"),
        (b"\xff\xfe\x00binary", "binary"),
        (b"hello world", "LightGBM text model"),
        (b"tree\nversion=v4\nnum_class=oops\n", "LightGBM cannot load"),
    ],
)
def test_anything_but_a_lightgbm_text_model_is_refused(
    tmp_path: Path, data: bytes, why: str
) -> None:
    with pytest.raises(ArtifactRejected, match=why):
        ArtifactStore(tmp_path).put(data)
    assert not list((tmp_path / "tmp").iterdir())  # nothing left behind


def test_user_input_never_becomes_a_path(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    for bad in ("../../etc/passwd", "a" * 63, "A" * 64, ""):
        with pytest.raises(ArtifactNotFound):
            store.read(bad)


def test_an_upload_that_does_not_hash_to_its_claim_is_not_stored(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    data = train_model(tmp_path / "m.txt").read_bytes()
    with store.temp_file() as handle:
        handle.write(data)
    with pytest.raises(ArtifactCorrupted, match="re-send"):
        store.commit_temp(Path(handle.name), expected="0" * 64)
    assert not store.has(sha256_of(data))
    assert not list((tmp_path / "store" / "tmp").iterdir())
