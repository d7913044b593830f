"""Load a validated model with LightGBM in a child process that may die, never in ours.

LightGBM is native code: a model it mis-reads can abort, loop or allocate
without bound, and no ``try`` catches that. So after :mod:`streams.modelfile`
has accepted a file, :class:`Sandbox` hands it to a short-lived child that

1. caps its own address space (``RLIMIT_AS``), CPU time (``RLIMIT_CPU``) and
   core dumps, before it reads a byte of the model;
2. loads the model through LightGBM's C API (``ctypes`` on ``lib_lightgbm.so``:
   the same loader ``lightgbm.Booster(model_str=...)`` calls, without the 0.5 s
   of importing numpy, scipy and the Python package), re-reads the parameters
   as JSON the way the Python package does, and scores a few fixed rows;
3. answers one line of JSON on a pipe (nothing is pickled).

The parent waits at most ``wall_seconds``. A signal, a limit, a timeout, an
error or a prediction that is not finite or not of the model's shape becomes
:class:`~streams.errors.ArtifactRejected` with the reason.

The child runs ``python -I -c`` (no environment, no user site) plus this repository;
its start-up plus a small model's load and smoke prediction costs about 0.1 s.
"""

from __future__ import annotations

# The child imports this module too: only what it needs is imported at the top
# (no subprocess, pathlib or the validator), so its start-up stays short.
import ctypes
import importlib
import json
import math
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streams.errors import ArtifactRejected, SandboxUnavailable

if TYPE_CHECKING:
    from streams.modelfile import ModelSummary

# The directory holding the streams package, put on the child's sys.path.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "streams.sandbox:smoke"
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from streams.sandbox import child_main; child_main(sys.argv[2])"
)
_MAX_ANSWER = 1 << 16
_MAX_STDERR = 400


def lightgbm_library() -> str:
    """Where ``lib_lightgbm.so`` is, found without importing the lightgbm package."""
    import importlib.util

    spec = importlib.util.find_spec("lightgbm")
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactRejected("LightGBM is not installed here, so no model can be checked")
    for location in spec.submodule_search_locations:
        for name in ("lib_lightgbm.so", "lib_lightgbm.dylib"):
            for candidate in (os.path.join(location, "lib", name), os.path.join(location, name)):
                if os.path.isfile(candidate):
                    return candidate
    raise ArtifactRejected("lib_lightgbm is missing from the lightgbm package")


@dataclass(frozen=True)
class SandboxLimits:
    memory_bytes: int = 1 << 30  # address space of the child, libraries included
    cpu_seconds: int = 10
    wall_seconds: float = 30.0
    rows: int = 8  # smoke-prediction rows


@dataclass(frozen=True)
class SmokeResult:
    num_trees: int
    num_class: int
    num_features: int
    seconds: float


@dataclass(frozen=True)
class Sandbox:
    """Runs ``entry`` ("module:function", default LightGBM load + smoke) under limits.

    ``entry`` receives the model bytes and the request dict in the child and
    returns a JSON-able dict; another entry lets a test drive the real
    limits, signals and timeouts with a child that misbehaves on purpose.
    """

    limits: SandboxLimits = field(default_factory=SandboxLimits)
    python: str = sys.executable
    entry: str = SMOKE
    library: str | None = None  # path of lib_lightgbm; found on each check when None

    def check(self, data: bytes, summary: ModelSummary) -> SmokeResult:
        """Load ``data`` (already validated, described by ``summary``) in a child, or refuse it."""
        request = {
            "entry": self.entry,
            "library": str(self.library or lightgbm_library()),
            "size": len(data),
            "rows": self.limits.rows,
            "num_class": summary.num_class,
            "num_features": summary.num_features,
            "memory_bytes": self.limits.memory_bytes,
            "cpu_seconds": self.limits.cpu_seconds,
        }
        started = time.monotonic()
        answer = self._run(data, request)
        seconds = time.monotonic() - started
        if not answer.get("ok"):
            reason = str(answer.get("reason", "no reason given"))[:_MAX_STDERR]
            if answer.get("memory"):
                raise ArtifactRejected(
                    f"LightGBM ran out of its {self._mib} MiB memory limit on this model: {reason}"
                )
            raise ArtifactRejected(f"LightGBM cannot load this model: {reason}")
        expected = {
            "num_trees": summary.num_trees,
            "num_class": summary.num_class,
            "num_features": summary.num_features,
            "out_len": self.limits.rows * summary.num_class,
        }
        got = {key: answer.get(key) for key in expected}
        if got != expected:
            raise ArtifactRejected(
                f"LightGBM reads this model differently from its text ({got} != {expected}); "
                "save it again with booster.save_model('model.txt')"
            )
        if answer.get("finite") is not True:
            raise ArtifactRejected(
                "the model predicts NaN or infinity for ordinary rows; check its leaf values"
            )
        return SmokeResult(summary.num_trees, summary.num_class, summary.num_features, seconds)

    @property
    def _mib(self) -> int:
        return self.limits.memory_bytes >> 20

    def _run(self, data: bytes, request: dict[str, Any]) -> dict[str, Any]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
            # One thread each: no per-thread arenas or stacks eating the address space.
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MALLOC_ARENA_MAX": "2",
        }
        # -I: no PYTHON* variables, no user site, no current directory. -S (no site
        # packages) for our own child, which needs only the standard library; a
        # test's entry may need pytest.
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
            out, err = child.communicate(data, timeout=self.limits.wall_seconds)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise ArtifactRejected(
                f"LightGBM did not finish loading and scoring this model within "
                f"{self.limits.wall_seconds:g} s (does a tree loop?)"
            ) from None
        except BaseException:
            child.kill()  # cancelled or interrupted: never leave the child behind
            child.wait()
            raise
        code = child.returncode
        tail = err.decode("utf-8", "replace").strip()[-_MAX_STDERR:]
        if code < 0:
            raise ArtifactRejected(self._signal_reason(-code, tail))
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

    def _signal_reason(self, signum: int, tail: str) -> str:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        if signum in (signal.SIGXCPU, signal.SIGKILL):
            return (
                f"LightGBM used more than its {self.limits.cpu_seconds} s of CPU time "
                f"on this model ({name})"
            )
        detail = f": {tail}" if tail else ""
        return f"LightGBM crashed ({name}) loading or scoring this model{detail}"


