"""The model formats modelvc takes, told apart by content, and the one path through them.

:func:`detect` reads the first bytes only (a file's name is never consulted): it refuses
what must never be loaded (pickles, joblib and other compressed files, zip archives,
HDF5) with what to do instead, then asks each format of :data:`FORMATS` whether it
:meth:`~streams.formats.base.ModelFormat.recognizes` them. :func:`check` is the upload
check (detect, our own validation, the native library in the sandbox); :func:`load` is
a worker's (and an auditor's) way from checked bytes to a
:class:`~streams.formats.base.Predictor`.

The next format is one new module implementing
:class:`~streams.formats.base.ModelFormat` and one entry in :data:`FORMATS`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from streams.errors import ArtifactRejected
from streams.formats.base import Checked, ModelFormat, Predictor
from streams.formats.lightgbm import LIGHTGBM
from streams.formats.onnx import ONNX

if TYPE_CHECKING:
    from streams.sandbox import Sandbox

__all__ = [
    "FORMATS",
    "HEAD_BYTES",
    "Checked",
    "ModelFormat",
    "Predictor",
    "by_name",
    "check",
    "detect",
    "load",
    "refusal",
]

HEAD_BYTES = 64
FORMATS: tuple[ModelFormat, ...] = (LIGHTGBM, ONNX)

COMMIT_HINT = (
    "commit a LightGBM text model or an ONNX model (modelvc commit model.txt -m ..., "
    "or modelvc commit model.onnx -m ...): save with booster.save_model('model.txt') "
    "or export to ONNX (torch.onnx.export, tf2onnx, skl2onnx)"
)

# Protocol 0 and 1 pickles have no header; these are how they begin: a MARK before a
# dict, list, tuple, instance or global; an empty dict or list memoized; a global by name.
_OLD_PICKLE = re.compile(
    rb"\((?:dp|lp|tp|i[A-Za-z_]|c[A-Za-z_]|[IFLSVNKJGMUX(\]}])"
    rb"|[\]}](?:q\x00|\()"
    rb"|c[A-Za-z_][A-Za-z0-9_.]{0,60}\n[A-Za-z_]"
)
# Compressed streams joblib writes (zlib, gzip, bz2, xz, lzma, lz4, zstd, its old 'ZF').
_COMPRESSED = (
    b"\x78\x01",
    b"\x78\x5e",
    b"\x78\x9c",
    b"\x78\xda",
    b"\x1f\x8b",
    b"BZh",
    b"\xfd7zXZ\x00",
    b"\x5d\x00\x00",
    b"\x04\x22\x4d\x18",
    b"\x28\xb5\x2f\xfd",
    b"ZF",
)
_ZIP = (b"PK\x03\x04", b"PK\x05\x06")
_HDF5 = b"\x89HDF\r\n\x1a\n"


def refusal(head: bytes) -> str | None:
    """Why these first bytes are never loaded, or None."""
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return f"this is a Python pickle (protocol {head[1]}), which is never loaded"
    if _OLD_PICKLE.match(head):
        return "this is a Python pickle (protocol 0 or 1), which is never loaded"
    if head.startswith(_COMPRESSED):
        return "this looks like a compressed (joblib?) file, which is never loaded"
    if head.startswith(_ZIP):
        return (
            "this is a zip archive (a PyTorch .pt or Keras .keras file?), which is never "
            "loaded: export the model to ONNX (torch.onnx.export, tf2onnx)"
        )
    if head.startswith(_HDF5):
        return (
            "this is an HDF5 file (a Keras .h5 model?), which is never loaded: "
            "export the model to ONNX (tf2onnx)"
        )
    return None


def detect(data: bytes) -> ModelFormat:
    """The format of ``data`` by its first bytes, or ArtifactRejected saying what to commit."""
    head = data[:HEAD_BYTES]
    why = refusal(head)
    if why is not None:
        raise ArtifactRejected(f"{why}; {COMMIT_HINT}")
    for model_format in FORMATS:
        if model_format.recognizes(head):
            return model_format
    raise ArtifactRejected(
        f"not a model format modelvc knows (LightGBM text or ONNX); {COMMIT_HINT}"
    )


def by_name(name: str) -> ModelFormat:
    """The format a signature or a :class:`Checked` names; ArtifactRejected if unknown."""
    for model_format in FORMATS:
        if model_format.name == name:
            return model_format
    known = ", ".join(f.name for f in FORMATS)
    raise ArtifactRejected(
        f"unknown model format {name[:40]!r} (this modelvc knows {known}); "
        "upgrade modelvc to serve it"
    )


def check(data: bytes, sandbox: Sandbox, max_bytes: int) -> Checked:
    """Detect, validate (our own code), then load and smoke-score in ``sandbox``.

    The one upload check: ArtifactRejected (ArtifactTooLarge) with the reason; no native
    parser sees bytes our validation refused.
    """
    checked = detect(data).validate(data, max_bytes)
    smoked = sandbox.check(data, checked)
    return measured(checked, smoked.answer)


# A measured figure past this is no measurement (the sandbox's child has 1 GiB): ignored.
_MEASURED_CAP = 1 << 40


def measured(checked: Checked, answer: Mapping[str, Any]) -> Checked:
    """``checked`` with the memory the smoke measured where it exceeds the estimate from
    the bytes (a format whose smoke measures nothing keeps its estimate)."""
    figures = {}
    for field, key in (
        ("model_bytes", "measured_model_bytes"),
        ("bytes_per_row", "measured_bytes_per_row"),
    ):
        value = answer.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MEASURED_CAP:
            figures[field] = max(getattr(checked, field), value)
    return dataclasses.replace(checked, **figures) if figures else checked


def load(data: bytes, checked: Checked) -> Predictor:
    """A predictor for bytes :func:`check` accepted (in a worker or an auditor)."""
    return by_name(checked.format).load(data, checked)
