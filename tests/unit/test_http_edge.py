"""The HTTP edge: the same-origin rule on the Origin values a forger would try, and the
artifact store as the API reaches it (its own threads, a deadline, the size limit of
the settings, the upload's answer)."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from aiohttp import ClientTimeout, web
from aiohttp.test_utils import TestClient, TestServer

from streams import openapi
from streams.api import domain_error
from streams.app import api_of
from streams.artifacts import LocalStore, StoredObject, sha256_of
from streams.bootstrap import bootstrap
from streams.http_edge import guard, render_errors, same_origin
from streams.parse import MAX_JSON_BYTES
from streams.projection import MemoryProjection
from streams.settings import Settings
from tests.conftest import train_model


@pytest.mark.parametrize(
    ("origin", "same"),
    [
        ("http://127.0.0.1:6066", True),
        ("http://127.0.0.1:6066/", True),
        ("http://evil.example@127.0.0.1:6066", False),  # user info: forged by hand
        ("http://u:p@127.0.0.1:6066", False),
        ("http://127.0.0.1:6066?x=1", False),
        ("http://127.0.0.1:6066#x", False),
        ("http://127.0.0.1:6067", False),
        ("http://localhost.evil.example:6066", False),
        ("null", False),
        ("file://", False),
        ("", False),
    ],
)
def test_only_this_servers_own_origin_is_same_origin(origin: str, same: bool) -> None:
    assert same_origin(origin, "127.0.0.1:6066") is same


# -- the artifact store behind the API ------------------------------------------------
class Hanging(LocalStore):
    """A store whose lookups and reads wait until ``release`` is set (an S3 endpoint that
    accepted the connection and never answers), counting the threads they wait in."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.release = threading.Event()
        self.threads: set[str] = set()
        self.waiting = 0
        self.most_waiting = 0
        self._lock = threading.Lock()

    def _hang(self) -> None:
        with self._lock:
            self.threads.add(threading.current_thread().name)
            self.waiting += 1
            self.most_waiting = max(self.most_waiting, self.waiting)
        try:
            self.release.wait(30)
        finally:
            with self._lock:
                self.waiting -= 1

    def has(self, digest: str) -> bool:
        self._hang()
        return super().has(digest)

    def get(self, digest: str, into: BinaryIO) -> int:
        self._hang()
        return super().get(digest, into)

    def list(self) -> Iterator[StoredObject]:
        return super().list()


