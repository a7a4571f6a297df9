"""Analysis orchestration against the real SQLite store and real worker processes."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from nomarr_pipeline.ml.analysis import FileProgress, _PathResolver, analyze, file_tag_key, head_version
from nomarr_pipeline.ml.discovery import ModelCatalog, discover_models
from nomarr_pipeline.store import AnalysisClaim, Store, open_store
from nomarr_pipeline_tests.ml.audio_fixtures import make_audio
from nomarr_pipeline_tests.ml.broken_models import (
    write_garbage_head,
    write_nan_head,
    write_width_mismatch_head,
)
from nomarr_pipeline_tests.ml.demo_heads import write_demo_head
from nomarr_pipeline_tests.ml.worker_faults import faulty
from nomarr_pipeline_tests.store_dump import library_files

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
    return {Path(doc["path"]).name: doc for doc in library_files(store, LIBRARY)}


def _analysis_errors(store: RecordingStore) -> dict[tuple[str, str], dict[str, Any]]:
    """(file, partition key) -> its analysis_errors document."""
    return {(e["file_id"], f"{e['model_key']}:{e['head_name']}"): e
            for page in store.iter_documents("analysis_errors") for e in page}


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
    # Audio that cannot be decoded fails the file, which stays unanalysed; audio too short
    # for a backbone fails its (file, head) pairs: a head on another backbone may still fit.
    assert all(files[n]["analyzed_at"] for n in names if n != "junk.m4a")
    assert files["junk.m4a"]["analyzed_at"] is None
    assert files["junk.m4a"]["analysis_error"].startswith("cannot decode audio")
    assert all(files[n]["analysis_error"] is None for n in names if n != "junk.m4a")
    errors = _analysis_errors(store)
    assert set(errors) == {(files["short.wav"]["_key"], key) for key in catalog.partition_keys}
    assert all(e["error"].startswith("audio too short: 1.00 s") for e in errors.values())
    assert {e["tagger_version"] for e in errors.values()} == {h.tagger_version for h in catalog.heads}

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

    # Batched: one write per batch, never per file; the run's own claims are gone.
    assert store.prediction_writes == [3 * sum(len(h.labels) for h in catalog.heads)]
    assert store.analysis_records == [5]
    assert store.release_analysis_claims("any", claimed_before_ms=2**62) == 0

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
    # batch_size=2 < 3 files: several writes; each file goes out once with all its heads.
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
    store: RecordingStore, tmp_path: Path, catalog: ModelCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "crashlib"
    names = ["one.wav", "CRASH-two.wav", "three.wav"]
    for seed, name in enumerate(names):
        make_audio(root / name, 3.0, seed=seed)
    _add_files(store, root, names)
    heads = catalog.select(["effnet-discogs-effnet-1:mood_happy"])[0]
    resolve = _PathResolver.__call__
    monkeypatch.setattr(_PathResolver, "__call__", lambda self, doc: faulty(resolve(self, doc)))
    reports = analyze(store, heads, processes=1, file_timeout_s=60)
    report = reports["effnet-discogs-effnet-1:mood_happy"]
    assert (report.analysed, report.failed) == (2, 1)
    files = _files_by_name(store)
    # A crash cannot be pinned on the file or on a model: it fails the (file, head) pairs.
    assert all(f["analysis_error"] is None for f in files.values())
    (error,) = _analysis_errors(store).values()
    assert error["file_id"] == files["CRASH-two.wav"]["_key"]
    assert error["error"] == "worker crashed (signal 11, SIGSEGV) while analysing this file"


def test_no_heads_and_bad_batch_size(store: RecordingStore) -> None:
    assert analyze(store, [], processes=1, file_timeout_s=1) == {}
    with pytest.raises(ValueError, match="batch_size"):
        analyze(store, [], processes=1, file_timeout_s=1, batch_size=0)


@pytest.fixture
def broken_models(models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The demo models plus a head with a garbage graph and one whose output is too narrow,
    discovered without ml.validation: faults that only running a model shows (what the
    checks before a run cannot see) are stopped by analysis itself."""
    monkeypatch.setattr("nomarr_pipeline.ml.discovery.head_problem", lambda head: None)
    models = tmp_path / "broken-models"
    shutil.copytree(models_dir, models)
    write_garbage_head(models)
    write_width_mismatch_head(models)
    return models


GOOD = "effnet-discogs-effnet-1:mood_happy"
GARBAGE = "effnet-discogs-effnet-1:mood_sad"
NARROW = "effnet-discogs-effnet-1:mood_party"


