"""HTTP endpoints of a worker: predict one row (``/v1``), the Open Inference Protocol
(``/v2``, :mod:`workers.oip`), Prometheus metrics, health.

The same hygiene as the streams API (``streams.http_edge``): errors are JSON,
POST needs ``Content-Type: application/json`` (``application/octet-stream`` for an OIP body
with binary tensors), foreign origins are refused and bodies are bounded; the server binds to
``MODELVC_WORKER_HOST`` (loopback by default). Predicting and the model metadata need a reader
token (``streams.auth``), checked against ``~security`` as this worker folded it from the same
log; /healthz, /metrics, ``/v2`` and ``/v2/health/*`` stay open (probes carry no token).

Both predict routes score through :class:`Coalescer`: concurrent requests for one artifact
share one ``predict`` call, as Triton's dynamic batcher does, but without a delay: the rows
that arrive while a call runs go into the next. A row's score does not depend on the rows
beside it (LightGBM scores each row alone; onnxruntime, on one thread, computes each row of
a MatMul the same way whatever the batch: tests/integration/test_onnx_serving.py checks it
against single-row runs), so this changes no bit of any answer.

Errors under ``/v2`` are ``{"error": message, "code": code}``: OIP clients show ``error``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.typedefs import Middleware

from streams import auth
from streams.http_edge import (
    JSON,
    OCTET_STREAM,
    Handler,
    JsonErrorRunner,
    guard,
    render_errors,
)
from workers import oip, scoring
from workers.errors import ArtifactUnavailable, Rejected, UnknownModel, UnknownRef
from workers.loop import DELIVERY_NOTES, Worker
from workers.metrics import CONTENT_TYPE_LATEST
from workers.scoring import Version

# One row of features is small; a bigger body is refused (413) before it is parsed.
MAX_BODY_BYTES = 1024 * 1024
# Triton's binary tensor extension: the JSON header's length, binary tensors after it.
BINARY_HEADER = "Inference-Header-Content-Length"

Predict = Callable[[Version, np.ndarray], Awaitable[np.ndarray]]


class Coalescer:
    """Concurrent HTTP requests for one artifact share one ``predict`` call.

    The first request of an idle artifact starts a drain; requests that arrive while a call
    runs wait in its queue and go into the next call, up to ``max_rows`` rows (the batch the
    worker's memory budget is sized for). No timer: a lone request is scored at once.
    """

    def __init__(self, predict: Predict, max_rows: int) -> None:
        self._predict = predict
        self._max_rows = max_rows
        self._queues: dict[str, list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]] = {}
        self._drains: set[asyncio.Task[None]] = set()  # kept, or the loop may drop them

    async def predict(self, version: Version, matrix: np.ndarray) -> np.ndarray:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(version.artifact_sha256)
        if queue is not None:
            queue.append((matrix, future))
        else:
            self._queues[version.artifact_sha256] = [(matrix, future)]
            task = asyncio.create_task(self._drain(version))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
        return await future

    async def _drain(self, version: Version) -> None:
        queue = self._queues[version.artifact_sha256]
        try:
            while queue:
                taken, rows = 0, 0
                while taken < len(queue) and (
                    taken == 0 or rows + len(queue[taken][0]) <= self._max_rows
                ):
                    rows += len(queue[taken][0])
                    taken += 1
                batch, queue[:taken] = queue[:taken], []
                try:
                    scores = await self._predict(
                        version, np.concatenate([m for m, _ in batch]) if taken > 1 else batch[0][0]
                    )
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for matrix, future in batch:
                    if not future.done():  # its client went away meanwhile
                        future.set_result(scores[start : start + len(matrix)])
                    start += len(matrix)
        finally:
            del self._queues[version.artifact_sha256]


def oip_errors() -> Middleware:
    """Under /v2, every error as the protocol has it: ``error`` is the message to show."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if (
            response.status < 400
            or not request.path.startswith("/v2")
            or not isinstance(response, web.Response)
            or not isinstance(response.body, bytes)
        ):
            return response
        try:
            body = json.loads(response.body)
        except ValueError:
            return response
        if not isinstance(body, dict) or "message" not in body:
            return response
        extra = {k: v for k, v in body.items() if k not in ("error", "message")}
        answer = oip_error(response.status, body["message"], body.get("error"), **extra)
        answer.headers.extend(
            (k, v) for k, v in response.headers.items() if k in ("Allow", "WWW-Authenticate")
        )
        return answer

    return errors


