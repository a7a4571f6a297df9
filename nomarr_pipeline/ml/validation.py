"""Models checked before they run: a head that cannot run is a broken model with its reason,
never a failure per file (docs/RELIABILITY.md, "Broken models").

A ``.pb`` graph must parse, have the input and output nodes its JSON names, take embeddings as
wide as its backbone gives, and give as many values as its JSON lists labels (where the graph
says); an ``.onnx`` is checked by ``models list`` (:func:`~nomarr_pipeline.ml.listing.onnx_mismatches`).
Graphs are cached by the file's identity (path, size, mtime): a model is read again once it changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from nomarr_pipeline.ml.graphdef import fields, graphdef_problem

if TYPE_CHECKING:  # discovery calls these checks
    from nomarr_pipeline.ml.discovery import Head

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


def _shape(proto: memoryview) -> tuple[int, ...]:
    dims = []
    for number, dim in fields(proto):
        if number == _DIM and isinstance(dim, memoryview):
            size = next((v for n, v in fields(dim) if n == _DIM_SIZE and isinstance(v, int)), 0)
            dims.append(size - (1 << 64) if size >= 1 << 63 else size)  # int64 -1: unknown
    return tuple(dims)


def _node(message: memoryview) -> tuple[str, GraphNode]:
    name, op, inputs, shape = "", "", [], None
    for number, value in fields(message):
        if not isinstance(value, memoryview):
            continue
        if number == _NAME:
            name = bytes(value).decode()
        elif number == _OP:
            op = bytes(value).decode()
        elif number == _INPUT:
            inputs.append(bytes(value).decode())
        elif number == _ATTR:
            attr = dict(fields(value)).get(2)
            for kind, payload in fields(attr) if isinstance(attr, memoryview) else ():
                if kind == _SHAPE and isinstance(payload, memoryview):
                    shape = _shape(payload)
                elif kind == _TENSOR and isinstance(payload, memoryview):
                    tensor_shape = dict(fields(payload)).get(_TENSOR_SHAPE)
                    shape = _shape(tensor_shape) if isinstance(tensor_shape, memoryview) else ()
    return name, GraphNode(op, tuple(inputs), shape)


@lru_cache(maxsize=64)
def _graph(path: str, size: int, mtime_ns: int) -> dict[str, GraphNode] | str:
    """The graph's nodes by name, or why it cannot be loaded (keyed by the file's identity)."""
    data = memoryview(Path(path).read_bytes())
    problem = graphdef_problem(data)
    if problem:
        return problem
    try:
        messages = (node for number, node in fields(data) if number == _NODE and isinstance(node, memoryview))
        return dict(_node(message) for message in messages)
    except ValueError as exc:  # fields inside a node that do not parse (or are not UTF-8)
        return f"not a TensorFlow graph: {exc}"


def _node_name(tensor: str) -> str:
    """``"PartitionedCall:1"`` -> ``"PartitionedCall"``; ``"^dep"`` -> ``"dep"``."""
    return tensor.lstrip("^").split(":")[0]


def _checked_graph(path: Path, input_node: str, output_node: str) -> dict[str, GraphNode] | str:
    """The graph's nodes, or why it cannot load or lacks a node its JSON names."""
    try:
        stat = path.stat()
        nodes = _graph(str(path), stat.st_size, stat.st_mtime_ns)
    except OSError as exc:
        nodes = f"cannot read it: {exc.strerror}"
    if isinstance(nodes, str):
        return f"cannot load {path.name}: {nodes}"
    for role, tensor in (("input", input_node), ("output", output_node)):
        if _node_name(tensor) not in nodes:
            return f"its graph has no {role} node {_node_name(tensor)!r}, which its JSON names"
    return nodes


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


def head_problem(head: Head) -> str | None:
    """Why ``head`` (its backbone included) cannot run on its ``.pb`` graphs, or None. An
    auto-tagging head is its backbone's own output: its backbone's check is its."""
    backbone = head.backbone
    if backbone.graph_path.suffix == ".pb":
        nodes = _checked_graph(backbone.graph_path, backbone.input_node, backbone.embedding_output)
        if isinstance(nodes, str):
            return f"its backbone {backbone.name} cannot run: {nodes}"
    if head.autotagging or head.graph_path.suffix != ".pb":
        return None
    nodes = _checked_graph(head.graph_path, head.input_node, head.output_node)
    if isinstance(nodes, str):
        return nodes
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
