"""The one HTTP client: bounded answers, bounded time, every failure one exception type."""

from __future__ import annotations

import json
import re
import socket
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from modelvc.cli import UsageError, expires_at
from modelvc.client import Client, ClientError
from modelvc.processes import StackError
from modelvc.stack import ensure_home, write_token_file
from streams.auth import new_token
from streams.core.security import TOKEN as SECURITY_TOKEN
from streams.http_client import (
    HttpClient,
    HttpError,
    TokenError,
    read_token_file,
    resolve_token,
    token_from_env,
)
from tests.httpserver import running_http
from workers.bootstrap import bootstrap
from workers.settings import WorkerSettings


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *_: object) -> None:  # quiet test output
        pass

    def answer(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/ok":
            self.answer(200, b'{"ready": true}')
        elif self.path == "/auth":
            self.answer(200, json.dumps({"sent": self.headers.get("Authorization")}).encode())
        elif self.path == "/missing":
            self.answer(404, b'{"error": "not_found", "message": "no such model"}')
        elif self.path == "/crash":
            self.answer(500, b"Internal Server Error", "text/plain")
        elif self.path == "/big":
            self.answer(200, b"x" * 5000, "application/octet-stream")
        elif self.path == "/notjson":
            self.answer(200, b"{nope")
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):  # a byte at a time, each within the socket timeout
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.02)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_http(Handler) as url:
        yield url


def test_a_json_answer_reads_back(url: str) -> None:
    assert HttpClient(url).get_json("/ok") == {"ready": True}


def test_a_refusal_carries_its_status_and_the_services_json(url: str) -> None:
    with pytest.raises(HttpError) as refused:
        HttpClient(url).get_json("/missing")
    assert refused.value.status == 404
    assert refused.value.body == {"error": "not_found", "message": "no such model"}
    assert str(refused.value) == "no such model"


def test_a_refusal_without_json_is_put_in_the_same_shape(url: str) -> None:
    with pytest.raises(HttpError) as refused:
        HttpClient(url).get_json("/crash")
    assert refused.value.status == 500
    assert refused.value.body == {"error": "http", "message": "Internal Server Error"}


def test_an_answer_that_is_not_json_is_an_http_error(url: str) -> None:
    with pytest.raises(HttpError, match="not JSON") as bad:
        HttpClient(url).get_json("/notjson")
    assert bad.value.body["error"] == "bad_response"


def test_an_answer_larger_than_the_bound_is_refused(url: str) -> None:
    assert len(HttpClient(url, max_bytes=5000).request("GET", "/big").body) == 5000
    with pytest.raises(HttpError, match="larger than 4,999 bytes") as big:
        HttpClient(url, max_bytes=4999).request("GET", "/big")
    assert big.value.status == 0 and big.value.body["error"] == "too_large"


def test_a_dribbling_server_cannot_hold_the_caller_past_the_deadline(url: str) -> None:
    # Every byte comes within the socket timeout and the whole body in 2 s: only the
    # deadline can end the call with "took too long".
    with pytest.raises(HttpError, match="took too long") as slow:
        HttpClient(url, timeout=1.0, deadline_s=0.3).request("GET", "/slow")
    assert slow.value.status == 0


def test_an_unreachable_server_is_status_0_with_what_to_do() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(HttpError) as gone:
        HttpClient(f"http://127.0.0.1:{port}", unreachable="start it").get_json("/")
    assert gone.value.status == 0 and gone.value.body["error"] == "unreachable"
    assert str(gone.value).endswith("; start it")
    with pytest.raises(ClientError) as via_cli_client:
        Client(f"http://127.0.0.1:{port}").models()
    assert "modelvc up" in str(via_cli_client.value)


def test_the_api_client_returns_bytes_for_non_json_and_json_otherwise(url: str) -> None:
    client = Client(url)
    assert client.request("GET", "/big") == b"x" * 5000
    assert client.request("GET", "/ok") == {"ready": True}
    with pytest.raises(ClientError) as refused:
        client.request("GET", "/missing")
    assert json.dumps(refused.value.body) == json.dumps(
        {"error": "not_found", "message": "no such model"}
    )


TOKEN = "mvc_0123456789abcdef_" + "A" * 43
OTHER = "mvc_fedcba9876543210_" + "B" * 43


def test_the_token_goes_in_a_bearer_header_and_none_is_sent_when_told(url: str) -> None:
    assert HttpClient(url, token=TOKEN).get_json("/auth") == {"sent": f"Bearer {TOKEN}"}
    assert HttpClient(url, token="").get_json("/auth") == {"sent": None}
    assert Client(url, token=TOKEN).request("GET", "/auth") == {"sent": f"Bearer {TOKEN}"}


def test_a_token_that_is_not_one_is_refused_before_it_is_sent(url: str) -> None:
    with pytest.raises(TokenError, match="modelvc token create"):
        HttpClient(url, token=TOKEN + "\r\nX-Injected: 1")


def test_the_token_is_found_in_the_documented_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert token_from_env({}, home) is None  # no token anywhere
    home.mkdir()
    write_token_file(home / "admin.token", TOKEN)
    assert token_from_env({}, home) == TOKEN
    assert token_from_env({"MODELVC_HOME": str(home)}) == TOKEN
    write_token_file(tmp_path / "other.token", OTHER)
    env = {"MODELVC_TOKEN_FILE": str(tmp_path / "other.token")}
    assert token_from_env(env, home) == OTHER
    assert token_from_env(env | {"MODELVC_TOKEN": TOKEN}, home) == TOKEN
    with pytest.raises(TokenError, match="does not exist"):  # a named file must be usable
        token_from_env({"MODELVC_TOKEN_FILE": str(tmp_path / "missing")}, home)
    with pytest.raises(TokenError, match="MODELVC_TOKEN does not hold"):
        token_from_env({"MODELVC_TOKEN": "junk"}, home)


