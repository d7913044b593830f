"""`python -m streams.archive`: run the archiver (settings from the environment)."""

from streams.archive.archiver import main

main()
