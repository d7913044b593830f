"""LightGBM text models: :data:`LIGHTGBM`, the :class:`~streams.formats.base.ModelFormat`.

Validation is our own parser (:mod:`streams.modelfile`): LightGBM never sees a file it
refuses. The smoke test (in the sandboxed child) and the workers' predictor both call
LightGBM's C API through ``ctypes`` on ``lib_lightgbm.so``: the loader and the prediction
``lightgbm.Booster(model_str=...).predict(x, num_threads=1)`` call, with the same
arguments, so scores are the Python package's bit for bit (a unit test holds them to it).
Importing the Python package costs about 1.5 s of CPU (it imports scikit-learn and scipy
when they are installed) and about 90 MB in every worker, for nothing the C API lacks.
"""

from __future__ import annotations

# The sandbox child imports this module: the top stays light (no numpy, no lightgbm).
import ctypes
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streams import modelfile
from streams.core.model_signature import ModelSignature
from streams.errors import ArtifactRejected
from streams.formats.base import Checked
from streams.sandbox import SmokeFailed, smoke_rows

if TYPE_CHECKING:
    import numpy as np

# What the upload answer carried before formats existed: ModelSummary's fields but the
# estimates and the signature, which Checked carries itself.
_DETAILS = (
    "num_trees",
    "num_features",
    "feature_names",
    "objective",
    "num_class",
    "num_tree_per_iteration",
    "max_leaves",
    "total_leaves",
    "path_splits",
)
# What the child's LightGBM must read back as our parser did.
_COUNTS = ("num_class", "num_features", "num_trees")


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


def checked_of(summary: modelfile.ModelSummary) -> Checked:
    """The format-neutral form of what our parser learned."""
    details: dict[str, Any] = {key: getattr(summary, key) for key in _DETAILS}
    details["feature_names"] = list(summary.feature_names)  # JSON's form, as before
    return Checked(
        format=LIGHTGBM.name,
        signature=summary.signature,
        model_bytes=summary.model_bytes,
        bytes_per_row=summary.bytes_per_row,
        details=details,
    )


class _Native:
    """One loaded booster in LightGBM's C library; its calls raise SmokeFailed/MemoryError."""

    def __init__(self, library: str, data: bytes) -> None:
        self.lib = ctypes.CDLL(library)  # CDLL: each call releases the GIL, as lightgbm's does
        self.lib.LGBM_GetLastError.restype = ctypes.c_char_p
        self.handle = ctypes.c_void_p()
        iterations = ctypes.c_int(0)
        self.call(
            self.lib.LGBM_BoosterLoadModelFromString(
                ctypes.c_char_p(data), ctypes.byref(iterations), ctypes.byref(self.handle)
            ),
            "loading",
        )

    def call(self, result: int, what: str) -> None:
        if result != 0:
            message = (self.lib.LGBM_GetLastError() or b"").decode("utf-8", "replace")
            if "bad_alloc" in message:
                raise MemoryError(f"{what}: {message}")
            raise SmokeFailed(f"{what}: {message}")

    def count(self, key: str) -> int:
        function = {
            "num_class": self.lib.LGBM_BoosterGetNumClasses,
            "num_features": self.lib.LGBM_BoosterGetNumFeature,
            "num_trees": self.lib.LGBM_BoosterNumberOfTotalModel,
        }[key]
        value = ctypes.c_int(0)
        self.call(function(self.handle, ctypes.byref(value)), key)
        return value.value

    def predict_into(self, matrix: Any, rows: int, features: int, out: Any) -> int:
        """Score ``rows`` row-major float64 rows into ``out``; how many values it wrote.
        The arguments are those of ``Booster.predict(x, num_threads=1)`` on a float64
        C-ordered array (normal prediction, every iteration: a loaded booster has no
        best iteration)."""
        out_len = ctypes.c_int64(0)
        self.call(
            self.lib.LGBM_BoosterPredictForMat(
                self.handle,
                matrix,
                ctypes.c_int(1),  # C_API_DTYPE_FLOAT64
                ctypes.c_int32(rows),
                ctypes.c_int32(features),
                ctypes.c_int(1),  # row-major
                ctypes.c_int(0),  # C_API_PREDICT_NORMAL
                ctypes.c_int(0),  # start iteration
                ctypes.c_int(-1),  # every iteration
                ctypes.c_char_p(b"num_threads=1"),
                ctypes.byref(out_len),
                out,
            ),
            "predicting",
        )
        return out_len.value

    def free(self) -> None:
        if self.handle.value:
            self.lib.LGBM_BoosterFree(self.handle)
            self.handle = ctypes.c_void_p()


