"""The naive baseline: a Faust agent that decodes, predicts one row and sends, per event.

It decodes as the worker does, by the writer's fingerprint (typed or map-of-union
events, ``workers.typed``), so the ratio is about the per-event shape of the work.

Started by bench/serving.py as `python -m bench.naive_worker` with BENCH_* variables.
It uses the same short fetch wait as modelvc's own app, so the comparison is
about the per-event shape of the work, not a broker setting.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import faust
import lightgbm as lgb
import numpy as np

from streams.app import ModelvcApp
from streams.codec import PREDICTIONS
from streams.modelfile import validate
from workers.scoring import prediction_id
from workers.typed import TypedRegistry


def main() -> None:
    env = os.environ
    booster = lgb.Booster(model_file=env["BENCH_MODEL"])
    names = booster.feature_name()
    registry = TypedRegistry()
    registry.add(validate(Path(env["BENCH_MODEL"]).read_bytes()).signature)
    commit, digest = env["BENCH_COMMIT"], env["BENCH_DIGEST"]
    app = ModelvcApp(
        "bench-naive",
        broker=f"kafka://{env['KAFKA_BOOTSTRAP']}",
        store="memory://",
        web_enabled=False,
        broker_session_timeout=6,
        broker_rebalance_timeout=6,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
        datadir=env["BENCH_DATADIR"],
    )
    source = app.topic(env["BENCH_SOURCE"], value_serializer="raw", key_serializer="raw")
    sink = app.topic(env["BENCH_SINK"], value_serializer="raw", key_serializer="raw")

    @app.agent(source)
    async def score(stream: Any) -> None:
        async for event in stream.events():
            feature, _ = registry.decode(event.value)
            row = np.asarray([[feature["features"][n] for n in names]], dtype=np.float64)
            value = float(booster.predict(row, num_threads=1)[0])
            message = event.message
            await sink.send(
                key=event.key,
                value=PREDICTIONS.encode(
                    {
                        "prediction_id": prediction_id(feature["event_id"], commit),
                        "feature_event_id": feature["event_id"],
                        "source_topic": message.topic,
                        "source_partition": message.partition,
                        "source_offset": message.offset,
                        "model": feature["model"],
                        "requested_ref": "main",
                        "commit_id": commit,
                        "artifact_sha256": digest,
                        "scores": [value],
                        "worker_id": "naive",
                        "event_time": feature["event_time"],
                        "scored_at": int(time.time() * 1000),
                    }
                ),
            )

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
