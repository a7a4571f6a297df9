"""Analysis orchestration against the real SQLite store and real worker processes."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from nomarr_pipeline.ml.analysis import FileProgress, analyze, file_tag_key
from nomarr_pipeline.ml.discovery import ModelCatalog, discover_models
from nomarr_pipeline.ml.workers import FaultInjection
from nomarr_pipeline.store import Store, open_store
from nomarr_pipeline_tests.ml.audio_fixtures import make_audio

LIBRARY = "lib1"


class RecordingStore:
    """The real store, counting the writes that analysis makes (no behaviour changed)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.prediction_writes: list[int] = []
        self.analysis_records: list[int] = []

    def write_predictions(self, docs: Sequence[dict[str, Any]]) -> None:
        self.prediction_writes.append(len(docs))
        self._store.write_predictions(docs)

    def record_analysis(self, results: Sequence[dict[str, Any]]) -> None:
        self.analysis_records.append(len(results))
        self._store.record_analysis(results)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RecordingStore]:
    real = open_store(f"sqlite:///{tmp_path / 'nomarr.db'}")
    yield RecordingStore(real)
    real.close()


def _add_files(store: RecordingStore, root: Path, names: list[str]) -> None:
    store.ensure_library({"_key": LIBRARY, "name": "test", "root_path": str(root)})
    docs = []
    for name in names:
        path = root / name
        stat = path.stat()
        docs.append({
            "_key": hashlib.sha1(name.encode()).hexdigest()[:12] + "-" + name,
            "library_id": LIBRARY,
            # the scanner stores absolute paths; a relative one is resolved from the root
            "path": name if name.startswith("rel") else str(path),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        })
    store.upsert_files(docs)


def _files_by_name(store: RecordingStore) -> dict[str, dict[str, Any]]:
    return {Path(doc["path"]).name: doc for page in store.iter_files(LIBRARY) for doc in page}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("library")
    make_audio(root / "a.mp3", 5.0, seed=11)
    make_audio(root / "rel-b.flac", 5.0, seed=12)
    make_audio(root / "c.opus", 5.0, seed=13)
    make_audio(root / "short.wav", 1.0, seed=14)
    (root / "junk.m4a").write_bytes(b"\x00junk" * 500)
    return root


def test_full_run_then_incremental_rerun(
    store: RecordingStore, library: Path, catalog: ModelCatalog
) -> None:
    names = ["a.mp3", "rel-b.flac", "c.opus", "short.wav", "junk.m4a"]
    _add_files(store, library, names)
    before = {n: ((library / n).read_bytes(), (library / n).stat().st_mtime_ns) for n in names}
    progress: list[FileProgress] = []

    reports = analyze(store, catalog.heads, processes=2, file_timeout_s=60,
                      progress=progress.append)

    assert sorted(p.path.name for p in progress) == sorted(names)  # each file sent once
    assert [p.done for p in progress] == [1, 2, 3, 4, 5]
    assert set(reports) == set(catalog.partition_keys)
    for report in reports.values():
        assert (report.analysed, report.failed, report.skipped) == (3, 2, 0)
        assert report.seconds > 0
        assert len(report.errors) == 2
    files = _files_by_name(store)
    assert all(files[n]["analyzed_at"] for n in names)
    assert files["a.mp3"]["analysis_error"] is None
    assert files["short.wav"]["analysis_error"].startswith("audio too short: 1.00 s")
    assert files["junk.m4a"]["analysis_error"].startswith("cannot decode audio")

    tags = store.file_tags_for_files([files["a.mp3"]["_key"]])
    assert len(tags) == sum(len(h.labels) for h in catalog.heads)
    happy = catalog.head("effnet-discogs-effnet-1:mood_happy")
    assert happy is not None
    by_label = {t["label"]: t for t in tags if t["head_name"] == "mood_happy"}
    assert set(by_label) == {"happy", "non_happy"}
    doc = by_label["happy"]
    file_id = files["a.mp3"]["_key"]
    assert doc["_key"] == hashlib.sha1(
        f"{file_id}|effnet-discogs-effnet-1|mood_happy|happy".encode()).hexdigest()
    assert doc["_key"] == file_tag_key(file_id, "effnet-discogs-effnet-1", "mood_happy", "happy")
    assert doc["file_id"] == file_id
    assert doc["model_key"] == "effnet-discogs-effnet-1"
    assert doc["tagger_version"] == happy.tagger_version
    assert isinstance(doc["value"], float) and 0 < doc["value"] < 1
    assert isinstance(doc["std"], float) and doc["std"] >= 0
    assert doc["calibrated_value"] is None
    assert doc["nomarr_only"] in (True, 1)
    assert not store.file_tags_for_files([files["short.wav"]["_key"]])

    # Batched: one write per batch, never per file.
    assert store.prediction_writes == [3 * sum(len(h.labels) for h in catalog.heads)]
    assert store.analysis_records == [5]

    # Re-running is a no-op.
    store.prediction_writes.clear()
    store.analysis_records.clear()
    rerun = analyze(store, catalog.heads, processes=2, file_timeout_s=60)
    assert store.prediction_writes == [] and store.analysis_records == []
    assert all((r.analysed, r.failed, r.skipped) == (0, 0, 5) for r in rerun.values())
    assert before == {n: ((library / n).read_bytes(), (library / n).stat().st_mtime_ns)
                      for n in names}


