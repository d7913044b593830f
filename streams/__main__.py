"""`python -m streams`: run one streams app instance (settings from the environment).

What the environment gets wrong (a setting, the artifact store's credentials, bucket
or directory) ends the process before it serves anyone: one error line saying what
to fix, and exit status 1.
"""

from __future__ import annotations

import logging

import faust

from streams.app import create_app
from streams.artifacts import ArtifactStore, open_store
from streams.bootstrap import bootstrap
from streams.errors import ArtifactStoreUnavailable
from streams.settings import Settings
from streams.topics import ensure_topics

log = logging.getLogger("modelvc.streams")


def checked_store(settings: Settings, store: ArtifactStore | None = None) -> ArtifactStore:
    """The store ``settings`` name (or ``store``), reached once; SystemExit(1) after one
    error line when it cannot be, so a wrong credential fails the start, not a commit."""
    if store is None:
        store = open_store(settings.artifacts, settings.s3_endpoint)
    try:
        store.check()
    except ArtifactStoreUnavailable as exc:
        log.error("cannot start: %s", exc.strerror or exc)
        raise SystemExit(1) from None
    return store


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(1) from None
    store = checked_store(settings)
    ensure_topics(settings)
    # The app stops its collaborators on shutdown (ModelvcApp.on_shutdown -> Streams.stop).
    app = create_app(bootstrap(settings, store=store))
    worker = faust.Worker(app, loglevel="INFO", quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
