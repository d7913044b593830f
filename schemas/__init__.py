"""The Avro schemas of every message modelvc writes, shipped as package data.

``*.avsc`` here are the current schemas. ``released/<fingerprint>.avsc`` holds,
expanded into one self-contained schema each, every writer schema a release
has ever put on the wire: readers register all of them, so old messages stay
readable after any compatible change. A file there is history: add one for
each new schema (``python -m tests.golden.make_fixtures``), never edit or
delete one.
"""

from __future__ import annotations

from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent
RELEASED_DIR = SCHEMA_DIR / "released"