def test_changed_model_reanalyses_only_its_head_and_pages_merge(
    store: RecordingStore, library: Path, models_dir: Path, tmp_path: Path
) -> None:
    names = ["a.mp3", "rel-b.flac", "c.opus"]
    _add_files(store, library, names)
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    catalog = discover_models(models)
    happy_key, sad_key = "effnet-discogs-effnet-1:mood_happy", "musicnn-msd-musicnn-1:mood_sad"
    first = catalog.select([happy_key])[0]
    analyze(store, first, processes=2, file_timeout_s=60)

    metadata = models / "mood_happy-discogs-effnet-1.json"
    data = json.loads(metadata.read_text())
    data["description"] = "retrained"
    metadata.write_text(json.dumps(data))
    retrained = discover_models(models)
    heads = retrained.select([happy_key, sad_key, "effnet-discogs-effnet-1:danceability"])[0]
    old_version = first[0].tagger_version
    assert retrained.head(happy_key).tagger_version != old_version  # type: ignore[union-attr]

    store.prediction_writes.clear()
    progress: list[FileProgress] = []
    # batch_size=2 < 3 files: several pages per head, merged so each file goes out once.
    reports = analyze(store, heads, processes=2, file_timeout_s=60, batch_size=2,
                      progress=progress.append)
    assert sorted(p.path.name for p in progress) == sorted(names)
    assert all(r.analysed == 3 for r in reports.values())
    assert len(store.prediction_writes) >= 2  # flushed per batch
    file_ids = [doc["_key"] for doc in _files_by_name(store).values()]
    happy_tags = [t for t in store.file_tags_for_files(file_ids) if t["head_name"] == "mood_happy"]
    assert len(happy_tags) == 6  # replaced, not duplicated
    assert {t["tagger_version"] for t in happy_tags} == {
        retrained.head(happy_key).tagger_version}  # type: ignore[union-attr]


def test_a_crashing_file_does_not_stop_the_run(
    store: RecordingStore, tmp_path: Path, catalog: ModelCatalog
) -> None:
    root = tmp_path / "crashlib"
    names = ["one.wav", "CRASH-two.wav", "three.wav"]
    for seed, name in enumerate(names):
        make_audio(root / name, 3.0, seed=seed)
    _add_files(store, root, names)
    heads = catalog.select(["effnet-discogs-effnet-1:mood_happy"])[0]
    reports = analyze(store, heads, processes=1, file_timeout_s=60,
                      faults=FaultInjection(crash_marker="CRASH"))
    report = reports["effnet-discogs-effnet-1:mood_happy"]
    assert (report.analysed, report.failed) == (2, 1)
    files = _files_by_name(store)
    assert files["CRASH-two.wav"]["analysis_error"] == (
        "worker crashed (signal 11, SIGSEGV) while analysing this file")
    assert files["one.wav"]["analysis_error"] is None
    assert files["three.wav"]["analysis_error"] is None


def test_no_heads_and_bad_batch_size(store: RecordingStore) -> None:
    assert analyze(store, [], processes=1, file_timeout_s=1) == {}
    with pytest.raises(ValueError, match="batch_size"):
        analyze(store, [], processes=1, file_timeout_s=1, batch_size=0)
