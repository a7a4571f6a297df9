"""A minimal writer of TensorFlow frozen ``GraphDef`` files, numpy only.

A frozen graph is one protobuf message (``tensorflow.GraphDef``); the handful of message
types it needs (NodeDef, AttrValue, TensorProto, TensorShapeProto, VersionDef) are encoded
here by hand with the protobuf wire format, so the project can build real, loadable models
without TensorFlow or the protobuf package. Field numbers follow TensorFlow's public
``.proto`` definitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import numpy as np

_VARINT = 0
_LENGTH_DELIMITED = 2
# GraphDef.versions.producer: any TF 2.x value works; it only tells TF which op semantics
# the graph was written against.
_GRAPH_PRODUCER = 440


class DataType(IntEnum):
    """``tensorflow.DataType`` values this writer emits."""

    FLOAT = 1
    INT32 = 3
    BOOL = 10


_NUMPY_DTYPES: dict[DataType, np.dtype] = {
    DataType.FLOAT: np.dtype("<f4"),
    DataType.INT32: np.dtype("<i4"),
    DataType.BOOL: np.dtype("?"),
}


# ---- wire format ---------------------------------------------------------------------
def _varint(value: int) -> bytes:
    # Negative int64 values are sent as their 64-bit two's complement (10 bytes).
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _tag(field_number: int, wire_type: int) -> bytes:
    return _varint((field_number << 3) | wire_type)


def _varint_field(field_number: int, value: int) -> bytes:
    return _tag(field_number, _VARINT) + _varint(value)


def _bytes_field(field_number: int, payload: bytes) -> bytes:
    return _tag(field_number, _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _string_field(field_number: int, text: str) -> bytes:
    return _bytes_field(field_number, text.encode("utf-8"))


# ---- message encoders ----------------------------------------------------------------
def tensor_shape_proto(dims: Sequence[int]) -> bytes:
    """``TensorShapeProto``: ``dim`` (2) of ``Dim{size (1)}``; ``-1`` is an unknown size."""
    return b"".join(_bytes_field(2, _varint_field(1, int(size))) for size in dims)


def tensor_proto(array: np.ndarray, dtype: DataType) -> bytes:
    """``TensorProto``: dtype (1), tensor_shape (2), tensor_content (4, little-endian bytes)."""
    data = np.ascontiguousarray(array, dtype=_NUMPY_DTYPES[dtype])
    return (
        _varint_field(1, int(dtype))
        + _bytes_field(2, tensor_shape_proto(data.shape))
        + _bytes_field(4, data.tobytes())
    )


def attr_type(dtype: DataType) -> bytes:
    """``AttrValue.type`` (6)."""
    return _varint_field(6, int(dtype))


def attr_type_list(dtypes: Sequence[DataType]) -> bytes:
    """``AttrValue.list`` (1) holding ``ListValue.type`` (6, packed)."""
    packed = b"".join(_varint(int(dtype)) for dtype in dtypes)
    return _bytes_field(1, _bytes_field(6, packed))


def attr_shape(dims: Sequence[int]) -> bytes:
    """``AttrValue.shape`` (7)."""
    return _bytes_field(7, tensor_shape_proto(dims))


def attr_tensor(array: np.ndarray, dtype: DataType) -> bytes:
    """``AttrValue.tensor`` (8)."""
    return _bytes_field(8, tensor_proto(array, dtype))


def attr_bool(value: bool) -> bytes:
    """``AttrValue.b`` (5)."""
    return _varint_field(5, int(value))


def attr_string(value: str) -> bytes:
    """``AttrValue.s`` (2)."""
    return _string_field(2, value)


@dataclass(frozen=True)
class NodeDef:
    """One graph node; ``attrs`` maps attribute names to encoded ``AttrValue`` messages."""

    name: str
    op: str
    inputs: tuple[str, ...] = ()
    attrs: dict[str, bytes] = field(default_factory=dict)

    def encode(self) -> bytes:
        out = _string_field(1, self.name) + _string_field(2, self.op)
        out += b"".join(_string_field(3, name) for name in self.inputs)
        # map<string, AttrValue> is a repeated entry message {key (1), value (2)}; sorted
        # so the same graph always serialises to the same bytes (stable tagger_version).
        for key in sorted(self.attrs):
            entry = _string_field(1, key) + _bytes_field(2, self.attrs[key])
            out += _bytes_field(5, entry)
        return out


class GraphBuilder:
    """Builds a float32 inference graph node by node and serialises it as a GraphDef."""

    def __init__(self) -> None:
        self._nodes: list[NodeDef] = []
        self._names: set[str] = set()

    def _add(self, node: NodeDef) -> str:
        if node.name in self._names:
            raise ValueError(f"duplicate node name {node.name!r}")
        self._names.add(node.name)
        self._nodes.append(node)
        return node.name

    def placeholder(self, name: str, shape: Sequence[int]) -> str:
        return self._add(
            NodeDef(name, "Placeholder", attrs={"dtype": attr_type(DataType.FLOAT),
                                               "shape": attr_shape(shape)})
        )

    def const(self, name: str, value: np.ndarray, dtype: DataType = DataType.FLOAT) -> str:
        return self._add(
            NodeDef(name, "Const", attrs={"dtype": attr_type(dtype),
                                         "value": attr_tensor(value, dtype)})
        )

    def mean(self, name: str, value: str, axes: Sequence[int], keep_dims: bool = False) -> str:
        axes_node = self.const(f"{name}/reduction_indices", np.asarray(axes), DataType.INT32)
        return self._add(
            NodeDef(name, "Mean", (value, axes_node), {
                "T": attr_type(DataType.FLOAT),
                "Tidx": attr_type(DataType.INT32),
                "keep_dims": attr_bool(keep_dims),
            })
        )

    def matmul(self, name: str, a: str, b: str) -> str:
        return self._add(
            NodeDef(name, "MatMul", (a, b), {
                "T": attr_type(DataType.FLOAT),
                "transpose_a": attr_bool(False),
                "transpose_b": attr_bool(False),
            })
        )

    def bias_add(self, name: str, value: str, bias: str) -> str:
        return self._add(
            NodeDef(name, "BiasAdd", (value, bias), {
                "T": attr_type(DataType.FLOAT),
                "data_format": attr_string("NHWC"),
            })
        )

    def binary(self, name: str, op: str, a: str, b: str) -> str:
        """Element-wise ``Sub``, ``Add``, ``Mul`` with broadcasting."""
        return self._add(NodeDef(name, op, (a, b), {"T": attr_type(DataType.FLOAT)}))

    def unary(self, name: str, op: str, value: str) -> str:
        """``Tanh``, ``Sigmoid``, ``Softmax``, ``Identity``."""
        return self._add(NodeDef(name, op, (value,), {"T": attr_type(DataType.FLOAT)}))

    def identity_n(self, name: str, values: Sequence[str]) -> str:
        """One node with several outputs, addressed as ``name:0``, ``name:1``…"""
        return self._add(
            NodeDef(name, "IdentityN", tuple(values),
                    {"T": attr_type_list([DataType.FLOAT] * len(values))})
        )

    def dense(self, name: str, value: str, weights: np.ndarray, bias: np.ndarray) -> str:
        """``{name}/MatMul`` + ``{name}/BiasAdd``, the node names Keras-exported heads use."""
        kernel = self.const(f"{name}/kernel", weights)
        bias_node = self.const(f"{name}/bias", bias)
        product = self.matmul(f"{name}/MatMul", value, kernel)
        return self.bias_add(f"{name}/BiasAdd", product, bias_node)

    def to_bytes(self) -> bytes:
        versions = _varint_field(1, _GRAPH_PRODUCER)
        return b"".join(_bytes_field(1, node.encode()) for node in self._nodes) + _bytes_field(
            4, versions
        )

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_bytes())
        return path


# ---- checking a downloaded graph -------------------------------------------------------------
# GraphDef's own fields: node (1), library (2), version (3, deprecated varint), versions (4),
# debug_info (5). Newer TensorFlow versions may add fields; any field with a valid wire type
# is accepted, but the message must parse to its last byte. TensorFlow writes fields in
# number order and always writes `versions`, so a graph cut between two nodes lacks it.
_GRAPH_NODE_FIELD = 1
_GRAPH_VERSIONS_FIELD = 4
_VALID_WIRE_TYPES = {0: "varint", 1: "64-bit", 2: "length-delimited", 5: "32-bit"}


def read_varint(data: bytes | memoryview, offset: int) -> tuple[int, int]:
    value = shift = 0
    while offset < len(data):
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
        if shift > 63:
            break
    raise ValueError(f"malformed varint at byte {offset}")


def graphdef_problem(data: bytes | memoryview) -> str | None:
    """Why ``data`` is not a complete serialised GraphDef (truncated, an HTML page, empty),
    or None. Walks the top-level fields only: cheap even for an 18 MB graph."""
    offset = nodes = 0
    has_versions = False
    size = len(data)
    try:
        while offset < size:
            tag, offset = read_varint(data, offset)
            field_number, wire_type = tag >> 3, tag & 7
            if field_number == 0 or wire_type not in _VALID_WIRE_TYPES:
                return f"not a TensorFlow graph: invalid protobuf field at byte {offset}"
            if wire_type == 0:
                _, offset = read_varint(data, offset)
            elif wire_type == 1:
                offset += 8
            elif wire_type == 5:
                offset += 4
            else:
                length, offset = read_varint(data, offset)
                offset += length
                nodes += field_number == _GRAPH_NODE_FIELD
                has_versions |= field_number == _GRAPH_VERSIONS_FIELD
    except ValueError as exc:
        return f"not a TensorFlow graph: {exc}"
    if offset > size:
        return f"TensorFlow graph is truncated: {size} bytes, its last field needs {offset}"
    if nodes == 0:
        return "not a TensorFlow graph: it has no nodes"
    if not has_versions:
        return "TensorFlow graph is incomplete: it ends before its 'versions' field"
    return None
