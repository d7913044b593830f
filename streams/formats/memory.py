"""This process's resident memory, for the sandbox's measurement of a model (Linux /proc).

The smoke test of a model runs in a child of its own (``streams.sandbox``), so what the
process holds and the peak it reaches while loading or scoring are the model's.
"""

from __future__ import annotations


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def resident() -> int:
    """This process's resident memory now, bytes (0 where /proc is not Linux's)."""
    try:
        return _status_kib("VmRSS:") << 10
    except (OSError, ValueError):
        return 0


def reset_peak() -> None:
    # Linux 4.0+: the high-water mark starts again from the resident memory now, so a
    # peak measures one step, not the largest step before it.
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
    except OSError:
        pass


def peak() -> int:
    """The resident high-water mark since :func:`reset_peak`, bytes (else since start)."""
    try:
        return _status_kib("VmHWM:") << 10
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
