"""Load a validated model with its native library in a child process that may die, never in ours.

LightGBM and onnxruntime are native code: a model they mis-read can abort, loop or
allocate without bound, and no ``try`` catches that. So after a format's own validator
(:meth:`~streams.formats.base.ModelFormat.validate`) has accepted a file,
:class:`Sandbox` hands it to a short-lived child that

1. caps its own address space (``RLIMIT_AS``), CPU time (``RLIMIT_CPU``) and
   core dumps, before it reads a byte of the model;
2. imports only ``streams.formats.<name>`` and calls the format's
   :meth:`~streams.formats.base.ModelFormat.smoke`: the native library loads the model
   and scores a few fixed rows (:func:`smoke_rows`);
3. answers one line of JSON on a pipe (nothing is pickled).

The parent waits at most ``wall_seconds``. A signal, a limit, a timeout, an error, a
number of outputs other than the signature's, or a prediction that is not finite
becomes :class:`~streams.errors.ArtifactRejected` with the reason, naming the library.

The child runs ``python -I -S -c`` (no environment, no user site, no site-packages) plus
this repository and the directories of the packages the format's smoke imports (found
here with ``importlib.util.find_spec``, never imported here). A small LightGBM model's
check costs a few tenths of a second (start-up, importing the formats, load, smoke), an
ONNX model's about half a second more (importing onnx and onnxruntime).
"""

from __future__ import annotations

# The child imports this module too: only what it needs is imported at the top
# (no subprocess, pathlib or the validators), so its start-up stays short.
import importlib
import json
import math
import os
import re
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streams.errors import ArtifactRejected, SandboxUnavailable

if TYPE_CHECKING:
    from streams.formats.base import Checked

# The directory holding the streams package, put on the child's sys.path.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "streams.sandbox:smoke"
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from streams.sandbox import child_main; child_main(sys.argv[2])"
)
_MAX_ANSWER = 1 << 16
_MAX_STDERR = 400
_FORMAT_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


class SmokeFailed(Exception):
    """A native library refused the model in the child; the message is the reason as is."""


@dataclass(frozen=True)
class SandboxLimits:
    # Address space of the child, libraries included. onnxruntime checks and scores a
    # small graph within 256 MiB (measured), so LightGBM's 1 GiB serves both.
    memory_bytes: int = 1 << 30
    cpu_seconds: int = 10
    wall_seconds: float = 30.0
    rows: int = 8  # smoke-prediction rows


@dataclass(frozen=True)
class SmokeResult:
    """The child's answer (the format's facts: outputs, finite, counts) and its wall time."""

    format: str
    answer: Mapping[str, Any]
    seconds: float


def package_paths(packages: Iterable[str]) -> list[str]:
    """The sys.path entries holding ``packages``, found without importing them."""
    import importlib.util

    paths: list[str] = []
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise SandboxUnavailable(
                f"{package} is not installed here, so no such model can be checked; "
                f"install it (pip install {package})"
            )
        # .../site-packages/<package>/__init__.py -> .../site-packages
        top = os.path.dirname(spec.origin)
        if spec.submodule_search_locations:
            top = os.path.dirname(top)
        if top not in paths:
            paths.append(top)
    return paths


