"""`modelvc artifacts init`: a store made ready for the services, on S3 (moto) and on disk.

docker-compose's `s3-bucket` one-shot is this command (tests/unit/test_compose.py holds
it to that); here it runs as compose runs it, with the store named by MODELVC_ARTIFACTS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from modelvc.cli import INIT_ABORT_DAYS, main
from tests.s3server import PREFIX, S3Server
from tests.unit.test_compose import REPO, compose

EXIT_UNREACHABLE = 3


def s3_env(s3: S3Server, bucket: str, home: Path) -> dict[str, str]:
    return s3.env() | {
        "MODELVC_ARTIFACTS": f"s3://{bucket}/{PREFIX}",
        "MODELVC_HOME": str(home),  # no stack.json there: only the environment counts
    }


def test_the_compose_one_shot_makes_the_bucket_and_its_rule_and_runs_again(
    s3: S3Server, tmp_path: Path
) -> None:
    """Compose's command against moto, twice, as on every `docker compose up`."""
    command = compose()["services"]["s3-bucket"]["command"]
    assert command[0] == "modelvc"
    bucket = f"init-{uuid.uuid4().hex[:10]}"
    env = {**os.environ, **s3_env(s3, bucket, tmp_path)}
    said = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "modelvc.cli", *command[1:]],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"s3://{bucket}/{PREFIX} is ready" in done.stdout
        said.append(done.stdout)
    assert said[0].startswith("created the bucket") and said[1].startswith("the bucket exists")
    client = s3.client()
    client.head_bucket(Bucket=bucket)
    (rule,) = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert rule["Status"] == "Enabled"
    assert rule["Filter"] == {"Prefix": f"{PREFIX}/"}
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": INIT_ABORT_DAYS}
    # The write check (what a streams app checks at startup) left nothing behind.
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_init_with_refused_credentials_says_what_to_fix_and_makes_nothing(
    s3: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bucket = f"init-{uuid.uuid4().hex[:10]}"
    for name, value in s3_env(s3, bucket, tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    assert main(["artifacts", "init"]) == EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert f"s3://{bucket}/{PREFIX}" in err and "AWS_SECRET_ACCESS_KEY" in err, err
    buckets = {b["Name"] for b in s3.client().list_buckets()["Buckets"]}
    assert bucket not in buckets


def test_init_makes_a_directory_store_and_runs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODELVC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MODELVC_ARTIFACTS", raising=False)
    root = tmp_path / "deep" / "artifacts"
    answers = []
    for _ in range(2):
        assert main(["artifacts", "init", "--store", str(root), "--json"]) == 0
        answers.append(json.loads(capsys.readouterr().out))
    assert answers == [
        {"store": str(root), "created": True},
        {"store": str(root), "created": False},
    ]
    assert root.is_dir()
    # The reading commands find it now (they never create a store).
    assert main(["artifacts", "ls", "--store", str(root)]) == 0
    assert "0 objects" in capsys.readouterr().out
