"""`modelvc audit replay --decoder reference` on a live log: Apache Avro and fastavro
agree on every message a real deployment wrote."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaProducer

from modelvc.stack import Stack
from streams.codec import decode_event
from streams.core.signatures import is_system_stream
from streams.errors import UndecodableMessage
from streams.logreader import read_topic
from tests.conftest import train_model
from tests.integration.test_service import history

pytestmark = pytest.mark.broker


def system_events(stack: Stack) -> int:
    """Events of the ~security and ~keys.P chains in the log."""
    count = 0
    for record in read_topic(stack.settings.access, stack.settings.events_topic):
        with contextlib.suppress(UndecodableMessage):  # the foreign garbage this test writes
            count += is_system_stream(decode_event(record.value).model) if record.value else 0
    return count


def test_a_live_log_cross_checks_clean_with_apache_avro(stack: Stack, tmp_path: Path) -> None:
    c = stack.client()
    history(c, "churn", [train_model(tmp_path / "a.txt", 1), train_model(tmp_path / "b.txt", 2)])
    # A foreign producer's garbage: both decoders refuse it, so it is skipped, not a mismatch.
    producer = KafkaProducer(bootstrap_servers=stack.settings.bootstrap)
    producer.send(stack.settings.events_topic, key=b"churn", value=b"not avro").get(10)
    producer.close()
    env = {**os.environ, "MODELVC_HOME": str(stack.home), "MODELVC_URL": stack.url}
    runs = {}
    # Two jobs for the reference: its partition-group children must cross-check too.
    for decoder, jobs in (("fastavro", "1"), ("reference", "2")):
        command = ["audit", "replay", "--decoder", decoder, "--jobs", jobs]
        done = subprocess.run(
            [sys.executable, "-m", "modelvc.cli", "--json", *command],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        runs[decoder] = json.loads(done.stdout)
    report = runs["reference"]
    assert report["decoder"] == "reference" and runs["fastavro"]["decoder"] == "fastavro"
    assert report["violations"] == []
    # One per command of the history, and the system chains' (the admin token, writer keys).
    assert report["events"] == 10 + system_events(stack)
    assert len(report["skipped"]) == 1
    assert report["digest"] == report["live_digest"] == runs["fastavro"]["digest"]