def test_resolve_token_is_the_one_order() -> None:
    assert resolve_token(None, None, None) is None
    assert resolve_token(TOKEN, None, Path("/nonexistent/admin.token")) == TOKEN
    assert resolve_token(None, None, Path("/nonexistent/admin.token")) is None


def test_clients_send_only_the_token_they_are_given(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELVC_TOKEN", TOKEN)  # read at the edges, never by a constructor
    assert Client(url).request("GET", "/auth") == {"sent": None}
    assert HttpClient(url).get_json("/auth") == {"sent": None}
    assert Client(url, token=OTHER).request("GET", "/auth") == {"sent": f"Bearer {OTHER}"}


def test_a_worker_reads_its_token_sources_at_the_edge_and_bootstrap_resolves_them(
    url: str, tmp_path: Path
) -> None:
    write_token_file(tmp_path / "other.token", OTHER)
    env = {
        "MODELVC_HOME": str(tmp_path),
        "MODELVC_URL": url,
        "MODELVC_TOKEN_FILE": str(tmp_path / "other.token"),
    }
    settings = WorkerSettings.from_env(env)
    assert settings.token_file == tmp_path / "other.token"
    assert settings.admin_token_file == tmp_path / "admin.token"
    assert TOKEN not in repr(WorkerSettings.from_env(env | {"MODELVC_TOKEN": TOKEN}))
    worker = bootstrap(settings)
    assert worker.tracker.loader._http is not None
    assert worker.tracker.loader._http.get_json("/auth") == {"sent": f"Bearer {OTHER}"}


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o660])
def test_a_token_file_others_may_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "t.token"
    write_token_file(path, TOKEN)
    path.chmod(mode)
    with pytest.raises(TokenError, match=re.escape(f"chmod 600 {path}")):
        read_token_file(path)
    path.chmod(0o600)
    assert read_token_file(path) == TOKEN


def test_a_token_file_must_be_a_private_regular_file_holding_a_token(tmp_path: Path) -> None:
    real = tmp_path / "real.token"
    write_token_file(real, TOKEN)
    (tmp_path / "link.token").symlink_to(real)
    with pytest.raises(TokenError, match="cannot open"):
        read_token_file(tmp_path / "link.token")  # a link could point the check elsewhere
    for name, text in [("junk", "not a token\n"), ("big", TOKEN * 100)]:
        write_token_file(tmp_path / name, text)
        with pytest.raises(TokenError, match=r"modelvc token|larger"):
            read_token_file(tmp_path / name)
    with pytest.raises(TokenError, match="does not exist"):
        read_token_file(tmp_path / "missing")


def test_up_makes_a_private_admin_token_and_keys_directory_once(tmp_path: Path) -> None:
    admin = ensure_home(tmp_path)
    assert stat.S_IMODE(admin.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    first = admin.read_text()
    assert first.endswith("\n") and SECURITY_TOKEN.fullmatch(first[:-1])
    assert ensure_home(tmp_path).read_text() == first  # kept: the log knows this one
    admin.chmod(0o644)
    with pytest.raises(StackError, match="chmod 600"):
        ensure_home(tmp_path)
    assert new_token()[0] != new_token()[0] and SECURITY_TOKEN.fullmatch(new_token()[0])


@pytest.mark.parametrize(
    ("text", "after_ms"),
    [("30d", 30 * 86_400_000), ("12h", 12 * 3_600_000), ("90m", 90 * 60_000)],
)
def test_expires_is_relative_to_now(text: str, after_ms: int) -> None:
    assert expires_at(text, 1_000) == 1_000 + after_ms


def test_expires_on_a_date_is_its_start_in_utc_and_must_be_ahead() -> None:
    assert expires_at("2027-01-31", 0) == 1_801_353_600_000
    for bad in ("2001-01-01", "0d", "1y", "2027-02-30", "2027-1-31", "30d ", "1" * 100 + "d"):
        with pytest.raises(UsageError):
            expires_at(bad, 1_700_000_000_000)


class Recorder(BaseHTTPRequestHandler):
    """Another origin: it records every request that reaches it."""

    seen: ClassVar[list[dict[str, str]]] = []

    def log_message(self, *_: object) -> None:
        pass

    def do_GET(self) -> None:
        Recorder.seen.append(dict(self.headers))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


def serving(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_so_the_token_never_reaches_another_host(status: int) -> None:
    elsewhere, target = serving(Recorder)

    class Redirector(BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Location", f"{target}/steal")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server, url = serving(Redirector)
    Recorder.seen.clear()
    try:
        with pytest.raises(HttpError) as raised:
            HttpClient(url, token=TOKEN).get_json("/v1/models")
        assert raised.value.status == status
        assert raised.value.body["error"] == "redirect"
        assert f"{target}/steal" in str(raised.value) and "MODELVC_URL" in str(raised.value)
        assert TOKEN not in str(raised.value)
        assert Recorder.seen == []  # neither the token nor anything else went there
        # The recorder does record (so the empty list above means something).
        HttpClient(target, token=TOKEN).get_json("/")
        assert Recorder.seen[0]["Authorization"] == f"Bearer {TOKEN}"
    finally:
        for running in (server, elsewhere):
            running.shutdown()
            running.server_close()
