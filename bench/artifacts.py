"""Artifact stores: S3 (a moto server) and local disk side by side, modelvc against plain.

`python -m bench.artifacts [MB] [RUNS]`

1. Throughput of one MB-sized blob (default 200 MB): modelvc's stores (``S3Store.put``
   / ``get``: hashed while sent or read, multipart with a few parts in flight, a
   conditional complete; ``LocalStore.put`` / ``get``: temp file, fsync, rename; read
   hashed) against plain boto3 ``upload_file`` / ``download_file`` (its defaults: 8 MB
   parts, 10 threads) on the same endpoint, and against a plain file copy (fsynced for
   the write) on the same disk. Median MB/s of RUNS (default 3), the cases taking turns
   run by run; the object is deleted between runs, untimed, so every put really sends.
2. A worker's artifact load of a realistic model (1,000 trees × 31 leaves, 20 features,
   ~3.4 MB): cold (an empty cache: fetched from the store into the cache) and warm (a
   new loader on the filled cache, as after a restart), each as the fetch alone and as
   the whole load (fetch + the upload checks in the sandbox + LightGBM's parse). Median
   of 2 × RUNS + 1 loads each.

Moto runs on this machine, in one Python process, with the benchmark: S3 figures are
the client and moto's request handling with no network in between, so they compare
modelvc with boto3 on equal terms, not with a real S3 (which adds latency per request
and, from one host, usually gives 100-300 MB/s per stream).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import boto3

from bench.report import report
from bench.serving import train
from streams.artifacts import ArtifactStore, LocalStore, open_store
from tests.s3server import BUCKET, running_s3
from workers.artifacts import ArtifactLoader
from workers.cache import ArtifactCache

MB = 1_000_000
CHUNK = 1 << 20
MODEL_TREES = 1000
CACHE_BYTES = 2048 << 20  # the worker's default (MODELVC_WORKER_CACHE_MB)


Case = tuple[Callable[[], object], Callable[[], object] | None]  # timed, then reset (untimed)


def medians_s(runs: int, cases: dict[str, Case]) -> dict[str, float]:
    """Median seconds of each case's ``timed()`` over ``runs``, the cases taking turns
    run by run, so a neighbour's load on this shared machine weighs on all of them."""
    took: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, (timed, reset) in cases.items():
            t = time.perf_counter()
            timed()
            took[name].append(time.perf_counter() - t)
            if reset is not None:
                reset()
    return {name: statistics.median(samples) for name, samples in took.items()}


def blob(path: Path, size: int) -> str:
    """A file of ``size`` random bytes (incompressible, as a model mostly is); its sha256."""
    hasher = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(CHUNK, left))
            hasher.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return hasher.hexdigest()


def store_put(store: ArtifactStore, source: Path, digest: str) -> None:
    with open(source, "rb") as stream:
        assert store.put(stream, digest), "the object was already there: nothing was sent"


def store_get(store: ArtifactStore, digest: str, into: Path) -> None:
    with open(into, "wb") as out:
        store.get(digest, out)


def copy_synced(source: Path, into: Path) -> None:
    shutil.copyfile(source, into)
    with open(into, "rb+") as out:
        os.fsync(out.fileno())


def loads(
    runs: int, store: ArtifactStore, local: ArtifactStore, digest: str, work: Path
) -> dict[str, float]:
    """Median seconds of a worker's cold and warm fetch and load of ``digest`` from
    ``store``, and of its load from a ``local`` store directory (read without a cache)."""
    made = itertools.count()

    def empty_cache() -> ArtifactCache:
        return ArtifactCache(work / f"cold-{next(made)}", CACHE_BYTES)

    warm_root = work / "warm"
    with ArtifactCache(warm_root, CACHE_BYTES) as filled:
        ArtifactLoader(store, cache=filled).fetch(digest)

    def warm_cache() -> ArtifactCache:
        # A new cache over the same directory: what a restarted worker finds.
        return ArtifactCache(warm_root, CACHE_BYTES)

    def through(cache: Callable[[], ArtifactCache], load: bool) -> Callable[[], object]:
        def run() -> object:
            # Closed after each run: a cache locks its directory while open, as one
            # worker's does, so the next run's "restarted worker" may take it.
            with cache() as opened:
                loader = ArtifactLoader(store, cache=opened)
                return loader.load(digest) if load else loader.fetch(digest)

        return run

    cases: dict[str, Case] = {"local load": (lambda: ArtifactLoader(local).load(digest), None)}
    for name, cache in (("cold", empty_cache), ("warm", warm_cache)):
        cases |= {
            f"{name} fetch": (through(cache, load=False), None),
            f"{name} load": (through(cache, load=True), None),
        }
    return medians_s(runs, cases)