# -- the child --------------------------------------------------------------------------
def child_main(request_json: str) -> None:
    """Entry point of the child: limits first, then the model, then one JSON line."""
    request = json.loads(request_json)
    memory, cpu = int(request["memory_bytes"]), int(request["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    # SIGXCPU at the soft limit, SIGKILL one second later if that is caught.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    # Keep the answer channel to ourselves: LightGBM prints its log to stdout.
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    data = sys.stdin.buffer.read(int(request["size"]))
    module, _, name = str(request["entry"]).partition(":")
    run: Callable[[bytes, dict[str, Any]], dict[str, Any]] = getattr(
        importlib.import_module(module), name
    )
    try:
        result = run(data, request)
    except MemoryError as exc:
        result = {"ok": False, "memory": True, "reason": f"out of memory ({exc})"}
    except Exception as exc:
        result = {"ok": False, "reason": f"{type(exc).__name__}: {exc}"}
    answer.write(json.dumps(result) + "\n")
    answer.flush()


class _LightGBMFailed(Exception):
    pass


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


def smoke(data: bytes, request: dict[str, Any]) -> dict[str, Any]:
    """Load with LightGBM's C API as ``lightgbm.Booster(model_str=...)`` does, then score."""
    lib = ctypes.CDLL(str(request["library"]))
    lib.LGBM_GetLastError.restype = ctypes.c_char_p

    def call(result: int, what: str) -> None:
        if result != 0:
            message = (lib.LGBM_GetLastError() or b"").decode("utf-8", "replace")
            raise _LightGBMFailed(f"{what}: {message}")

    handle = ctypes.c_void_p()
    iterations = ctypes.c_int(0)
    try:
        call(
            lib.LGBM_BoosterLoadModelFromString(
                ctypes.c_char_p(data), ctypes.byref(iterations), ctypes.byref(handle)
            ),
            "loading",
        )
        del data
        counts = {}
        for key, function in (
            ("num_class", lib.LGBM_BoosterGetNumClasses),
            ("num_features", lib.LGBM_BoosterGetNumFeature),
            ("num_trees", lib.LGBM_BoosterNumberOfTotalModel),
        ):
            value = ctypes.c_int(0)
            call(function(handle, ctypes.byref(value)), key)
            counts[key] = value.value
        _loaded_parameters(lib, handle, call)
        rows, features = int(request["rows"]), int(request["num_features"])
        if (counts["num_class"], counts["num_features"]) != (
            request["num_class"],
            features,
        ):
            # Never size a prediction by what LightGBM says if it disagrees with the text.
            return {"ok": True, **counts, "out_len": None, "finite": False}
        matrix = (ctypes.c_double * (rows * features))(*smoke_rows(rows, features))
        out = (ctypes.c_double * (rows * counts["num_class"]))()
        out_len = ctypes.c_int64(0)
        call(
            lib.LGBM_BoosterPredictForMat(
                handle,
                matrix,
                ctypes.c_int(1),  # C_API_DTYPE_FLOAT64
                ctypes.c_int32(rows),
                ctypes.c_int32(features),
                ctypes.c_int(1),  # row-major, like the workers' numpy batches
                ctypes.c_int(0),  # C_API_PREDICT_NORMAL
                ctypes.c_int(0),
                ctypes.c_int(-1),
                ctypes.c_char_p(b"num_threads=1"),
                ctypes.byref(out_len),
                out,
            ),
            "predicting",
        )
        finite = all(map(math.isfinite, out))
        return {"ok": True, **counts, "out_len": out_len.value, "finite": finite}
    except _LightGBMFailed as exc:
        text = str(exc)
        return {"ok": False, "memory": "bad_alloc" in text, "reason": text}
    finally:
        if handle.value:
            lib.LGBM_BoosterFree(handle)


def _loaded_parameters(lib: Any, handle: ctypes.c_void_p, call: Callable[[int, str], None]) -> None:
    """Re-read the parameters as the Python package does on load: JSON from LightGBM."""
    size = 1 << 20
    for _ in range(2):
        buffer = ctypes.create_string_buffer(size)
        needed = ctypes.c_int64(0)
        call(
            lib.LGBM_BoosterGetLoadedParam(
                handle, ctypes.c_int64(size), ctypes.byref(needed), buffer
            ),
            "reading its parameters",
        )
        if needed.value <= size:
            break
        size = needed.value
    try:
        parsed = json.loads(buffer.value.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise _LightGBMFailed(f"its parameters do not read back as JSON ({exc})") from exc
    if not isinstance(parsed, dict):
        raise _LightGBMFailed("its parameters do not read back as a JSON object")
