"""`python -m streams`: run one streams app instance (settings from the environment)."""

from __future__ import annotations

import logging

import faust

from streams.app import create_app
from streams.bootstrap import bootstrap
from streams.settings import Settings
from streams.topics import ensure_topics


def main() -> None:
    settings = Settings.from_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ensure_topics(settings)
    # The app stops its collaborators on shutdown (ModelvcApp.on_shutdown -> Streams.stop).
    app = create_app(bootstrap(settings))
    worker = faust.Worker(app, loglevel="INFO", quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
