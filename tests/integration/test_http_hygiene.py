"""Issue 7, findings 8-10: server time, loopback binding, foreign origins, JSON errors,
and uploads that leave nothing behind, against a real broker.

Requests that must get past the token check carry the stack's admin token
(``authed``); the origin and content-type guard answers before any token is
asked for, so its refusals are checked without one."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from modelvc.stack import Stack
from streams.api import MAX_JSON_BYTES
from tests.mounts import tiny_filesystem

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
JSON_TYPE = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, bootstrap: str) -> Iterator[Stack]:
    """One stack for the many one-request checks of this module."""
    home = tmp_path_factory.mktemp("hygiene") / "home"
    stack = Stack.up(home, bootstrap=bootstrap, namespace=f"t{uuid.uuid4().hex[:10]}")
    try:
        admin_ready(stack)
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def digest(shared: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.conftest import train_model

    path = train_model(tmp_path_factory.mktemp("model") / "model.txt")
    client = shared.client()
    client.create("hyg")
    sha = str(client.upload(path)["sha256"])
    client.commit("hyg", sha, "first")
    return sha


def send(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One raw request; the answer's status, headers and JSON body (asserted to be JSON)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        raw = response.read()
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()
    if method != "HEAD":
        assert answer_headers["content-type"].startswith("application/json"), raw[:200]
        return response.status, answer_headers, json.loads(raw)
    return response.status, answer_headers, None


def authed(stack: Stack, headers: dict[str, str] | None = None) -> dict[str, str]:
    """``headers`` with the stack's admin token."""
    return {**(headers or {}), "Authorization": f"Bearer {stack.token}"}


def admin_ready(stack: Stack, url: str | None = None, path: str = "/v1/whoami") -> None:
    """Wait until ``url`` (the API by default) knows the admin token: the first streams
    instance issues it once it follows the log, and a worker folds it from there."""
    target = url or stack.url
    deadline = time.monotonic() + 60
    while True:
        status = send(target, "GET" if url is None else "POST", path, None, authed(stack))[0]
        if status != 401:
            return
        assert time.monotonic() < deadline, f"{target} never accepted the admin token"
        time.sleep(0.2)


def assert_error(answer: tuple[int, dict[str, str], Any], status: int, field: str = "") -> Any:
    code, _, body = answer
    assert code == status, body
    assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str), body
    if field:
        assert body.get("field") == field, body
    return body


def healthy(stack: Stack) -> None:
    assert send(stack.url, "GET", "/healthz")[2]["ready"] is True


# -- finding 8: the server's clock ------------------------------------------------------
def test_finding_8_client_time_never_moves_as_of(shared: Stack, digest: str) -> None:
    year_3000 = {"artifact_sha256": digest, "message": "from the future", "at": 32503680000000}
    body = json.dumps(year_3000).encode()
    json_type = authed(shared, JSON_TYPE)
    assert_error(send(shared.url, "POST", "/v1/models/hyg/commits", body, json_type), 422, "at")
    huge = json.dumps({"name": "timeless", "at": 10**30}).encode()
    assert_error(send(shared.url, "POST", "/v1/models", huge, json_type), 422, "at")

    client = shared.client()
    before = int(time.time() * 1000)
    head = client.commit("hyg", digest, "now")["head"]
    after = int(time.time() * 1000)
    stamped = client.show("hyg", head)["at"]
    assert before - 1000 <= stamped <= after + 1000  # the server's clock stamped it
    now = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    assert client.refs("hyg", as_of=now)["branches"]["main"] == head
    assert client.refs("hyg", as_of=now) | {"as_of": None} == client.refs("hyg")


