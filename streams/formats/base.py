"""What every model format provides: one small protocol, one module per format.

A format is told apart from the others by its content (:meth:`ModelFormat.recognizes`
on the first bytes), never by a file name. Its life, in order:

1. :meth:`ModelFormat.validate`: our own checks, pure Python, linear in the size and
   bounded; no native parser sees a byte this refuses. Gives a :class:`Checked`.
2. :meth:`ModelFormat.smoke`: in the sandboxed child (:mod:`streams.sandbox`) only:
   the native library loads the checked bytes and scores a few fixed rows.
3. :meth:`ModelFormat.load`: in a worker (or an auditor), after 1 and 2 accepted the
   digest: a :class:`Predictor` that scores a float64 matrix whose columns are the
   signature's inputs, in order.

The next format is one new module implementing this and one line in
:data:`streams.formats.FORMATS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from streams.core.model_signature import ModelSignature

if TYPE_CHECKING:  # the sandbox child imports this module: numpy only where a format loads
    import numpy as np


@dataclass(frozen=True)
class Checked:
    """What a format's validator learned about a model, whatever the format.

    ``details`` is the format's own plain JSON (LightGBM: trees, leaves, objective;
    ONNX: opset, nodes, the graph's tensors); the upload answer carries it flat.
    ``runtime`` names the library and the settings a prediction depends on (e.g.
    ``onnxruntime 1.23.2 threads=1 opt=basic``): a re-score is exact only under
    the same one.
    """

    format: str
    signature: ModelSignature
    model_bytes: int  # the loaded model in memory, estimated
    bytes_per_row: int  # scoring memory per row of a batch, estimated
    details: Mapping[str, Any] = field(default_factory=dict)

    def scoring_bytes(self, rows: int) -> int:
        """Estimated memory to hold this model and score a batch of ``rows``."""
        return self.model_bytes + self.bytes_per_row * rows

    def plain(self) -> dict[str, Any]:
        """The upload answer: the details flat, then format, signature and the estimates."""
        return {
            **self.details,
            "format": self.format,
            "signature": self.signature.plain(),
            "model_bytes": self.model_bytes,
            "bytes_per_row": self.bytes_per_row,
        }


class Predictor(Protocol):
    """A loaded model. ``predict`` is called from one thread at a time per predictor."""

    @property
    def signature(self) -> ModelSignature: ...

    @property
    def runtime(self) -> str:
        """The library, its version and the settings that scores depend on."""
        ...

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """float64 (rows x inputs, the signature's order) -> float64 (rows x outputs)."""
        ...


class ModelFormat(Protocol):
    @property
    def name(self) -> str:
        """As recorded in a commit's signature (``lightgbm``, ``onnx``)."""
        ...

    @property
    def library(self) -> str:
        """Who loads it natively (``LightGBM``, ``onnxruntime``): named in the sandbox's
        refusals ("onnxruntime cannot load this model: ...")."""
        ...

    @property
    def packages(self) -> tuple[str, ...]:
        """The top-level packages :meth:`smoke` imports (``("lightgbm",)``; ``("onnx",
        "onnxruntime", "numpy")``): the sandbox child, which runs without site-packages,
        gets their directories on its path (found by the parent without importing them)."""
        ...

    def recognizes(self, head: bytes) -> bool:
        """Whether the first bytes (at most :data:`streams.formats.HEAD_BYTES`) are this
        format's. Cheap, and never raises."""
        ...

    def validate(self, data: bytes, max_bytes: int) -> Checked:
        """Our own checks; ArtifactRejected / ArtifactTooLarge naming what to do."""
        ...

    def smoke(self, data: bytes, checked: Mapping[str, Any], rows: int) -> dict[str, Any]:
        """In the sandboxed child only: load with the native library, score ``rows`` fixed
        rows; answer JSON-able facts the parent compares with ``checked`` (the
        :meth:`Checked.plain` form). Raises on anything wrong (the child reports it)."""
        ...

    def load(self, data: bytes, checked: Checked) -> Predictor:
        """In a worker, after validate and smoke accepted these bytes."""
        ...
