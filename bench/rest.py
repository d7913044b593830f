"""REST benchmark: the worker's Open Inference Protocol endpoint against the usual hand-written
model server (Flask under gunicorn), batch-1 requests from 16 concurrent clients.

`python -m bench.rest [SECONDS]` (needs the `bench` extra: `pip install -e '.[bench]'`)

Both serve the same booster (bench.serving's: 100 trees, 31 leaves, 20 features), on this
machine's 2 cores, with the load generator beside them. The worker runs as `modelvc up` starts
it (its broker and streams app idle beside it) and answers POST /v2/models/bench/infer with a
token, as clients call it. Flask runs under gunicorn's sync workers, once with 2 workers and once
with the (2 x cores) + 1 its docs recommend; the better of the two is the baseline.

The load generator is one asyncio process holding 16 connections, each a closed loop (send,
read the whole answer, send again) with keep-alive when the server keeps the connection
(gunicorn's sync workers close it after each answer: then it reconnects, as a client must).
Each answer is checked (status 200), and one answer of each server is checked bit for bit
against Booster.predict.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from bench.report import percentile, report
from bench.serving import NAMES, train
from modelvc.processes import free_port, spawn, stop, wait_for_port
from modelvc.stack import Stack

CLIENTS = 16
WARMUP_S = 2.0


def flask_app() -> Any:
    """The usual hand-written model server (gunicorn "bench.rest:flask_app()")."""
    from flask import Flask, jsonify, request

    booster = lgb.Booster(model_file=os.environ["BENCH_MODEL"])
    app = Flask("bench")

    @app.post("/predict")
    def predict() -> Any:
        row = np.asarray([request.get_json()["features"]], dtype=np.float64)
        return jsonify({"scores": booster.predict(row, num_threads=1).tolist()})

    return app


def http_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def exchange(port: int, request: bytes, streams: list[Any]) -> tuple[int, bytes]:
    """One request on the client's connection (reopened when the server closed it)."""
    if not streams:
        streams += await asyncio.open_connection("127.0.0.1", port)
    reader, writer = streams
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, close = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    body = await reader.readexactly(length)
    if close:
        writer.close()
        streams.clear()
    return status, body


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and every process under it (gunicorn's workers)."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += map(int, (task / "children").read_text().split())
        except (OSError, ValueError):
            continue  # gone meanwhile
    return total


def measured(port: int, request: bytes, seconds: float, pid: int) -> dict[str, Any]:
    """A warm-up, then ``seconds`` of load, with the server's and the clients' CPU per request."""
    asyncio.run(load(port, request, WARMUP_S))
    server, clients = cpu_seconds(pid), time.process_time()
    result = asyncio.run(load(port, request, seconds))
    done = result["rps"] * seconds
    result["server_cpu_ms"] = (cpu_seconds(pid) - server) * 1000 / max(done, 1)
    result["client_cpu_ms"] = (time.process_time() - clients) * 1000 / max(done, 1)
    return result


async def load(port: int, request: bytes, seconds: float) -> dict[str, Any]:
    """CLIENTS closed loops for ``seconds``: the rate and latencies of good answers."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        streams: list[Any] = []
        while (now := time.perf_counter()) < stop_at:
            try:
                status, _ = await exchange(port, request, streams)
            except (OSError, asyncio.IncompleteReadError):
                status = 0
                streams.clear()
            if status == 200:
                latencies.append(time.perf_counter() - now)
            else:
                errors += 1
        if streams:
            streams[1].close()

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    ms = [v * 1000 for v in latencies]
    return {
        "rps": len(latencies) / seconds,
        "p50": percentile(ms, 50),
        "p99": percentile(ms, 99),
        "errors": errors,
    }


async def one(port: int, request: bytes) -> dict[str, Any]:
    status, body = await exchange(port, request, [])
    assert status == 200, body[:500]
    return dict(json.loads(body))


def flask_run(model: Path, workers: int, tmp: Path, row: list[float], seconds: float) -> Any:
    port = free_port()
    env = dict(os.environ, BENCH_MODEL=str(model), OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}"]
    server = spawn([*argv, "bench.rest:flask_app()"], tmp / f"gunicorn-{workers}.log", env)
    try:
        wait_for_port(port, 30, server.pid)
        request = http_request(
            "/predict", json.dumps({"features": row}).encode(), {"Content-Type": "application/json"}
        )
        answer = asyncio.run(one(port, request))
        return answer["scores"], measured(port, request, seconds, server.pid)
    finally:
        stop(server)


def oip_request(stack: Stack, row: list[float]) -> bytes:
    tensor = {"name": "input-0", "shape": [1, len(row)], "datatype": "FP64", "data": row}
    body = {"inputs": [tensor]}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {stack.token}"}
    return http_request("/v2/models/bench/infer", json.dumps(body).encode(), headers)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    with tempfile.TemporaryDirectory(prefix="modelvc-bench-rest-") as tmp_name:
        tmp = Path(tmp_name)
        model = train(tmp / "model.txt", 0)
        booster = lgb.Booster(model_file=str(model))
        x = np.random.default_rng(7).normal(size=(1, len(NAMES)))
        row = [float(v) for v in x[0]]
        expected = booster.predict(x).tolist()
        flask: dict[int, dict[str, Any]] = {}
        for workers in (2, 2 * (os.cpu_count() or 1) + 1):
            scores, flask[workers] = flask_run(model, workers, tmp, row, seconds)
            assert scores == expected, (scores, expected)
            print(f"flask -w {workers}: {flask[workers]}", flush=True)
        stack = Stack.up(tmp / "home", workers=1)
        try:
            client = stack.client()
            client.create("bench")
            client.commit("bench", client.upload(model)["sha256"], "bench model")
            port = int(stack.worker_url().rsplit(":", 1)[1])
            request = oip_request(stack, row)
            deadline = time.monotonic() + 120
            while True:
                try:
                    answer = asyncio.run(one(port, request))
                    break
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            assert answer["outputs"][0]["data"] == expected, (answer, expected)
            oip = measured(port, request, seconds, stack.processes["worker-1"].pid)
            print(f"oip: {oip}", flush=True)
        finally:
            stack.down()
    flask_errors = sum(r["errors"] for r in flask.values())
    best = max(flask, key=lambda w: flask[w]["rps"])
    base = flask[best]
    rows: list[tuple[str, Any, str, str]] = [
        ("OIP worker, batch-1, 16 clients", oip["rps"], "req/s", ""),
        ("OIP worker p50", oip["p50"], "ms", ""),
        ("OIP worker p99", oip["p99"], "ms", f"< Flask's {base['p99']:.2f}"),
        ("OIP worker CPU per request", oip["server_cpu_ms"], "ms", ""),
    ]
    for workers, run in flask.items():
        rows += [
            (f"Flask + gunicorn -w {workers}", run["rps"], "req/s", ""),
            (f"Flask -w {workers} p50", run["p50"], "ms", ""),
            (f"Flask -w {workers} p99", run["p99"], "ms", ""),
            (f"Flask -w {workers} CPU per request", run["server_cpu_ms"], "ms", ""),
        ]
    rows += [
        (f"OIP / Flask (-w {best})", oip["rps"] / base["rps"], "ratio", ">= 3"),
        ("Flask / OIP CPU per request", base["server_cpu_ms"] / oip["server_cpu_ms"], "ratio", ""),
        ("load generator CPU per request (OIP)", oip["client_cpu_ms"], "ms", ""),
        ("errors (OIP, Flask)", f"{oip['errors']}, {flask_errors}", "", "0"),
    ]
    report("rest", rows, {"seconds": seconds, "clients": CLIENTS, "cpu_count": os.cpu_count()})


if __name__ == "__main__":
    main()
