"""The GraphDef writer and the demo models it produces, checked with the real Essentia."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nomarr_pipeline.ml.demo_models import HEADS, write_demo_models
from nomarr_pipeline.ml.discovery import ModelCatalog
from nomarr_pipeline.ml.graphdef import GraphBuilder, _varint, graphdef_problem, tensor_shape_proto
from nomarr_pipeline.ml.inference import ModelSession


def test_varint_encodes_like_protobuf() -> None:
    assert _varint(0) == b"\x00"
    assert _varint(1) == b"\x01"
    assert _varint(300) == b"\xac\x02"
    # int64 -1 is ten bytes of two's complement
    assert _varint(-1) == b"\xff" * 9 + b"\x01"


def test_unknown_dimension_is_minus_one() -> None:
    assert tensor_shape_proto([-1, 2]) == b"\x12\x0b\x08" + b"\xff" * 9 + b"\x01" + b"\x12\x02\x08\x02"


def test_duplicate_node_names_are_rejected() -> None:
    graph = GraphBuilder()
    graph.placeholder("x", [-1, 3])
    with pytest.raises(ValueError, match="duplicate node name"):
        graph.placeholder("x", [-1, 3])


def test_demo_models_are_deterministic(tmp_path: Path) -> None:
    first = write_demo_models(tmp_path / "a")
    second = write_demo_models(tmp_path / "b")
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
        assert a.with_suffix(".json").read_bytes() == b.with_suffix(".json").read_bytes()


def test_demo_models_stay_small(models_dir: Path) -> None:
    assert sum(p.stat().st_size for p in models_dir.glob("*.pb")) < 400_000


def test_metadata_has_essentia_fields(models_dir: Path) -> None:
    head = json.loads((models_dir / "genre_discogs400-discogs-effnet-1.json").read_text())
    assert head["inference"]["algorithm"] == "TensorflowPredict2D"
    assert head["inference"]["embedding_model"] == {
        "algorithm": "TensorflowPredictEffnetDiscogs", "model_name": "discogs-effnet-bs64-1"}
    assert head["schema"]["inputs"][0]["name"] == "serving_default_model_Placeholder"
    assert head["schema"]["outputs"][0] == {
        "name": "PartitionedCall:0", "type": "float", "shape": ["batch_size", 6],
        "op": "Sigmoid", "output_purpose": "predictions"}
    backbone = json.loads((models_dir / "discogs-effnet-bs64-1.json").read_text())
    assert backbone["inference"] == {"sample_rate": 16000,
                                     "algorithm": "TensorflowPredictEffnetDiscogs"}


def test_real_essentia_runs_every_demo_model_unchanged(
    catalog: ModelCatalog, audio_by_format: dict[str, Path]
) -> None:
    """Plain Essentia calls, no project code in between: the files are valid models."""
    import essentia.standard as es

    audio = es.MonoLoader(filename=str(audio_by_format[".wav"]), sampleRate=16000,
                          resampleQuality=4)()
    effnet = es.TensorflowPredictEffnetDiscogs(
        graphFilename=str(catalog.backbones[0].graph_path), output="PartitionedCall:1")
    styles = es.TensorflowPredictEffnetDiscogs(
        graphFilename=str(catalog.backbones[0].graph_path), output="PartitionedCall:0")
    musicnn = es.TensorflowPredictMusiCNN(
        graphFilename=str(catalog.backbones[1].graph_path), output="model/dense/BiasAdd")
    embeddings = {"effnet": np.asarray(effnet(audio)), "musicnn": np.asarray(musicnn(audio))}
    assert embeddings["effnet"].shape == (5, 1280)  # 6 s → 5 patches of 128 frames, hop 62
    assert np.asarray(styles(audio)).shape == (5, 400)
    assert embeddings["musicnn"].shape == (3, 200)
    assert {head.name for head in catalog.heads if not head.autotagging} == {spec.name for spec in HEADS}
    for head in catalog.heads:
        if head.autotagging:
            continue
        model = es.TensorflowPredict2D(graphFilename=str(head.graph_path),
                                       input=head.input_node, output=head.output_node)
        predictions = np.asarray(model(embeddings[head.backbone.family]))
        assert predictions.shape == (len(embeddings[head.backbone.family]), len(head.labels))
        assert np.all(np.isfinite(predictions))


def test_outputs_vary_with_the_audio(
    catalog: ModelCatalog, audio_by_format: dict[str, Path]
) -> None:
    """Calibration needs a spread: different files → clearly different values in (0, 1)."""
    session = ModelSession()
    per_head: dict[str, list[float]] = {}
    for path in audio_by_format.values():
        for outcome in session.analyze_file(path, catalog.heads).outcomes:
            assert outcome.error is None
            per_head.setdefault(outcome.partition_key, []).append(outcome.values[0])
    for key, values in per_head.items():
        head = catalog.head(key)
        assert head is not None
        assert np.ptp(values) > 0.1, (key, values)
        if head.kind != "regression":
            assert all(0.0 < v < 1.0 for v in values), (key, values)


def test_graphdef_problem_accepts_real_graphs(models_dir: Path) -> None:
    for graph in sorted(models_dir.glob("*.pb")):
        assert graphdef_problem(graph.read_bytes()) is None, graph.name


def test_graphdef_problem_rejects_truncated_html_json_and_empty(models_dir: Path) -> None:
    data = (models_dir / "msd-musicnn-1.pb").read_bytes()
    assert "truncated" in (graphdef_problem(data[: len(data) // 2]) or "")
    assert graphdef_problem(data[:-1]) is not None
    # Cut exactly between two nodes: every field parses, but the graph is incomplete.
    graph = GraphBuilder()
    graph.placeholder("a", [1])
    graph.placeholder("b", [1])
    whole = graph.to_bytes()
    first_node_end = 2 + whole[1]
    assert graphdef_problem(whole) is None
    assert graphdef_problem(whole[:first_node_end]) == (
        "TensorFlow graph is incomplete: it ends before its 'versions' field")
    html = b"<!DOCTYPE html><html><body>404 Not Found</body></html>"
    assert "invalid protobuf field" in (graphdef_problem(html) or "")
    assert graphdef_problem(b'{"name": "msd-musicnn-1"}') is not None
    assert graphdef_problem(b"") == "not a TensorFlow graph: it has no nodes"
