"""Shared fixtures: a real broker and a real streams app, cleaned up by pid."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from modelvc.processes import stop
from modelvc.stack import Stack, start_broker


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """KAFKA_BOOTSTRAP when set; else a testcontainers Kafka when Docker answers; else Tansu."""
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server()
        return
    broker, address = start_broker(tmp_path_factory.mktemp("broker"))
    try:
        yield address
    finally:
        stop(broker)


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def stack(tmp_path: Path, bootstrap: str, namespace: str) -> Iterator[Stack]:
    """A streams app of its own (own topics) on the shared broker; stopped even on failure."""
    s = Stack.up(tmp_path / "home", bootstrap=bootstrap, namespace=namespace)
    try:
        yield s
    finally:
        s.down()


def train_model(path: Path, seed: int = 0, rounds: int = 5, features: int = 4) -> Path:
    import lightgbm as lgb

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, features))
    y = (x[:, 0] > 0).astype(int)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 4, "verbosity": -1, "num_threads": 1},
        lgb.Dataset(x, y),
        num_boost_round=rounds,
    )
    booster.save_model(str(path))
    return path


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return train_model(tmp_path / "model.txt")
