"""Our own reader of an ONNX file's protobuf wire bytes: onnx's native parser never sees
a file this refuses.

An ONNX file is one serialized ``ModelProto`` (onnx/onnx.proto). onnx and onnxruntime
parse it with protobuf's C++ code, which trusts declared lengths only as far as the
buffer, merges a repeated singular message into one, reads external data files named
inside the model, and sizes tensors by their ``dims``. So the whole file is walked here
first, with the standard library only, in one pass:

- every tag, varint and length is checked against the bytes that remain (nothing is
  read past the end; a varint is at most 10 bytes; no groups);
- each message we walk knows its fields (the onnx 1.23 schema): an unknown field, a
  field with the wrong wire type, or a singular field written twice is refused, so no
  library reads anything we skipped;
- subgraphs (``If``/``Loop``/``Scan``/``SequenceMap`` attributes) are refused, and the
  nesting of types (``sequence(map(...))``) is bounded by :data:`MAX_TYPE_DEPTH`;
  packed numbers are counted by C-level byte scans, so the walk is linear;
- every tensor (initializers and attribute values) holds exactly the
  data its ``dims`` and type declare, in the field its type uses, and no external data;
- an operator's output size (:data:`SIZE_INPUTS`) comes from a constant, never from a
  tensor computed at predict time; the small int64 constants are read, so that the sizes
  ConstantOfShape, Expand and Tile build are bounded (:data:`MAX_SIZED_ELEMENTS`) and
  counted in the memory estimate (:attr:`ModelFacts.sized_bytes`).

:func:`read_model` gives the :class:`ModelFacts` that :mod:`streams.formats.onnx` turns
into a signature and decides on (opsets, domains, the signature's rules).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from streams.errors import ArtifactRejected, ArtifactTooLarge

MAX_NODES = 10_000
MAX_GRAPH_IO = 1024  # inputs, outputs of the graph (each)
MAX_TYPE_DEPTH = 8
MAX_DIMS = 64
MAX_METADATA = 256  # metadata_props entries of the model (entries, not distinct keys)
MAX_ATTRIBUTES = 256  # attributes of one node
MAX_NODE_IO = 1024  # inputs, outputs of one node (each)
MAX_OPSETS = 16  # opset_import entries
MAX_FIELDS = 2_000_000  # protobuf fields walked in the whole file: bounds the walk's time
MAX_TEXT = 1 << 16  # a name or a metadata value we decode
_WIDEST_CAP = 1 << 24

VARINT, I64, LEN, I32 = 0, 1, 2, 5
_MASK64 = (1 << 64) - 1
_HIGH = bytes(range(0x80, 0x100))
_LONG_VARINT = re.compile(rb"[\x80-\xff]{10}")
_ZIP_SIGNATURES = (b"PK\x05\x06", b"PK\x03\x04")  # end of central directory, local header
_DIM_PARAM = re.compile(r"[A-Za-z_][A-Za-z0-9_.:+*/()-]{0,63}", re.ASCII)

EXTERNAL_HINT = (
    "external data files are not supported: save the model with "
    "onnx.save_model(model, path, save_as_external_data=False)"
)
CONTROL_FLOW = ("Loop", "Scan", "If", "SequenceMap")
CONTROL_FLOW_HINT = (
    "control flow (Loop/Scan/If) is not supported, nor any other operator that runs a "
    "subgraph (SequenceMap): export the model without data-dependent control flow"
)
# ai.onnx operators whose output size is read from a tensor input (by position; None: all
# inputs): a size that a feature value could pick at predict time.
SIZE_INPUTS: dict[str, tuple[int, ...] | None] = {
    "ConstantOfShape": (0,),
    "Expand": (1,),
    "Tile": (1,),
    "Range": None,
    "OneHot": (1,),
    "Resize": (2, 3),
    "Upsample": (1,),
    "Pad": (1,),
    "TopK": (1,),
    "HannWindow": (0,),
    "HammingWindow": (0,),
    "BlackmanWindow": (0,),
    "CenterCropPad": (1,),
    "DFT": (1,),
    "STFT": (1, 3),
    "MelWeightMatrix": None,
    "MaxUnpool": (2,),
    "AffineGrid": (1,),
    "Col2Im": (1, 2),
}
# Of those, the operators whose constant size is read and counted: the input holding it.
READ_SIZES = {"ConstantOfShape": 0, "Expand": 1, "Tile": 1}
MAX_SIZED_ELEMENTS = 1 << 24  # elements one of them may make (per element of its input)
SMALL_INTS = 16  # values of an int64 constant the walk keeps: a shape, repeats
_INT64 = 7
# A Constant node's attributes holding int64 values, by name (as onnxruntime reads them)
_CONSTANT_INTS = (b"value", b"value_int", b"value_ints")
RE_EXPORT = "export the model again (onnx.save_model(model, 'model.onnx')) and commit that file"

# TensorProto.DataType -> (name, bits per element, typed field holding it, values per
# element in that field as (numerator, denominator)); 0 bits: strings.
_FLOAT_DATA, _INT32_DATA, _STRING_DATA, _INT64_DATA, _DOUBLE_DATA, _UINT64_DATA = 4, 5, 6, 7, 10, 11
_TYPED = (_FLOAT_DATA, _INT32_DATA, _STRING_DATA, _INT64_DATA, _DOUBLE_DATA, _UINT64_DATA)
ELEM_TYPES: dict[int, tuple[str, int, int, tuple[int, int]]] = {
    1: ("float", 32, _FLOAT_DATA, (1, 1)),
    2: ("uint8", 8, _INT32_DATA, (1, 1)),
    3: ("int8", 8, _INT32_DATA, (1, 1)),
    4: ("uint16", 16, _INT32_DATA, (1, 1)),
    5: ("int16", 16, _INT32_DATA, (1, 1)),
    6: ("int32", 32, _INT32_DATA, (1, 1)),
    7: ("int64", 64, _INT64_DATA, (1, 1)),
    8: ("string", 0, _STRING_DATA, (1, 1)),
    9: ("bool", 8, _INT32_DATA, (1, 1)),
    10: ("float16", 16, _INT32_DATA, (1, 1)),
    11: ("double", 64, _DOUBLE_DATA, (1, 1)),
    12: ("uint32", 32, _UINT64_DATA, (1, 1)),
    13: ("uint64", 64, _UINT64_DATA, (1, 1)),
    14: ("complex64", 64, _FLOAT_DATA, (2, 1)),
    15: ("complex128", 128, _DOUBLE_DATA, (2, 1)),
    16: ("bfloat16", 16, _INT32_DATA, (1, 1)),
    17: ("float8e4m3fn", 8, _INT32_DATA, (1, 1)),
    18: ("float8e4m3fnuz", 8, _INT32_DATA, (1, 1)),
    19: ("float8e5m2", 8, _INT32_DATA, (1, 1)),
    20: ("float8e5m2fnuz", 8, _INT32_DATA, (1, 1)),
    21: ("uint4", 4, _INT32_DATA, (1, 2)),
    22: ("int4", 4, _INT32_DATA, (1, 2)),
    23: ("float4e2m1", 4, _INT32_DATA, (1, 2)),
    24: ("float8e8m0", 8, _INT32_DATA, (1, 1)),
    25: ("uint2", 2, _INT32_DATA, (1, 4)),
    26: ("int2", 2, _INT32_DATA, (1, 4)),
}


def malformed(what: str) -> ArtifactRejected:
    return ArtifactRejected(f"not a well-formed ONNX model: {what}; {RE_EXPORT}")


@dataclass(frozen=True)
class ValueInfo:
    """A graph input or output: its name, its type as text (``float``; a non-tensor as
    onnxruntime writes it, ``seq(map(int64,tensor(float)))``), a tensor's element type
    number (None for other types) and its dims (a number, a symbolic name, ``?``; None
    when no shape is given)."""

    name: str
    type: str
    elem: int | None
    shape: tuple[str, ...] | None


@dataclass(frozen=True)
class Node:
    """A node of the graph: its operator, domain ("" for ai.onnx) and input names."""

    op_type: str
    domain: str
    inputs: tuple[str, ...]


@dataclass
class ModelFacts:
    ir_version: int = -1
    opsets: list[tuple[str, int]] = field(default_factory=list)
    producer_name: str = ""
    producer_version: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    inputs: list[ValueInfo] = field(default_factory=list)
    outputs: list[ValueInfo] = field(default_factory=list)
    initializer_names: set[str] = field(default_factory=set)
    node_domains: set[str] = field(default_factory=set)
    node_list: list[Node] = field(default_factory=list)  # the graph's nodes
    constants: set[str] = field(default_factory=set)  # initializers, Constant outputs
    # the values of the int64 constants of at most SMALL_INTS values (a name defined twice:
    # none), for the sizes of READ_SIZES
    int_constants: dict[str, tuple[int, ...]] = field(default_factory=dict)
    sized_bytes: int = 0  # ConstantOfShape/Expand/Tile outputs from constant sizes, 8 B each
    nodes: int = 0
    initializers: int = 0  # tensors of the graph's initializer list
    parameters: int = 0  # elements of every tensor (initializers and attribute values)
    tensor_bytes: int = 0  # their declared bytes
    widest: int = 1  # the widest row of a tensor (see _width)


def varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The unsigned varint at ``pos`` (truncated to 64 bits, as protobuf does) and the
    position after it."""
    result = shift = 0
    while True:
        if pos >= end:
            raise malformed("the file ends inside a number")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise malformed("a number longer than 10 bytes")


