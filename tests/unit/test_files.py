"""Durable replacement: the new bytes whole or the old ones, and no temporary file left."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.files import commit_file, write_atomically


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
