"""One more generated demo head, beside those ``write_demo_models`` writes."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from nomarr_pipeline.ml.demo_models import (
    EFFNET,
    MUSICNN,
    _head_graph,
    _head_metadata,
    _HeadSpec,
    _write_pair,
)


def write_demo_head(
    dest: Path, name: str, classes: tuple[str, ...], activation: str = "Softmax", *, onnx: bool = False
) -> Path:
    """A head such as ``mood_party-discogs-effnet-1``; its backbone (effnet or musicnn)
    follows the name's embedding tag. Returns the ``.pb`` path."""
    backbone = MUSICNN if name.endswith("-" + MUSICNN.name) else EFFNET
    spec = _HeadSpec(name, backbone, classes, activation, f"{name} (generated)")
    dest.mkdir(parents=True, exist_ok=True)
    return _write_pair(dest, spec.name, partial(_head_graph, spec), _head_metadata(spec), onnx)