def signed(value: int) -> int:
    """An int64 field's value: protobuf writes negative ones as 10-byte two's complement."""
    return value - (1 << 64) if value >= 1 << 63 else value


def fields(
    data: bytes, start: int, end: int, budget: list[int] | None = None
) -> Iterator[tuple[int, int, int, int]]:
    """The fields of the message in ``data[start:end]``: (number, wire type, a, b) where a
    varint's value is ``a`` and any other field is the slice ``data[a:b]``. ``budget``
    (one number, shared by a whole walk) is the fields left to read: none left, refused."""
    pos = start
    while pos < end:
        if budget is not None:
            budget[0] -= 1
            if budget[0] < 0:
                raise ArtifactTooLarge(
                    f"the model has more than {MAX_FIELDS} protobuf fields; modelvc reads "
                    "models of at most that many (store tensors as raw_data, as onnx does)"
                )
        key, pos = varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0 or number > 0x1FFFFFFF:
            raise malformed(f"field number {number}")
        if wire == VARINT:
            value, pos = varint(data, pos, end)
            yield number, wire, value, pos
            continue
        if wire == LEN:
            length, pos = varint(data, pos, end)
        elif wire in (I64, I32):
            length = 8 if wire == I64 else 4
        else:
            raise malformed(f"wire type {wire} (protobuf groups are not used by ONNX)")
        if length > end - pos:
            raise malformed(f"a field of {length} bytes where {end - pos} remain")
        yield number, wire, pos, pos + length
        pos += length


