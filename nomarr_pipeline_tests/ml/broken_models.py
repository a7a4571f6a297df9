"""Real broken models, generated: what a corrupt download or a mislabelled head looks like.

Each passes discovery (its JSON is well formed and agrees with itself) and fails only when
Essentia runs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nomarr_pipeline.ml.graphdef import GraphBuilder
from nomarr_pipeline_tests.ml.demo_heads import write_demo_head


def write_garbage_head(models: Path, name: str = "mood_sad-discogs-effnet-1") -> Path:
    """A head whose ``.pb`` is not a TensorFlow graph (a failed download, a wrong file)."""
    write_demo_head(models, name, ("sad", "non_sad"))
    graph = models / f"{name}.pb"
    graph.write_bytes(b"\x07<html>not a model</html>" * 400)
    return graph


def write_width_mismatch_head(models: Path, name: str = "mood_party-discogs-effnet-1") -> Path:
    """A head whose graph outputs 2 values per patch while its JSON lists 3 labels (and says
    so in its schema, so discovery finds nothing wrong)."""
    graph = write_demo_head(models, name, ("party", "non_party"))
    metadata_path = graph.with_suffix(".json")
    metadata = json.loads(metadata_path.read_text())
    metadata["classes"] = ["party", "non_party", "maybe_party"]
    metadata["schema"]["outputs"][0]["shape"] = ["batch_size", 3]
    metadata_path.write_text(json.dumps(metadata))
    return graph


def write_other_backbones_head(models: Path, name: str = "mood_relaxed-discogs-effnet-1") -> Path:
    """An effnet head whose ``.pb`` is a musicnn head's graph (200-wide input, the backbone
    gives 1280); its JSON is the effnet head's own."""
    graph = write_demo_head(models, name, ("relaxed", "non_relaxed"))
    other = write_demo_head(models / "other", "mood_relaxed-msd-musicnn-1", ("relaxed", "non_relaxed"))
    other.replace(graph)
    for leftover in (models / "other").iterdir():
        leftover.unlink()
    (models / "other").rmdir()
    return graph


def write_nan_head(models: Path, name: str = "broken-discogs-effnet-1") -> Path:
    """A valid head graph whose weights are NaN: it outputs NaN for every file."""
    path = write_demo_head(models, name, ("broken", "non_broken"))
    graph = GraphBuilder()
    features = graph.placeholder("model/Placeholder", [-1, 1280])
    logits = graph.dense("model/dense", features, np.full((1280, 2), np.nan), np.zeros(2))
    graph.unary("model/Softmax", "Softmax", logits)
    return graph.write(path)
