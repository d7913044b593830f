"""`python -m workers` stops at startup, with one line and status 1, on what it cannot use.

A process test (an interpreter, LightGBM and the settings read afresh): several seconds,
so it lives here; tests/unit/test_worker_loader.py covers the same through ``main()``.
No broker is needed to get there: nothing listens on the bootstrap address given.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from modelvc.processes import free_port
from streams.settings import Settings
from workers.settings import WorkerSettings


def test_a_store_that_fails_its_check_stops_the_worker_before_it_consumes(
    tmp_path: Path,
) -> None:
    (tmp_path / "file").write_bytes(b"")
    topics = Settings(data_dir=tmp_path / "home" / "streams", artifacts=str(tmp_path / "file"))
    settings = WorkerSettings(topics=topics, worker_id="w1", shared_store=True)
    env = os.environ | settings.to_env() | {"KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    done = subprocess.run(
        [sys.executable, "-m", "workers"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr  # as `python -m streams` for the same fault
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "not a directory" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
