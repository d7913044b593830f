"""Content-addressed artifact store: files named by their sha256.

Writes go to a temporary file, are fsynced and renamed into place, so a reader
never sees half a file and a repeated upload is a no-op. Every read re-hashes.
A digest is the only user input that reaches a path, and it must be 64 hex.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from streams.core.hashing import SHA256_HEX
from streams.errors import ArtifactCorrupted, ArtifactNotFound, ArtifactRejected

_PICKLE_HINT = (
    "modelvc stores LightGBM text models only; save yours with "
    "booster.save_model('model.txt') and commit that file"
)


def check_digest(digest: str) -> str:
    if not SHA256_HEX.match(digest):
        raise ArtifactNotFound(f"{digest!r} is not a sha256 hex digest")
    return digest


@dataclass(frozen=True)
class ModelSummary:
    num_trees: int
    num_features: int
    feature_names: tuple[str, ...]
    objective: str


def validate_lightgbm(data: bytes) -> ModelSummary:
    """Load ``data`` as a LightGBM text model, or say why it is refused."""
    if data[:1] == b"\x80":
        raise ArtifactRejected(f"this is a Python pickle, which is never loaded; {_PICKLE_HINT}")
    if data[:2] in (b"\x78\x9c", b"\x78\x01", b"\x78\xda", b"\x1f\x8b", b"ZF", b"BZ", b"\xfd7"):
        raise ArtifactRejected(
            f"this looks like a compressed (joblib?) file, which is never loaded; {_PICKLE_HINT}"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactRejected(f"binary file, not a LightGBM text model; {_PICKLE_HINT}") from exc
    if not text.startswith("tree"):
        raise ArtifactRejected(
            f"not a LightGBM text model (it must start with 'tree'); {_PICKLE_HINT}"
        )
    import lightgbm  # deferred: only uploads pay for importing it

    try:
        booster = lightgbm.Booster(model_str=text)
    except lightgbm.basic.LightGBMError as exc:
        raise ArtifactRejected(f"LightGBM cannot load this model: {exc}") from exc
    objective = next(
        (line.split("=", 1)[1] for line in text.splitlines()[:40] if line.startswith("objective=")),
        "",
    )
    return ModelSummary(
        num_trees=booster.num_trees(),
        num_features=booster.num_feature(),
        feature_names=tuple(booster.feature_name()),
        objective=objective,
    )


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"

    def path_for(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / "sha256" / digest[:2] / digest

    def has(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def temp_file(self) -> IO[bytes]:
        """A temporary file inside the store (same filesystem, so the rename is atomic)."""
        # Made on first write only, so readers (workers) can mount the store read-only.
        self._tmp.mkdir(parents=True, exist_ok=True)
        return tempfile.NamedTemporaryFile(dir=self._tmp, delete=False)

    def commit_temp(self, temp_path: Path, expected: str | None = None) -> tuple[str, ModelSummary]:
        """Validate, hash-check and move a finished temporary file into place."""
        try:
            data = temp_path.read_bytes()
            digest = sha256_of(data)
            if expected is not None and expected != digest:
                raise ArtifactCorrupted(
                    f"upload hashes to {digest}, not the {expected} you sent; re-send the file"
                )
            summary = validate_lightgbm(data)
            target = self.path_for(digest)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(temp_path, "rb+") as handle:
                    os.fsync(handle.fileno())
                os.replace(temp_path, target)
                dir_fd = os.open(target.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            return digest, summary
        finally:
            temp_path.unlink(missing_ok=True)

    def put(self, data: bytes) -> tuple[str, ModelSummary]:
        with self.temp_file() as handle:
            handle.write(data)
        return self.commit_temp(Path(handle.name))

    def read(self, digest: str) -> bytes:
        path = self.path_for(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"no artifact {digest} in {self.root}") from exc
        if sha256_of(data) != digest:
            raise ArtifactCorrupted(f"artifact {digest} on disk no longer matches its digest")
        return data