def _text(data: bytes, a: int, b: int, what: str) -> str:
    if b - a > MAX_TEXT:
        raise ArtifactRejected(f"the {what} is {b - a} bytes long; at most {MAX_TEXT} are allowed")
    _no_zip(data, a, b, what)
    try:
        return data[a:b].decode("utf-8")
    except UnicodeDecodeError:
        raise malformed(f"the {what} is not UTF-8 text") from None


def _no_zip(data: bytes, a: int, b: int, what: str) -> None:
    """Refuses a zip archive's signature in a text field: an ONNX file that is also a zip
    (a polyglot, e.g. a pickle archive in a doc_string) is not accepted."""
    for signature in _ZIP_SIGNATURES:
        if data.find(signature, a, b) >= 0:
            raise ArtifactRejected(
                f"the {what} holds a zip archive signature ({signature!r}): an ONNX file "
                "that is also a zip archive is not accepted; remove the embedded archive "
                f"(doc strings, metadata, names) and {RE_EXPORT}"
            )


def _packed_varints(data: bytes, a: int, b: int) -> int:
    """How many varints ``data[a:b]`` packs, checking each ends and is at most 10 bytes."""
    chunk = data[a:b]
    if chunk and chunk[-1] >= 0x80:
        raise malformed("packed numbers cut off")
    if _LONG_VARINT.search(chunk):
        raise malformed("a number longer than 10 bytes")
    return len(chunk.translate(None, _HIGH))


def _repeated_count(data: bytes, wire: int, a: int, b: int, scalar: int, what: str) -> int:
    """Values one occurrence of a repeated number field adds: one unpacked, or a packed run."""
    if wire == scalar:
        return 1
    if wire != LEN:
        raise malformed(f"{what} has wire type {wire}")
    if scalar == VARINT:
        return _packed_varints(data, a, b)
    size = 8 if scalar == I64 else 4
    if (b - a) % size:
        raise malformed(f"{what} holds {b - a} bytes, not a whole number of values")
    return (b - a) // size


def _varints(data: bytes, wire: int, a: int, b: int, count: int) -> list[int]:
    """The first ``count`` int64 values of one occurrence of a repeated varint field: the
    varint itself, or a packed run ``data[a:b]`` that :func:`_repeated_count` checked."""
    if wire == VARINT:
        return [signed(a)]
    values: list[int] = []
    pos = a
    while pos < b and len(values) < count:
        value, pos = varint(data, pos, b)
        values.append(signed(value))
    return values


