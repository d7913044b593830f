"""`python -m workers.monitor`: the monitor, set up from the environment.

``MODELVC_MONITOR_WINDOW_MS`` (60000), ``MODELVC_MONITOR_HORIZON_MS`` (3600000),
``MODELVC_MONITOR_LATENESS_MS`` (2000), ``MODELVC_MONITOR_PORT`` (6072, on
``MODELVC_MONITOR_HOST``, loopback by default), ``MODELVC_MONITOR_ID`` and
``MODELVC_MONITOR_STATE`` (its RocksDB; default ``$MODELVC_HOME/monitor/<id>``). A
setting it cannot read stops it with one line saying what to fix, and exit status 1.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] = ()) -> None:
    import argparse

    argparse.ArgumentParser(prog="python -m workers.monitor", description=__doc__).parse_args(
        list(argv)
    )
    from streams.http_client import TokenError
    from streams.monitoring.windows import RocksDBRows
    from workers.monitor.app import Monitor, open_references, serve
    from workers.monitor.join import Joiner
    from workers.monitor.metrics import MonitorMetrics
    from workers.monitor.settings import MonitorSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = MonitorSettings.from_env()
        references = open_references(settings)
        store = RocksDBRows(settings.state_path / "join.rocksdb")
    except (ValueError, TokenError, OSError) as exc:
        logging.getLogger("modelvc.monitor").error("cannot start: %s", exc)
        raise SystemExit(1) from None
    try:
        joiner = Joiner(store, settings.window_ms, settings.horizon_ms, settings.lateness_ms)
        # The join makes a few short-lived containers per record, freed by their reference
        # counts: looking for cycles every 700 of them took a tenth of the monitor's time.
        # The state loaded at start lives on: out of every collection.
        gc.freeze()
        gc.set_threshold(50_000, 10, 10)
        asyncio.run(serve(Monitor(settings, joiner, MonitorMetrics(), references)))
    finally:
        store.close()


if __name__ == "__main__":
    main(sys.argv[1:])
