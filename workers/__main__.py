"""`python -m workers` (`modelvc worker`): one inference worker, set up from the environment.

``--sign-predictions`` (or ``MODELVC_SIGN_PREDICTIONS=1``) signs every prediction
with the worker's own key, ``MODELVC_WORKER_KEY`` (default
``$MODELVC_HOME/keys/worker-<worker id>.key``, created 0600 at first start).

Artifacts fetched over the network (``MODELVC_ARTIFACTS=s3://…``, or the streams
API) are cached in ``MODELVC_WORKER_CACHE`` (default ``$MODELVC_HOME/cache/<worker
id>``), at most ``MODELVC_WORKER_CACHE_MB`` (2048). A store that cannot be reached
at start (credentials, bucket, endpoint, directory) stops the worker with one line
saying what to fix, and exit status 1 (as ``python -m streams``), before it consumes
anything; so do a setting it cannot read and a cache directory another worker uses.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] = ()) -> None:
    """Run the worker; ``argv`` are this module's own flags (`modelvc worker` passes none)."""
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument(
        "--sign-predictions",
        action="store_true",
        help="sign each prediction with this worker's key (also MODELVC_SIGN_PREDICTIONS=1)",
    )
    args = parser.parse_args(list(argv))
    # One LightGBM/OpenMP thread per worker process: scale out with processes. Set before
    # anything imports LightGBM, hence the imports below.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from streams.errors import ArtifactStoreUnavailable
    from workers.bootstrap import bootstrap
    from workers.http import serve
    from workers.settings import WorkerSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = WorkerSettings.from_env()
        if args.sign_predictions:
            settings = dataclasses.replace(settings, sign_predictions=True)
        worker = bootstrap(settings)
    except (ValueError, ArtifactStoreUnavailable) as exc:
        # A setting to fix, not a bug: its one line says what to do, without a traceback.
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        logging.getLogger("modelvc.workers").error("cannot start: %s", message)
        raise SystemExit(1) from None
    asyncio.run(serve(worker))


if __name__ == "__main__":
    main(sys.argv[1:])
