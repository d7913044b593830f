"""A real S3 API on a loopback port for the tests: moto's server, started and stopped by pid.

IAM is enforced once the server is set up (``INITIAL_NO_AUTH_ACTION_COUNT``): the first
requests create a user, its access key and a policy allowing S3, a second user allowed to
read only (what a worker needs, not what the streams app needs), then the bucket (with
the first key); from then on a wrong key is refused as AWS refuses it (InvalidAccessKeyId),
and a write with the reader's key too (AccessDenied).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3

from modelvc.processes import free_port, spawn, stop, wait_for_port

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BUCKET = "modelvc-artifacts"
PREFIX = "models"
REGION = "us-east-1"
# Requests moto serves before it checks credentials: exactly those of the setup below
# (create_user, create_access_key, put_user_policy for each of two users, create_bucket).
SETUP_REQUESTS = 7
START_TIMEOUT_S = 30.0

_ALLOW_S3 = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}
_READ_S3 = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["s3:Get*", "s3:List*"], "Resource": "*"}],
}


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    pid: int
    access_key: str
    secret_key: str
    log: Path
    reader_key: str = ""  # a key that may read the bucket, never write it
    reader_secret: str = ""

    def env(self, prefix: str = PREFIX) -> dict[str, str]:
        """What a modelvc process needs to use the bucket under ``prefix``."""
        return {
            "MODELVC_ARTIFACTS": f"s3://{BUCKET}/{prefix}",
            "MODELVC_S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self) -> S3Client:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )


@contextmanager
def running_s3(tmp: Path) -> Iterator[S3Server]:
    """A moto server with IAM enforced and the bucket made; stopped by pid, even on failure."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_REQUESTS)}
    server = spawn(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        tmp / "moto.log",
        env=env,
    )
    try:
        wait_for_port(port, START_TIMEOUT_S, pid=server.pid)
        endpoint = f"http://127.0.0.1:{port}"
        # Any key passes before IAM is enforced; these are not secrets.
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        keys = {}
        for user, policy in (("modelvc", _ALLOW_S3), ("reader", _READ_S3)):
            iam.create_user(UserName=user)
            keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
            iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
        s3 = S3Server(
            endpoint,
            server.pid,
            keys["modelvc"]["AccessKeyId"],
            keys["modelvc"]["SecretAccessKey"],
            Path(server.log),
            reader_key=keys["reader"]["AccessKeyId"],
            reader_secret=keys["reader"]["SecretAccessKey"],
        )
        s3.client().create_bucket(Bucket=BUCKET)
        yield s3
    finally:
        stop(server)
