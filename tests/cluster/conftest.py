"""The 3-broker cluster suite: one Apache Kafka cluster for every scenario, a stack each.

Runs when ``MODELVC_TEST_CLUSTER=1``, or when ``MODELVC_TEST_BROKERS`` names kafka
(unless ``MODELVC_TEST_CLUSTER=0``). Every scenario draws each choice from
``random.Random(seed)``; the seed is ``MODELVC_CLUSTER_SEED`` (default below) and a
failure report names it with the command that replays the scenario.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelvc.kafka_broker import KafkaCluster, running_cluster, stop_recorded
from modelvc.stack import Stack
from tests.cluster.load import BROKERS, DEFAULT_SEED, SEED_ENV, replicated
from tests.conftest import train_model


def scenario_seed() -> int:
    raw = os.environ.get(SEED_ENV, str(DEFAULT_SEED))
    try:
        return int(raw, 0)
    except ValueError:
        raise pytest.UsageError(f"{SEED_ENV}={raw[:40]!r} is not an integer; unset it") from None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    outcome: Any = yield
    report = outcome.get_result()
    if report.failed and "seed" in getattr(item, "fixturenames", ()):
        report.sections.append(
            (
                "replay this scenario",
                f"{SEED_ENV}={scenario_seed()} MODELVC_TEST_CLUSTER=1 "
                f".venv/bin/pytest 'tests/cluster/{Path(str(item.fspath)).name}::{item.name}'",
            )
        )


@pytest.fixture
def seed() -> int:
    value = scenario_seed()
    print(f"scenario seed: {SEED_ENV}={value}")
    return value


@pytest.fixture
def rng(seed: int) -> random.Random:
    return random.Random(seed)


@pytest.fixture(scope="session", autouse=True)
def quiet_failovers() -> None:
    """kafka-python logs every refused connection to a killed broker as an error: that is
    the fault under test, and pages of it would bury a failure's own message."""
    logging.getLogger("kafka").setLevel(logging.CRITICAL)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """Three KRaft nodes shared by the scenarios; every JVM stopped by pid on the way out
    (also those a scenario restarted, and after a failure half way through one)."""
    home = tmp_path_factory.mktemp("cluster")
    try:
        with running_cluster(home, brokers=BROKERS) as started:
            yield started
    finally:
        left = stop_recorded(home, hard=True)
    # The launcher's own stop must reach the nodes the scenarios killed and restarted.
    assert left == 0, f"{left} Kafka node(s) outlived the cluster's stop; see {home}/cluster.json"


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_model(tmp_path_factory.mktemp("model") / "model.txt", seed=7)


@pytest.fixture
def stack(tmp_path: Path, cluster: KafkaCluster, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """modelvc on the cluster in a namespace of its own, with one worker; stopped by pid."""
    namespace = f"c-{request.node.name.removeprefix('test_')[:40]}-{os.getpid()}"
    namespace = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in namespace)
    s = Stack.up(tmp_path / "home", bootstrap=cluster.bootstrap, namespace=namespace, workers=1)
    try:
        replicated(s.settings)
        yield s
    finally:
        s.down()
