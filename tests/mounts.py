"""Filesystems the tests mount to make a directory full or read-only (they run as root,
whom file modes do not stop); a test skips where mounting is not allowed."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tiny_filesystem(path: Path, size: str = "64k", options: str = "") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted over ``path`` (``options``: more mount options, e.g. ro)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            ",".join(filter(None, [f"size={size}", options])),
            "tmpfs",
            str(path),
        ],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def read_only_directory(path: Path) -> Iterator[Path]:
    """``path``, a directory this process may not write: read-only to its owner, or for
    root a read-only tmpfs mounted over it."""
    if os.geteuid() == 0:
        with tiny_filesystem(path, options="ro") as mounted:
            yield mounted
        return
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o500)
    try:
        yield path
    finally:
        path.chmod(0o700)
