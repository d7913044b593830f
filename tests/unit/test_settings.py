"""Settings travel to child processes through the environment and come back unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st

from streams.settings import Settings
from workers.settings import WorkerSettings

# Environment values are text without NUL; paths and hosts come back as they went.
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1)
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True)
paths = st.builds(
    Path, st.from_regex(r"/?[a-z0-9_.-]{1,12}(/[a-z0-9_-]{1,12}){0,3}", fullmatch=True)
)
seconds = st.floats(min_value=0.001, max_value=1e6, allow_nan=False)
buckets = st.from_regex(
    r"s3://[a-z0-9][a-z0-9-]{1,20}[a-z0-9](/[A-Za-z0-9_-]{1,10}){0,3}/?", fullmatch=True
)
endpoints = st.from_regex(
    r"https?://[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){0,2}(:[1-9][0-9]{0,3})?/?", fullmatch=True
)

settings = st.builds(
    Settings,
    namespace=names,
    bootstrap=text,
    partitions=st.integers(1, 10_000),
    data_dir=paths,
    artifacts=paths.map(str) | buckets,
    s3_endpoint=st.none() | endpoints,
    max_model_bytes=st.sampled_from([1, 64, 4096]).map(lambda mb: mb << 20),
    archive_dir=paths,
    web_host=text,
    web_port=st.integers(1, 65535),
    instance_id=text,
    fetch_wait_ms=st.integers(0, 100_000),
    command_timeout_s=seconds,
    consistency_timeout_s=seconds,
    writer_key=paths,
    bootstrap_token_file=st.none() | paths,
    admin_actor=names,
    trusted_writer_keys=st.frozensets(st.from_regex(r"[0-9a-f]{64}", fullmatch=True), max_size=3),
)
worker_settings = st.builds(
    WorkerSettings,
    topics=settings,
    worker_id=text,
    group_id=text,
    web_host=text,
    web_port=st.integers(1, 65535),
    shared_store=st.booleans(),
    api_url=st.none() | text,
    max_batch=st.integers(1, 1_000_000),
    max_refs=st.integers(1, 1_000_000),
    worker_memory_mb=st.integers(1, 1 << 20),
    retry_s=seconds,
)


# Many text fields: on a busy machine drawing them is slow, which is not what this checks.
roomy = examples(suppress_health_check=[HealthCheck.too_slow])


@roomy
@given(settings)
def test_settings_come_back_from_their_environment(s: Settings) -> None:
    assert Settings.from_env(s.to_env()) == s


@roomy
@given(worker_settings)
def test_worker_settings_come_back_from_their_environment(w: WorkerSettings) -> None:
    assert WorkerSettings.from_env(w.to_env()) == w


def test_every_name_derives_from_the_namespace() -> None:
    s = Settings(namespace="tenant-a")
    assert s.namespace == "tenant-a" and s.app_id == "tenant-a-streams"
    assert [
        s.events_topic,
        s.commands_topic,
        s.replies_topic,
        s.dead_letter_topic,
        s.features_topic,
        s.predictions_topic,
    ] == [
        "tenant-a.events",
        "tenant-a.commands",
        "tenant-a.replies",
        "tenant-a.dead-letter",
        "tenant-a.features",
        "tenant-a.predictions",
    ]
    assert WorkerSettings.from_env({"MODELVC_NAMESPACE": "tenant-a"}).group_id == "tenant-a-workers"


@pytest.mark.parametrize("namespace", ["", "a b", "../x", "-x", "é", "a" * 201, "a\nb"])
def test_a_namespace_outside_the_topic_alphabet_is_refused(namespace: str) -> None:
    with pytest.raises(ValueError, match="MODELVC_NAMESPACE"):
        Settings.from_env({"MODELVC_NAMESPACE": namespace})


def test_the_archive_directory_is_read_at_the_edge() -> None:
    assert Settings.from_env({"MODELVC_ARCHIVE_DIR": "/srv/a"}).archive_dir == Path("/srv/a")
    beside = Settings.from_env({"MODELVC_DATA_DIR": "/srv/data/streams"})
    assert beside.archive_dir == Path("/srv/data/archive")


def test_a_worker_reads_a_store_directory_only_when_given_one() -> None:
    local = WorkerSettings.from_env({})
    assert local.artifact_store is None and local.artifact_url == "http://127.0.0.1:6066"
    shared = WorkerSettings.from_env({"MODELVC_ARTIFACTS": "/srv/store", "MODELVC_WEB_PORT": "7"})
    assert shared.artifact_store == "/srv/store"
    assert shared.artifact_url == "http://127.0.0.1:7"
    apart = WorkerSettings.from_env(
        {"MODELVC_ARTIFACTS": "/srv/store", "MODELVC_WORKER_SHARED_STORE": "0"}
    )
    assert apart.artifact_store is None
    told = WorkerSettings.from_env({"MODELVC_URL": "http://api:1", "MODELVC_ARTIFACT_URL": ""})
    assert told.artifact_url == "http://api:1"


def test_the_writer_key_lives_in_the_data_directory_unless_told() -> None:
    assert Settings.from_env({"MODELVC_DATA_DIR": "/srv/s"}).writer_key == Path("/srv/s/writer.key")
    assert Settings(data_dir=Path("/d")).writer_key == Path("/d/writer.key")
    told = Settings.from_env({"MODELVC_WRITER_KEY": "/k/w.key", "MODELVC_ADMIN_ACTOR": "ops"})
    assert told.writer_key == Path("/k/w.key") and told.admin_actor == "ops"
    assert told.bootstrap_token_file is None


@pytest.mark.parametrize("actor", ["", "a b", "~security", "x" * 200])
def test_an_admin_actor_that_is_no_name_is_refused(actor: str) -> None:
    with pytest.raises(ValueError, match="MODELVC_ADMIN_ACTOR"):
        Settings.from_env({"MODELVC_ADMIN_ACTOR": actor})


def test_trusted_writer_keys_are_key_ids_separated_by_commas() -> None:
    one, two = "ab" * 32, "cd" * 32
    told = Settings.from_env({"MODELVC_TRUSTED_WRITER_KEYS": f" {one},{two.upper()}, "})
    assert told.trusted_writer_keys == {one, two}
    assert WorkerSettings.from_env(told.to_env()).topics.trusted_writer_keys == {one, two}
    assert Settings.from_env({}).trusted_writer_keys == frozenset()


@pytest.mark.parametrize(
    "value",
    ["ab" * 31, "ab" * 32 + "x", "ab" * 32 + ";rm", ",".join(f"{i:064x}" for i in range(65))],
)
def test_a_trusted_writer_key_that_is_no_key_id_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="MODELVC_TRUSTED_WRITER_KEYS"):
        Settings.from_env({"MODELVC_TRUSTED_WRITER_KEYS": value})


@pytest.mark.parametrize(
    "location",
    ["s3://modelvc-artifacts", "s3://my.bucket-1/teams/churn/v1", "s3://b01/models/", "/srv/a"],
)
def test_artifacts_are_a_directory_or_an_s3_bucket_and_prefix(location: str) -> None:
    endpoint = "http://127.0.0.1:9000"
    told = Settings.from_env({"MODELVC_ARTIFACTS": location, "MODELVC_S3_ENDPOINT": endpoint})
    assert (told.artifacts, told.s3_endpoint) == (location, endpoint)
    assert Settings.from_env(told.to_env()) == told


@pytest.mark.parametrize(
    "location",
    [
        "ftp://bucket/models",
        "file:///etc/passwd",
        "http://169.254.169.254/latest/meta-data",
        "s3://",
        "s3:///models",
        "s3://UPPER/models",
        "s3://bu..cket/models",
        "s3://ab",
        "s3://" + "b" * 64,
        "s3://bucket/../../etc",
        "s3://bucket/a/./b",
        "s3://bucket/a//b",
        "s3://bucket/pre fix",
        "s3://bucket/" + "p/" * 300,
        "s3://bucket/x\x00y",
        "s3://bucket\n/x",
        "/srv/a\x00b",
    ],
)
def test_an_artifact_location_that_is_neither_form_is_refused(location: str) -> None:
    with pytest.raises(ValueError, match="MODELVC_ARTIFACTS") as refused:
        Settings.from_env({"MODELVC_ARTIFACTS": location})
    assert len(str(refused.value)) < 400  # bounded, whatever was sent


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://user:password@minio:9000",
        "http://minio:9000/other-bucket",
        "http://minio:99999",
        "http://minio:0",
        "ftp://minio",
        "javascript:alert(1)",
        "http://",
        "http://-minio",
        "minio:9000",
        "http://minio:9000\n",
        "http://" + "a" * 300,
    ],
)
def test_an_s3_endpoint_that_is_not_scheme_host_and_port_is_refused(endpoint: str) -> None:
    with pytest.raises(ValueError, match="MODELVC_S3_ENDPOINT"):
        Settings.from_env({"MODELVC_ARTIFACTS": "s3://bucket", "MODELVC_S3_ENDPOINT": endpoint})


def test_a_child_never_inherits_an_endpoint_its_parent_did_not_set() -> None:
    env = Settings.from_env({"MODELVC_HOME": "/h"}).to_env()
    assert env["MODELVC_ARTIFACTS"] == "/h/artifacts" and env["MODELVC_S3_ENDPOINT"] == ""
    assert Settings.from_env(env).s3_endpoint is None
    assert Settings.from_env({"MODELVC_ARTIFACTS": ""}).artifacts == ".modelvc/artifacts"


def test_uploads_stage_inside_a_store_directory_and_on_local_disk_for_s3() -> None:
    assert Settings().staging_dir == Path(".modelvc/artifacts/tmp")
    local = Settings.from_env({"MODELVC_ARTIFACTS": "/srv/a", "MODELVC_DATA_DIR": "/d/one"})
    assert local.staging_dir == Path("/srv/a/tmp")  # the store's own disk, not the instance's
    s3 = Settings.from_env({"MODELVC_ARTIFACTS": "s3://bucket/p", "MODELVC_DATA_DIR": "/d/two"})
    assert s3.staging_dir == Path("/d/two/uploads")  # this instance's own disk


def test_the_model_size_limit_is_a_whole_number_of_mib_from_1_to_4096() -> None:
    assert Settings.from_env({}).max_model_bytes == 64 << 20
    told = Settings.from_env({"MODELVC_MAX_MODEL_MB": "2048"})
    assert told.max_model_bytes == 2048 << 20
    assert told.to_env()["MODELVC_MAX_MODEL_MB"] == "2048"
    # A worker reads the same limit from the same variable.
    assert WorkerSettings.from_env(told.to_env()).topics.max_model_bytes == 2048 << 20
    assert Settings.from_env({"MODELVC_MAX_MODEL_MB": "1"}).max_model_bytes == 1 << 20


@pytest.mark.parametrize("value", ["0", "4097", "-1", "1.5", "64MB", "1e3", "9" * 40, " "])
def test_a_model_size_limit_outside_1_to_4096_mib_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match=r"MODELVC_MAX_MODEL_MB.*1.*4096") as refused:
        Settings.from_env({"MODELVC_MAX_MODEL_MB": value})
    assert len(str(refused.value)) < 300
    with pytest.raises(ValueError, match="MODELVC_MAX_MODEL_MB"):
        Settings(max_model_bytes=(64 << 20) + 1)  # not a whole number of MiB
