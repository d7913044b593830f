"""The one HTTP client: bounded answers, bounded time, every failure one exception type."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from modelvc.client import Client, ClientError
from streams.http_client import HttpClient, HttpError


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
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


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
    started = time.monotonic()
    with pytest.raises(HttpError, match="took too long") as slow:
        HttpClient(url, timeout=1.0, deadline_s=0.3).request("GET", "/slow")
    assert slow.value.status == 0 and time.monotonic() - started < 1.5


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
