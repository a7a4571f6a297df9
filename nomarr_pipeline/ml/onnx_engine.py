"""ONNX Runtime, the second inference engine: runs an ``.onnx`` network by the tensor names its
JSON gives, as essentia-tensorflow runs the ``.pb`` (README, "Inference engines"). Imported
only inside worker processes and by the ``models list``/``models fetch`` checks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

THREADS_ENV = "NOMARR_INFERENCE_THREADS"  # set per worker by capacity.WorkerPlan
PROVIDERS_ENV = "NOMARR_ONNX_PROVIDERS"
# GPU first where onnxruntime-gpu provides it; the CPU always stays as the fallback.
DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")

# onnxruntime's errors are not RuntimeErrors; the analysis treats them as model faults.
_ORT_ERRORS: tuple[type[Exception], ...] = (
    ort_state.Fail, ort_state.InvalidArgument, ort_state.InvalidProtobuf, ort_state.NoSuchFile,
    ort_state.InvalidGraph, ort_state.RuntimeException, ort_state.NotImplemented, ort_state.EPFail,
)


class OnnxModelError(RuntimeError):
    """An ``.onnx`` that cannot be loaded or run, or whose tensors are not the JSON's."""


def providers() -> list[str]:
    """``NOMARR_ONNX_PROVIDERS`` (comma-separated) or the defaults that this onnxruntime build
    has, CPU always last."""
    wanted = [p.strip() for p in os.environ.get(PROVIDERS_ENV, "").split(",") if p.strip()]
    wanted = wanted or list(DEFAULT_PROVIDERS)
    available = set(ort.get_available_providers())
    chosen = [p for p in dict.fromkeys(wanted) if p in available and p != "CPUExecutionProvider"]
    return [*chosen, "CPUExecutionProvider"]


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # 0 lets onnxruntime take every core: right for one process, not for a pool of workers.
    options.intra_op_num_threads = int(os.environ.get(THREADS_ENV) or 0)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), options, providers=providers())
    except _ORT_ERRORS as exc:
        raise OnnxModelError(_first_line(exc)) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class OnnxNetwork:
    """One loaded ``.onnx``: a batch in, the named outputs out (float32, batch first)."""

    def __init__(self, path: Path, input_name: str, output_names: Sequence[str]) -> None:
        self._session = _session(path)
        inputs = {node.name: node for node in self._session.get_inputs()}
        outputs = {node.name for node in self._session.get_outputs()}
        if input_name not in inputs:
            raise OnnxModelError(f"it has no input tensor {input_name!r} (it has {sorted(inputs)})")
        missing = [name for name in output_names if name not in outputs]
        if missing:
            raise OnnxModelError(f"it has no output tensor {missing[0]!r} (it has {sorted(outputs)})")
        self._input = input_name
        self._outputs = list(output_names)
        self._rank = len(inputs[input_name].shape)

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        if batch.ndim > self._rank:
            # Essentia's [patches, 1, frames, bands] for a network that takes [patches, frames, bands].
            batch = batch.reshape(batch.shape[0], *batch.shape[batch.ndim - self._rank + 1:])
        try:
            results = self._session.run(self._outputs, {self._input: np.ascontiguousarray(batch, np.float32)})
        except _ORT_ERRORS as exc:
            raise OnnxModelError(_first_line(exc)) from None
        return [np.asarray(values, dtype=np.float32) for values in results]


def onnx_problem(path: Path, input_name: str | None, widths: dict[str, int | None]) -> str | None:
    """Why this ``.onnx`` disagrees with its JSON (unreadable, a tensor missing, an output of
    another width than ``widths`` gives by name, None for any), or None. Runs nothing."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, ValueError, DecodeError) as exc:
        return f"unreadable .onnx: {type(exc).__name__}: {_first_line(exc)}"
    inputs = [node.name for node in model.graph.input]
    if input_name is not None and input_name not in inputs:
        return f"the .onnx has no input {input_name!r} (it has {inputs}), the JSON's input"
    shapes = {node.name: node.type.tensor_type.shape.dim for node in model.graph.output}
    for name, width in widths.items():
        if name not in shapes:
            return f"the .onnx has no output {name!r} (it has {sorted(shapes)}), the JSON's output"
        dims = shapes[name]
        last = dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else None
        if width is not None and last is not None and last != width:
            return f"the .onnx output {name!r} is {last} wide, the JSON says {width}"
    return None