def test_finding_8_a_command_written_straight_to_kafka_cannot_set_the_time(
    shared: Stack, digest: str
) -> None:
    """The HTTP edge refuses `at`; the single writer must not trust it from the topic
    either, not even from a command signed with the instance's own key (issue 10: an
    unsigned one is not decided at all, and a signed one whose time is far off is refused,
    so a captured command cannot be replayed later)."""
    from kafka import KafkaProducer

    from streams.codec import encode_command
    from streams.core.commands import Command, MakeCommit
    from streams.kafka_access import negotiate_sync
    from streams.signing import WriterKey, sign_command

    s = shared.settings
    signer = WriterKey.load_or_create(s.writer_key)  # the stack's key: it exists already
    client = shared.client()
    client.create("clocked")
    producer = KafkaProducer(**negotiate_sync(s.access).producer())
    ten_s_ago = int(time.time() * 1000) - 10_000
    try:
        for at, message in (
            (32503680000000, "year 3000"),
            (2**62, "time bomb"),
            (-1, "1969"),
            (ten_s_ago, "a little late"),  # within the window: decided, at the writer's time
        ):
            body = MakeCommit(digest, message)
            command = Command(f"clock-{at}", "clocked", "mallory", at, body, role="committer")
            signed = encode_command(sign_command(signer, command))
            producer.send(s.commands_topic, signed, b"clocked").get(20)
        unsigned = Command("clock-unsigned", "clocked", "mallory", 1, MakeCommit(digest, "x"))
        producer.send(s.commands_topic, encode_command(unsigned), b"clocked").get(20)
    finally:
        producer.close()
    deadline = time.monotonic() + 30
    while not client.log("clocked")["commits"] and time.monotonic() < deadline:
        time.sleep(0.2)
    head = client.commit("clocked", digest, "honest")["head"]  # decided after all of them
    commits = client.log("clocked")["commits"]
    assert [c["message"] for c in commits] == ["honest", "a little late"], commits
    now_ms = int(time.time() * 1000)
    assert all(ten_s_ago + 5_000 <= c["at"] <= now_ms + 1000 for c in commits)
    times = [c["at"] for c in reversed(commits)]
    assert times == sorted(times)  # a model's times never go backwards
    now = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    assert client.refs("clocked", as_of=now)["branches"]["main"] == head


