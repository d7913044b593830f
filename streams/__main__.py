"""`python -m streams`: run one streams app instance (settings from the environment).

What the environment gets wrong (a setting, the artifact store's credentials, bucket
or directory, a store it may not write) ends the process before it serves anyone:
one error line saying what to fix, and exit status 1 (as ``python -m workers``).
"""

from __future__ import annotations

import logging

import faust

from streams.app import create_app
from streams.artifacts import ArtifactStore, open_checked_store
from streams.bootstrap import bootstrap
from streams.errors import ArtifactStoreUnavailable
from streams.settings import Settings
from streams.topics import ensure_topics

log = logging.getLogger("modelvc.streams")


def checked_store(settings: Settings) -> ArtifactStore:
    """The store ``settings`` name, opened and reached once, for writing (this app stores
    uploads); SystemExit(1) after one error line when it cannot be, so a wrong credential
    or a read-only store fails the start, not an upload."""
    try:
        return open_checked_store(settings.artifacts, settings.s3_endpoint, writable=True)
    except ArtifactStoreUnavailable as exc:
        log.error("cannot start: %s", exc.strerror or exc)
        raise SystemExit(1) from None


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(1) from None
    store = checked_store(settings)  # the one store of this process: bootstrap takes it
    ensure_topics(settings)
    # The app stops its collaborators on shutdown (ModelvcApp.on_shutdown -> Streams.stop).
    app = create_app(bootstrap(settings, store=store))
    worker = faust.Worker(app, loglevel="INFO", quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
