"""`python -m workers` (`modelvc worker`): one inference worker, set up from the environment."""

from __future__ import annotations

import asyncio
import logging
import os


def main() -> None:
    # One LightGBM/OpenMP thread per worker process: scale out with processes. Set before
    # anything imports LightGBM, hence the imports below.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from workers.bootstrap import bootstrap
    from workers.http import serve
    from workers.settings import WorkerSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(bootstrap(WorkerSettings.from_env())))


if __name__ == "__main__":
    main()
