"""Starting and stopping the processes modelvc owns: only ours, only by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class StackError(Exception):
    """Raised when the embedded stack cannot start or stop; the message says what to do."""


@dataclass(frozen=True)
class Spawned:
    pid: int
    argv: tuple[str, ...]
    log: str
    port: int = 0  # its HTTP port, for those that serve one


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, pid: int | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid is not None and not alive(pid):
            raise StackError(f"process {pid} exited before listening on port {port}")
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.settimeout(0.2)
            sock.connect(("127.0.0.1", port))
            return
        time.sleep(0.05)
    raise StackError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def spawn(argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> Spawned:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    return Spawned(proc.pid, tuple(argv), str(log))


def alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child (started by an earlier `modelvc up`)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie or a recycled pid running something else is not ours any more.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def is_ours(spawned: Spawned) -> bool:
    """The pid still runs the command we started (pids get recycled)."""
    try:
        cmdline = Path(f"/proc/{spawned.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return alive(spawned.pid)
    return bool(cmdline) and cmdline[0].decode(errors="replace") == spawned.argv[0]


def stop(spawned: Spawned, timeout: float = 10.0, hard: bool = False) -> None:
    """SIGTERM (or SIGKILL with ``hard``), then SIGKILL after ``timeout``."""
    if not alive(spawned.pid) or not is_ours(spawned):
        return
    os.kill(spawned.pid, signal.SIGKILL if hard else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(spawned.pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(spawned.pid, signal.SIGKILL)
    while alive(spawned.pid):
        time.sleep(0.05)