def test_a_broken_model_is_stopped_and_blocks_no_file_for_other_heads(
    store: RecordingStore, tmp_path: Path, broken_models: Path, models_dir: Path
) -> None:
    root = tmp_path / "lib"
    names = [f"track{i}.wav" for i in range(6)]
    for seed, name in enumerate(names):
        make_audio(root / name, 3.0, seed=seed)
    _add_files(store, root, names)
    catalog = discover_models(broken_models)
    heads = catalog.select([GOOD, GARBAGE, NARROW])[0]

    reports = analyze(store, heads, processes=1, file_timeout_s=60)

    assert (reports[GOOD].analysed, reports[GOOD].failed, reports[GOOD].broken) == (6, 0, None)
    for key in (GARBAGE, NARROW):
        # stopped after its first three files, all failing with the same fault
        assert (reports[key].analysed, reports[key].failed) == (0, 3), key
    assert reports[GARBAGE].broken.startswith("cannot load mood_sad-discogs-effnet-1.pb")
    assert reports[NARROW].broken == ("it outputs [patches, 2] values, but its JSON lists 3 labels: "
                                      "[patches, 3] expected")
    files = _files_by_name(store)
    assert all(f["analysis_error"] is None and f["analyzed_at"] for f in files.values())
    errors = _analysis_errors(store)
    assert sorted(key for _, key in errors) == [NARROW] * 3 + [GARBAGE] * 3
    ids = [f["_key"] for f in files.values()]
    assert {t["head_name"] for t in store.file_tags_for_files(ids)} == {"mood_happy"}  # nothing stored
    assert store.count_files_with_analysis_errors([head_version(h) for h in heads]) == 3

    # A head added later analyses every file: nothing was blocked.
    write_demo_head(broken_models, "danceability-discogs-effnet-1", ("danceable", "not_danceable"))
    later = discover_models(broken_models).select(["effnet-discogs-effnet-1:danceability"])[0]
    assert analyze(store, later, processes=1, file_timeout_s=60)[later[0].partition_key].analysed == 6

    # Once the model is repaired (its bytes change), its failed files are tried again, and
    # the files it never reached.
    write_demo_head(broken_models, "mood_sad-discogs-effnet-1", ("sad", "non_sad"))
    repaired = discover_models(broken_models).select([GARBAGE, NARROW])[0]
    again = analyze(store, repaired, processes=1, file_timeout_s=60)
    assert (again[GARBAGE].analysed, again[GARBAGE].failed, again[GARBAGE].broken) == (6, 0, None)
    # still broken, remembered: tried on no other file, its fault as it was stored
    assert (again[NARROW].analysed, again[NARROW].failed) == (0, 0)
    assert again[NARROW].broken == reports[NARROW].broken
    assert sorted(key for _, key in _analysis_errors(store)) == [NARROW] * 3


def test_a_nan_head_is_a_per_file_error_and_never_stored(
    store: RecordingStore, tmp_path: Path, models_dir: Path
) -> None:
    models = tmp_path / "nan-models"
    shutil.copytree(models_dir, models)
    write_nan_head(models)
    root = tmp_path / "lib"
    make_audio(root / "one.wav", 3.0, seed=1)
    _add_files(store, root, ["one.wav"])
    heads = discover_models(models).select([GOOD, "effnet-discogs-effnet-1:broken"])[0]
    reports = analyze(store, heads, processes=1, file_timeout_s=60)
    assert reports["effnet-discogs-effnet-1:broken"].failed == 1
    assert reports["effnet-discogs-effnet-1:broken"].broken is None  # one file says nothing yet
    (error,) = _analysis_errors(store).values()
    assert error["error"].endswith("NaN/infinite values; nothing stored")
    (file,) = _files_by_name(store).values()
    assert {t["head_name"] for t in store.file_tags_for_files([file["_key"]])} == {"mood_happy"}


def test_shards_of_one_run_share_the_files_without_overlap(
    store: RecordingStore, tmp_path: Path, catalog: ModelCatalog
) -> None:
    root = tmp_path / "lib"
    names = [f"track{i}.wav" for i in range(8)]
    for seed, name in enumerate(names):
        make_audio(root / name, 3.0, seed=seed)
    _add_files(store, root, names)
    heads = catalog.select([GOOD])[0]
    claims = [AnalysisClaim("run-1", shard) for shard in range(2)]
    done: dict[int, list[str]] = {0: [], 1: []}

    def shard(index: int) -> None:
        analyze(store, heads, processes=1, file_timeout_s=60, claim=claims[index], shards=2,
                progress=lambda p: done[index].append(p.file_id))

    threads = [threading.Thread(target=shard, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(done[0] + done[1]) == sorted(f["_key"] for f in _files_by_name(store).values())
    assert store.prediction_writes and sum(store.prediction_writes) == 8 * 2  # each file once
    # a shard that restarts takes back only its own unfinished files: none are left
    assert store.reclaim_files_for_analysis([head_version(heads[0])], claims[0]) == []
