"""Shared fixtures: a real broker and a real streams app, cleaned up by pid."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from modelvc.kafka_broker import running_cluster
from modelvc.processes import stop
from modelvc.stack import Stack, start_broker
from tests.s3server import S3Server, running_s3

# Hypothesis's default 200 ms deadline per example is a wall-clock test: on a loaded machine
# (the suite runs its tiers side by side) it fails examples that are merely slow. Tests that
# bound a hostile input's time say so themselves, with a bound far from the failure.
settings.register_profile("modelvc", deadline=None)
settings.load_profile("modelvc")

# Which brokers the broker-backed tests run on: MODELVC_TEST_BROKERS=tansu (default),
# kafka, or tansu,kafka. Each test that uses `bootstrap` (directly or through `stack`)
# runs once per kind, with ids like test_x[tansu] and test_x[kafka].
BROKER_KINDS = ("tansu", "kafka")
BROKERS_ENV = "MODELVC_TEST_BROKERS"


def selected_broker_kinds() -> list[str]:
    raw = os.environ.get(BROKERS_ENV, "tansu")
    kinds = list(dict.fromkeys(k.strip() for k in raw.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in BROKER_KINDS]
    if unknown or not kinds:
        raise pytest.UsageError(
            f"{BROKERS_ENV}={raw!r}: name one or more of {', '.join(BROKER_KINDS)}, "
            f"comma-separated (e.g. {BROKERS_ENV}=tansu,kafka)"
        )
    return kinds


@pytest.fixture(scope="session", params=selected_broker_kinds())
def broker_kind(request: pytest.FixtureRequest) -> str:
    """The kind of broker behind `bootstrap`: "tansu" or "kafka" (Apache Kafka)."""
    return str(request.param)


@pytest.fixture(scope="session")
def bootstrap(broker_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """KAFKA_BOOTSTRAP when set (taken to be of the selected kind); else a broker we start.

    "tansu": the embedded Tansu broker. "kafka": one Apache Kafka 4.x node from the
    jars `make kafka` fetched; no Java or no jars is an error, never a silent skip.
    """
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    if broker_kind == "kafka":
        with running_cluster(tmp_path_factory.mktemp("kafka"), brokers=1) as cluster:
            yield cluster.bootstrap
        return
    broker, address = start_broker(tmp_path_factory.mktemp("broker"))
    try:
        yield address
    finally:
        stop(broker)


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 API (moto's server, IAM enforced) with the bucket made; stopped by pid."""
    with running_s3(tmp_path_factory.mktemp("s3")) as server:
        yield server


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


@contextmanager
def _shared_stack(factory: pytest.TempPathFactory, bootstrap: str, workers: int) -> Iterator[Stack]:
    s = Stack.up(
        factory.mktemp("stack") / "home",
        bootstrap=bootstrap,
        namespace=f"t{uuid.uuid4().hex[:10]}",
        workers=workers,
    )
    try:
        yield s
    finally:
        s.down()


@pytest.fixture(scope="module")
def module_stack(tmp_path_factory: pytest.TempPathFactory, bootstrap: str) -> Iterator[Stack]:
    """One streams app (own topics) shared by a module's tests; stopped even on failure.

    Most of a broker-backed test's time was starting and stopping a stack of its own
    (about 10 s of 15 on Tansu). Tests that share this one keep out of each other's way
    with a model of their own (:func:`model`) and never assume the log holds only theirs.
    """
    with _shared_stack(tmp_path_factory, bootstrap, workers=0) as s:
        yield s


@pytest.fixture(scope="module")
def module_serving(tmp_path_factory: pytest.TempPathFactory, bootstrap: str) -> Iterator[Stack]:
    """:func:`module_stack` with one worker (``worker-1``), for tests that need predictions."""
    with _shared_stack(tmp_path_factory, bootstrap, workers=1) as s:
        yield s


@pytest.fixture
def model() -> str:
    """A model name no other test uses: what keeps tests on a shared stack apart."""
    return f"m{uuid.uuid4().hex[:10]}"


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
