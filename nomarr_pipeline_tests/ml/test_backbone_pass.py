"""One backbone pass gives what Essentia's own algorithms give, output for output.

Generated models for the patch arithmetic over many audio lengths; the real MSD-MusiCNN
weights (when present) for the pipeline's pooled tags against a direct Essentia call.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from nomarr_pipeline.ml.backbone_pass import BackbonePass
from nomarr_pipeline.ml.demo_models import write_demo_models
from nomarr_pipeline.ml.discovery import ModelCatalog, discover_models
from nomarr_pipeline.ml.inference import ModelSession
from nomarr_pipeline.ml.pooling import pool_patches
from nomarr_pipeline.tagging.keys import score_keys
from nomarr_pipeline_tests.ml.audio_fixtures import make_audio, synthesize
from nomarr_pipeline_tests.tagging.test_keys import parse_score_key

# Samples at 16 kHz. Random lengths plus the ones where Essentia's effnet patch-count
# estimate keeps one patch fewer than the frames allow (111719, 175154, 175184) or none
# at all (32512: 128 frames, estimated 127).
LENGTHS = (16000, 32512, 33000, 48000, 50000, 96000, 111719, 160000, 175154, 175184,
           256 * 330, 256 * 331 + 1, 400000)


def _essentia_outputs(backbone_path: Path, family: str, node: str, audio: np.ndarray) -> np.ndarray:
    import essentia.standard as es

    if family == "effnet":
        algorithm = es.TensorflowPredictEffnetDiscogs(graphFilename=str(backbone_path), output=node)
    else:
        algorithm = es.TensorflowPredictMusiCNN(graphFilename=str(backbone_path), output=node)
    return np.asarray(algorithm(audio), dtype=np.float32)


@pytest.mark.parametrize("family", ["effnet", "musicnn"])
def test_one_pass_equals_essentia_for_every_length(catalog: ModelCatalog, family: str) -> None:
    (backbone,) = [b for b in catalog.backbones if b.family == family]
    assert backbone.predictions_output is not None
    one_pass = BackbonePass(backbone)
    for samples in LENGTHS:
        audio = synthesize(samples / 16000, seed=samples, sample_rate=16000)[:samples]
        outputs = one_pass(audio)
        embeddings = _essentia_outputs(backbone.graph_path, family, backbone.embedding_output, audio)
        predictions = _essentia_outputs(backbone.graph_path, family, backbone.predictions_output, audio)
        if embeddings.size == 0:
            assert outputs.embeddings.shape[0] == 0, samples
            continue
        assert outputs.predictions is not None
        assert np.array_equal(outputs.embeddings, embeddings), samples
        assert np.array_equal(outputs.predictions, predictions), samples


def test_short_audio_gives_no_patch_and_no_crash(catalog: ModelCatalog) -> None:
    for backbone in catalog.backbones:
        outputs = BackbonePass(backbone)(synthesize(1.0, seed=1, sample_rate=16000))
        assert outputs.embeddings.shape[0] == 0


def test_a_pure_feature_extractor_fetches_embeddings_only(tmp_path: Path) -> None:
    write_demo_models(tmp_path, heads=())
    (backbone,) = [b for b in discover_models(tmp_path).backbones if b.family == "musicnn"]
    assert backbone.predictions_output is None
    outputs = BackbonePass(backbone)(synthesize(4.0, seed=2, sample_rate=16000))
    assert outputs.predictions is None and outputs.embeddings.shape == (1, 200)


# ---- the real MSD-MusiCNN weights ---------------------------------------------------------
MSD_KEY = "musicnn-msd-musicnn-1:msd-musicnn"


@pytest.fixture(scope="module")
def real_catalog(real_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelCatalog:
    """The real msd-musicnn-1 (linked, never copied) plus a generated head on its embeddings."""
    models = tmp_path_factory.mktemp("real-models")
    write_demo_models(models, heads=("mood_sad-msd-musicnn-1",))
    for suffix in (".pb", ".json"):
        (models / f"msd-musicnn-1{suffix}").unlink()
        (models / f"msd-musicnn-1{suffix}").symlink_to(real_models_dir / f"msd-musicnn-1{suffix}")
    catalog = discover_models(models)
    assert not catalog.problems, catalog.problems
    return catalog


def test_real_msd_musicnn_is_a_head_with_its_fifty_tags(real_catalog: ModelCatalog) -> None:
    head = real_catalog.head(MSD_KEY)
    assert head is not None and head.autotagging
    assert len(head.labels) == 50
    assert (head.labels[0], head.labels[5], head.labels[33]) == ("rock", "female vocalists", "Hip-Hop")
    assert head.output_node == "model/Sigmoid"
    # Every label gives a tag key that reads back to itself, and no two keys differ only
    # by case (Vorbis comment names are case-insensitive).
    names = score_keys("raw", head.model_key, head.head_name, tuple(head.labels))
    keys = [names[label] for label in head.labels]
    assert [parse_score_key(key)[3] for key in keys] == list(head.labels)
    assert len({key.lower() for key in keys}) == len(keys)


@pytest.mark.parametrize("seed", [0, 1])
def test_real_weights_pooled_tags_equal_a_direct_essentia_call(
    real_catalog: ModelCatalog, tmp_path: Path, seed: int,
    counted_session: tuple[ModelSession, Counter[str]],
) -> None:
    import essentia.standard as es

    path = make_audio(tmp_path / f"track{seed}.flac", 12.0, seed=seed)
    own = real_catalog.head(MSD_KEY)
    sad = real_catalog.head("musicnn-msd-musicnn-1:mood_sad")
    assert own is not None and sad is not None

    audio = es.MonoLoader(filename=str(path), sampleRate=16000, resampleQuality=4)()
    graph = str(own.backbone.graph_path)
    tags = es.TensorflowPredictMusiCNN(graphFilename=graph, output="model/Sigmoid")(audio)
    embeddings = es.TensorflowPredictMusiCNN(graphFilename=graph, output="model/dense/BiasAdd")(audio)
    moods = es.TensorflowPredict2D(graphFilename=str(sad.graph_path), output="model/Softmax")(embeddings)
    expected = {MSD_KEY: pool_patches(np.asarray(tags), 50),
                sad.partition_key: pool_patches(np.asarray(moods), 2)}

    session, passes = counted_session
    result = session.analyze_file(path, [own, sad])
    assert passes == {"msd-musicnn-1": 1}  # both heads from one pass
    for outcome in result.outcomes:
        assert outcome.error is None
        assert outcome.values == pytest.approx(expected[outcome.partition_key].values, abs=1e-6)
        assert outcome.stds == pytest.approx(expected[outcome.partition_key].stds, abs=1e-6)
        assert outcome.patches == expected[outcome.partition_key].patches == 7
