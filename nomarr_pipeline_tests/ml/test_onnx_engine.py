"""ONNX Runtime beside essentia-tensorflow: the same model gives the same outputs on either
engine, a head may run on another engine than its backbone, and a broken ``.onnx`` is handled
as a broken ``.pb`` is (on the real MSD-MusiCNN weights where they are present)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest

from nomarr_pipeline.calibration.generation import calibrate_head
from nomarr_pipeline.ml.analysis import analyze, head_version
from nomarr_pipeline.ml.audio import load_audio
from nomarr_pipeline.ml.demo_models import write_demo_models
from nomarr_pipeline.ml.discovery import Head, discover_models, engine_of
from nomarr_pipeline.ml.fetch import fetch_models
from nomarr_pipeline.ml.inference import HeadOutcome, ModelSession
from nomarr_pipeline.ml.listing import models_listing
from nomarr_pipeline.ml.onnx_engine import PROVIDERS_ENV, THREADS_ENV, OnnxNetwork, providers
from nomarr_pipeline.ml.onnx_graph import OnnxGraphBuilder
from nomarr_pipeline.settings import SettingError, inference_engine
from nomarr_pipeline.store import open_store
from nomarr_pipeline_tests.ml.audio_fixtures import AUDIO_FORMATS, make_audio
from nomarr_pipeline_tests.ml.demo_heads import write_demo_head
from nomarr_pipeline_tests.ml.model_server import ModelSite, publish, serve
from nomarr_pipeline_tests.store_dump import library_files

ATOL = 1e-5
HAPPY = "effnet-discogs-effnet-1:mood_happy"
SAD = "effnet-discogs-effnet-1:mood_sad"
MUSICNN_HEAD = "mood_sad-msd-musicnn-1"


def _only_head(folder: Path, engine: str) -> Head:
    catalog = discover_models(folder, engine=engine)
    assert not catalog.problems, catalog.problems
    (head,) = catalog.heads
    return head


def test_real_weights_give_the_same_outputs_on_both_engines_for_every_format(
    real_models_both: Path, audio_by_format: dict[str, Path]
) -> None:
    heads = {engine: _only_head(real_models_both, engine) for engine in ("tensorflow", "onnx")}
    assert [head.engine for head in heads.values()] == ["tensorflow", "onnx"]
    # One model whichever engine runs it: same partition, same version (no re-analysis).
    assert heads["onnx"].partition_key == heads["tensorflow"].partition_key
    assert heads["onnx"].tagger_version == heads["tensorflow"].tagger_version
    sessions = {engine: ModelSession() for engine in heads}
    for suffix, path in audio_by_format.items():
        audio = load_audio(path)
        passes = {e: sessions[e].run_backbone(heads[e].backbone, audio) for e in heads}
        pooled = {e: sessions[e].head_outcome(heads[e], passes[e]) for e in heads}
        tf, ort = passes["tensorflow"], passes["onnx"]
        assert tf.embeddings.shape == ort.embeddings.shape and tf.embeddings.shape[1] == 200, suffix
        np.testing.assert_allclose(ort.embeddings, tf.embeddings, rtol=0, atol=ATOL, err_msg=suffix)
        np.testing.assert_allclose(ort.predictions, tf.predictions, rtol=0, atol=ATOL, err_msg=suffix)
        assert pooled["onnx"].error is None and pooled["tensorflow"].error is None
        np.testing.assert_allclose(pooled["onnx"].values, pooled["tensorflow"].values, rtol=0, atol=ATOL)
        np.testing.assert_allclose(pooled["onnx"].stds, pooled["tensorflow"].stds, rtol=0, atol=ATOL)


def _linked(folder: Path, sources: list[Path]) -> Path:
    folder.mkdir()
    for source in sources:
        (folder / source.name).symlink_to(source)
    return folder


def test_a_head_runs_on_another_engine_than_its_backbone(
    real_models_both: Path, tmp_path: Path, audio_by_format: dict[str, Path]
) -> None:
    generated = tmp_path / "generated"
    write_demo_head(generated, MUSICNN_HEAD, ("non_sad", "sad"), onnx=True)
    backbone = {suffix: real_models_both / f"msd-musicnn-1{suffix}" for suffix in (".pb", ".onnx")}
    head = {suffix: generated / f"{MUSICNN_HEAD}{suffix}" for suffix in (".pb", ".onnx")}
    json_files = [real_models_both / "msd-musicnn-1.json", generated / f"{MUSICNN_HEAD}.json"]
    layouts = {  # what NOMARR_INFERENCE_ENGINE=auto makes of each folder
        "tensorflow": [backbone[".pb"], head[".pb"]],
        "onnx+tensorflow": [backbone[".onnx"], head[".pb"]],
        "tensorflow+onnx": [backbone[".pb"], head[".onnx"]],
        "onnx": [backbone[".onnx"], head[".onnx"]],
    }
    audio = load_audio(audio_by_format[".flac"])
    outcomes: dict[str, HeadOutcome] = {}
    for name, files in layouts.items():
        catalog = discover_models(_linked(tmp_path / name, [*files, *json_files]), engine="auto")
        assert not catalog.problems, catalog.problems
        (sad,) = [h for h in catalog.heads if not h.autotagging]
        assert (sad.backbone.engine, sad.engine) == (engine_of(files[0]), engine_of(files[1]))
        assert sad.engines == "+".join(sorted({sad.backbone.engine, sad.engine}))
        (outcomes[name],) = ModelSession().analyze_audio(audio, [sad])
    reference = outcomes["tensorflow"]
    assert reference.error is None and reference.patches > 1
    for name, outcome in outcomes.items():
        assert outcome.error is None, name
        np.testing.assert_allclose(outcome.values, reference.values, rtol=0, atol=ATOL, err_msg=name)
        np.testing.assert_allclose(outcome.stds, reference.stds, rtol=0, atol=ATOL, err_msg=name)


def test_a_library_analysed_on_each_engine_gets_the_same_calibration(
    real_models_both: Path, tmp_path: Path
) -> None:
    root = tmp_path / "music"
    names = [f"track{seed}{suffix}" for seed, suffix in enumerate(AUDIO_FORMATS)]
    for seed, name in enumerate(names):
        make_audio(root / name, 6.0, seed=seed)
    calibrations = {}
    for engine in ("tensorflow", "onnx"):
        head = _only_head(real_models_both, engine)
        store = open_store(f"sqlite:///{tmp_path / engine}.db")
        try:
            store.ensure_library({"_key": "lib", "name": "lib", "root_path": str(root)})
            store.upsert_files([{"_key": hashlib.sha1(n.encode()).hexdigest(), "library_id": "lib",
                                 "path": str(root / n), "size": 1, "mtime_ns": 1} for n in names])
            reports = analyze(store, [head], processes=1, file_timeout_s=120)
            assert reports[head.partition_key].analysed == len(names), reports
            assert reports[head.partition_key].engines == engine
            files = library_files(store, "lib")
            assert {doc["analysis_engine"] for doc in files} == {engine}
            other = _only_head(real_models_both, "onnx" if engine == "tensorflow" else "tensorflow")
            # Switching engines: the library is current for the model on the other engine too.
            assert store.count_files_needing_analysis(head_version(other)) == 0
            report, _ = calibrate_head(store, head, now=1_000)
            calibrations[engine] = {(r.label, r.p5, r.p95, r.n) for r in report.labels}
        finally:
            store.close()
    assert len(calibrations["onnx"]) == 50
    assert calibrations["onnx"] == calibrations["tensorflow"]


# ---- choosing the engine ---------------------------------------------------------------------
def test_the_engine_setting_is_checked_and_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_demo_models(tmp_path / "both", heads=("mood_happy-discogs-effnet-1",), onnx=True)
    write_demo_models(tmp_path / "pb", heads=("mood_happy-discogs-effnet-1",))
    monkeypatch.delenv("NOMARR_INFERENCE_ENGINE", raising=False)
    assert inference_engine() == "auto"
    assert {h.engine for h in discover_models(tmp_path / "both").heads} == {"onnx"}
    assert {h.engine for h in discover_models(tmp_path / "pb").heads} == {"tensorflow"}
    monkeypatch.setenv("NOMARR_INFERENCE_ENGINE", "TensorFlow")
    assert {h.engine for h in discover_models(tmp_path / "both").heads} == {"tensorflow"}
    monkeypatch.setenv("NOMARR_INFERENCE_ENGINE", "onnx")
    strict = discover_models(tmp_path / "pb")
    assert not strict.heads
    assert {p.message for p in strict.problems} == {
        "it has no discogs-effnet-bs64-1.onnx for ONNX Runtime",
        "it has no mood_happy-discogs-effnet-1.onnx for ONNX Runtime",
        "it has no msd-musicnn-1.onnx for ONNX Runtime",
    }
    assert {p.fix for p in strict.problems} == {
        "set NOMARR_INFERENCE_ENGINE=auto to run its .pb on TensorFlow"}
    monkeypatch.setenv("NOMARR_INFERENCE_ENGINE", "tflite")
    with pytest.raises(SettingError, match="NOMARR_INFERENCE_ENGINE is 'tflite', not an") as error:
        inference_engine()
    assert error.value.next_step == (
        "set NOMARR_INFERENCE_ENGINE to auto (ONNX Runtime where an .onnx exists), onnx or tensorflow")


# ---- broken .onnx files ----------------------------------------------------------------------
def _narrow_head(path: Path) -> None:
    """An .onnx whose head outputs 3 values where its JSON lists 2 labels."""
    graph = OnnxGraphBuilder()
    features = graph.placeholder("model/Placeholder", [-1, 1280])
    logits = graph.dense("model/dense", features, np.full((1280, 3), 0.01), np.zeros(3))
    graph.unary("model/Softmax", "Softmax", logits)
    graph.write(path)


def _too_new_opset(path: Path) -> None:
    model = onnx.load(str(path))
    model.opset_import[0].version = 99
    path.write_bytes(model.SerializeToString())


BREAKAGES = {
    "random bytes": lambda path: path.write_bytes(np.random.default_rng(7).bytes(40_000)),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "wrong width": _narrow_head,
    "opset too new": _too_new_opset,
}
# What `models list` says of each without running it (an opset shows only when it is loaded).
LISTED = {"random bytes": "unreadable .onnx", "truncated": "unreadable .onnx",
          "wrong width": "the .onnx output 'model/Softmax' is 3 wide, the JSON says 2", "opset too new": None}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_onnx_fails_its_head_only(
    breakage: str, tmp_path: Path, audio_by_format: dict[str, Path]
) -> None:
    broken_folder = tmp_path / "models"
    write_demo_models(broken_folder, heads=("mood_happy-discogs-effnet-1",), onnx=True)
    write_demo_head(broken_folder, "mood_sad-discogs-effnet-1", ("sad", "non_sad"), onnx=True)
    BREAKAGES[breakage](broken_folder / "mood_sad-discogs-effnet-1.onnx")
    catalog = discover_models(broken_folder, engine="auto")
    assert not catalog.problems
    heads, _ = catalog.select([HAPPY, SAD])
    assert {h.engine for h in heads} == {"onnx"}
    session = ModelSession()
    for path in list(audio_by_format.values())[:2]:
        outcomes = {o.partition_key: o for o in session.analyze_file(path, heads).outcomes}
        assert outcomes[HAPPY].error is None and len(outcomes[HAPPY].values) == 2
        sad = outcomes[SAD]
        assert sad.error is not None and sad.model_fault is not None and not sad.values
        if breakage == "wrong width":
            assert sad.error == (f"head {SAD}: it outputs [patches, 3] values, but its JSON lists 2 "
                                 "labels: [patches, 2] expected")
        else:
            assert sad.error.startswith(f"head {SAD}: cannot load mood_sad-discogs-effnet-1.onnx: ")
    problems = [line for line in models_listing(catalog, broken_folder)
                if "mood_sad-discogs-effnet-1.onnx: " in line]
    if LISTED[breakage] is None:
        assert problems == []
    else:
        (problem,) = problems
        assert problem.startswith(f"  mood_sad-discogs-effnet-1.onnx: {LISTED[breakage]}")


def test_a_broken_onnx_stops_its_head_and_the_others_are_analysed(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    write_demo_models(folder, heads=("mood_happy-discogs-effnet-1",), onnx=True)
    write_demo_head(folder, "mood_sad-discogs-effnet-1", ("sad", "non_sad"), onnx=True)
    (folder / "mood_sad-discogs-effnet-1.onnx").write_bytes(b"\x08\x07garbage" * 1000)
    root = tmp_path / "music"
    names = [f"track{i}.wav" for i in range(5)]
    for seed, name in enumerate(names):
        make_audio(root / name, 3.0, seed=seed)
    heads, _ = discover_models(folder, engine="auto").select([HAPPY, SAD])
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        store.ensure_library({"_key": "lib", "name": "lib", "root_path": str(root)})
        store.upsert_files([{"_key": name, "library_id": "lib", "path": str(root / name), "size": 1,
                             "mtime_ns": 1} for name in names])
        reports = analyze(store, heads, processes=1, file_timeout_s=120)
        assert reports[HAPPY].analysed == len(names) and reports[HAPPY].failed == 0
        assert reports[SAD].analysed == 0 and reports[SAD].failed == 3  # stopped after 3 files
        assert "cannot load mood_sad-discogs-effnet-1.onnx" in (reports[SAD].broken or "")
        assert {doc["analysis_engine"] for doc in library_files(store, "lib")} == {"onnx"}
    finally:
        store.close()


def test_models_list_shows_engines_and_flags_an_onnx_that_disagrees_with_its_json(tmp_path: Path) -> None:
    write_demo_models(tmp_path, heads=("mood_happy-discogs-effnet-1", "mood_sad-msd-musicnn-1"), onnx=True)
    write_demo_head(tmp_path, "mood_party-discogs-effnet-1", ("party", "non_party"), onnx=True)
    _narrow_head(tmp_path / "mood_party-discogs-effnet-1.onnx")
    (tmp_path / "mood_sad-msd-musicnn-1.onnx").unlink()  # its .pb runs on TensorFlow
    (tmp_path / "discogs-effnet-bs64-1.onnx").write_bytes(b"not onnx")

    lines = models_listing(discover_models(tmp_path, engine="auto"), tmp_path)

    assert lines[0] == f"models folder {tmp_path}: 2 backbones, 3 heads, 2 problems"
    assert "  msd-musicnn-1  [musicnn, onnx]  msd-musicnn-1.onnx" in lines
    assert "  effnet-discogs-effnet-1:mood_happy  (2 labels, onnx)" in lines
    assert "  musicnn-msd-musicnn-1:mood_sad  (2 labels, onnx+tensorflow)" in lines
    problems = lines[lines.index("problems:") + 1:]
    assert problems[0].startswith("  discogs-effnet-bs64-1.onnx: unreadable .onnx: DecodeError")
    assert problems[2] == ("  mood_party-discogs-effnet-1.onnx: the .onnx output 'model/Softmax' is 3 wide, "
                           "the JSON says 2; it fails on ONNX Runtime")
    assert problems[3] == ("      next: replace the .onnx with Essentia's, or delete it to run "
                           "mood_party-discogs-effnet-1.pb on TensorFlow")


def test_fetch_takes_the_published_onnx_that_agrees_with_its_json(tmp_path: Path) -> None:
    published = tmp_path / "published"
    write_demo_models(published, heads=("mood_happy-discogs-effnet-1",), onnx=True)
    _narrow_head(published / "mood_happy-discogs-effnet-1.onnx")  # disagrees with its JSON
    (published / "msd-musicnn-1.onnx").unlink()  # not published
    site = ModelSite()
    publish(site, published)
    dest = tmp_path / "models"
    with serve(site) as running:
        report = fetch_models(["mood_happy-discogs-effnet-1", "msd-musicnn-1"], dest, base_url=running.url)
    assert report.fetched == ["discogs-effnet-bs64-1", "mood_happy-discogs-effnet-1", "msd-musicnn-1"]
    effnet = "discogs-effnet-bs64-1.onnx"
    assert (dest / effnet).read_bytes() == (published / effnet).read_bytes()
    assert not (dest / "mood_happy-discogs-effnet-1.onnx").exists()
    assert not (dest / "msd-musicnn-1.onnx").exists()
    assert report.notes == [
        "mood_happy-discogs-effnet-1.onnx not kept: the .onnx output 'model/Softmax' is 3 wide, the JSON "
        "says 2; mood_happy-discogs-effnet-1.pb runs on TensorFlow"]
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no temporary file left
    catalog = discover_models(dest, engine="auto")
    assert {b.name: b.engine for b in catalog.backbones} == {
        "discogs-effnet-bs64-1": "onnx", "msd-musicnn-1": "tensorflow"}
    happy = catalog.head(HAPPY)
    assert happy is not None and happy.engines == "onnx+tensorflow"


def test_threads_and_providers_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_demo_models(tmp_path, heads=("mood_happy-discogs-effnet-1",), onnx=True)
    monkeypatch.setenv(THREADS_ENV, "1")
    monkeypatch.setenv(PROVIDERS_ENV, " AzureExecutionProvider, NoSuchProvider ,CUDAExecutionProvider")
    network = OnnxNetwork(tmp_path / "mood_happy-discogs-effnet-1.onnx", "model/Placeholder",
                          ["model/Softmax"])
    session = network._session
    assert session.get_session_options().intra_op_num_threads == 1
    # Those this build has, in order; the CPU always last (CUDA only with onnxruntime-gpu).
    assert session.get_providers() == ["AzureExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.delenv(PROVIDERS_ENV)
    assert providers() == ["CPUExecutionProvider"]
    (values,) = network(np.ones((3, 1280), np.float32))
    assert values.shape == (3, 2)