class _Walk:
    def __init__(self, data: bytes, max_bytes: int) -> None:
        self.data = data
        self.max_bytes = max_bytes
        self.facts = ModelFacts()
        self.budget = [MAX_FIELDS]

    def fields(self, a: int, b: int) -> Iterator[tuple[int, int, int, int]]:
        return fields(self.data, a, b, self.budget)

    # -- helpers --------------------------------------------------------------------

    def _expect(self, wire: int, want: int, what: str) -> None:
        if wire != want:
            raise malformed(f"{what} has wire type {wire}, not {want}")

    def _once(self, seen: set[int], number: int, what: str) -> None:
        # protobuf keeps the last of a repeated scalar and merges repeated messages: a
        # reader that took the first would see another model than onnxruntime does.
        if number in seen:
            raise malformed(f"{what} appears twice")
        seen.add(number)

    def _constant(self, name: str, values: tuple[int, ...] | None) -> None:
        # A name defined twice (onnx's checker refuses it, in the smoke test) keeps no
        # values: which definition onnxruntime would use is not ours to guess.
        facts = self.facts
        if name in facts.constants:
            facts.int_constants.pop(name, None)
        elif values is not None:
            facts.int_constants[name] = values
        facts.constants.add(name)

    # -- ModelProto -------------------------------------------------------------------

    def model(self) -> ModelFacts:
        data, facts, seen = self.data, self.facts, set[int]()
        metadata_entries = 0
        for number, wire, a, b in self.fields(0, len(data)):
            if number in (1, 2, 3, 4, 5, 6, 7):
                self._once(seen, number, f"ModelProto field {number}")
            if number == 1:
                self._expect(wire, VARINT, "ir_version")
                facts.ir_version = signed(a)
            elif number in (2, 3):
                self._expect(wire, LEN, "producer_name")
                text = _text(data, a, b, "producer name")
                if number == 2:
                    facts.producer_name = text
                else:
                    facts.producer_version = text
            elif number in (4, 6):
                self._expect(wire, LEN, "the model's domain or doc_string")
                _no_zip(data, a, b, "model's domain or doc_string")
            elif number == 5:
                self._expect(wire, VARINT, "model_version")
            elif number == 7:
                self._expect(wire, LEN, "graph")
                self.graph(a, b)
            elif number == 8:
                self._expect(wire, LEN, "opset_import")
                if len(facts.opsets) >= MAX_OPSETS:
                    raise ArtifactRejected(
                        f"the model has more than {MAX_OPSETS} opset_import entries; import "
                        "each operator domain once"
                    )
                opset = self._opset(a, b)
                key = "" if opset[0] == "ai.onnx" else opset[0]
                # skl2onnx writes one domain twice at the same version: only a clash is refused
                if any(
                    ("" if d == "ai.onnx" else d) == key and v != opset[1] for d, v in facts.opsets
                ):
                    raise ArtifactRejected(
                        f"the model imports operator domain {opset[0][:60]!r} twice, at two "
                        "opsets; import each domain once"
                    )
                facts.opsets.append(opset)
            elif number == 14:
                self._expect(wire, LEN, "metadata_props")
                metadata_entries += 1
                if metadata_entries > MAX_METADATA:
                    raise ArtifactRejected(
                        f"the model has more than {MAX_METADATA} metadata_props entries; "
                        "keep the model's metadata small"
                    )
                key, value = self._entry(a, b)
                facts.metadata[key] = value
            elif number == 20:
                raise ArtifactRejected(
                    "models with training information are not supported; export the "
                    "inference graph only"
                )
            elif number == 25:
                raise ArtifactRejected(
                    "model-local functions are not supported; export with the functions "
                    "inlined (onnx.inliner.inline_local_functions(model))"
                )
            else:
                raise ArtifactRejected(
                    f"ModelProto field {number} is not one modelvc reads (written by a newer "
                    "onnx?); save the model with onnx 1.23 or older and commit that file"
                )
        if 7 not in seen:
            raise malformed("there is no graph")
        return facts

    def _opset(self, a: int, b: int) -> tuple[str, int]:
        domain, version, seen = "", -1, set[int]()
        for number, wire, x, y in self.fields(a, b):
            self._once(seen, number, "an opset_import field")
            if number == 1:
                self._expect(wire, LEN, "opset domain")
                domain = _text(self.data, x, y, "opset domain")
            elif number == 2:
                self._expect(wire, VARINT, "opset version")
                version = signed(x)
            else:
                raise malformed(f"opset_import field {number}")
        return domain, version

    def _entry(self, a: int, b: int) -> tuple[str, str]:
        key = value = ""
        seen = set[int]()
        for number, wire, x, y in self.fields(a, b):
            self._once(seen, number, "a metadata_props field")
            self._expect(wire, LEN, "metadata_props")
            if number == 1:
                key = _text(self.data, x, y, "metadata key")
            elif number == 2:
                value = _text(self.data, x, y, "metadata value")
            else:
                raise malformed(f"metadata_props field {number}")
        return key, value

    # -- GraphProto, NodeProto, AttributeProto -----------------------------------------

    def graph(self, a: int, b: int) -> None:
        """The model's one graph (a subgraph is refused where an attribute holds one)."""
        facts, seen = self.facts, set[int]()
        for number, wire, x, y in self.fields(a, b):
            if number in (2, 10):
                self._once(seen, number, f"GraphProto field {number}")
                self._expect(wire, LEN, "the graph's name or doc_string")
                _no_zip(self.data, x, y, "graph's name or doc_string")
            elif number == 1:
                self._expect(wire, LEN, "node")
                self.node(x, y)
            elif number == 5:
                self._expect(wire, LEN, "initializer")
                name, values = self.tensor(x, y, "an initializer")
                self._constant(name, values)
                facts.initializers += 1
                facts.initializer_names.add(name)
            elif number == 15:
                raise ArtifactRejected("sparse initializers are not supported; store them dense")
            elif number in (11, 12, 13):
                self._expect(wire, LEN, "a value_info")
                info = self.value_info(x, y)
                if number != 13:
                    listed = facts.inputs if number == 11 else facts.outputs
                    if len(listed) >= MAX_GRAPH_IO:
                        raise ArtifactTooLarge(
                            f"the graph has more than {MAX_GRAPH_IO} "
                            f"{'inputs' if number == 11 else 'outputs'}"
                        )
                    listed.append(info)
            elif number in (14, 16):
                self._expect(wire, LEN, "quantization_annotation or metadata_props")
                _no_zip(self.data, x, y, "graph's quantization_annotation or metadata_props")
            else:
                raise malformed(f"GraphProto field {number}")

    def node(self, a: int, b: int) -> None:
        facts, seen = self.facts, set[int]()
        facts.nodes += 1
        if facts.nodes > MAX_NODES:
            raise ArtifactTooLarge(
                f"the graph has more than {MAX_NODES} nodes; modelvc serves graphs of at "
                f"most {MAX_NODES}"
            )
        domain = op_type = ""
        inputs: list[str] = []
        outputs: list[str] = []
        attributes = 0
        first: tuple[bytes, tuple[int, ...] | None] = (b"", None)  # a Constant's one attribute
        for number, wire, x, y in self.fields(a, b):
            if number in (3, 4, 6, 7, 8):
                self._once(seen, number, f"NodeProto field {number}")
            if number in (1, 2):
                self._expect(wire, LEN, f"NodeProto field {number}")
                listed = inputs if number == 1 else outputs
                if len(listed) >= MAX_NODE_IO:
                    raise ArtifactTooLarge(
                        f"a node has more than {MAX_NODE_IO} "
                        f"{'inputs' if number == 1 else 'outputs'}"
                    )
                listed.append(_text(self.data, x, y, "node input or output name"))
            elif number == 4:
                self._expect(wire, LEN, "a node's op_type")
                op_type = _text(self.data, x, y, "node op_type")
            elif number in (3, 6, 8, 9):
                self._expect(wire, LEN, f"NodeProto field {number}")
                _no_zip(self.data, x, y, f"NodeProto field {number}")
            elif number == 7:
                self._expect(wire, LEN, "a node's domain")
                domain = _text(self.data, x, y, "node domain")
            elif number == 5:
                self._expect(wire, LEN, "attribute")
                attributes += 1
                if attributes > MAX_ATTRIBUTES:
                    raise ArtifactTooLarge(f"a node has more than {MAX_ATTRIBUTES} attributes")
                read = self.attribute(x, y)
                first = read if attributes == 1 else (b"", None)
            else:
                raise malformed(f"NodeProto field {number}")
        facts.node_domains.add(domain)
        if domain in ("", "ai.onnx"):
            if op_type in CONTROL_FLOW:
                raise ArtifactRejected(CONTROL_FLOW_HINT)
            if op_type == "Constant":
                for name in outputs:
                    self._constant(name, first[1])
        facts.node_list.append(Node(op_type, "" if domain == "ai.onnx" else domain, tuple(inputs)))

    def attribute(self, a: int, b: int) -> tuple[bytes, tuple[int, ...] | None]:
        """Checks an attribute; gives its name when it is one of a Constant's int64 ones
        (:data:`_CONSTANT_INTS`, else ``b""``) and the values it holds (None: not an int64
        value of at most :data:`SMALL_INTS` values)."""
        data, seen = self.data, set[int]()
        name = b""
        held: dict[bytes, tuple[int, ...] | None] = {}
        ints: list[int] = []
        count = 0
        for number, wire, x, y in self.fields(a, b):
            if number in (1, 2, 3, 4, 5, 6, 13, 14, 20, 21):
                self._once(seen, number, f"AttributeProto field {number}")
            if number in (1, 4, 9, 13, 14, 15, 21):
                self._expect(wire, LEN, f"AttributeProto field {number}")
                if number in (14, 15):
                    self.type(x, y, 1)
                else:
                    _no_zip(data, x, y, f"AttributeProto field {number}")
                if number == 1 and y - x <= 10 and data[x:y] in _CONSTANT_INTS:
                    name = data[x:y]
            elif number in (3, 20):
                self._expect(wire, VARINT, f"AttributeProto field {number}")
                if number == 3:
                    held[b"value_int"] = (signed(x),)
            elif number == 2:
                self._expect(wire, I32, "a float attribute")
            elif number == 7:
                _repeated_count(data, wire, x, y, I32, "a floats attribute")
            elif number == 8:
                count += _repeated_count(data, wire, x, y, VARINT, "an ints attribute")
                if count <= SMALL_INTS:
                    ints += _varints(data, wire, x, y, SMALL_INTS)
            elif number in (5, 10):
                self._expect(wire, LEN, "a tensor attribute")
                _, values = self.tensor(x, y, "a tensor attribute")
                if number == 5:
                    held[b"value"] = values
            elif number in (6, 11):
                # A subgraph runs as often, and on tensors as large, as its operator's
                # inputs say at predict time (and its inputs shadow the graph's constants):
                # no operator served here takes one.
                raise ArtifactRejected(CONTROL_FLOW_HINT)
            elif number in (22, 23):
                raise ArtifactRejected("sparse tensors are not supported; store them dense")
            else:
                raise malformed(f"AttributeProto field {number}")
        held[b"value_ints"] = tuple(ints) if count <= SMALL_INTS else None
        return name, held.get(name)

    # -- TensorProto ---------------------------------------------------------------------

    def tensor(self, a: int, b: int, what: str) -> tuple[str, tuple[int, ...] | None]:
        """Checks a tensor holds what it declares; gives its name and, for an int64 tensor
        of at most :data:`SMALL_INTS` elements, its values (else None)."""
        data, seen = self.data, set[int]()
        dims: list[int] = []
        elem = 1  # TensorProto's default data_type is 0 (undefined): refused below
        elem_seen = False
        name = ""
        raw: tuple[int, int] | None = None
        packed: list[tuple[int, int]] = []  # int64_data runs, kept while they hold few values
        counts = dict.fromkeys(_TYPED, 0)
        string_bytes = 0
        for number, wire, x, y in self.fields(a, b):
            if number in (2, 3, 8, 9, 12, 14):
                self._once(seen, number, f"TensorProto field {number}")
            if number == 1:
                dims_here = _repeated_count(data, wire, x, y, VARINT, "dims")
                dims.extend(self._dims(wire, x, y, dims_here))
                if len(dims) > MAX_DIMS:
                    raise ArtifactRejected(f"{what} has more than {MAX_DIMS} dims")
            elif number == 2:
                self._expect(wire, VARINT, "data_type")
                elem, elem_seen = signed(x), True
            elif number == 3:
                raise ArtifactRejected(f"{what} is stored in segments; {RE_EXPORT}")
            elif number == 8:
                self._expect(wire, LEN, "a tensor's name")
                name = _text(data, x, y, "tensor name")
            elif number in (12, 16):
                self._expect(wire, LEN, "a tensor's doc_string or metadata_props")
                _no_zip(data, x, y, "tensor's doc_string or metadata_props")
            elif number == 9:
                self._expect(wire, LEN, "raw_data")
                raw = (x, y)
            elif number == 13:
                raise ArtifactRejected(
                    f"{what} {name!r} is in a file beside the model: {EXTERNAL_HINT}"
                )
            elif number == 14:
                self._expect(wire, VARINT, "data_location")
                if x != 0:
                    raise ArtifactRejected(
                        f"{what} {name!r} is in a file beside the model: {EXTERNAL_HINT}"
                    )
            elif number == _STRING_DATA:
                self._expect(wire, LEN, "string_data")
                _no_zip(data, x, y, "string_data")
                counts[number] += 1
                string_bytes += y - x
            elif number in (_FLOAT_DATA, _INT32_DATA, _INT64_DATA, _DOUBLE_DATA, _UINT64_DATA) and (
                wire != LEN
            ):
                # onnx declares these [packed = true]: protobuf never writes them one by one
                raise ArtifactRejected(
                    f"{what} {name!r} stores its numbers one field each (unpacked); {RE_EXPORT}"
                )
            elif number in (_FLOAT_DATA, _DOUBLE_DATA):
                scalar = I32 if number == _FLOAT_DATA else I64
                counts[number] += _repeated_count(data, wire, x, y, scalar, f"{what}'s data")
            elif number in (_INT32_DATA, _INT64_DATA, _UINT64_DATA):
                counts[number] += _repeated_count(data, wire, x, y, VARINT, f"{what}'s data")
                if number == _INT64_DATA and counts[number] <= SMALL_INTS and x < y:
                    packed.append((x, y))
            else:
                raise malformed(f"TensorProto field {number}")
        if not elem_seen or elem not in ELEM_TYPES:
            raise ArtifactRejected(f"{what} {name!r} has an unknown element type {elem}")
        type_name, bits, typed, (per, every) = ELEM_TYPES[elem]
        elements = 1
        for dim in dims:
            elements *= dim
            if elements > 8 * self.max_bytes + 8:
                raise ArtifactTooLarge(
                    f"{what} {name!r} declares more elements than a model of at most "
                    f"{self.max_bytes} bytes can hold"
                )
        held = sum(counts.values())
        if raw is not None:
            declared = (elements * bits + 7) // 8
            if held or bits == 0 or raw[1] - raw[0] != declared:
                raise ArtifactRejected(
                    f"{what} {name!r} ({type_name}, dims {dims}) declares {declared} bytes "
                    f"but holds {raw[1] - raw[0]} bytes of raw data and {held} values; "
                    f"{RE_EXPORT}"
                )
        else:
            wanted = (elements * per + every - 1) // every
            if counts[typed] != held or held != wanted:
                raise ArtifactRejected(
                    f"{what} {name!r} ({type_name}, dims {dims}) declares {wanted} values "
                    f"but holds {held}; {RE_EXPORT}"
                )
            declared = string_bytes if bits == 0 else (elements * bits + 7) // 8
        facts = self.facts
        facts.parameters += elements
        facts.tensor_bytes += declared
        if facts.tensor_bytes > self.max_bytes:
            raise ArtifactTooLarge(
                f"the model's tensors declare {facts.tensor_bytes} bytes; models are "
                f"limited to {self.max_bytes} bytes"
            )
        if dims:
            facts.widest = max(facts.widest, min(dims[-1], _WIDEST_CAP))
        small = elem == _INT64 and elements <= SMALL_INTS
        return name, self._int64s(raw, packed) if small else None

    def _int64s(
        self, raw: tuple[int, int] | None, packed: list[tuple[int, int]]
    ) -> tuple[int, ...]:
        """The values of a checked int64 tensor: raw_data (little-endian) or int64_data."""
        data = self.data
        if raw is not None:
            return tuple(
                int.from_bytes(data[p : p + 8], "little", signed=True) for p in range(*raw, 8)
            )
        return tuple(v for x, y in packed for v in _varints(data, LEN, x, y, SMALL_INTS))

    def _dims(self, wire: int, x: int, y: int, count: int) -> list[int]:
        values = _varints(self.data, wire, x, y, min(count, MAX_DIMS + 1))
        if any(v < 0 for v in values):
            raise ArtifactRejected("a tensor has a negative dimension")
        return values

    # -- ValueInfoProto, TypeProto -------------------------------------------------------

    def value_info(self, a: int, b: int) -> ValueInfo:
        name, seen = "", set[int]()
        kind: tuple[str, int | None, tuple[str, ...] | None] = ("unknown", None, None)
        for number, wire, x, y in self.fields(a, b):
            if number in (1, 2, 3):
                self._once(seen, number, f"ValueInfoProto field {number}")
            self._expect(wire, LEN, f"ValueInfoProto field {number}")
            if number == 1:
                name = _text(self.data, x, y, "graph input or output name")
            elif number == 2:
                kind = self.type(x, y, 1)
            elif number in (3, 4):
                _no_zip(self.data, x, y, "a value_info's doc_string or metadata_props")
            else:
                raise malformed(f"ValueInfoProto field {number}")
        text, elem, shape = kind
        if shape and len(shape) > 1:
            width = 1
            for dim in shape[1:]:
                width *= int(dim) if dim.isdecimal() and dim.isascii() else 1
                width = min(width, _WIDEST_CAP)
            self.facts.widest = max(self.facts.widest, width)
        return ValueInfo(name, text, elem, shape)

    def type(self, a: int, b: int, depth: int) -> tuple[str, int | None, tuple[str, ...] | None]:
        """(the type as text, a tensor's element type, a tensor's dims or None)."""
        if depth > MAX_TYPE_DEPTH:
            raise ArtifactRejected(f"a type nests more than {MAX_TYPE_DEPTH} deep")
        found: tuple[str, int | None, tuple[str, ...] | None] = ("unknown", None, None)
        kinds = 0
        for number, wire, x, y in self.fields(a, b):
            self._expect(wire, LEN, f"TypeProto field {number}")
            if number == 6:
                continue
            kinds += 1
            if number in (1, 8):
                elem, shape = self._tensor_type(x, y)
                name = ELEM_TYPES[elem][0] if elem in ELEM_TYPES else f"type{elem}"
                found = (
                    (name, elem, shape) if number == 1 else (f"sparse_tensor({name})", None, None)
                )
            elif number in (4, 9):
                inner = "unknown"
                for inner_number, inner_wire, p, q in self.fields(x, y):
                    self._expect(inner_wire, LEN, "elem_type")
                    if inner_number != 1:
                        raise malformed(f"a sequence or optional type's field {inner_number}")
                    inner = _nested(self.type(p, q, depth + 1))
                found = (f"{'seq' if number == 4 else 'optional'}({inner})", None, None)
            elif number == 5:
                key, value = "unknown", "unknown"
                for inner_number, inner_wire, p, q in self.fields(x, y):
                    if inner_number == 1:
                        self._expect(inner_wire, VARINT, "a map's key_type")
                        key = ELEM_TYPES.get(signed(p), (f"type{signed(p)}",))[0]
                    elif inner_number == 2:
                        self._expect(inner_wire, LEN, "a map's value_type")
                        value = _nested(self.type(p, q, depth + 1))
                    else:
                        raise malformed(f"a map type's field {inner_number}")
                found = (f"map({key},{value})", None, None)
            elif number == 7:
                found = ("opaque", None, None)
            else:
                raise malformed(f"TypeProto field {number}")
        if kinds > 1:
            raise malformed("a type is of several kinds at once")
        return found

    def _tensor_type(self, a: int, b: int) -> tuple[int, tuple[str, ...] | None]:
        elem, shape, seen = 0, None, set[int]()
        for number, wire, x, y in self.fields(a, b):
            self._once(seen, number, f"a tensor type's field {number}")
            if number == 1:
                self._expect(wire, VARINT, "elem_type")
                elem = signed(x)
            elif number == 2:
                self._expect(wire, LEN, "shape")
                shape = self._shape(x, y)
            else:
                raise malformed(f"a tensor type's field {number}")
        return elem, shape

    def _shape(self, a: int, b: int) -> tuple[str, ...]:
        dims: list[str] = []
        for number, wire, x, y in self.fields(a, b):
            self._expect(wire, LEN, "a shape's dim")
            if number != 1:
                raise malformed(f"a shape's field {number}")
            if len(dims) >= MAX_DIMS:
                raise ArtifactRejected(f"a shape has more than {MAX_DIMS} dims")
            dim, seen = "?", set[int]()
            for inner_number, inner_wire, p, q in self.fields(x, y):
                self._once(seen, inner_number, "a dimension's field")
                if inner_number == 1:
                    self._expect(inner_wire, VARINT, "dim_value")
                    value = signed(p)
                    if value < 0:
                        raise ArtifactRejected("a shape has a negative dimension")
                    dim = str(value)
                elif inner_number == 2:
                    self._expect(inner_wire, LEN, "dim_param")
                    param = _text(self.data, p, q, "dimension name")
                    # A name that could pass for a number (or breaks a display) reads "?".
                    dim = param if _DIM_PARAM.fullmatch(param) else "?"
                elif inner_number == 3:
                    self._expect(inner_wire, LEN, "denotation")
                    _no_zip(self.data, p, q, "denotation")
                else:
                    raise malformed(f"a dimension's field {inner_number}")
            dims.append(dim)
        return tuple(dims)


