"""TensorFlow frozen ``GraphDef`` files without TensorFlow or protobuf: a minimal writer (numpy
only) and a reader of the protobuf wire format. Field numbers follow TensorFlow's ``.proto`` files.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

# GraphDef.versions.producer: any TF 2.x value works; it only tells TF which op semantics
# the graph was written against.
_GRAPH_PRODUCER = 440


# The tensorflow.DataType values this writer emits, and their numpy types.
_FLOAT, _INT32 = 1, 3
_NUMPY_DTYPES = {_FLOAT: np.dtype("<f4"), _INT32: np.dtype("<i4")}


def _varint(value: int) -> bytes:
    # Negative int64 values are sent as their 64-bit two's complement (10 bytes).
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: int | bytes | str) -> bytes:
    """One field: a varint for an int, else length-delimited bytes."""
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def tensor_shape_proto(dims: Sequence[int]) -> bytes:
    """``TensorShapeProto``: ``dim`` (2) of ``Dim{size (1)}``; ``-1`` is an unknown size."""
    return b"".join(_field(2, _field(1, int(size))) for size in dims)


# AttrValue: s (2), b (5), type (6), shape (7), tensor (8), list (1) of ListValue.type (6, packed).
_FLOAT_T = _field(6, _FLOAT)


class GraphBuilder:
    """Builds a float32 inference graph node by node and serialises it as a GraphDef."""

    def __init__(self) -> None:
        self._nodes: list[bytes] = []
        self._names: set[str] = set()

    def _add(self, name: str, op: str, inputs: Sequence[str] = (), **attrs: bytes) -> str:
        """NodeDef: name (1), op (2), input (3), attr (5, map entries {key (1), value (2)})."""
        if name in self._names:
            raise ValueError(f"duplicate node name {name!r}")
        self._names.add(name)
        node = _field(1, name) + _field(2, op) + b"".join(_field(3, value) for value in inputs)
        # Sorted, so the same graph always serialises to the same bytes (stable tagger_version).
        node += b"".join(_field(5, _field(1, key) + _field(2, attrs[key])) for key in sorted(attrs))
        self._nodes.append(node)
        return name

    def placeholder(self, name: str, shape: Sequence[int]) -> str:
        return self._add(name, "Placeholder", dtype=_FLOAT_T, shape=_field(7, tensor_shape_proto(shape)))

    def const(self, name: str, value: np.ndarray, dtype: int = _FLOAT) -> str:
        data = np.ascontiguousarray(value, dtype=_NUMPY_DTYPES[dtype])
        # TensorProto: dtype (1), tensor_shape (2), tensor_content (4, little-endian bytes).
        tensor = _field(1, dtype) + _field(2, tensor_shape_proto(data.shape)) + _field(4, data.tobytes())
        return self._add(name, "Const", dtype=_field(6, dtype), value=_field(8, tensor))

    def mean(self, name: str, value: str, axes: Sequence[int], keep_dims: bool = False) -> str:
        axes_node = self.const(f"{name}/reduction_indices", np.asarray(axes), _INT32)
        return self._add(name, "Mean", (value, axes_node), T=_FLOAT_T, Tidx=_field(6, _INT32),
                         keep_dims=_field(5, keep_dims))

    def matmul(self, name: str, a: str, b: str) -> str:
        no = _field(5, False)
        return self._add(name, "MatMul", (a, b), T=_FLOAT_T, transpose_a=no, transpose_b=no)

    def binary(self, name: str, op: str, a: str, b: str) -> str:
        """Element-wise ``Sub``, ``Add``, ``Mul`` with broadcasting."""
        return self._add(name, op, (a, b), T=_FLOAT_T)

    def unary(self, name: str, op: str, value: str) -> str:
        """``Tanh``, ``Sigmoid``, ``Softmax``, ``Identity``."""
        return self._add(name, op, (value,), T=_FLOAT_T)

    def identity_n(self, name: str, values: Sequence[str]) -> str:
        """One node with several outputs, addressed as ``name:0``, ``name:1``…"""
        types = b"".join(_varint(_FLOAT) for _ in values)
        return self._add(name, "IdentityN", values, T=_field(1, _field(6, types)))

    def dense(self, name: str, value: str, weights: np.ndarray, bias: np.ndarray) -> str:
        """``{name}/MatMul`` + ``{name}/BiasAdd``, the node names Keras-exported heads use."""
        kernel = self.const(f"{name}/kernel", weights)
        bias_node = self.const(f"{name}/bias", bias)
        product = self.matmul(f"{name}/MatMul", value, kernel)
        return self._add(f"{name}/BiasAdd", "BiasAdd", (product, bias_node), T=_FLOAT_T,
                         data_format=_field(2, "NHWC"))

    def to_bytes(self) -> bytes:
        return b"".join(_field(1, node) for node in self._nodes) + _field(4, _field(1, _GRAPH_PRODUCER))

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_bytes())
        return path


class _Truncated(ValueError):
    def __init__(self, needed: int) -> None:
        super().__init__(f"truncated: its last field needs {needed} bytes")
        self.needed = needed


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


def fields(data: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, varint value or length-delimited bytes) of one protobuf message; 64- and
    32-bit fields are skipped. ValueError where it does not parse to its last byte."""
    offset = 0
    while offset < len(data):
        tag, offset = read_varint(data, offset)
        number, wire_type = tag >> 3, tag & 7
        if number == 0 or wire_type not in (0, 1, 2, 5):
            raise ValueError(f"invalid protobuf field at byte {offset}")
        if wire_type == 0:
            value, offset = read_varint(data, offset)
            yield number, value
        elif wire_type == 2:
            length, offset = read_varint(data, offset)
            yield number, data[offset : offset + length]
            offset += length
        else:
            offset += 8 if wire_type == 1 else 4
    if offset > len(data):
        raise _Truncated(offset)


def graphdef_problem(data: bytes | memoryview) -> str | None:
    """Why ``data`` is not a complete serialised GraphDef (truncated, an HTML page, empty),
    or None. Walks the top-level fields only: cheap even for an 18 MB graph."""
    # GraphDef: node (1), versions (4) and others, which newer TensorFlow versions may add.
    # TensorFlow always writes `versions`, after the nodes: a graph cut between two nodes lacks it.
    try:
        found = {number for number, value in fields(memoryview(data)) if isinstance(value, memoryview)}
    except _Truncated as exc:
        return f"TensorFlow graph is truncated: {len(data)} bytes, its last field needs {exc.needed}"
    except ValueError as exc:
        return f"not a TensorFlow graph: {exc}"
    if 1 not in found:
        return "not a TensorFlow graph: it has no nodes"
    if 4 not in found:
        return "TensorFlow graph is incomplete: it ends before its 'versions' field"
    return None
