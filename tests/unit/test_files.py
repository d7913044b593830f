"""Durable replacement: the new bytes whole or the old ones, and no temporary file left;
secrets read only from private regular files of bounded size."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.files import (
    PrivateFileError,
    commit_file,
    read_private,
    write_atomically,
    write_private,
)


def test_a_file_is_replaced_whole_and_no_temporary_file_stays(tmp_path: Path) -> None:
    target = tmp_path / "index.json"
    write_atomically(target, b"old")
    inode = target.stat().st_ino
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_ino != inode  # a rename, never a rewrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["index.json"]


def test_a_failed_replacement_keeps_what_was_there_and_removes_its_temporary(
    tmp_path: Path,
) -> None:
    target = tmp_path / "segment"
    target.mkdir()  # a rename cannot replace a directory with a file
    (target / "kept").write_bytes(b"old")
    with pytest.raises(OSError):
        write_atomically(target, b"new")
    assert (target / "kept").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["segment"]


def test_a_finished_temporary_file_is_moved_into_place(tmp_path: Path) -> None:
    temp = tmp_path / "upload-1"
    temp.write_bytes(b"model")
    (tmp_path / "sha256").mkdir()
    commit_file(temp, tmp_path / "sha256" / "ab")
    assert (tmp_path / "sha256" / "ab").read_bytes() == b"model" and not temp.exists()


def test_a_secret_is_read_only_from_a_private_regular_file_of_bounded_size(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "secret"
    write_private(secret, b"s3cret\n")
    assert read_private(secret, 16) == b"s3cret\n"
    with pytest.raises(PrivateFileError, match="over 4 bytes") as big:
        read_private(secret, 4)
    assert not big.value.exposed
    (tmp_path / "link").symlink_to(secret)  # the mode checked must be the file's own
    with pytest.raises(PrivateFileError, match="cannot open"):
        read_private(tmp_path / "link", 16)
    with pytest.raises(PrivateFileError, match="not a regular file"):
        read_private(tmp_path, 16)
    with pytest.raises(PrivateFileError, match="does not exist"):
        read_private(tmp_path / "missing", 16)
    secret.chmod(0o640)
    with pytest.raises(PrivateFileError, match=f"chmod 600 {secret}") as shared:
        read_private(secret, 16)
    assert shared.value.exposed  # the caller says to replace the secret too
