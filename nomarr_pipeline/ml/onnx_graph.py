"""Tiny ONNX graphs built with the calls of :class:`~nomarr_pipeline.ml.graphdef.GraphBuilder`, so
one recipe writes a demo model as a ``.pb`` and as the same ``.onnx``. Tensors are named as
TensorFlow names its nodes' outputs (as tf2onnx keeps them), which the model's JSON gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17  # what Essentia's and tf2onnx's conversions use


class OnnxGraphBuilder:
    def __init__(self) -> None:
        self._nodes: list[onnx.NodeProto] = []
        self._inputs: list[onnx.ValueInfoProto] = []
        self._constants: list[onnx.TensorProto] = []

    def _node(self, op: str, name: str, inputs: Sequence[str], **attrs: object) -> str:
        self._nodes.append(helper.make_node(op, list(inputs), [name], name=name, **attrs))
        return name

    def placeholder(self, name: str, shape: Sequence[int]) -> str:
        dims = ["batch" if dim < 0 else dim for dim in shape]
        self._inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        self._constants.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def mean(self, name: str, value: str, axes: Sequence[int], keep_dims: bool = False) -> str:
        return self._node("ReduceMean", name, [value], axes=list(axes), keepdims=int(keep_dims))

    def matmul(self, name: str, a: str, b: str) -> str:
        return self._node("MatMul", name, [a, b])

    def binary(self, name: str, op: str, a: str, b: str) -> str:
        return self._node(op, name, [a, b])

    def unary(self, name: str, op: str, value: str) -> str:
        return self._node(op, name, [value], **({"axis": -1} if op == "Softmax" else {}))

    def identity_n(self, name: str, values: Sequence[str]) -> str:
        for index, value in enumerate(values):
            self._node("Identity", f"{name}:{index}", [value])
        return name

    def dense(self, name: str, value: str, weights: np.ndarray, bias: np.ndarray) -> str:
        product = self.matmul(f"{name}/MatMul", value, self.const(f"{name}/kernel", weights))
        return self.binary(f"{name}/BiasAdd", "Add", product, self.const(f"{name}/bias", bias))

    def model(self) -> onnx.ModelProto:
        """The graph; its outputs are the tensors no node reads, with inferred shapes."""
        consumed = {name for node in self._nodes for name in node.input}
        outputs = [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)
                   for node in self._nodes if node.output[0] not in consumed]
        graph = helper.make_graph(self._nodes, "nomarr-demo", self._inputs, outputs, self._constants)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="nomarr-pipeline")
        model.ir_version = 8  # what onnxruntime reads since 1.14
        return onnx.shape_inference.infer_shapes(model, strict_mode=True)

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(self.model(), str(path))
        return path