@dataclass(frozen=True)
class Sandbox:
    """Runs the format's smoke test (or ``entry``, "module:function") under limits.

    ``entry`` receives the model bytes and the request dict in the child and
    returns a JSON-able dict; another entry lets a test drive the real
    limits, signals and timeouts with a child that misbehaves on purpose.
    """

    limits: SandboxLimits = field(default_factory=SandboxLimits)
    python: str = sys.executable
    entry: str = SMOKE

    def check(self, data: bytes, checked: Checked) -> SmokeResult:
        """Load ``data`` (already validated, described by ``checked``) in a child, or refuse it."""
        from streams.formats import by_name

        model_format = by_name(checked.format)
        library = model_format.library
        # What the validator read goes on stdin ahead of the model: a signature of 100,000
        # features is megabytes, and one argument of argv is limited to 128 KiB.
        described = json.dumps(checked.plain()).encode()
        request = {
            "entry": self.entry,
            "format": model_format.name,
            "paths": package_paths(model_format.packages),
            "checked_size": len(described),
            "size": len(data),
            "rows": self.limits.rows,
            "memory_bytes": self.limits.memory_bytes,
            "cpu_seconds": self.limits.cpu_seconds,
        }
        started = time.monotonic()
        answer = self._run(described + data, request, library)
        seconds = time.monotonic() - started
        if not answer.get("ok"):
            reason = str(answer.get("reason", "no reason given"))[:_MAX_STDERR]
            if answer.get("refused"):
                raise ArtifactRejected(reason)
            if answer.get("memory"):
                raise ArtifactRejected(
                    f"{library} ran out of its {self._mib} MiB memory limit on this model: {reason}"
                )
            raise ArtifactRejected(f"{library} cannot load this model: {reason}")
        expected = checked.signature.outputs
        if answer.get("outputs") != expected:
            raise ArtifactRejected(
                f"{library} reads this model differently from its bytes "
                f"({answer.get('outputs')!r} outputs, not {expected}); export it again"
            )
        if answer.get("finite") is not True:
            raise ArtifactRejected(
                "the model predicts NaN or infinity for ordinary rows; check its weights "
                "(leaf values)"
            )
        return SmokeResult(model_format.name, answer, seconds)

    @property
    def _mib(self) -> int:
        return self.limits.memory_bytes >> 20

    def _run(self, stdin: bytes, request: dict[str, Any], library: str) -> dict[str, Any]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
            # One thread each: no per-thread arenas or stacks eating the address space.
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MALLOC_ARENA_MAX": "2",
            # Blocks of 64 KiB or more are mapped and unmapped whole, and freed memory is
            # given back: the smoke's measurement of a batch's memory (resident peak) then
            # sees what the batch allocates, not memory an earlier step freed and kept.
            "MALLOC_MMAP_THRESHOLD_": "65536",
            "MALLOC_TRIM_THRESHOLD_": "0",
        }
        # -I: no PYTHON* variables, no user site, no current directory. -S (no site
        # packages) for our own child, which gets the format's package directories on
        # its path instead; a test's entry may need pytest.
        flags = ["-I", "-S"] if self.entry == SMOKE else ["-I"]
        argv = [self.python, *flags, "-c", _BOOT, ROOT, json.dumps(request)]
        import subprocess  # here, not at the top: the child never needs it

        try:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,  # a terminal's Ctrl-C is ours to handle, not the child's
            )
        except OSError as exc:
            raise SandboxUnavailable(f"cannot start the model sandbox ({exc}); try again") from exc
        try:
            out, err = child.communicate(stdin, timeout=self.limits.wall_seconds)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise ArtifactRejected(
                f"{library} did not finish loading and scoring this model within "
                f"{self.limits.wall_seconds:g} s (does it loop?)"
            ) from None
        except BaseException:
            child.kill()  # cancelled or interrupted: never leave the child behind
            child.wait()
            raise
        code = child.returncode
        tail = err.decode("utf-8", "replace").strip()[-_MAX_STDERR:]
        if code < 0:
            raise ArtifactRejected(self._signal_reason(-code, tail, library))
        try:
            answer = json.loads(out[-_MAX_ANSWER:].decode("utf-8").strip().rsplit("\n", 1)[-1])
        except (ValueError, IndexError):
            answer = None
        if code != 0 or not isinstance(answer, dict):
            raise ArtifactRejected(
                f"the model sandbox exited with code {code} and no answer"
                + (f": {tail}" if tail else "")
            )
        return answer

    def _signal_reason(self, signum: int, tail: str, library: str) -> str:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        if signum in (signal.SIGXCPU, signal.SIGKILL):
            return (
                f"{library} used more than its {self.limits.cpu_seconds} s of CPU time "
                f"on this model ({name})"
            )
        detail = f": {tail}" if tail else ""
        return f"{library} crashed ({name}) loading or scoring this model{detail}"


# -- the child --------------------------------------------------------------------------
def child_main(request_json: str) -> None:
    """Entry point of the child: limits first, then the model, then one JSON line."""
    request = json.loads(request_json)
    memory, cpu = int(request["memory_bytes"]), int(request["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    # SIGXCPU at the soft limit, SIGKILL one second later if that is caught.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    # After the repository: a package there never shadows ours.
    sys.path.extend(str(path) for path in request.get("paths", ()))
    # Keep the answer channel to ourselves: native libraries print their logs to stdout.
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    request["checked"] = json.loads(sys.stdin.buffer.read(int(request["checked_size"])))
    data = sys.stdin.buffer.read(int(request["size"]))
    module, _, name = str(request["entry"]).partition(":")
    run: Callable[[bytes, dict[str, Any]], dict[str, Any]] = getattr(
        importlib.import_module(module), name
    )
    try:
        result = run(data, request)
    except MemoryError as exc:
        result = {"ok": False, "memory": True, "reason": f"out of memory ({exc})"}
    except ArtifactRejected as exc:  # the format's own verdict, worded for the user
        result = {"ok": False, "refused": True, "reason": str(exc)}
    except SmokeFailed as exc:
        result = {"ok": False, "reason": str(exc)}
    except Exception as exc:
        result = {"ok": False, "reason": f"{type(exc).__name__}: {exc}"}
    answer.write(json.dumps(result) + "\n")
    answer.flush()


def smoke(data: bytes, request: dict[str, Any]) -> dict[str, Any]:
    """The default entry: the requested format's smoke test (native libraries load there)."""
    name = str(request["format"])
    if not _FORMAT_NAME.fullmatch(name):
        raise SmokeFailed(f"no format named {name[:40]!r}")
    module = importlib.import_module(f"streams.formats.{name}")
    model_format = getattr(module, name.upper())
    return {"ok": True, **model_format.smoke(data, request["checked"], int(request["rows"]))}


def smoke_rows(rows: int, features: int) -> list[float]:
    """Fixed rows, row-major: zeros, ones, minus ones, NaN, small integers, large, mixed."""
    out: list[float] = []
    state = 12345
    for r in range(rows):
        for c in range(features):
            if r < 3:
                value = (0.0, 1.0, -1.0)[r]
            elif r == 3:
                value = math.nan
            elif r == 4:
                value = float(c % 7)  # categorical codes
            elif r == 5:
                value = 1e9 if c % 2 else -1e9
            else:
                state = (1103515245 * state + 12345) % 2**31
                value = state / 2**31 * 20.0 - 10.0
            out.append(value)
    return out
