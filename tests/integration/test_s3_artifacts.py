"""Issue 15 end to end: artifacts on S3 (moto's server), shared by every instance and worker.

One stack for the module, on a Tansu broker of its own (not the ``bootstrap`` fixture:
this module runs in tier 2 only) and a prefix of its own in the ``s3`` server's bucket:
two streams instances with separate local disks, and a worker on a third disk whose
only artifact source is the bucket (its API fallback points at a port nobody listens on).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from modelvc.processes import Spawned, free_port, spawn, stop
from modelvc.stack import Stack, start_broker, start_worker, streams_env
from modelvc.streaming import FeatureProducer
from streams.http_client import TOKEN_FILE_ENV
from tests.integration.test_workers import (
    exit_status,
    features,
    healthz,
    predictions,
    rows,
    train,
    wait_for,
)
from tests.s3server import BUCKET, S3Server
from workers.metrics import sample_sum

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.broker

WORKER = "worker-s3"
STARTUP_EXIT_S = 30.0  # "within seconds", with room for imports on a loaded 2-core machine


@dataclass(frozen=True)
class SharedStore:
    stack: Stack
    s3: S3Server
    prefix: str
    second_url: str  # the second streams instance (its own data_dir)
    second_staging: Path  # where that instance stages uploads being checked
    worker_url: str
    worker_disk: Path  # the worker's data directory (its cache lives beside it)

    @property
    def location(self) -> str:
        return f"s3://{BUCKET}/{self.prefix}"

    @property
    def cache_dir(self) -> Path:
        return self.worker_disk / "cache" / WORKER

    def key(self, digest: str) -> str:
        return f"{self.prefix}/sha256/{digest[:2]}/{digest}"

    def objects(self) -> set[str]:
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=BUCKET, Prefix=f"{self.prefix}/")
        )
        return {o["Key"] for page in pages for o in page.get("Contents", [])}

    def uploads(self) -> list[str]:
        """Multipart uploads in progress under the prefix (parts nobody completed)."""
        answer = self.client().list_multipart_uploads(Bucket=BUCKET, Prefix=f"{self.prefix}/")
        return [u["Key"] for u in answer.get("Uploads", [])]

    def client(self) -> S3Client:
        return self.s3.client()


@pytest.fixture(scope="module")
def shared(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedStore]:
    tmp = tmp_path_factory.mktemp("s3e2e")
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"  # the session's bucket is shared with other modules
    # Nothing listens there: a worker that fell back to the API would fail every load.
    dead_api = f"http://127.0.0.1:{free_port()}"
    with pytest.MonkeyPatch.context() as env:
        # The processes the stack starts inherit the AWS_* variables, as a deployment's would.
        for name, value in s3.env(prefix).items():
            env.setenv(name, value)
        broker, address = start_broker(tmp / "broker")
        stack: Stack | None = None
        worker: Spawned | None = None
        try:
            stack = Stack.up(
                tmp / "home",
                bootstrap=address,
                namespace=f"t{uuid.uuid4().hex[:10]}",
                artifacts=s3.env(prefix)["MODELVC_ARTIFACTS"],
                s3_endpoint=s3.endpoint,
            )
            _, second_url = stack.add_streams("streams-b")
            # add_streams gives the instance the data directory home/<name>.
            second = dataclasses.replace(stack.settings, data_dir=stack.home / "streams-b")
            worker_disk = tmp / "worker-disk"
            settings = dataclasses.replace(stack.settings, data_dir=worker_disk / "streams")
            env.setenv("MODELVC_ARTIFACT_URL", dead_api)
            worker = start_worker(settings, stack.home, WORKER, None, stack.worker_token_file())
            env.delenv("MODELVC_ARTIFACT_URL")
            yield SharedStore(
                stack,
                s3,
                prefix,
                second_url,
                second.staging_dir,
                f"http://127.0.0.1:{worker.port}",
                worker_disk,
            )
        finally:
            if worker is not None:
                stop(worker)
            if stack is not None:
                stack.down()
            stop(broker)


def serving(shared: SharedStore) -> dict[str, str]:
    return dict(healthz(shared.worker_url)["serving"])


def artifact_failures(shared: SharedStore, model: str) -> float:
    with urllib.request.urlopen(shared.worker_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return sample_sum(text, "modelvc_artifact_failures_total", model=model)


def publish(shared: SharedStore, model: str, count: int, tag: str) -> list[str]:
    settings = shared.stack.settings
    ids = [f"{tag}{i}" for i in range(count)]
    with FeatureProducer(settings.bootstrap, settings.features_topic) as producer:
        for event_id, row in zip(ids, rows(count), strict=True):
            producer.publish(model, features(row), event_id=event_id)
    return ids


def scored(shared: SharedStore, ids: list[str]) -> dict[str, dict[str, Any]]:
    def found() -> dict[str, dict[str, Any]] | None:
        got = {p["feature_event_id"]: p for p in predictions(shared.stack)}
        return got if set(ids) <= set(got) else None

    got = wait_for(found, what=f"predictions for {ids[0]}..")
    return {event_id: got[event_id] for event_id in ids}


def files_named(root: Path, name: str) -> list[Path]:
    return [p for p in root.rglob(name) if p.is_file()]


def test_upload_on_one_instance_commit_on_another_serve_from_a_third_disk(
    shared: SharedStore, tmp_path: Path
) -> None:
    path, booster = train(tmp_path / "v0.txt", seed=1)
    digest = shared.stack.client().upload(path)["sha256"]
    assert shared.key(digest) in shared.objects()
    # The uploading instance kept nothing on its disk: the bucket is the only copy.
    assert files_named(shared.stack.home, digest) == []

    other = shared.stack.client(shared.second_url)
    other.create("churn")
    head = other.commit("churn", digest, "v0 from the other instance")["head"]
    assert other.show("churn", head)["artifact_sha256"] == digest

    ids = publish(shared, "churn", 20, "churn")
    got = scored(shared, ids)
    expected = booster.predict(rows(20))
    for i, event_id in enumerate(ids):
        assert (got[event_id]["commit_id"], got[event_id]["scores"]) == (head, [expected[i]])
    assert serving(shared)["churn@main"] == head
    # Read from the bucket (the API fallback is dead) into the worker's own cache, by digest.
    assert files_named(shared.worker_disk, digest) == [shared.cache_dir / digest]


def test_an_object_altered_in_the_bucket_is_refused_and_the_previous_version_serves(
    shared: SharedStore, tmp_path: Path
) -> None:
    c = shared.stack.client()
    c.create("fraud")
    path0, booster0 = train(tmp_path / "v0.txt", seed=2)
    head0 = c.commit("fraud", c.upload(path0)["sha256"], "v0")["head"]
    publish(shared, "fraud", 1, "warm")
    wait_for(lambda: serving(shared).get("fraud@main") == head0, what="v0 served")

    path1, _ = train(tmp_path / "v1.txt", seed=3)
    digest1 = c.upload(path1)["sha256"]
    s3 = shared.client()
    original = s3.get_object(Bucket=BUCKET, Key=shared.key(digest1))["Body"].read()
    # One byte flipped, same size: only the digest can tell.
    middle = len(original) // 2
    altered = original[:middle] + bytes([original[middle] ^ 0x01]) + original[middle + 1 :]
    s3.put_object(Bucket=BUCKET, Key=shared.key(digest1), Body=altered)
    head1 = c.commit("fraud", digest1, "v1, altered in the bucket before any load")["head"]

    wait_for(lambda: artifact_failures(shared, "fraud") >= 2, what="retried load failures")
    failure = healthz(shared.worker_url)["failures"]["fraud@main"]
    assert (failure["commit_id"], failure["artifact_sha256"]) == (head1, digest1)
    assert serving(shared)["fraud@main"] == head0
    ids = publish(shared, "fraud", 10, "kept")
    expected = booster0.predict(rows(10))
    got = scored(shared, ids)
    assert [got[i]["commit_id"] for i in ids] == [head0] * 10
    assert [got[i]["scores"] for i in ids] == [[e] for e in expected]
    assert not (shared.cache_dir / digest1).exists()  # the altered bytes were never kept

    s3.put_object(Bucket=BUCKET, Key=shared.key(digest1), Body=original)
    wait_for(lambda: serving(shared).get("fraud@main") == head1, what="recovery once repaired")


def interrupt_an_upload(url: str, token: str, staging: Path) -> None:
    """Start an upload to ``url``, wait until its body is being staged in ``staging``, then
    close the connection mid-body (8 MiB of a body that never ends)."""
    host, port = urlsplit(url).hostname or "127.0.0.1", urlsplit(url).port or 80
    chunk = b"x" * (1 << 20)
    with socket.create_connection((host, port)) as sock:
        sock.sendall(
            f"POST /v1/artifacts HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {token}\r\n"
            "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        sock.sendall(b"5\r\ntree\n\r\n")
        for _ in range(8):
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        wait_for(
            lambda: staging.is_dir() and any(staging.iterdir()),
            timeout=10,
            what=f"the upload staged in {staging}",
        )


def test_an_interrupted_upload_is_staged_locally_and_removed_never_reaching_the_bucket(
    shared: SharedStore,
) -> None:
    """An upload's body goes to the receiving instance's own disk first; a client gone
    mid-body must leave no staged file on either instance, and nothing in the bucket."""
    before = shared.objects()
    instances = [
        (shared.stack.url, shared.stack.settings.staging_dir),
        (shared.second_url, shared.second_staging),
    ]
    assert instances[0][1] != instances[1][1]  # separate local disks
    for url, staging in instances:
        interrupt_an_upload(url, shared.stack.token, staging)
    for url, staging in instances:
        wait_for(
            lambda staging=staging: not any(staging.iterdir()),
            timeout=10,
            what=f"the staged file removed from {staging}",
        )
        assert healthz(url)["ready"] is True
    assert shared.objects() == before
    assert shared.uploads() == []


def test_wrong_credentials_stop_streams_and_worker_at_startup(
    shared: SharedStore, tmp_path: Path
) -> None:
    stack = shared.stack
    settings = dataclasses.replace(
        stack.settings,
        web_port=free_port(),
        instance_id=f"{stack.settings.instance_id}-wrong",
        data_dir=tmp_path / "disk" / "streams",
    )
    env = streams_env(settings) | {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    worker_env = env | {
        "MODELVC_WORKER_ID": "worker-wrong",
        "MODELVC_WORKER_PORT": str(free_port()),
        "MODELVC_URL": stack.url,
        "MODELVC_WORKER_KEY": str(tmp_path / "worker.key"),
        TOKEN_FILE_ENV: str(stack.worker_token_file()),
    }
    for module, child_env in (("streams", env), ("workers", worker_env)):
        log = tmp_path / f"{module}.log"
        started = time.monotonic()
        child = spawn([sys.executable, "-m", module], log, env=child_env)
        try:
            status = exit_status(child.pid, STARTUP_EXIT_S)
        finally:
            stop(child, hard=True)
        text = log.read_text()
        assert status is not None, f"python -m {module} still runs with wrong credentials:\n{text}"
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0, (module, status, text)
        assert time.monotonic() - started < STARTUP_EXIT_S
        # One line says which store refused and what to set; no traceback wall.
        named = [
            line
            for line in text.splitlines()
            if shared.location in line and "credentials" in line.lower()
        ]
        assert len(named) == 1, (module, text)
        assert re.search(r"AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|PROFILE)", named[0]), named[0]
        assert "Traceback" not in text, (module, text)