def side_by_side(
    what: str, ours: str, rate: float, plain: str, plain_rate: float
) -> list[tuple[str, float, str, str]]:
    """modelvc's rate, the plain one's, and their ratio."""
    return [
        (f"{what}, modelvc {ours}", rate, "MB/s", ""),
        (f"{what}, {plain}", plain_rate, "MB/s", ""),
        (f"{what} ratio modelvc/plain", rate / plain_rate, "x", ""),
    ]


def main() -> None:
    size = int(sys.argv[1]) * MB if len(sys.argv) > 1 else 200 * MB
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    load_runs = 2 * runs + 1
    with tempfile.TemporaryDirectory(prefix="modelvc-bench-") as tmp:
        work = Path(tmp)
        source = work / "blob"
        digest = blob(source, size)
        model = train(work / "model.txt", 0, MODEL_TREES)
        model_bytes = model.read_bytes()
        model_digest = hashlib.sha256(model_bytes).hexdigest()
        local = LocalStore(work / "store")
        store_put(local, model, model_digest)
        with running_s3(work) as s3:
            # The way a deployment gives them: boto3's default chain reads the environment.
            os.environ.update({k: v for k, v in s3.env().items() if k.startswith("AWS_")})
            store = open_store(f"s3://{BUCKET}/bench", s3.endpoint)
            plain = boto3.client("s3", endpoint_url=s3.endpoint)
            key = "plain/blob"
            puts = medians_s(
                runs,
                {
                    "s3": (lambda: store_put(store, source, digest), lambda: store.delete(digest)),
                    "boto3": (
                        lambda: plain.upload_file(str(source), BUCKET, key),
                        lambda: plain.delete_object(Bucket=BUCKET, Key=key),
                    ),
                    "disk": (
                        lambda: store_put(local, source, digest),
                        lambda: local.delete(digest),
                    ),
                    "copy": (lambda: copy_synced(source, work / "copy"), None),
                },
            )
            store_put(store, source, digest)
            plain.upload_file(str(source), BUCKET, key)
            store_put(local, source, digest)
            into = work / "got"
            gets = medians_s(
                runs,
                {
                    "s3": (lambda: store_get(store, digest, into), into.unlink),
                    "boto3": (lambda: plain.download_file(BUCKET, key, str(into)), into.unlink),
                    "disk": (lambda: store_get(local, digest, into), into.unlink),
                    "copy": (lambda: shutil.copyfile(source, into), into.unlink),
                },
            )
            store.delete(digest)
            plain.delete_object(Bucket=BUCKET, Key=key)
            store_put(store, model, model_digest)
            worker = loads(load_runs, store, local, model_digest, work)
    put, get = ({k: size / MB / s for k, s in d.items()} for d in (puts, gets))
    report(
        "artifacts",
        [
            ("blob", size // MB, "MB", ""),
            *side_by_side("S3 put", "S3Store", put["s3"], "boto3 upload_file", put["boto3"]),
            *side_by_side("S3 get", "S3Store", get["s3"], "boto3 download_file", get["boto3"]),
            *side_by_side("disk put", "LocalStore", put["disk"], "copy + fsync", put["copy"]),
            *side_by_side("disk get", "LocalStore", get["disk"], "copy", get["copy"]),
            ("model", len(model_bytes) / MB, "MB", f"{MODEL_TREES} trees"),
            ("worker fetch from S3, cold (empty cache)", worker["cold fetch"] * 1000, "ms", ""),
            ("worker fetch, warm (cache, restarted)", worker["warm fetch"] * 1000, "ms", ""),
            ("worker load from S3, cold", worker["cold load"] * 1000, "ms", ""),
            ("worker load, warm (cache, restarted)", worker["warm load"] * 1000, "ms", ""),
            (
                "of which checks (sandbox) + parse",
                (worker["warm load"] - worker["warm fetch"]) * 1000,
                "ms",
                "warm load - warm fetch",
            ),
            ("worker load from a local store", worker["local load"] * 1000, "ms", "no cache"),
        ],
        extra={"runs": runs, "load_runs": load_runs},
    )


if __name__ == "__main__":
    main()
