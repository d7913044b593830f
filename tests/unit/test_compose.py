"""docker-compose.yml's object store: the tests' settings, names the code reads, no secrets.

There is no Docker here, so the compose file is held to the code instead: its store is
the one tests/s3server.py serves (bucket, prefix, region), every variable it sets is
read by modelvc's settings (changing the value changes the setting), the endpoint names
the s3 service's own port, and the one-shot that makes the bucket is `modelvc artifacts
init` (run against a real S3 API, moto, in tests/store/test_init.py).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from modelvc.cli import parser
from streams.artifacts import S3Location, parse_location
from streams.settings import Settings
from tests.s3server import BUCKET, PREFIX, REGION, S3Server
from workers.monitor.settings import MonitorSettings
from workers.settings import WorkerSettings

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]
ENV_FILE = "${MODELVC_HOME:-.modelvc}/s3.env"
SECRETS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
USERS = ("streams", "worker", "s3-bucket")  # the services that talk to the store


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def environment(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in compose()["services"][service]["environment"].items()}


def flag(command: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"-{name}=")]
    assert len(values) == 1, (name, command)
    return values[0]


def test_every_store_user_has_the_tests_bucket_prefix_and_region() -> None:
    for service in USERS:
        env = environment(service)
        assert env["MODELVC_ARTIFACTS"] == f"s3://{BUCKET}/{PREFIX}", service
        assert parse_location(env["MODELVC_ARTIFACTS"]) == S3Location(BUCKET, PREFIX)
        assert env["AWS_DEFAULT_REGION"] == REGION, service
        assert env["MODELVC_S3_ENDPOINT"] == "http://s3:8333", service


def test_the_endpoint_is_the_s3_services_own_port() -> None:
    services = compose()["services"]
    endpoint = urlsplit(environment("streams")["MODELVC_S3_ENDPOINT"])
    server = services[endpoint.hostname]
    port = str(endpoint.port)
    assert flag(server["command"], "s3.port") == port
    assert flag(server["command"], "ip") == endpoint.hostname
    assert f"127.0.0.1:{port}/" in " ".join(server["healthcheck"]["test"])
    assert server["ports"] == [f"${{MODELVC_PUBLISH_HOST:-127.0.0.1}}:{port}:{port}"]


def test_compose_sets_what_a_test_process_is_given() -> None:
    """The store's variables in compose, plus the env file's key pair, are exactly those
    tests/s3server.py hands every modelvc process it starts."""
    server_env_names = {
        "MODELVC_ARTIFACTS",
        "MODELVC_S3_ENDPOINT",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
    }
    tests_give = S3Server("http://x:1", 0, "k", "s", Path("log")).env()
    assert set(tests_give) == server_env_names
    anchor = compose()["x-artifact-store"]
    assert set(anchor) | {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} == set(tests_give)


def test_the_streams_app_reads_the_names_compose_sets() -> None:
    env = environment("streams")
    settings = Settings.from_env(env)
    assert settings.artifacts == f"s3://{BUCKET}/{PREFIX}"
    assert settings.s3_endpoint == "http://s3:8333"
    # With an S3 store, uploads are checked on the instance's own disk: the data volume.
    assert settings.staging_dir == Path("/data/streams/uploads")
    moved = Settings.from_env(
        env | {"MODELVC_ARTIFACTS": "s3://other-bucket/p", "MODELVC_S3_ENDPOINT": "http://o:1"}
    )
    assert (moved.artifacts, moved.s3_endpoint) == ("s3://other-bucket/p", "http://o:1")


def test_the_worker_reads_the_names_compose_sets() -> None:
    env = environment("worker")
    settings = WorkerSettings.from_env(env)
    assert settings.topics.artifacts == f"s3://{BUCKET}/{PREFIX}"
    assert settings.topics.s3_endpoint == "http://s3:8333"
    assert settings.cache_mb == int(env["MODELVC_WORKER_CACHE_MB"])
    assert WorkerSettings.from_env(env | {"MODELVC_WORKER_CACHE_MB": "17"}).cache_mb == 17
    # No cache directory is set: each replica of `--scale worker=N` keeps its own.
    assert "MODELVC_WORKER_CACHE" not in env
    assert WorkerSettings.from_env(env | {"MODELVC_WORKER_CACHE": "/c"}).cache_dir == Path("/c")


def test_the_monitor_reads_the_names_compose_sets() -> None:
    env = environment("monitor")
    settings = MonitorSettings.from_env(env)
    assert settings.topics.bootstrap == "kafka:9092"
    assert (settings.web_host, settings.web_port) == ("0.0.0.0", 6072)
    assert settings.monitor_id == "monitor-1"
    assert settings.state_dir == Path("/data/monitor")
    assert settings.api_url == "http://streams:6066"
    assert settings.token_file == Path("/run/secrets/admin_token")
    assert "admin_token" in compose()["services"]["monitor"]["secrets"]


def test_no_credentials_are_written_in_compose() -> None:
    services = compose()["services"]
    for name, service in services.items():
        assert not SECRETS & set(service.get("environment", {})), name
    for name in (*USERS, "s3"):
        assert services[name]["env_file"] == ENV_FILE, name


def test_the_s3_image_is_a_pinned_release() -> None:
    image = compose()["services"]["s3"]["image"]
    name, _, tag = image.partition(":")
    assert name == "chrislusf/seaweedfs"
    assert tag.replace(".", "").isdigit(), f"{image}: pin a release, not a moving tag"


def test_nothing_starts_before_the_bucket_exists() -> None:
    services = compose()["services"]
    for name in ("streams", "worker"):
        assert services[name]["depends_on"]["s3-bucket"] == {
            "condition": "service_completed_successfully"
        }
        assert not any("artifacts" in v for v in services[name].get("volumes", [])), name
    assert services["s3-bucket"]["depends_on"]["s3"] == {"condition": "service_healthy"}


def test_the_bucket_one_shot_is_modelvcs_own_init() -> None:
    """The one-shot runs `modelvc artifacts init` on the store its environment names (no
    --store: MODELVC_ARTIFACTS), so the bucket, its lifecycle rule and the write check come
    from the store code the services use (tests/store/test_init.py runs it against moto)."""
    command = compose()["services"]["s3-bucket"]["command"]
    assert command[0] == "modelvc"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["modelvc"] == "modelvc.cli:main"
    args = parser().parse_args(command[1:])
    assert (args.command, args.action, args.store) == ("artifacts", "init", None)
