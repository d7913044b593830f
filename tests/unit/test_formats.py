"""Model formats told apart by content, and LightGBM through the format protocol (issue 14).

What must never be loaded (pickles of every protocol, joblib and other compressed files,
zip archives, HDF5, anything unknown) is refused by its first bytes with what to commit
instead, before any validator or sandbox sees it; a file's name is never consulted.
A LightGBM model goes validate -> sandbox -> load -> predict through the same protocol
an ONNX model does, and predicts what lightgbm itself predicts, bit for bit.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import pickle
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import pytest

from streams import formats, modelfile
from streams.core.model_signature import (
    DOUBLE,
    Feature,
    ModelSignature,
    Tensor,
    diff,
)
from streams.errors import ArtifactRejected
from streams.formats.lightgbm import LIGHTGBM
from streams.sandbox import Sandbox, package_paths
from tests.conftest import train_model
from tests.unit.test_modelfile import train

# A sandbox whose child would abort: a refusal that mentions no crash never reached it.
ABORTING = Sandbox(entry="tests.unit.test_sandbox:abort_entry")
PLAIN = {"weights": [0.5, 1.5], "bias": 0.1, "name": "model"}  # pickled, never unpickled
TRY = r"modelvc commit model\.txt -m .*modelvc commit model\.onnx -m "


def _refused(data: bytes, why: str) -> None:
    with pytest.raises(ArtifactRejected, match=why) as refused:
        formats.check(data, ABORTING, modelfile.MAX_MODEL_BYTES)
    message = str(refused.value)
    assert "crashed" not in message
    assert "booster.save_model('model.txt')" in message and "ONNX" in message


# -- refused by content -------------------------------------------------------------------
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("value", [PLAIN, [1, 2, 3], (1.5, "x")], ids=["dict", "list", "tuple"])
def test_a_pickle_of_every_protocol_is_refused_by_its_first_bytes(
    protocol: int, value: object
) -> None:
    data = pickle.dumps(value, protocol=protocol)
    _refused(data, f"Python pickle.*never loaded.*{TRY}")
    # Whatever the file was called: detection gets the bytes, nothing else.
    with pytest.raises(ArtifactRejected, match="pickle"):
        formats.detect(data)


def test_a_protocol_0_pickle_of_an_object_is_refused() -> None:
    # How a pickled class instance (a scikit-learn estimator, say) begins at protocol 0.
    _refused(b"ccopy_reg\n_reconstructor\np0\n(csklearn.linear_model\n", "pickle")
    _refused(b"cnumpy.core.multiarray\n_reconstruct\np0\n", "pickle")


@pytest.mark.parametrize(
    "compress",
    [
        zlib.compress,
        gzip.compress,
        bz2.compress,
        lzma.compress,  # xz
        lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
        lambda d: b"\x28\xb5\x2f\xfd" + d,  # zstd's frame magic
        lambda d: b"\x04\x22\x4d\x18" + d,  # lz4's frame magic
        lambda d: b"ZF" + d,  # joblib's own old zlib container
    ],
    ids=["zlib", "gzip", "bz2", "xz", "lzma", "zstd", "lz4", "joblib-zf"],
)
def test_joblib_and_compressed_files_are_refused(compress: object) -> None:
    data = compress(pickle.dumps(PLAIN, protocol=4))  # type: ignore[operator]
    _refused(data, f"compressed \\(joblib\\?\\) file.*never loaded.*{TRY}")


def test_a_zip_archive_is_refused_as_a_pytorch_or_keras_file() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(PLAIN, protocol=2))
    _refused(buffer.getvalue(), r"zip archive \(a PyTorch \.pt or Keras \.keras file\?\).*ONNX")
    _refused(b"PK\x05\x06" + b"\x00" * 18, "zip archive")  # an empty one


def test_an_hdf5_file_is_refused() -> None:
    _refused(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64, r"HDF5 file \(a Keras \.h5 model\?\).*ONNX")


@pytest.mark.parametrize(
    "data",
    [b"hello world", b"\xff\xfe\x00binary", b"\x00" * 100, b"{}", b"Tre", b"\x08"],
    ids=["text", "binary", "zeros", "json", "almost-lightgbm", "almost-onnx"],
)
def test_anything_unknown_is_refused_naming_both_formats(data: bytes) -> None:
    _refused(data, f"not a model format modelvc knows \\(LightGBM text or ONNX\\).*{TRY}")


def test_each_format_is_recognized_by_its_content(tmp_path: Path) -> None:
    from tests.onnx_models import mlp_bytes

    lightgbm_text = train_model(tmp_path / "renamed.onnx").read_bytes()
    assert formats.detect(lightgbm_text) is LIGHTGBM
    assert formats.detect(mlp_bytes()) is formats.by_name("onnx")
    assert [f.name for f in formats.FORMATS] == ["lightgbm", "onnx"]
    for model_format in formats.FORMATS:  # never raises, whatever the head
        for head in (b"", b"\x80", b"tree", b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"):
            assert model_format.recognizes(head) in (True, False)


def test_an_unknown_format_name_is_refused_not_a_key_error() -> None:
    with pytest.raises(ArtifactRejected, match=r"unknown model format 'xgboost'.*lightgbm, onnx"):
        formats.by_name("xgboost")


# -- LightGBM through the protocol --------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "extra"),
    [
        ({"objective": "binary"}, {}),
        ({"objective": "multiclass", "num_class": 3}, {"y": np.arange(400) % 3}),
    ],
    ids=["binary", "multiclass"],
)
def test_lightgbm_validate_sandbox_load_predict_equals_lightgbm_itself(
    tmp_path: Path, params: dict[str, object], extra: dict[str, Any]
) -> None:
    data = train(tmp_path, params, **extra)
    checked = formats.check(data, Sandbox(), modelfile.MAX_MODEL_BYTES)
    assert checked.format == "lightgbm" and checked.signature.format == "lightgbm"
    predictor = formats.load(data, checked)
    assert predictor.runtime == f"lightgbm {lightgbm.__version__} threads=1"
    assert predictor.signature == checked.signature
    outputs = checked.signature.outputs
    assert outputs == int(params.get("num_class", 1))  # type: ignore[call-overload]

    rows = np.random.default_rng(7).normal(size=(257, len(checked.signature.inputs)))
    rows[::9, 2] = np.nan
    ours = predictor.predict(rows)
    theirs = lightgbm.Booster(model_file=str(tmp_path / "m.txt")).predict(rows, num_threads=1)
    assert ours.dtype == np.float64 and ours.shape == (257, outputs)
    # Bit for bit: the doubles' bytes, not a tolerance.
    assert _bits(ours) == _bits(np.asarray(theirs, dtype=np.float64).reshape(257, outputs))


def _bits(matrix: np.ndarray) -> bytes:
    return struct.pack(f"<{matrix.size}d", *matrix.ravel().tolist())


def test_the_upload_answer_keeps_every_lightgbm_key_and_adds_the_format(tmp_path: Path) -> None:
    data = train_model(tmp_path / "model.txt").read_bytes()
    before = json.loads(json.dumps(modelfile.validate(data).plain()))  # the answer before
    after = json.loads(json.dumps(LIGHTGBM.validate(data, len(data)).plain()))
    assert after.pop("format") == "lightgbm"
    assert after == before


def test_the_sandbox_names_the_format_library_and_gives_the_child_its_packages(
    tmp_path: Path,
) -> None:
    from tests.onnx_models import mlp_bytes

    onnx = formats.by_name("onnx")
    data = mlp_bytes()
    checked = onnx.validate(data, modelfile.MAX_MODEL_BYTES)
    with pytest.raises(ArtifactRejected, match=r"^onnxruntime crashed \(SIGABRT\)"):
        ABORTING.check(data, checked)
    lightgbm_text = train_model(tmp_path / "model.txt").read_bytes()
    with pytest.raises(ArtifactRejected, match=r"^LightGBM crashed \(SIGABRT\)"):
        ABORTING.check(lightgbm_text, LIGHTGBM.validate(lightgbm_text, len(lightgbm_text)))
    # The child runs without site-packages (-S): each package's directory, found here
    # without importing it, is what it gets instead.
    paths = package_paths(onnx.packages)
    assert paths and all((Path(p) / "onnxruntime").is_dir() for p in paths[:1])
    assert Sandbox().check(data, checked).answer["outputs"] == 1


def test_a_model_whose_outputs_the_library_reads_differently_is_refused(tmp_path: Path) -> None:
    import dataclasses

    data = train_model(tmp_path / "model.txt").read_bytes()
    checked = LIGHTGBM.validate(data, len(data))
    signature = dataclasses.replace(checked.signature, outputs=2)  # our reading, altered
    with pytest.raises(ArtifactRejected, match=r"reads this model differently.*1 outputs, not 2"):
        Sandbox().check(data, dataclasses.replace(checked, signature=signature))


# -- the signature's graph ----------------------------------------------------------------
GRAPH = (
    Tensor("input", "input", "float", ("N", "3")),
    Tensor("label", "output", "int64", ("N",)),
    Tensor("probabilities", "output", "float", ("N", "2")),
)
FEATURES = tuple(Feature(f"input_{i}", DOUBLE) for i in range(3))


def test_a_graph_is_recorded_only_when_there_is_one() -> None:
    lightgbm_signature = ModelSignature("lightgbm", FEATURES, 1)
    assert "graph" not in lightgbm_signature.plain()  # older commits hash as they did
    onnx_signature = ModelSignature("onnx", FEATURES, 2, GRAPH)
    plain = onnx_signature.plain()
    assert plain["graph"][2] == {
        "name": "probabilities",
        "kind": "output",
        "type": "float",
        "shape": ["N", "2"],
    }
    assert ModelSignature.from_plain(plain) == onnx_signature
    assert ModelSignature.from_plain({**lightgbm_signature.plain(), "graph": []}) == (
        lightgbm_signature
    )


@pytest.mark.parametrize(
    ("tensor", "why"),
    [
        ({"name": "x\n", "kind": "input", "type": "float", "shape": []}, "tensor name"),
        ({"name": "x", "kind": "hidden", "type": "float", "shape": []}, "kind or type"),
        ({"name": "x", "kind": "input", "type": "Float;", "shape": []}, "kind or type"),
        ({"name": "x", "kind": "input", "type": "float", "shape": ["-1"]}, "dimension"),
        ({"name": "x", "kind": "input", "type": "float", "shape": ["1"] * 9}, "at most 8"),
        ({"name": "x", "kind": "input", "type": "float", "shape": "NN"}, "at most 8"),
        ({"name": "x", "kind": "input", "type": "float"}, "not a model signature"),
    ],
)
def test_a_graph_off_the_wire_is_bounded(tensor: dict[str, object], why: str) -> None:
    plain = {**ModelSignature("onnx", FEATURES, 1).plain(), "graph": [tensor]}
    with pytest.raises(ValueError, match=why):
        ModelSignature.from_plain(plain)


def test_a_graph_has_at_most_1024_tensors_each_named_once() -> None:
    tensor = {"name": "x", "kind": "input", "type": "float", "shape": ["N"]}
    base = ModelSignature("onnx", FEATURES, 1).plain()
    with pytest.raises(ValueError, match="once"):
        ModelSignature.from_plain({**base, "graph": [tensor, tensor]})
    many = [{**tensor, "name": f"x{i}"} for i in range(1025)]
    with pytest.raises(ValueError, match="at most 1024"):
        ModelSignature.from_plain({**base, "graph": many})
    assert len(ModelSignature.from_plain({**base, "graph": many[:1024]}).graph) == 1024


def test_diff_reports_a_format_change_and_graph_changes() -> None:
    old = ModelSignature("lightgbm", FEATURES, 1)
    new = ModelSignature("onnx", FEATURES, 1, GRAPH)
    changes = diff(old, new)
    assert changes.format == ("lightgbm", "onnx") and not changes.empty
    assert changes.graph[0] == ("input", "input", "", "float[N,3]")
    wider = ModelSignature(
        "onnx", FEATURES, 1, (Tensor("input", "input", "float", ("N", "4")), *GRAPH[2:])
    )
    assert diff(new, wider).graph == (
        ("input", "input", "float[N,3]", "float[N,4]"),
        ("output", "label", "int64[N]", ""),
    )
    assert diff(wider, wider).empty


def test_a_signature_of_megabytes_reaches_the_child(tmp_path: Path) -> None:
    import dataclasses

    # 100,000 feature names are megabytes of JSON: more than one argv argument holds
    # (128 KiB), so what the validator read travels on stdin with the model.
    data = train_model(tmp_path / "model.txt").read_bytes()
    checked = LIGHTGBM.validate(data, len(data))
    names = [f"feature_{i:06d}_{'x' * 20}" for i in range(100_000)]
    big = dataclasses.replace(checked, details={**checked.details, "all_names": names})
    assert len(json.dumps(big.plain())) > 3_000_000
    assert Sandbox().check(data, big).answer["num_trees"] == 5


def test_an_onnx_signature_travels_the_wire_in_commands_and_events() -> None:
    from streams import codec
    from streams.core.commands import Command, CreateModel, MakeCommit
    from streams.core.decide import decide
    from streams.core.events import Committed
    from streams.core.fold import Fold

    onnx = ModelSignature("onnx", FEATURES, 2, GRAPH)
    plain = ModelSignature("lightgbm", FEATURES, 1)
    fold = Fold()
    bodies: list[Any] = [CreateModel(), MakeCommit("a" * 64, "onnx", signature=onnx)]
    bodies.append(MakeCommit("b" * 64, "lightgbm", signature=plain))
    committed = []
    for i, body in enumerate(bodies):
        command, _ = codec.decode_command(
            codec.encode_command(Command(f"c{i}", "m", "t", 1_800_000_000_000 + i, body))
        )
        assert getattr(command.body, "signature", None) == getattr(body, "signature", None)
        for event in decide(fold.models.get("m"), command):
            back = codec.decode_event(codec.encode_event(event))
            assert back.hash() == event.hash()  # the commit id and the chain hash agree
            fold.apply(back)
            committed += [back]
    signatures = [e.payload.commit.signature for e in committed if isinstance(e.payload, Committed)]
    assert signatures == [onnx, plain]


def test_an_appended_empty_array_is_filled_fast_and_never_shared() -> None:
    from streams.codec import SingleObjectCodec, appended_defaults

    writer = {
        "type": "record",
        "name": "R",
        "namespace": "t",
        "fields": [{"name": "a", "type": "long"}],
    }
    graph = {"name": "graph", "type": {"type": "array", "items": "string"}, "default": []}
    reader = {**writer, "fields": [*writer["fields"], graph]}  # type: ignore[list-item]
    assert appended_defaults(writer, reader) == {"t.R": {"graph": []}}  # the fast path
    reading = SingleObjectCodec(reader)
    reading.add_writer(writer)
    first, second = (reading.decode(SingleObjectCodec(writer).encode({"a": i})) for i in (1, 2))
    assert first == {"a": 1, "graph": []} and second == {"a": 2, "graph": []}
    assert first["graph"] is not second["graph"]