class _Booster:
    """A :class:`~streams.formats.base.Predictor` over a booster in LightGBM's C library."""

    def __init__(self, native: _Native, signature: ModelSignature, runtime: str) -> None:
        self._native = native
        self._features = native.count("num_features")
        self._outputs = native.count("num_class")
        self.signature = signature
        self.runtime = runtime

    def __del__(self) -> None:
        self._native.free()

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        import numpy as np

        rows = np.ascontiguousarray(matrix, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self._features:
            raise ValueError(f"expected rows of {self._features} features, got {rows.shape}")
        out = np.empty((len(rows), self._outputs), dtype=np.float64)
        if len(rows):
            # One thread: the worker's executor is the parallelism, and a fixed count keeps
            # sums in one order, so an auditor's re-score is bit for bit.
            self._native.predict_into(
                rows.ctypes.data_as(ctypes.c_void_p),
                len(rows),
                self._features,
                out.ctypes.data_as(ctypes.c_void_p),
            )
        return out


@dataclass(frozen=True)
class LightGBMFormat:
    name: str = "lightgbm"
    library: str = "LightGBM"
    packages: tuple[str, ...] = ("lightgbm",)

    def recognizes(self, head: bytes) -> bool:
        # modelfile refuses anything else on the first line with the line's reason.
        return head.startswith(b"tree")

    def validate(self, data: bytes, max_bytes: int) -> Checked:
        return checked_of(modelfile.validate(data, max_bytes))

    def smoke(self, data: bytes, checked: Mapping[str, Any], rows: int) -> dict[str, Any]:
        return _smoke(lightgbm_library(), data, checked, rows)

    def load(self, data: bytes, checked: Checked) -> _Booster:
        native = _Native(lightgbm_library(), data)
        try:
            return _Booster(native, checked.signature, f"lightgbm {_version()} threads=1")
        except BaseException:
            native.free()
            raise


LIGHTGBM = LightGBMFormat()


def _smoke(library: str, data: bytes, checked: Mapping[str, Any], rows: int) -> dict[str, Any]:
    """Load with LightGBM's C API as ``lightgbm.Booster(model_str=...)`` does, then score."""
    native = _Native(library, data)
    try:
        del data
        counts = {key: native.count(key) for key in _COUNTS}
        _loaded_parameters(native.lib, native.handle, native.call)
        expected = {key: checked.get(key) for key in _COUNTS}
        if counts != expected:
            # Never size a prediction by what LightGBM says if it disagrees with the text.
            raise ArtifactRejected(_differently(counts, expected))
        features, outputs = counts["num_features"], counts["num_class"]
        matrix = (ctypes.c_double * (rows * features))(*smoke_rows(rows, features))
        out = (ctypes.c_double * (rows * outputs))()
        written = native.predict_into(matrix, rows, features, out)
        if written != rows * outputs:
            raise ArtifactRejected(_differently({"out_len": written}, {"out_len": rows * outputs}))
        finite = all(map(math.isfinite, out))
        return {**counts, "outputs": outputs, "finite": finite}
    finally:
        native.free()


def _version() -> str:
    """The installed lightgbm's version, read without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lightgbm")
    except PackageNotFoundError:
        return "unknown"


def _differently(got: Mapping[str, Any], expected: Mapping[str, Any]) -> str:
    return (
        f"LightGBM reads this model differently from its text ({got} != {expected}); "
        "save it again with booster.save_model('model.txt')"
    )


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
        raise SmokeFailed(f"its parameters do not read back as JSON ({exc})") from exc
    if not isinstance(parsed, dict):
        raise SmokeFailed("its parameters do not read back as a JSON object")