# -- finding 9: loopback and foreign origins --------------------------------------------
def listening_addresses(port: int) -> set[str]:
    """Local addresses in LISTEN state on ``port``, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as handle:
            for line in handle.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, port_hex = local.split(":")
                if state == "0A" and int(port_hex, 16) == port:
                    found.add(address)
    return found


def test_finding_9_api_binds_loopback(stack: Stack) -> None:
    admin_ready(stack)
    assert listening_addresses(stack.settings.web_port) == {"0100007F"}  # 127.0.0.1 only
    worker = stack.add_worker()
    assert listening_addresses(worker.port) == {"0100007F"}
    # the worker's endpoints follow the same rules
    url = stack.worker_url()
    features = json.dumps({"features": {"f": 1.0}}).encode()
    foreign = {**JSON_TYPE, "Origin": "http://evil.example"}
    path = "/v1/models/none/predict"
    assert_error(send(url, "POST", path, features, foreign), 403)
    assert_error(send(url, "POST", path, features, {"Content-Type": "text/plain"}), 415)
    assert_error(send(url, "GET", "/nope"), 404)
    assert_error(send(url, "PUT", path, features, JSON_TYPE), 405)
    # Past the guard, a token first (the worker folds ~security from the log), then the body.
    assert_error(send(url, "POST", path, features, JSON_TYPE), 401)
    admin_ready(stack, url, path)
    assert_error(send(url, "POST", path, b"[" * 2_000_000, authed(stack, JSON_TYPE)), 413)


def test_finding_9_compose_publishes_on_loopback() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    published = re.findall(r'^\s*-\s*"([^"]*:\d+:\d+)"\s*$', compose, re.MULTILINE)
    assert published, "no published ports found"
    assert all(p.startswith("${MODELVC_PUBLISH_HOST:-127.0.0.1}:") for p in published), published


def test_finding_9_foreign_origin_refused(shared: Stack) -> None:
    url = shared.url
    create = json.dumps({"name": "csrf"}).encode()
    # what a page on another site can send without a preflight
    text_plain = {"Content-Type": "text/plain", "Origin": "http://evil.example"}
    assert_error(send(url, "POST", "/v1/models", create, text_plain), 403)
    json_foreign = {**JSON_TYPE, "Origin": "http://evil.example"}
    assert_error(send(url, "POST", "/v1/models", create, json_foreign), 403)
    assert_error(send(url, "POST", "/v1/models", create, {**JSON_TYPE, "Origin": "null"}), 403)
    # a DNS-rebound name is not this loopback server either
    rebound = {**JSON_TYPE, "Host": "evil.example:80"}
    assert_error(send(url, "POST", "/v1/models", create, rebound), 403)
    # no origin, but not declared as JSON: refused all the same
    assert_error(send(url, "POST", "/v1/models", create, {"Content-Type": "text/plain"}), 415)
    assert_error(send(url, "POST", "/v1/models", create, {}), 415)
    assert "csrf" not in {m["name"] for m in shared.client().models()["models"]}
    # the same origin, and JSON: past the guard, then a token is needed
    same = {**JSON_TYPE, "Origin": url}
    assert_error(send(url, "POST", "/v1/models", create, same), 401)
    same = authed(shared, same)
    status, _, body = send(url, "POST", "/v1/models", create, same)
    assert status == 201, body


# -- finding 10: every error is JSON ---------------------------------------------------
def test_finding_10_lying_gzip_is_refused_as_json(shared: Stack) -> None:
    headers = {**JSON_TYPE, "Content-Encoding": "gzip"}
    assert_error(send(shared.url, "POST", "/v1/models", b'{"name": "z"}', headers), 415)
    upload = {"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"}
    assert_error(send(shared.url, "POST", "/v1/artifacts", b"tree\nnot gzip", upload), 415)
    healthy(shared)


def test_finding_10_at_out_of_range_is_422(shared: Stack) -> None:
    for at in (2**64, -(2**70), "soon"):
        body = json.dumps({"name": "when", "at": at}).encode()
        assert_error(
            send(shared.url, "POST", "/v1/models", body, authed(shared, JSON_TYPE)), 422, "at"
        )


def test_finding_10_400_digit_metric_is_422(shared: Stack, digest: str) -> None:
    json_type = authed(shared, JSON_TYPE)
    for value in ("1" * 400, "1e400", "-1e400", "NaN", "true", '"1e999"'):
        raw = f'{{"artifact_sha256": "{digest}", "message": "m", "metrics": {{"auc": {value}}}}}'
        answer = send(shared.url, "POST", "/v1/models/hyg/commits", raw.encode(), json_type)
        assert_error(answer, 422, "metrics.auc")
    params = json.dumps({"artifact_sha256": digest, "message": "m", "params": {"n": 10**400}})
    answer = send(shared.url, "POST", "/v1/models/hyg/commits", params.encode(), json_type)
    assert answer[0] in (201, 422), answer  # a big int param is text, or refused: never a 500


def test_finding_10_lone_surrogate_is_422(shared: Stack, digest: str) -> None:
    url = shared.url
    art = f'"artifact_sha256": "{digest}"'
    lone = "\\ud800"  # JSON's escape for a lone surrogate: valid JSON, not valid UTF-8
    cases = [
        ("/v1/models", f'{{"name": "{lone}"}}', "name"),
        ("/v1/models/hyg/commits", f'{{{art}, "message": "{lone}"}}', "message"),
        ("/v1/models/hyg/commits", f'{{{art}, "message": "m", "params": {{"{lone}": "x"}}}}', ""),
        ("/v1/models/hyg/commits", f'{{{art}, "message": "m", "params": {{"k": "{lone}"}}}}', ""),
        ("/v1/models/hyg/branches", f'{{"name": "b", "command_id": "{lone}"}}', "command_id"),
        (
            "/v1/models/hyg/rollbacks",
            f'{{"branch": "main", "to": "main", "reason": "{lone}"}}',
            "reason",
        ),
    ]
    for path, raw, field in cases:
        body = assert_error(send(url, "POST", path, raw.encode(), authed(shared, JSON_TYPE)), 422)
        if field:
            assert body["field"] == field, body
    # A claimed actor is never read as a name: only compared with the token's (403).
    raw = f'{{"name": "b", "actor": "{lone}"}}'
    body = assert_error(
        send(url, "POST", "/v1/models/hyg/branches", raw.encode(), authed(shared, JSON_TYPE)), 403
    )
    assert body["error"] == "actor_mismatch"
    healthy(shared)


def test_finding_10_bad_after_and_as_of_are_422(shared: Stack) -> None:
    url = shared.url
    for after in ("1:2:3", "x", "1:", ":1", "99:0", "1:" + "9" * 40):
        query = f"/v1/models/hyg/refs?after={after}"
        assert_error(send(url, "GET", query, headers=authed(shared)), 422, "after")
    for as_of in ("%C2%B2", "9999-99-99", "1:2", "x" * 100):
        query = f"/v1/models/hyg/refs?as_of={as_of}"
        assert_error(send(url, "GET", query, headers=authed(shared)), 422, "as_of")


def test_finding_10_routes_methods_and_sizes_answer_json(shared: Stack) -> None:
    url = shared.url
    assert_error(send(url, "GET", "/nope"), 404)
    assert_error(send(url, "GET", "/router"), 404)  # Faust's own pages are not served
    status, headers, body = send(url, "PATCH", "/v1/models", b"{}", JSON_TYPE)
    assert status == 405 and "GET" in headers["allow"] and body["error"] == "method_not_allowed"
    assert_error(send(url, "GET", "/v1/models/hyg/commits"), 405)
    json_type = authed(shared, JSON_TYPE)
    big = json.dumps({"name": "big", "pad": "x" * MAX_JSON_BYTES}).encode()
    assert_error(send(url, "POST", "/v1/models", big, json_type), 413)
    long_message = json.dumps({"branch": "main", "to": "main", "reason": "r" * 5000}).encode()
    answer = send(url, "POST", "/v1/models/hyg/rollbacks", long_message, json_type)
    assert_error(answer, 422, "reason")
    many = json.dumps({"name": "b", "params": {str(i): "v" for i in range(300)}}).encode()
    assert send(url, "POST", "/v1/models/hyg/branches", many, json_type)[0] != 500
    healthy(shared)


# -- finding 10: uploads leave nothing behind ---------------------------------------------
def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def test_finding_10_full_store_is_507_and_leaves_no_temp_file(
    shared: Stack, tmp_path: Path
) -> None:
    from tests.conftest import train_model

    small = train_model(tmp_path / "small.txt", seed=7).read_bytes()
    octet = authed(shared, {"Content-Type": "application/octet-stream"})
    with tiny_filesystem(Path(shared.settings.artifacts)) as root:
        big = b"tree\n" + b"x" * 200_000
        body = assert_error(send(shared.url, "POST", "/v1/artifacts", big, octet), 507)
        assert body["error"] == "store_full"
        assert files_under(root) == []
        # the space was given back, so a small upload fits again
        status, _, answer = send(shared.url, "POST", "/v1/artifacts", small, octet)
        assert status == 201, answer
        assert [p.name for p in files_under(root)] == [answer["sha256"]]
    healthy(shared)


def test_finding_10_read_only_store_is_507(shared: Stack, tmp_path: Path) -> None:
    from tests.conftest import train_model

    data = train_model(tmp_path / "ro.txt", seed=8).read_bytes()
    octet = authed(shared, {"Content-Type": "application/octet-stream"})
    with tiny_filesystem(Path(shared.settings.artifacts), "1m") as root:
        subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
        body = assert_error(send(shared.url, "POST", "/v1/artifacts", data, octet), 507)
        assert "MODELVC_ARTIFACTS" in body["message"]
        assert files_under(root) == []


def test_finding_10_disconnect_mid_upload_leaves_no_temp_file(shared: Stack) -> None:
    temp_dir = shared.settings.staging_dir
    port = shared.settings.web_port
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            f"POST /v1/artifacts HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {shared.token}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\n".encode()
        )
        sock.sendall(b"tree\n" + b"x" * 300_000)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (temp_dir.is_dir() and any(temp_dir.iterdir())):
            time.sleep(0.05)
        assert temp_dir.is_dir() and any(temp_dir.iterdir()), "the upload never started"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(temp_dir.iterdir()):
        time.sleep(0.05)
    assert list(temp_dir.iterdir()) == []
    healthy(shared)


def test_attack_an_oversized_request_line_or_header_is_answered_in_json(stack: Stack) -> None:
    """aiohttp's parser answered these in plain text, echoing the request, before any
    middleware ran; the API and the worker now answer JSON and echo nothing."""
    worker = stack.add_worker()
    for url in (stack.url, f"http://127.0.0.1:{worker.port}"):
        status, _, body = send(url, "GET", "/v1/models/x/log?ref=" + "a" * 9000)
        assert status == 400 and "too long" in body["message"] and "aaaa" not in body["message"]
        status, _, body = send(url, "GET", "/healthz", headers={"X-Big": "b" * 9000})
        assert status == 400 and body["error"] == "bad_request"
        status, _, _ = send(url, "GET", "/healthz")
        assert status == 200  # and the server goes on