def _nested(found: tuple[str, int | None, tuple[str, ...] | None]) -> str:
    # Inside a sequence, map or optional a tensor is written as onnxruntime names it.
    return found[0] if found[1] is None else f"tensor({found[0]})"


def read_model(data: bytes, max_bytes: int) -> ModelFacts:
    """Walk ``data`` as a ModelProto; raise ArtifactRejected / ArtifactTooLarge on anything
    malformed or beyond the bounds. Linear in ``len(data)``."""
    if len(data) > max_bytes:
        raise ArtifactTooLarge(
            f"the model is {len(data)} bytes; models are limited to {max_bytes} bytes"
        )
    facts = _Walk(data, max_bytes).model()
    _check_sizes(facts)
    return facts


def _check_sizes(facts: ModelFacts) -> None:
    """Refuses an operator whose output size a tensor computed at predict time picks: a
    feature value could then make a worker allocate without bound. Of the constant sizes,
    those of :data:`READ_SIZES` are bounded and counted (:func:`_count_size`); the others
    are admitted as they are (the smoke measures what they make)."""
    for node in facts.node_list:
        if node.domain != "" or node.op_type not in SIZE_INPUTS:
            continue
        positions = SIZE_INPUTS[node.op_type]
        picked = range(len(node.inputs)) if positions is None else positions
        for i in picked:
            if i < len(node.inputs) and node.inputs[i] and node.inputs[i] not in facts.constants:
                raise ArtifactRejected(
                    f"operator {node.op_type} takes its output size from {node.inputs[i][:60]!r}, "
                    "which is computed at predict time (so a feature value could pick it): "
                    "make that input a graph initializer or a Constant node, or export the "
                    "model with fixed sizes"
                )
        if node.op_type in READ_SIZES:
            _count_size(facts, node)


