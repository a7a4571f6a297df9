"""Models checked before they run: a head that cannot run is a broken model with its reason,
never a failure per file (docs/RELIABILITY.md, "Broken models").

A ``.pb`` graph must parse, have the input and output nodes its JSON names, take embeddings as
wide as its backbone gives, and give as many values as its JSON lists labels (where the graph
says). Other model formats plug in through :data:`VALIDATORS`, by file suffix. Results are
cached by the files' identity (path, size, mtime): a model is read again only once it changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from nomarr_pipeline.ml.graphdef import graphdef_problem, read_varint

if TYPE_CHECKING:  # discovery calls these checks
    from nomarr_pipeline.ml.discovery import Backbone, Head

# GraphDef.node (1); NodeDef: name (1), op (2), input (3), attr (5, map entry: key 1, value 2);
# AttrValue: shape (7), tensor (8); TensorProto.tensor_shape (2); TensorShapeProto.dim (2);
# Dim.size (1).
_NODE, _NAME, _OP, _INPUT, _ATTR = 1, 1, 2, 3, 5
_SHAPE, _TENSOR, _TENSOR_SHAPE, _DIM, _DIM_SIZE = 7, 8, 2, 2, 1
# Ops between a head's output and its last layer's weights that keep the width.
_WIDTH_KEEPING = {"Softmax", "Sigmoid", "Identity", "Relu", "BiasAdd", "Add", "AddV2", "MatMul"}


@dataclass(frozen=True)
class GraphNode:
    op: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...] | None  # a Placeholder's declared shape, a Const's tensor shape


def _fields(data: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, varint value or length-delimited bytes) of one protobuf message."""
    offset = 0
    while offset < len(data):
        tag, offset = read_varint(data, offset)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, offset = read_varint(data, offset)
            yield number, value
        elif wire_type == 2:
            length, offset = read_varint(data, offset)
            yield number, data[offset:offset + length]
            offset += length
        else:
            offset += 8 if wire_type == 1 else 4


def _shape(proto: memoryview) -> tuple[int, ...]:
    dims = []
    for number, dim in _fields(proto):
        if number == _DIM and isinstance(dim, memoryview):
            size = next((v for n, v in _fields(dim) if n == _DIM_SIZE and isinstance(v, int)), 0)
            dims.append(size - (1 << 64) if size >= 1 << 63 else size)  # int64 -1: unknown
    return tuple(dims)


def _node(message: memoryview) -> tuple[str, GraphNode]:
    name, op, inputs, shape = "", "", [], None
    for number, value in _fields(message):
        if not isinstance(value, memoryview):
            continue
        if number == _NAME:
            name = bytes(value).decode()
        elif number == _OP:
            op = bytes(value).decode()
        elif number == _INPUT:
            inputs.append(bytes(value).decode())
        elif number == _ATTR:
            entry = dict(_fields(value))
            attr = entry.get(2)
            for kind, payload in _fields(attr) if isinstance(attr, memoryview) else ():
                if kind == _SHAPE and isinstance(payload, memoryview):
                    shape = _shape(payload)
                elif kind == _TENSOR and isinstance(payload, memoryview):
                    tensor_shape = dict(_fields(payload)).get(_TENSOR_SHAPE)
                    shape = _shape(tensor_shape) if isinstance(tensor_shape, memoryview) else ()
    return name, GraphNode(op, tuple(inputs), shape)


@lru_cache(maxsize=64)
def _graph(path: str, size: int, mtime_ns: int) -> dict[str, GraphNode] | str:
    """The graph's nodes by name, or why it cannot be loaded (keyed by the file's identity)."""
    data = memoryview(Path(path).read_bytes())
    problem = graphdef_problem(data)
    if problem:
        return problem
    messages = (node for field, node in _fields(data) if field == _NODE and isinstance(node, memoryview))
    try:
        return dict(_node(message) for message in messages)
    except ValueError as exc:  # fields inside a node that do not parse (or are not UTF-8)
        return f"not a TensorFlow graph: {exc}"


def graph_nodes(path: Path) -> dict[str, GraphNode] | str:
    try:
        stat = path.stat()
        return _graph(str(path), stat.st_size, stat.st_mtime_ns)
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"


def _node_name(tensor: str) -> str:
    """``"PartitionedCall:1"`` -> ``"PartitionedCall"``; ``"^dep"`` -> ``"dep"``."""
    return tensor.lstrip("^").split(":")[0]


def _missing(nodes: dict[str, GraphNode], role: str, tensor: str) -> str | None:
    if _node_name(tensor) not in nodes:
        return f"its graph has no {role} node {_node_name(tensor)!r}, which its JSON names"
    return None


def _output_width(nodes: dict[str, GraphNode], tensor: str) -> int | None:
    """The last layer's width behind ``tensor``: the bias or weights' last dimension."""
    name = _node_name(tensor)
    for _ in range(32):
        node = nodes.get(name)
        if node is None or node.op not in _WIDTH_KEEPING or not node.inputs:
            return None
        if node.op in ("BiasAdd", "MatMul") and len(node.inputs) > 1:
            constant = nodes.get(_node_name(node.inputs[1]))
            while constant is not None and constant.op == "Identity" and constant.inputs:
                constant = nodes.get(_node_name(constant.inputs[0]))
            if constant is not None and constant.op == "Const" and constant.shape:
                return constant.shape[-1]
            return None
        name = _node_name(node.inputs[0])
    return None


def backbone_graph_problem(backbone: Backbone) -> str | None:
    """Why ``backbone``'s ``.pb`` cannot run, or None."""
    nodes = graph_nodes(backbone.graph_path)
    if isinstance(nodes, str):
        return f"cannot load {backbone.graph_path.name}: {nodes}"
    missing_input = _missing(nodes, "input", backbone.input_node)
    return missing_input or _missing(nodes, "output", backbone.embedding_output)


def head_graph_problem(head: Head) -> str | None:
    """Why ``head``'s ``.pb`` cannot run on its backbone's embeddings, or None."""
    nodes = graph_nodes(head.graph_path)
    if isinstance(nodes, str):
        return f"cannot load {head.graph_path.name}: {nodes}"
    missing = _missing(nodes, "input", head.input_node) or _missing(nodes, "output", head.output_node)
    if missing:
        return missing
    backbone = head.backbone
    declared = nodes[_node_name(head.input_node)].shape
    if declared and declared[-1] > 0 and declared[-1] != backbone.embedding_size:
        return (
            f"its graph takes {declared[-1]}-wide embeddings, but its backbone {backbone.name} "
            f"gives {backbone.embedding_size}: it is a head of another backbone"
        )
    width = _output_width(nodes, head.output_node)
    if width is not None and width > 0 and width != len(head.labels):
        return f"its graph gives {width} values per patch, but its JSON lists {len(head.labels)} labels"
    return None


# Model file suffix -> the check of a head / a backbone stored in that format.
VALIDATORS: dict[str, tuple[Callable[[Head], str | None], Callable[[Backbone], str | None]]] = {
    ".pb": (head_graph_problem, backbone_graph_problem),
}


def head_problem(head: Head) -> str | None:
    """Why ``head`` (its backbone included) cannot run, or None; formats without a validator
    pass. An auto-tagging head is its backbone's own output: its backbone's check is its."""
    validators = VALIDATORS.get(head.graph_path.suffix)
    backbone_validators = VALIDATORS.get(head.backbone.graph_path.suffix)
    if backbone_validators and (problem := backbone_validators[1](head.backbone)):
        return f"its backbone {head.backbone.name} cannot run: {problem}"
    if head.autotagging or validators is None:
        return None
    return validators[0](head)
