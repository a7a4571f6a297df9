"""Tiny, real Essentia models for the demo (and tests and benchmarks): frozen graphs with the
real node names and shapes and Essentia-style metadata, which the real Essentia algorithms run
unchanged; with ``onnx=True`` the same networks as ``.onnx`` too. Weights are deterministic
(seeded by file name) and make outputs follow the audio's spectral shape, spread over (0, 1).

A backbone averages each mel band over the patch, removes the mean level (so loudness alone
does not decide) and projects through a small hidden layer; a head is one dense layer plus its
activation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from nomarr_pipeline.ml.discovery import BACKBONE_FAMILIES, BackboneFamily
from nomarr_pipeline.ml.graphdef import GraphBuilder
from nomarr_pipeline.ml.onnx_graph import OnnxGraphBuilder

MEL_BANDS = 96
HIDDEN_UNITS = 16
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class _BackboneSpec:
    name: str
    family: BackboneFamily  # its algorithm, default input node and embeddings
    patch_frames: int
    predictions_node: str
    prediction_classes: tuple[str, ...]


EFFNET = _BackboneSpec("discogs-effnet-bs64-1", BACKBONE_FAMILIES["TensorflowPredictEffnetDiscogs"], 128,
                       "PartitionedCall:0", tuple(f"Demo---Style {index:03d}" for index in range(400)))
MUSICNN = _BackboneSpec("msd-musicnn-1", BACKBONE_FAMILIES["TensorflowPredictMusiCNN"], 187,
                        "model/Sigmoid", tuple(f"demo tag {index:02d}" for index in range(50)))


@dataclass(frozen=True)
class _HeadSpec:
    name: str
    backbone: _BackboneSpec
    classes: tuple[str, ...]
    activation: str  # Softmax | Sigmoid | Identity
    type: str
    partitioned: bool = False  # genre_discogs400 style node names


HEADS: tuple[_HeadSpec, ...] = (
    _HeadSpec("mood_happy-discogs-effnet-1", EFFNET, ("happy", "non_happy"), "Softmax",
              "Mood happy classification"),
    _HeadSpec("danceability-discogs-effnet-1", EFFNET, ("danceable", "not_danceable"),
              "Softmax", "Danceability classification"),
    _HeadSpec("mood_aggressive-discogs-effnet-1", EFFNET, ("aggressive", "not_aggressive"),
              "Softmax", "Mood aggressive classification"),
    _HeadSpec("mtg_jamendo_moodtheme-discogs-effnet-1", EFFNET,
              ("calm", "dark", "energetic", "happy", "melancholic"), "Sigmoid",
              "Multi-label mood and theme classification"),
    _HeadSpec("approachability_regression-discogs-effnet-1", EFFNET, ("approachability",),
              "Identity", "Approachability regression"),
    _HeadSpec("genre_discogs400-discogs-effnet-1", EFFNET,
              ("Electronic---House", "Electronic---Techno", "Rock---Punk", "Jazz---Swing",
               "Hip Hop---Boom Bap", "Classical---Baroque"),
              "Sigmoid", "Music style classification", partitioned=True),
    _HeadSpec("mood_sad-msd-musicnn-1", MUSICNN, ("non_sad", "sad"), "Softmax",
              "Mood sad classification"),
)


def _rng(name: str) -> np.random.Generator:
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng(seed)


Builder = GraphBuilder | OnnxGraphBuilder


def _backbone_graph(spec: _BackboneSpec, graph: Builder) -> Builder:
    rng = _rng(spec.name)
    melspectrogram = graph.placeholder(spec.family.default_input, [-1, spec.patch_frames, MEL_BANDS])
    band_profile = graph.mean("demo/band_profile", melspectrogram, [1])
    level = graph.mean("demo/level", band_profile, [1], keep_dims=True)
    spectral_shape = graph.binary("demo/spectral_shape", "Sub", band_profile, level)
    hidden_weights = graph.const(
        "demo/hidden/kernel", rng.normal(0.0, 0.6 / np.sqrt(MEL_BANDS), (MEL_BANDS, HIDDEN_UNITS))
    )
    hidden = graph.unary(
        "demo/hidden/Tanh", "Tanh", graph.matmul("demo/hidden/MatMul", spectral_shape,
                                                 hidden_weights)
    )
    embedding_weights = rng.normal(0.0, 1.0 / np.sqrt(HIDDEN_UNITS),
                                   (HIDDEN_UNITS, spec.family.embedding_size))
    prediction_weights = rng.normal(0.0, 2.0 / np.sqrt(HIDDEN_UNITS),
                                    (HIDDEN_UNITS, len(spec.prediction_classes)))
    if spec is EFFNET:
        embeddings = graph.matmul("demo/embeddings", hidden,
                                  graph.const("demo/embeddings/kernel", embedding_weights))
        predictions = graph.unary(
            "demo/predictions", "Sigmoid",
            graph.matmul("demo/logits", hidden,
                         graph.const("demo/logits/kernel", prediction_weights)),
        )
        # The real model exposes both outputs from one node: :0 styles, :1 embeddings.
        graph.identity_n("PartitionedCall", [predictions, embeddings])
    else:
        embeddings = graph.dense("model/dense", hidden, embedding_weights,
                                 np.zeros(spec.family.embedding_size))
        graph.unary(
            "model/Sigmoid", "Sigmoid",
            graph.matmul("model/logits", hidden,
                         graph.const("model/logits/kernel", prediction_weights)),
        )
    return graph


def _head_nodes(spec: _HeadSpec) -> tuple[str, str]:
    if spec.partitioned:
        return "serving_default_model_Placeholder", "PartitionedCall:0"
    return "model/Placeholder", f"model/{spec.activation}"


def _head_graph(spec: _HeadSpec, graph: Builder) -> Builder:
    rng = _rng(spec.name)
    width = spec.backbone.family.embedding_size
    # Embeddings have a per-dimension std of about 0.5; this scale gives logits of std ~1.5,
    # so activations spread over (0, 1) instead of saturating.
    weights = rng.normal(0.0, 3.0 / np.sqrt(width), (width, len(spec.classes)))
    bias = rng.normal(0.0, 0.1, len(spec.classes))
    input_node, output_node = _head_nodes(spec)
    features = graph.placeholder(input_node, [-1, width])
    logits = graph.dense("model/dense", features, weights, bias)
    # A GraphDef names the node (its output 0 is "node:0"); ONNX names the tensor itself.
    output_name = output_node if isinstance(graph, OnnxGraphBuilder) else output_node.split(":", 1)[0]
    graph.unary(output_name, spec.activation, logits)
    return graph


def _metadata(name: str, kind: str, classes: tuple[str, ...], inputs: list[dict[str, Any]],
              outputs: list[dict[str, Any]], inference: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": f"{name} (nomarr demo)",
        "type": kind,
        "version": "1",
        "description": "Tiny generated stand-in with the real node names; not a trained model.",
        "framework": "tensorflow",
        "classes": list(classes),
        "model_types": ["frozen_model"],
        "schema": {"inputs": inputs, "outputs": outputs},
        "inference": {"sample_rate": SAMPLE_RATE, **inference},
    }


def _tensor(name: str, *shape: int, **more: str) -> dict[str, Any]:
    return {"name": name, "type": "float", "shape": ["batch_size", *shape], **more}


def _backbone_metadata(spec: _BackboneSpec, autotagging: bool) -> dict[str, Any]:
    # Without its classes it is a plain feature extractor (like Essentia's
    # discogs_track_embeddings-effnet-bs64-1): its predictions output is not a head.
    outputs = [
        _tensor(spec.predictions_node, len(spec.prediction_classes), output_purpose="predictions"),
        _tensor(spec.family.embedding_output, spec.family.embedding_size, output_purpose="embeddings"),
    ]
    return _metadata(spec.name, "Demo auto-tagging model" if autotagging else "Demo feature extractor",
                     spec.prediction_classes if autotagging else (),
                     [_tensor(spec.family.default_input, spec.patch_frames, MEL_BANDS)], outputs,
                     {"algorithm": spec.family.algorithm})


def _head_metadata(spec: _HeadSpec) -> dict[str, Any]:
    input_node, output_node = _head_nodes(spec)
    output = _tensor(output_node, len(spec.classes), op=spec.activation, output_purpose="predictions")
    embedding_model = {"algorithm": spec.backbone.family.algorithm, "model_name": spec.backbone.name}
    return _metadata(spec.name, spec.type, spec.classes,
                     [_tensor(input_node, spec.backbone.family.embedding_size)], [output],
                     {"algorithm": "TensorflowPredict2D", "embedding_model": embedding_model})


def _write_pair(dest: Path, name: str, build: Callable[[Builder], Builder],
                metadata: dict[str, Any], onnx: bool) -> Path:
    graph_path = build(GraphBuilder()).write(dest / f"{name}.pb")
    if onnx:
        build(OnnxGraphBuilder()).write(dest / f"{name}.onnx")
    (dest / f"{name}.json").write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return graph_path


def write_demo_models(dest: Path, *, heads: tuple[str, ...] | None = None,
                      onnx: bool = False) -> list[Path]:
    """Write both backbones and the demo heads (or only ``heads``, by file stem) to ``dest``,
    with the same network as ``.onnx`` beside each ``.pb`` when ``onnx``.

    The backbones are auto-tagging models, heads of their own (400 styles on
    ``discogs-effnet-bs64-1``, 50 tags on ``msd-musicnn-1``), unless ``heads`` leaves their
    names out. Returns the written ``.pb`` paths; each has its ``.json`` beside it.
    Deterministic: the same call always writes the same bytes.
    """
    dest.mkdir(parents=True, exist_ok=True)
    written = [
        _write_pair(dest, spec.name, partial(_backbone_graph, spec),
                    _backbone_metadata(spec, autotagging=heads is None or spec.name in heads), onnx)
        for spec in (EFFNET, MUSICNN)
    ]
    for spec in HEADS:
        if heads is None or spec.name in heads:
            written.append(_write_pair(dest, spec.name, partial(_head_graph, spec),
                                       _head_metadata(spec), onnx))
    return written