def _count_size(facts: ModelFacts, node: Node) -> None:
    """Bounds and counts what ConstantOfShape, Expand or Tile builds from its constant size.

    ConstantOfShape makes prod(shape) elements. Tile makes each element of its input
    prod(repeats) elements, Expand at most prod(max(shape, 1)) (broadcasting takes the
    larger of two dims, so at most their product). An element is 8 bytes: the widest
    numeric type they make (double, int64). What they make per row of a batch (and what
    chains of them, broadcasting or outer products make) no reading of the bytes bounds:
    the sandbox's smoke measures it (``streams.formats.onnx.MEASURE_ROWS``)."""
    op, position = node.op_type, READ_SIZES[node.op_type]
    name = node.inputs[position] if position < len(node.inputs) else ""
    if not name:
        return  # no size at all: onnx's checker refuses the node in the smoke test
    values = facts.int_constants.get(name)
    shown = f"{op} input {position} ({name[:60]!r})"
    if values is None:
        raise ArtifactRejected(
            f"operator {shown} is a size modelvc cannot read: store it as an int64 "
            f"initializer (or Constant) of at most {SMALL_INTS} values"
        )
    if any(v < 0 for v in values):
        raise ArtifactRejected(
            f"operator {shown} holds a negative size {list(values)}, which ONNX does not "
            "allow: fix the graph and export it again"
        )
    elements = 1
    for value in values:
        elements *= max(value, 1) if op == "Expand" else value
    if elements > MAX_SIZED_ELEMENTS:
        raise ArtifactTooLarge(
            f"operator {shown} sizes its output by {list(values)}: {elements} elements, more "
            f"than the {MAX_SIZED_ELEMENTS} modelvc allows one operator; export the model "
            "with smaller sizes"
        )
    facts.sized_bytes += 8 * elements
    if op == "ConstantOfShape":
        # a constant like an initializer of these dims: its last one is a row's width
        facts.widest = max(facts.widest, min(values[-1] if values else 1, _WIDEST_CAP))