@asynccontextmanager
async def api_client(
    store: LocalStore, settings: Settings, **api: Any
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The API's routes over ``store``, behind the edge's error rendering (no tokens: the
    store is reached before any command is signed)."""
    handlers = api_of(bootstrap(settings, projection=MemoryProjection(), store=store), **api)
    app = web.Application(middlewares=[render_errors(domain_error, MAX_JSON_BYTES)])
    app.router.add_routes(handlers.routes())
    client = TestClient(TestServer(app), timeout=ClientTimeout(total=10))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await handlers.close()


def settings_at(tmp_path: Path, **kwargs: Any) -> Settings:
    return Settings.namespaced(
        "edge", data_dir=tmp_path / "s", artifacts=str(tmp_path / "a"), **kwargs
    )


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def test_a_store_that_hangs_answers_503_in_time_from_the_apis_own_few_threads(
    tmp_path: Path,
) -> None:
    store = Hanging(tmp_path / "a")
    digest = "ab" * 32
    commit = {"artifact_sha256": digest, "message": "m"}

    async def test() -> None:
        settings = settings_at(tmp_path, max_model_bytes=1 << 20)
        async with api_client(store, settings, store_threads=2, store_deadline_s=0.3) as client:
            started = time.monotonic()
            answers = await asyncio.gather(
                *(client.post("/v1/models/m/commits", json=commit) for _ in range(5)),
                client.post("/v1/models/m/merges", json={"source": "b", **commit}),
                client.get(f"/v1/artifacts/{digest}"),
            )
            elapsed = time.monotonic() - started
            for answer in answers:
                body = await answer.json()
                assert answer.status == 503, body
                assert body["error"] == "store_unreachable"
                assert "did not answer within" in body["message"] and "retry" in body["message"]
                assert "[Errno" not in body["message"]
                assert answer.headers["Retry-After"].isdigit()
            assert elapsed < 8  # each waited its deadline (queued ones too), not the store
        store.release.set()

    try:
        run(test)
    finally:
        store.release.set()
    # The API's own threads, and no more of them than it was given: a hung store holds
    # those, never the loop's default executor the rest of the server shares.
    assert store.threads and all(n.startswith("artifact-store") for n in store.threads)
    assert store.most_waiting <= 2


def test_downloads_are_bounded_by_the_settings_model_size_limit(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "a")
    big, small = b"x" * ((1 << 20) + 1), b"y" * 1000
    for data in (big, small):
        store.put(io.BytesIO(data), sha256_of(data))

    async def test() -> None:
        async with api_client(store, settings_at(tmp_path, max_model_bytes=1 << 20)) as c:
            # Larger than any upload may be: not what was checked, so never served.
            refused = await c.get(f"/v1/artifacts/{sha256_of(big)}")
            body = await refused.json()
            assert (refused.status, body["error"]) == (500, "artifact_corrupted"), body
            assert f"over {1 << 20} bytes" in body["message"]
            served = await c.get(f"/v1/artifacts/{sha256_of(small)}")
            assert served.status == 200 and await served.read() == small

    run(test)


def test_an_upload_says_whether_it_stored_the_model_or_found_it_there(tmp_path: Path) -> None:
    data = train_model(tmp_path / "m.txt").read_bytes()
    octet = {"Content-Type": "application/octet-stream"}

    async def test() -> None:
        store = LocalStore(tmp_path / "a")
        async with api_client(store, settings_at(tmp_path)) as client:
            first = await client.post("/v1/artifacts", data=data, headers=octet)
            body = await first.json()
            assert first.status == 201, body
            assert (body["sha256"], body["size"], body["stored"]) == (
                sha256_of(data),
                len(data),
                True,
            )
            again = await client.post("/v1/artifacts", data=data, headers=octet)
            assert again.status == 201 and (await again.json())["stored"] is False
        # The answer is the one the document declares.
        schema = openapi.document()["paths"]["/v1/artifacts"]["post"]["responses"]["201"]
        declared = schema["content"]["application/json"]["schema"]
        assert set(declared["required"]) <= set(body) and "stored" in declared["required"]
        assert declared["properties"]["stored"]["type"] == "boolean"

    run(test)


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/v1/models/{model}/commits", "post"),
        ("/v1/models/{model}/merges", "post"),
        ("/v1/artifacts", "post"),
        ("/v1/artifacts/{digest}", "get"),
    ],
)
def test_every_route_that_reaches_the_store_declares_its_faults(path: str, method: str) -> None:
    responses = openapi.document()["paths"][path][method]["responses"]
    # store_unreachable and store_refused (503), store_full (507).
    assert {"503", "507"} <= set(responses), sorted(responses)
    assert "store_full" in responses["507"]["description"]
    assert "store_refused" in responses["503"]["description"]
    assert "store_unreachable" in responses["503"]["description"]


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:6066", 200),
        ("localhost:6066", 200),
        ("[::1]:6066", 200),
        ("evil.example", 403),  # a DNS-rebound name
        ("evil.example#@127.0.0.1", 403),  # a URL parser reads 127.0.0.1 here; we never ask it
        ("evil.example/@127.0.0.1", 403),
        ("127.0.0.1:6066 evil", 403),
    ],
)
def test_a_loopback_server_answers_only_a_plain_loopback_host_and_says_nosniff(
    host: str, status: int
) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def check() -> None:
        app = web.Application(
            middlewares=[
                render_errors(domain_error, MAX_JSON_BYTES),
                guard("127.0.0.1", 6066, lambda _: "application/json"),
            ]
        )
        app.router.add_get("/hello", hello)
        client = TestClient(TestServer(app), timeout=ClientTimeout(total=10))
        async with client, client.get("/hello", headers={"Host": host}) as response:
            assert response.status == status, (host, await response.text())
            if status == 200:
                assert response.headers["X-Content-Type-Options"] == "nosniff"

    run(check)
