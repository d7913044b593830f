"""`python -m streams`: run one streams app instance (settings from the environment)."""

from __future__ import annotations

import logging

import faust

from streams.app import create_app
from streams.settings import Settings
from streams.topics import ensure_topics


def main() -> None:
    settings = Settings.from_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ensure_topics(settings)
    app, service = create_app(settings)
    worker = faust.Worker(app, loglevel="INFO", quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        service.projection.close()


if __name__ == "__main__":
    main()