def oip_error(status: int, message: str, code: str | None = None, **extra: Any) -> web.Response:
    return web.json_response({"error": message, "code": code, **extra}, status=status)


async def read_bounded(request: web.Request, limit: int) -> bytes:
    """The body, refused (413) past ``limit`` bytes before more is read."""
    if request.content_length is not None and request.content_length > limit:
        raise oip.InferenceTooLarge(f"request bodies are limited to {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise oip.InferenceTooLarge(f"request bodies are limited to {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def content_type(request: web.Request) -> str:
    if request.path.startswith("/v2/") and BINARY_HEADER in request.headers:
        return OCTET_STREAM
    return JSON


def create_app(worker: Worker) -> web.Application:
    coalescer = Coalescer(worker.scorer.predict, worker.settings.max_batch)
    server_version = metadata.version("modelvc")

    async def predict(request: web.Request) -> web.Response:
        model = request.match_info["model"]
        try:
            # UTF-8 whatever charset the header names (an unknown one raised LookupError).
            body = json.loads((await request.read()).decode("utf-8"))
        except (ValueError, RecursionError):
            return web.json_response(
                {"error": "invalid", "message": "body must be JSON"}, status=422
            )
        if not isinstance(body, dict) or not isinstance(body.get("features"), dict):
            return web.json_response(
                {
                    "error": "invalid",
                    "message": 'send {"features": {"name": number, ...}, "ref": optional}',
                },
                status=422,
            )
        ref = body.get("ref")
        try:
            version = await worker.tracker.version_for(model, ref if isinstance(ref, str) else None)
            row = scoring.feature_row(body["features"], version.loaded.feature_names)
            matrix = np.asarray([row], dtype=np.float64)
            problem = scoring.check_finite(matrix, version.loaded.feature_names)[0]
            if problem is not None:
                raise problem
        except (UnknownModel, UnknownRef) as exc:
            return web.json_response({"error": exc.reason, "message": str(exc)}, status=404)
        except Rejected as exc:
            return web.json_response({"error": exc.reason, "message": str(exc)}, status=422)
        scores = (await coalescer.predict(version, matrix))[0].tolist()
        worker.metrics.predicted(version.model, version.commit_id, "http")
        return web.json_response(
            {
                "model": model,
                "ref": version.ref,
                "commit_id": version.commit_id,
                "artifact_sha256": version.artifact_sha256,
                "scores": scores,
            }
        )

    async def metrics(request: web.Request) -> web.Response:
        worker.metrics.lag({tp.partition: lag for tp, lag in (await worker.lag()).items()})
        return web.Response(
            body=worker.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(request: web.Request) -> web.Response:
        # Ready once the version log is folded and the group gave us partitions to score.
        ready = worker.tracker.ready.is_set() and worker.assigned()
        body: dict[str, Any] = {
            "ready": ready,
            "worker": worker.settings.worker_id,
            "pid": os.getpid(),
            # What a reader of the predictions may rely on (workers.loop says how each works).
            "delivery": worker.delivery,
            "delivery_note": DELIVERY_NOTES[worker.delivery],
            "serving": {f"{v.model}@{v.ref}": v.commit_id for v in worker.tracker.serving.values()},
            # Served refs split by a canary rollout, or shadowed, once the commits loaded.
            "rollouts": {
                f"{r.version.model}@{r.version.ref}": {
                    "rollout_id": r.rollout.id,
                    "percent": r.rollout.percent,
                    "baseline": r.version.commit_id,
                    "candidate": r.rollout.candidate,
                }
                for r in worker.tracker.routes.values()
                if r.rollout is not None
            },
            "shadows": {
                f"{r.shadow.model}@{r.shadow.ref}": r.shadow.commit_id
                for r in worker.tracker.routes.values()
                if r.shadow is not None
            },
            # Versions refused or not loadable (never served): why, since when, how often.
            "failures": worker.tracker.failures,
        }
        return web.json_response(body, status=200 if ready else 503)

    # -- the Open Inference Protocol (v2) ------------------------------------------------
    async def v2_version(request: web.Request, ref: str | None) -> Version:
        """The version the request names (else the default ref, as the stream resolves it)."""
        if not worker.tracker.ready.is_set():
            raise ArtifactUnavailable("the worker is still reading the version log; retry")
        url_ref = request.match_info.get("version")
        query_ref = request.query.get("ref")
        if query_ref is not None and not 0 < len(query_ref) <= oip.MAX_REF_CHARS:
            raise oip.InvalidInference(f"ref must be 1 to {oip.MAX_REF_CHARS} characters")
        return await worker.tracker.version_for(
            request.match_info["model"], oip.one_ref(url_ref, query_ref, ref)
        )

    async def v2_answer(
        request: web.Request, body: Callable[[], Awaitable[dict[str, Any]]]
    ) -> web.Response:
        """``body()`` as JSON, or the protocol's error answer for what it raised."""
        try:
            return web.json_response(await body())
        except oip.InferenceTooLarge as exc:
            return oip_error(413, str(exc), "too_large")
        except oip.InvalidInference as exc:
            return oip_error(400, str(exc), "invalid")
        except (UnknownModel, UnknownRef) as exc:
            return oip_error(404, str(exc), exc.reason)
        except ArtifactUnavailable as exc:
            return oip_error(503, str(exc), exc.reason)
        except Rejected as exc:
            return oip_error(400, str(exc), exc.reason)

    async def infer(request: web.Request) -> web.Response:
        async def answer() -> dict[str, Any]:
            raw = await read_bounded(request, oip.MAX_BODY_BYTES)
            header = oip.header_length(request.headers.get(BINARY_HEADER))
            parsed = oip.parse_request(raw, header, worker.settings.max_batch)
            version = await v2_version(request, parsed.ref)
            names = version.loaded.feature_names
            matrix = oip.matrix(parsed, names)
            for row, problem in enumerate(scoring.check_finite(matrix, names)):
                if problem is not None:
                    raise oip.InvalidInference(f"row {row}: {problem}")
            scores = await coalescer.predict(version, matrix)
            worker.metrics.predicted(version.model, version.commit_id, "http", len(matrix))
            return oip.infer_response(request.match_info["model"], parsed.id, version, scores)

        return await v2_answer(request, answer)

    async def model_metadata(request: web.Request) -> web.Response:
        async def answer() -> dict[str, Any]:
            version = await v2_version(request, None)
            return oip.model_metadata(
                request.match_info["model"], version, version.loaded.summary.signature
            )

        return await v2_answer(request, answer)

    async def model_ready(request: web.Request) -> web.Response:
        async def answer() -> dict[str, Any]:
            await v2_version(request, None)  # loaded once it resolves: ready
            return {"name": request.match_info["model"], "ready": True}

        return await v2_answer(request, answer)

    async def server_ready(request: web.Request) -> web.Response:
        ready = worker.tracker.ready.is_set()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def server_live(request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def server_metadata(request: web.Request) -> web.Response:
        return web.json_response(oip.server_metadata(server_version))

    settings = worker.settings
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[
            oip_errors(),
            render_errors(lambda exc: None, MAX_BODY_BYTES),
            guard(settings.web_host, settings.web_port, content_type),
            auth.require_tokens(
                lambda: worker.tracker.fold.security,
                auth.WORKER_ROUTE_ROLES,
                auth.WORKER_OPEN_PATHS,
            ),
        ],
    )
    app.router.add_post("/v1/models/{model}/predict", predict)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        app.router.add_post(prefix + "/infer", infer)
        app.router.add_get(prefix, model_metadata)
        app.router.add_get(prefix + "/ready", model_ready)
    app.router.add_get("/v2/health/ready", server_ready)
    app.router.add_get("/v2/health/live", server_live)
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(worker: Worker) -> None:
    """Run the worker loop and its HTTP endpoints until SIGTERM/SIGINT."""
    import signal

    runner = JsonErrorRunner(create_app(worker))
    await runner.setup()
    site = web.TCPSite(runner, worker.settings.web_host, worker.settings.web_port)
    await site.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        await runner.cleanup()
