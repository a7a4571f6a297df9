"""write_pending_tags against the real SQLite store and real audio files."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from nomarr_pipeline.store import Store, open_store
from nomarr_pipeline.tagging import keys, parallel
from nomarr_pipeline.tagging.batch import (
    PREVIEW_COLUMNS,
    WriteBatchStopped,
    write_pending_tags,
    write_preview_csv,
)
from nomarr_pipeline.tagging.formats import read_nom_tags, write_nom_tags
from nomarr_pipeline_tests.tagging.audio_helpers import (
    decoded_audio_hash,
    stat_of,
    temp_leftovers,
    tiny_filesystem,
)

LIB = "lib"
MODEL = "effnet-discogs-effnet-1"
TIERS = {
    "mood-strict": ["happy"],
    "mood-regular": ["happy", "party"],
    "mood-loose": ["happy", "party", "relaxed"],
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path / 'nomarr.db'}")
    yield opened
    opened.close()


def library_doc(root: Path, mode: str = "full", write_raw_scores: bool = False) -> dict[str, Any]:
    return {
        "_key": LIB,
        "name": "Test library",
        "root_path": str(root),
        "auto_write_tags": False,
        "file_write_mode": mode,
        "write_raw_scores": write_raw_scores,
    }


def predictions(file_id: str) -> list[dict[str, Any]]:
    rows = [("mood_happy", "happy", 0.8, 0.9), ("genre_discogs400", "Electronic---House", 0.25, None)]
    return [
        {
            "_key": f"{file_id}|{MODEL}|{head}|{label}",
            "file_id": file_id,
            "model_key": MODEL,
            "head_name": head,
            "label": label,
            "value": value,
            "std": 0.01,
            "calibrated_value": calibrated,
            "nomarr_only": True,
            "tagger_version": "nomarr-test-7",
        }
        for head, label, value, calibrated in rows
    ]


def register(store: Store, files: dict[str, Path], *, stat_from_disk: bool = True) -> None:
    """Scan, analysis and recalibration results for ``files`` as the other stages leave them."""
    docs = []
    for key, path in files.items():
        size, mtime_ns = stat_of(path) if stat_from_disk else (1, 1)
        docs.append({"_key": key, "library_id": LIB, "path": str(path), "size": size, "mtime_ns": mtime_ns,
                     "scanned_at": 1, "file_tags_pending": False})  # fmt: skip
    store.upsert_files(docs)
    store.write_predictions([doc for key in files for doc in predictions(key)])
    store.finish_recalibration(
        [
            {"_key": key, "calibration_hash": "h", "mood_tiers": TIERS, "file_tags_pending": True}
            for key in files
        ]
    )


def run(store: Store, root: Path | list[Path], *, has_calibration: bool = True, **kwargs: Any) -> Any:
    roots = root if isinstance(root, list) else [root]
    library = store.get_library(LIB)
    assert library is not None
    return write_pending_tags(
        store, library=library, library_roots=roots, has_calibration=has_calibration, **kwargs
    )


def file_doc(store: Store, key: str) -> dict[str, Any]:
    (doc,) = store.get_files([key])
    return doc


def test_full_batch_writes_records_and_keeps_scanner_stat(
    store: Store, make_file: Callable[..., Path], library_root: Path
) -> None:
    store.ensure_library(library_doc(library_root))
    files = {"a": make_file("mp3"), "b": make_file("flac"), "c": make_file("m4a")}
    register(store, files)
    pages: list[int] = []

    report = run(store, library_root, batch_size=2, progress=lambda r: pages.append(r.processed))

    assert (report.written, report.unchanged, report.skipped, report.failed) == (3, 0, 0, 0)
    assert pages == [2, 3]
    for key, path in files.items():
        tags = read_nom_tags(path)
        assert tags[keys.MOOD_REGULAR] == ["happy", "party"]
        assert tags[keys.calibrated_score_key(MODEL, "mood_happy", "happy")] == ["0.900000"]
        assert tags[keys.raw_score_key(MODEL, "genre_discogs400", "Electronic---House")] == ["0.250000"]
        assert keys.calibrated_score_key(MODEL, "genre_discogs400", "Electronic---House") not in tags
        assert tags[keys.VERSION] == ["nomarr-test-7"]
        doc = file_doc(store, key)
        assert doc["file_tags_pending"] is False and doc["write_error"] is None and doc["written_at"] > 0
        assert (doc["size"], doc["mtime_ns"]) == stat_of(path), (
            "the scanner must not see our write as a change"
        )

    assert run(store, library_root).processed == 0  # nothing pending any more
    store.finish_recalibration([{"_key": k, "mood_tiers": TIERS, "file_tags_pending": True} for k in files])
    again = run(store, library_root)
    assert (again.written, again.unchanged) == (0, 3)


def test_per_file_errors_are_recorded_and_the_batch_goes_on(
    store: Store, make_file: Callable[..., Path], library_root: Path
) -> None:
    store.ensure_library(library_doc(library_root))
    corrupt = library_root / "corrupt.mp3"
    corrupt.write_bytes(b"garbage, not an mp3 " * 50)
    files = {
        "a-corrupt": corrupt,
        "b-changed": make_file("ogg"),
        "c-missing": make_file("wav"),
        "d-good": make_file("opus"),
    }
    register(store, files)
    with files["b-changed"].open("ab") as handle:
        handle.write(b"\x00")  # edited by another program after the scan
    files["c-missing"].unlink()

    report = run(store, library_root)

    assert (report.written, report.skipped, report.failed) == (1, 1, 2)
    assert {e["file_id"]: e["kind"] for e in report.errors} == {
        "a-corrupt": "CorruptFileError",
        "b-changed": "FileChangedError",
        "c-missing": "MissingFileError",
    }
    for key, words in (
        ("a-corrupt", "cannot be read as audio"),
        ("b-changed", "changed on disk"),
        ("c-missing", "not found"),
    ):
        doc = file_doc(store, key)
        assert words in doc["write_error"]
        assert doc["file_tags_pending"] is True and doc["written_at"] is None
    assert file_doc(store, "d-good")["file_tags_pending"] is False
    assert keys.MOOD_STRICT in read_nom_tags(files["d-good"])


def test_mode_none_writes_nothing(store: Store, make_file: Callable[..., Path], library_root: Path) -> None:
    store.ensure_library(library_doc(library_root, mode="none"))
    path = make_file("flac")
    register(store, {"a": path})
    before = path.read_bytes()
    report = run(store, library_root)
    assert report.processed == 0
    assert path.read_bytes() == before
    assert file_doc(store, "a")["file_tags_pending"] is True


def test_minimal_without_calibration_leaves_files_pending(
    store: Store, make_file: Callable[..., Path], library_root: Path
) -> None:
    store.ensure_library(library_doc(library_root, mode="minimal", write_raw_scores=True))
    path = make_file("mp3")
    register(store, {"a": path})
    before = path.read_bytes()

    report = run(store, library_root, has_calibration=False)

    assert (report.written, report.skipped) == (0, 1)
    assert path.read_bytes() == before
    assert file_doc(store, "a")["file_tags_pending"] is True


def test_minimal_with_calibration_writes_only_mood_tiers(
    store: Store, make_file: Callable[..., Path], library_root: Path
) -> None:
    store.ensure_library(library_doc(library_root, mode="minimal"))
    path = make_file("aiff")
    write_nom_tags(
        path, {keys.raw_score_key(MODEL, "mood_happy", "happy"): "0.1"}
    )  # from an earlier full run
    register(store, {"a": path})
    report = run(store, library_root, standard_mood=True, tagger_version_of="ignored")
    assert report.written == 1
    assert set(read_nom_tags(path)) == {keys.MOOD_STRICT, keys.MOOD_REGULAR, keys.MOOD_LOOSE}


def test_full_without_calibration_writes_raw_scores_when_asked(
    store: Store, make_file: Callable[..., Path], library_root: Path
) -> None:
    store.ensure_library(library_doc(library_root, write_raw_scores=True))
    path = make_file("m4a")
    register(store, {"a": path})
    run(store, library_root, has_calibration=False, tagger_version_of=lambda preds: f"v{len(preds)}")
    assert read_nom_tags(path) == {
        keys.raw_score_key(MODEL, "mood_happy", "happy"): ["0.800000"],
        keys.raw_score_key(MODEL, "genre_discogs400", "Electronic---House"): ["0.250000"],
        keys.VERSION: ["v2"],
    }


def test_dry_run_previews_without_touching_anything(
    store: Store, make_file: Callable[..., Path], library_root: Path, tmp_path: Path
) -> None:
    store.ensure_library(library_doc(library_root))
    stale_key = keys.raw_score_key(MODEL, "old_head", "gone")
    path = make_file("flac")
    write_nom_tags(path, {stale_key: "0.500000", keys.MOOD_STRICT: ["happy"], keys.VERSION: "old"})
    register(store, {"a": path})
    before = path.read_bytes()

    report = run(store, library_root, dry_run=True)

    assert path.read_bytes() == before
    assert file_doc(store, "a")["file_tags_pending"] is True
    assert report.written == 1
    actions = {row.key: (row.current, row.proposed, row.action) for row in report.preview}
    assert actions[stale_key] == ("0.500000", None, "remove")
    assert actions[keys.MOOD_STRICT] == ("happy", "happy", "keep")
    assert actions[keys.MOOD_REGULAR] == (None, "happy; party", "add")
    assert actions[keys.VERSION] == ("old", "nomarr-test-7", "change")

    csv_path = write_preview_csv(report.preview, tmp_path / "preview.csv")
    frame = pd.read_csv(csv_path, keep_default_na=False)
    assert list(frame.columns) == list(PREVIEW_COLUMNS)
    assert len(frame) == len(report.preview)
    row = frame[frame["key"] == keys.MOOD_LOOSE].iloc[0]
    assert (row["file_id"], row["path"], row["current"], row["proposed"], row["action"]) == (
        "a",
        str(path),
        "",
        "happy; party; relaxed",
        "add",
    )


def test_full_disk_stops_the_batch_after_recording_what_was_done(
    store: Store, make_file: Callable[..., Path], library_root: Path, tmp_path: Path
) -> None:
    store.ensure_library(library_doc(library_root))
    first, last = make_file("flac", "a.flac"), make_file("flac", "c.flac")
    last_before = last.read_bytes()
    with tiny_filesystem(tmp_path / "tiny", "48k") as tiny_root:
        full = tiny_root / "b.flac"
        shutil.copyfile(first, full)
        full_before = full.read_bytes()
        register(store, {"a": first, "b": full, "c": last})

        with pytest.raises(WriteBatchStopped, match="stopped") as caught:
            run(store, [library_root, tiny_root], batch_size=10)

        assert caught.value.report.written == 1
        assert full.read_bytes() == full_before
        assert temp_leftovers(tiny_root) == []
        assert os.listdir(tiny_root) == ["b.flac"]
    assert last.read_bytes() == last_before
    assert file_doc(store, "a")["file_tags_pending"] is False
    b_doc = file_doc(store, "b")
    assert b_doc["file_tags_pending"] is True and "disk full" in b_doc["write_error"]
    assert file_doc(store, "c")["write_error"] is None and file_doc(store, "c")["file_tags_pending"] is True


def test_stored_data_that_cannot_become_a_tag_fails_that_file_only(
    store: Store, make_file: Callable[..., Path], library_root: Path
) -> None:
    store.ensure_library(library_doc(library_root))
    bad, good = make_file("mp3", "bad.mp3"), make_file("mp3", "good.mp3")
    register(store, {"a-bad": bad, "b-good": good})
    broken = {**predictions("a-bad")[0], "_key": "a-bad|broken", "head_name": "head=with=equals"}
    store.write_predictions([broken])
    before = bad.read_bytes()

    report = run(store, library_root)

    assert (report.written, report.failed) == (1, 1)
    assert "cannot build tags" in file_doc(store, "a-bad")["write_error"]
    assert bad.read_bytes() == before


def test_a_batch_removes_what_a_crashed_writer_left_in_the_folders_it_writes(
    store: Store, make_file: Callable[..., Path], library_root: Path
) -> None:
    store.ensure_library(library_doc(library_root))
    path = make_file("flac", "Album/01.flac")
    untouched_folder = library_root / "Other"
    untouched_folder.mkdir()
    register(store, {"f1": path})
    hour_ago = time.time() - 3700
    stale = [path.parent / ".01.nomarr-tmp-crashed.flac", path.parent / ".02.nomarr-tmp-spare.mp3",
             untouched_folder / ".03.nomarr-tmp-crashed.ogg"]  # fmt: skip
    for leftover in stale:
        leftover.write_bytes(b"a copy from a writer that crashed")
        os.utime(leftover, (hour_ago, hour_ago))
    running = path.parent / ".04.nomarr-tmp-running.flac"
    running.write_bytes(b"another batch's copy, being written now")

    report = run(store, library_root)

    assert report.written == 1 and report.summary()["stale_temps_removed"] == 2
    assert sorted(p.name for p in temp_leftovers(library_root)) == [stale[2].name, running.name]


# ---- several writers at once -----------------------------------------------------------------


@pytest.fixture
def pools_started(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Write even a handful of files through the process pool, and count the pools started."""
    started: list[int] = []

    class CountedPool(parallel.ProcessPoolExecutor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            started.append(kwargs["max_workers"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(parallel, "POOL_MIN_FILES", 2)
    monkeypatch.setattr(parallel, "ProcessPoolExecutor", CountedPool)
    return started


EXTENSIONS = ("mp3", "flac", "m4a", "ogg", "opus", "wav", "aiff")


def test_concurrent_batch_writes_every_file(
    store: Store, make_file: Callable[..., Path], library_root: Path, pools_started: list[int]
) -> None:
    store.ensure_library(library_doc(library_root))
    files = {
        f"f{i:02d}": make_file(ext, f"album{i % 3}/{i:02d}.{ext}") for i, ext in enumerate(EXTENSIONS * 2)
    }
    register(store, files)

    recorded: list[list[str]] = []
    record_writes = store.record_writes

    def spy(records: list[dict[str, Any]]) -> None:
        recorded.append(sorted(record["_key"] for record in records))
        record_writes(records)

    store.record_writes = spy  # type: ignore[method-assign]
    progress: list[int] = []
    report = run(
        store, library_root, batch_size=5, writers=2, progress=lambda r: progress.append(r.processed)
    )

    assert pools_started == [1], "one pool (one worker process beside this one), kept across the three pages"
    keys_in_order = sorted(files)
    assert recorded == [keys_in_order[:5], keys_in_order[5:10], keys_in_order[10:]], "one call per page"
    assert len(progress) == 3 and progress == sorted(progress) and progress[-1] == len(files)
    assert (report.written, report.unchanged, report.skipped, report.failed) == (len(files), 0, 0, 0)
    for key, path in files.items():
        tags = read_nom_tags(path)
        assert tags[keys.MOOD_LOOSE] == ["happy", "party", "relaxed"]
        assert tags[keys.calibrated_score_key(MODEL, "mood_happy", "happy")] == ["0.900000"]
        assert tags[keys.VERSION] == ["nomarr-test-7"]
        doc = file_doc(store, key)
        assert doc["file_tags_pending"] is False and doc["write_error"] is None
        assert (doc["size"], doc["mtime_ns"]) == stat_of(path)
    assert temp_leftovers(library_root) == []

    store.finish_recalibration([{"_key": k, "mood_tiers": TIERS, "file_tags_pending": True} for k in files])
    assert run(store, library_root, writers=2).unchanged == len(files)


def test_concurrent_writers_delete_their_spare_inodes_when_the_batch_ends(
    store: Store,
    make_file: Callable[..., Path],
    library_root: Path,
    pools_started: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Chunks of 4: the worker process is sent two chunks before this process writes any, so
    # both end the batch holding the originals of their last chunk as spares.
    monkeypatch.setattr(parallel, "CHUNK_SIZE", 4)
    store.ensure_library(library_doc(library_root))
    named = enumerate(EXTENSIONS * 4)
    files = {f"f{i:02d}": make_file(ext, f"album{i % 4}/{i:02d}.{ext}") for i, ext in named}
    register(store, files)
    audio_before = {key: decoded_audio_hash(files[key]) for key in ("f00", "f13", "f27")}

    report = run(store, library_root, writers=2)

    assert pools_started == [1]
    assert report.written == len(files)
    assert temp_leftovers(library_root) == [], "spares must go with the batch, the worker's too"
    assert parallel.PROCESS_SPARES.kept_bytes == 0 and len(parallel.PROCESS_SPARES) == 0
    for key, audio in audio_before.items():
        assert decoded_audio_hash(files[key]) == audio
        assert read_nom_tags(files[key])[keys.VERSION] == ["nomarr-test-7"]


def test_concurrent_per_file_errors_are_recorded_and_the_batch_goes_on(
    store: Store, make_file: Callable[..., Path], library_root: Path, pools_started: list[int]
) -> None:
    store.ensure_library(library_doc(library_root))
    corrupt = library_root / "corrupt.mp3"
    corrupt.write_bytes(b"garbage, not an mp3 " * 50)
    files = {f"a{i}-good": make_file(ext, f"a{i}.{ext}") for i, ext in enumerate(EXTENSIONS[:4])}
    files |= {"b-corrupt": corrupt, "c-changed": make_file("ogg", "changed.ogg"),
              "d-missing": make_file("wav", "missing.wav")}  # fmt: skip
    files |= {f"e{i}-good": make_file(ext, f"e{i}.{ext}") for i, ext in enumerate(EXTENSIONS[3:])}
    register(store, files)
    with files["c-changed"].open("ab") as handle:
        handle.write(b"\x00")
    files["d-missing"].unlink()

    report = run(store, library_root, writers=2)

    assert pools_started == [1]  # writers=2: one worker process, and this process writes too
    good = [key for key in files if key.endswith("-good")]
    assert (report.written, report.skipped, report.failed) == (len(good), 1, 2)
    assert {e["file_id"]: e["kind"] for e in report.errors} == {
        "b-corrupt": "CorruptFileError",
        "c-changed": "FileChangedError",
        "d-missing": "MissingFileError",
    }
    for key, words in (("b-corrupt", "cannot be read as audio"), ("c-changed", "changed on disk"),
                       ("d-missing", "not found")):  # fmt: skip
        doc = file_doc(store, key)
        assert words in doc["write_error"]
        assert doc["file_tags_pending"] is True and doc["written_at"] is None
    for key in good:
        assert file_doc(store, key)["file_tags_pending"] is False
        assert keys.MOOD_STRICT in read_nom_tags(files[key])


def test_concurrent_full_disk_stops_records_in_flight_and_leaves_no_temp(
    store: Store, make_file: Callable[..., Path], library_root: Path, tmp_path: Path, pools_started: list[int]
) -> None:
    store.ensure_library(library_doc(library_root))
    first = make_file("flac", "a.flac")
    later = {f"c{i:02d}": make_file("flac", f"c{i:02d}.flac") for i in range(12)}
    originals = {key: path.read_bytes() for key, path in later.items()} | {"a": first.read_bytes()}
    with tiny_filesystem(tmp_path / "tiny", "48k") as tiny_root:
        full = tiny_root / "b.flac"
        shutil.copyfile(first, full)
        full_before = full.read_bytes()
        register(store, {"a": first, "b": full, **later})

        with pytest.raises(WriteBatchStopped, match="stopped") as caught:
            run(store, [library_root, tiny_root], batch_size=50, writers=2)

        assert pools_started == [1]  # writers=2: one worker process, and this process writes too
        assert full.read_bytes() == full_before
        assert temp_leftovers(tiny_root) == []
        assert os.listdir(tiny_root) == ["b.flac"]
    assert temp_leftovers(library_root) == []
    b_doc = file_doc(store, "b")
    assert b_doc["file_tags_pending"] is True and "disk full" in b_doc["write_error"]

    # Every other file is either written and recorded, or untouched and still pending: the
    # writes in flight when the disk filled up finished and were recorded, nothing else began.
    written = []
    for key, path in {"a": first, **later}.items():
        doc = file_doc(store, key)
        if doc["file_tags_pending"]:
            assert path.read_bytes() == originals[key] and doc["write_error"] is None
        else:
            written.append(key)
            assert keys.MOOD_STRICT in read_nom_tags(path)
            assert (doc["size"], doc["mtime_ns"]) == stat_of(path)
    assert caught.value.report.written == len(written)
    # How many files the other writer finished before b's worker reported the full disk
    # depends on process start-up timing; that nothing is submitted after it is tested
    # deterministically in test_parallel.py.


def test_one_writer_never_starts_a_pool(
    store: Store, make_file: Callable[..., Path], library_root: Path, pools_started: list[int]
) -> None:
    store.ensure_library(library_doc(library_root))
    files = {f"f{i}": make_file(ext, f"{i}.{ext}") for i, ext in enumerate(EXTENSIONS[:3])}
    register(store, files)
    assert run(store, library_root, writers=1).written == 3
    assert pools_started == []
