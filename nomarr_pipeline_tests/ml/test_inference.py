"""Decoding, inference and pooling with the real Essentia (in this process)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from nomarr_pipeline.ml.audio import AudioDecodeError, is_ogg_opus, load_audio
from nomarr_pipeline.ml.discovery import ModelCatalog, discover_models
from nomarr_pipeline.ml.inference import ModelSession
from nomarr_pipeline.ml.pooling import NonFiniteOutputError, pool_patches, trimmed_mean
from nomarr_pipeline_tests.ml.audio_fixtures import AUDIO_FORMATS, make_audio
from nomarr_pipeline_tests.ml.broken_models import (
    write_garbage_head,
    write_nan_head,
    write_width_mismatch_head,
)


# ---- pooling -------------------------------------------------------------------------
def test_trimmed_mean_drops_ten_percent_each_side() -> None:
    values = np.arange(20, dtype=float).reshape(20, 1)
    values[0, 0], values[19, 0] = -1000.0, 1000.0
    # 20 patches → 2 dropped at each end: rows 2..17
    assert trimmed_mean(values)[0] == pytest.approx(np.arange(2, 18).mean())


def test_trimmed_mean_with_few_patches_is_the_mean() -> None:
    values = np.array([[0.1, 1.0], [0.3, 2.0], [0.8, 6.0]])
    assert trimmed_mean(values) == pytest.approx(values.mean(axis=0))


def test_pool_patches_keeps_std_and_label_order() -> None:
    values = np.array([[0.2, 0.8], [0.4, 0.6]])
    pooled = pool_patches(values, 2)
    assert pooled.values == pytest.approx((0.3, 0.7))
    assert pooled.stds == pytest.approx((0.1, 0.1))
    assert pooled.patches == 2
    assert all(type(v) is float for v in pooled.values + pooled.stds)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_pool_patches_rejects_non_finite(bad: float) -> None:
    with pytest.raises(NonFiniteOutputError, match="NaN/infinite"):
        pool_patches(np.array([[0.1, bad]]), 2)


def test_pool_patches_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="expected"):
        pool_patches(np.zeros((3, 4)), 2)


# ---- audio ---------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", AUDIO_FORMATS)
def test_every_format_decodes_at_16k(audio_by_format: dict[str, Path], suffix: str) -> None:
    samples = load_audio(audio_by_format[suffix])
    assert samples.dtype == np.float32
    assert abs(samples.size / 16000 - 6.0) < 0.1


def test_garbage_file_is_a_decode_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"not audio at all" * 100)
    with pytest.raises(AudioDecodeError, match=r"Essentia could not decode.*ffmpeg could not"):
        load_audio(junk)
    with pytest.raises(AudioDecodeError, match="ffmpeg could not decode"):
        load_audio(junk.rename(tmp_path / "junk.opus"))


def test_opus_in_an_ogg_container_decodes(tmp_path: Path, audio_by_format: dict[str, Path]) -> None:
    """MonoLoader cannot decode Opus whatever the extension; ffmpeg takes over."""
    ogg_opus = tmp_path / "opus-inside.ogg"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(audio_by_format[".wav"]), "-c:a",
                    "libopus", "-ar", "48000", str(ogg_opus)], check=True)
    samples = load_audio(ogg_opus)
    assert abs(samples.size / 16000 - 6.0) < 0.1


def test_opus_in_ogg_is_recognised_before_essentia_sees_it(
    tmp_path: Path, audio_by_format: dict[str, Path]
) -> None:
    """MonoLoader sometimes aborts the process on Opus in .ogg, so it must never get one."""
    ogg_opus = tmp_path / "opus-inside.ogg"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(audio_by_format[".wav"]), "-c:a",
                    "libopus", "-ar", "48000", str(ogg_opus)], check=True)
    assert is_ogg_opus(ogg_opus) and is_ogg_opus(audio_by_format[".opus"])
    assert not any(is_ogg_opus(audio_by_format[suffix]) for suffix in (".ogg", ".flac", ".mp3"))
    assert not is_ogg_opus(tmp_path / "missing.ogg")


def test_missing_file_is_a_decode_error(tmp_path: Path) -> None:
    with pytest.raises(AudioDecodeError, match="file not found"):
        load_audio(tmp_path / "gone.flac")


# ---- inference -----------------------------------------------------------------------
@pytest.mark.parametrize("suffix", AUDIO_FORMATS)
def test_every_head_kind_on_every_format(
    catalog: ModelCatalog, audio_by_format: dict[str, Path], suffix: str
) -> None:
    result = ModelSession().analyze_file(audio_by_format[suffix], catalog.heads)
    assert len(result.outcomes) == len(catalog.heads)
    for outcome in result.outcomes:
        head = catalog.head(outcome.partition_key)
        assert head is not None
        assert outcome.error is None, outcome.error
        assert len(outcome.values) == len(outcome.stds) == len(head.labels)
        assert all(np.isfinite(outcome.values)) and all(np.isfinite(outcome.stds))
        # 6 s: 5 effnet / 3 musicnn patches (lossy codecs may shave a few ms: one fewer)
        expected = 3 if head.backbone.family == "musicnn" else 5
        assert expected - 1 <= outcome.patches <= expected
        if head.kind == "softmax":
            assert sum(outcome.values) == pytest.approx(1.0, abs=1e-5)


def test_pooled_numbers_match_a_direct_essentia_call(
    catalog: ModelCatalog, audio_by_format: dict[str, Path]
) -> None:
    import essentia.standard as es

    path = audio_by_format[".flac"]
    head = catalog.head("effnet-discogs-effnet-1:mtg_jamendo_moodtheme")
    assert head is not None
    audio = es.MonoLoader(filename=str(path), sampleRate=16000, resampleQuality=4)()
    embeddings = es.TensorflowPredictEffnetDiscogs(
        graphFilename=str(head.backbone.graph_path), output="PartitionedCall:1")(audio)
    patches = np.asarray(es.TensorflowPredict2D(
        graphFilename=str(head.graph_path), output="model/Sigmoid")(embeddings), dtype=float)
    cut = int(len(patches) * 0.1)
    expected = np.sort(patches, axis=0)[cut: len(patches) - cut].mean(axis=0)

    (outcome,) = ModelSession().analyze_file(path, [head]).outcomes
    assert outcome.values == pytest.approx(expected, abs=1e-6)
    assert outcome.stds == pytest.approx(patches.std(axis=0), abs=1e-6)


def test_one_backbone_pass_per_file_however_many_heads(
    catalog: ModelCatalog, audio_by_format: dict[str, Path],
    counted_session: tuple[ModelSession, Counter[str]],
) -> None:
    session, passes = counted_session
    for count, path in enumerate(audio_by_format.values(), 1):
        session.analyze_file(path, catalog.heads)
        assert passes == {"discogs-effnet-bs64-1": count, "msd-musicnn-1": count}


def test_models_are_loaded_once_per_session(
    catalog: ModelCatalog, audio_by_format: dict[str, Path]
) -> None:
    session = ModelSession()
    session.analyze_file(audio_by_format[".wav"], catalog.heads)
    loaded = (dict(session._backbones), dict(session._heads))
    session.analyze_file(audio_by_format[".ogg"], catalog.heads)
    assert (session._backbones, session._heads) == loaded


@pytest.mark.parametrize("seconds", [0.5, 1.5, 2.0])
def test_short_audio_is_a_clear_error(
    catalog: ModelCatalog, tmp_path: Path, seconds: float
) -> None:
    path = make_audio(tmp_path / "short.wav", seconds, seed=3)
    outcomes = ModelSession().analyze_file(path, catalog.heads).outcomes
    for outcome in outcomes:
        assert outcome.values == ()
        assert outcome.error is not None
        assert outcome.error.startswith(f"audio too short: {seconds:.2f} s gives no analysis patch")


def test_audio_long_enough_for_effnet_but_not_musicnn(
    catalog: ModelCatalog, tmp_path: Path
) -> None:
    path = make_audio(tmp_path / "medium.wav", 2.5, seed=4)
    outcomes = {o.partition_key: o for o in ModelSession().analyze_file(path, catalog.heads).outcomes}
    assert outcomes["effnet-discogs-effnet-1:mood_happy"].error is None
    error = outcomes["musicnn-msd-musicnn-1:mood_sad"].error
    assert error is not None and "needs at least 2.99 s" in error


def test_undecodable_file_fails_every_head(catalog: ModelCatalog, tmp_path: Path) -> None:
    junk = tmp_path / "junk.flac"
    junk.write_bytes(b"\x00" * 4096)
    outcomes = ModelSession().analyze_file(junk, catalog.heads).outcomes
    assert all(o.error and o.error.startswith("cannot decode audio") for o in outcomes)


def test_nan_output_fails_only_that_head(
    models_dir: Path, tmp_path: Path, audio_by_format: dict[str, Path]
) -> None:
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    write_nan_head(models)
    catalog = discover_models(models)
    outcomes = {o.partition_key: o for o in
                ModelSession().analyze_file(audio_by_format[".wav"], catalog.heads).outcomes}
    broken = outcomes.pop("effnet-discogs-effnet-1:broken")
    assert broken.values == ()
    assert broken.error == ("head effnet-discogs-effnet-1:broken: model output has 10 "
                            "NaN/infinite values; nothing stored")
    assert broken.model_fault == "it outputs NaN/infinite values"
    assert all(o.error is None and o.model_fault is None for o in outcomes.values())


def test_a_garbage_graph_and_a_wrong_width_are_model_faults_of_their_head(
    models_dir: Path, tmp_path: Path, audio_by_format: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without ml.validation, which would keep both from running: what running them shows.
    monkeypatch.setattr("nomarr_pipeline.ml.discovery.head_problem", lambda head: None)
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    write_garbage_head(models)
    write_width_mismatch_head(models)
    catalog = discover_models(models)
    assert not catalog.problems  # both pass discovery
    session = ModelSession()
    seen = []
    for path in (audio_by_format[".wav"], audio_by_format[".flac"]):
        outcomes = {o.partition_key: o for o in session.analyze_file(path, catalog.heads).outcomes}
        garbage = outcomes.pop("effnet-discogs-effnet-1:mood_sad")
        wide = outcomes.pop("effnet-discogs-effnet-1:mood_party")
        assert all(o.error is None for o in outcomes.values())  # the other heads work
        assert garbage.model_fault is not None and garbage.model_fault.startswith(
            "cannot load mood_sad-discogs-effnet-1.pb: RuntimeError: Error while configuring")
        assert wide.model_fault == ("it outputs [patches, 2] values, but its JSON lists 3 labels: "
                                    "[patches, 3] expected")
        assert wide.error == f"head effnet-discogs-effnet-1:mood_party: {wide.model_fault}"
        seen.append((garbage.model_fault, wide.model_fault))
    assert seen[0] == seen[1]  # the same text on every file: a broken model can be told apart


def test_undecodable_audio_is_the_files_own_error(catalog: ModelCatalog, tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"\x00junk" * 500)
    result = ModelSession().analyze_file(junk, catalog.heads)
    assert result.file_error is not None and result.file_error.startswith("cannot decode audio")
    assert all(o.model_fault is None for o in result.outcomes)


def test_analysis_never_modifies_audio_files(
    catalog: ModelCatalog, audio_by_format: dict[str, Path]
) -> None:
    before = {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in audio_by_format.values()}
    session = ModelSession()
    for path in audio_by_format.values():
        session.analyze_file(path, catalog.heads)
    assert {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in audio_by_format.values()} == before
