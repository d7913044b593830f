"""HTTP endpoints of a worker: predict one row, Prometheus metrics, health.

The same hygiene as the streams API (``streams.http_edge``): errors are JSON,
POST needs ``Content-Type: application/json``, foreign origins are refused and
bodies are bounded; the server binds to ``MODELVC_WORKER_HOST`` (loopback by default).
Predicting needs a reader token (``streams.auth``), checked against ``~security``
as this worker folded it from the same log; /healthz and /metrics stay open.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import numpy as np
from aiohttp import web

from streams import auth
from streams.http_edge import JSON, JsonErrorRunner, guard, render_errors
from workers import scoring
from workers.errors import Rejected, UnknownModel, UnknownRef
from workers.loop import DELIVERY_NOTES, Worker
from workers.metrics import CONTENT_TYPE_LATEST

# One row of features is small; a bigger body is refused (413) before it is parsed.
MAX_BODY_BYTES = 1024 * 1024


def create_app(worker: Worker) -> web.Application:
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
        scores = (await worker.scorer.predict(version, matrix))[0].tolist()
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
            # Versions refused or not loadable (never served): why, since when, how often.
            "failures": worker.tracker.failures,
        }
        return web.json_response(body, status=200 if ready else 503)

    settings = worker.settings
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[
            render_errors(lambda exc: None, MAX_BODY_BYTES),
            guard(settings.web_host, settings.web_port, lambda request: JSON),
            auth.require_tokens(
                lambda: worker.tracker.fold.security,
                auth.WORKER_ROUTE_ROLES,
                auth.WORKER_OPEN_PATHS,
            ),
        ],
    )
    app.router.add_post("/v1/models/{model}/predict", predict)
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
