"""write_pending_tags against the real SQLite store and real audio files."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from nomarr_pipeline.library.scanner import scan_library
from nomarr_pipeline.store import Store, open_store
from nomarr_pipeline.tagging import batch, keys
from nomarr_pipeline.tagging.batch import (
    PREVIEW_COLUMNS,
    WriteBatchStopped,
    preview_frame,
    write_pending_tags,
)
from nomarr_pipeline.tagging.formats import read_nom_tags, write_nom_tags
from nomarr_pipeline_tests.tagging.audio_helpers import (
    stat_of,
    temp_leftovers,
    tiny_filesystem,
)
from nomarr_pipeline_tests.tagging.library_helpers import (
    MODEL,
    TIERS,
    file_doc,
    library_doc,
    predictions,
    register,
    run,
    scanned_library,
)


def test_full_batch_writes_records_and_keeps_scanner_stat(
    store: Store, make_file: Callable[..., Path], library_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch, "CHUNK_SIZE", 2)  # progress is reported per chunk
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

    csv_path = tmp_path / "preview.csv"
    preview_frame(report.preview).to_csv(csv_path, index=False)
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


def test_a_file_edited_by_another_program_is_handed_to_rescan(
    store: Store, make_file: Callable[..., Path], library_root: Path
) -> None:
    store.ensure_library(library_doc(library_root))
    files = {"a-edited": make_file("flac", "a.flac"), "b-good": make_file("mp3", "b.mp3")}
    register(store, files)
    with files["a-edited"].open("ab") as other_program:
        other_program.write(b"\x00")
    handed: list[list[str]] = []

    def rescan(docs: list[dict[str, Any]]) -> int:
        handed.append([doc["_key"] for doc in docs])
        return len(docs)

    report = run(store, library_root, rescan=rescan)

    assert handed == [["a-edited"]]
    assert (report.written, report.skipped, report.rescanned) == (1, 1, 1)
    assert "changed on disk" in file_doc(store, "a-edited")["write_error"]


def test_a_stat_recorded_by_another_batch_since_the_page_was_read_is_accepted(
    store: Store, make_file: Callable[..., Path], library_root: Path
) -> None:
    """Two batches at once: the other one wrote and recorded the file after this one read it."""
    store.ensure_library(library_doc(library_root))
    files = {f"f{i}": make_file(ext, f"{i}.{ext}") for i, ext in enumerate(("mp3", "flac", "m4a"))}
    register(store, files)
    read_pages = store.files_pending_write

    def page_then_other_batch(*args: Any) -> list[dict[str, Any]]:
        page = read_pages(*args)
        if page:
            other = open_store(f"sqlite:///{store.path}")  # type: ignore[attr-defined]
            try:
                assert run(other, library_root).written == len(page)
            finally:
                other.close()
        return page

    store.files_pending_write = page_then_other_batch  # type: ignore[method-assign]
    report = run(store, library_root)

    assert (report.unchanged, report.skipped, report.failed) == (3, 0, 0)
    for key, path in files.items():
        doc = file_doc(store, key)
        assert doc["write_error"] is None and doc["file_tags_pending"] is False
        assert (doc["size"], doc["mtime_ns"]) == stat_of(path)


# ---- several writers at once -----------------------------------------------------------------


@pytest.fixture
def pools_started(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Write even a handful of files through the process pool, and count the pools started."""
    started: list[int] = []

    class CountedPool(batch.ProcessPoolExecutor):
        def __init__(self, max_workers: int, **kwargs: Any) -> None:
            started.append(max_workers)
            super().__init__(max_workers, **kwargs)

    monkeypatch.setattr(batch, "POOL_MIN_FILES", 2)
    monkeypatch.setattr(batch, "ProcessPoolExecutor", CountedPool)
    return started


EXTENSIONS = ("mp3", "flac", "m4a", "ogg", "opus", "wav", "aiff")


def test_concurrent_batch_writes_every_file(
    store: Store,
    make_file: Callable[..., Path],
    library_root: Path,
    pools_started: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batch, "CHUNK_SIZE", 4)  # chunks across pages of 5
    store.ensure_library(library_doc(library_root))
    files = {
        f"f{i:02d}": make_file(ext, f"album{i % 3}/{i:02d}.{ext}") for i, ext in enumerate(EXTENSIONS * 2)
    }
    register(store, files)

    recorded: list[str] = []
    record_writes = store.record_writes

    def spy(records: list[dict[str, Any]]) -> None:
        recorded.extend(record["_key"] for record in records if "written_at" in record)
        record_writes(records)

    store.record_writes = spy  # type: ignore[method-assign]
    progress: list[int] = []
    report = run(
        store, library_root, batch_size=5, writers=2, progress=lambda r: progress.append(r.processed)
    )

    assert pools_started == [2], "one pool of two worker processes, kept across the three pages"
    assert recorded == sorted(files), "every file's outcome recorded once, in order"
    assert progress == [4, 8, 12, 14], "progress after each chunk"
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

    assert pools_started == [2]
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

        assert pools_started == [2]
        assert full.read_bytes() == full_before
        assert temp_leftovers(tiny_root) == []
        assert os.listdir(tiny_root) == ["b.flac"]
    assert temp_leftovers(library_root) == []
    b_doc = file_doc(store, "b")
    assert b_doc["file_tags_pending"] is True and "disk full" in b_doc["write_error"]

    # Every other file is either written and recorded, or untouched and still pending: copies
    # prepared when the disk filled up were deleted, not renamed into place.
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


def test_one_writer_never_starts_a_pool(
    store: Store, make_file: Callable[..., Path], library_root: Path, pools_started: list[int]
) -> None:
    store.ensure_library(library_doc(library_root))
    files = {f"f{i}": make_file(ext, f"{i}.{ext}") for i, ext in enumerate(EXTENSIONS[:3])}
    register(store, files)
    assert run(store, library_root, writers=1).written == 3
    assert pools_started == []


def test_a_symlink_alias_is_one_file_written_once_without_a_false_change(
    store: Store, make_file: Callable[..., Path], library_root: Path
) -> None:
    target = make_file("flac", "real/01.flac")
    (library_root / "links").mkdir()
    (library_root / "links" / "alias.flac").symlink_to(target)
    (library_root / "real" / "same folder alias.flac").symlink_to(target)
    library_id, files = scanned_library(store, library_root)
    assert list(files.values()) == [target.resolve()], "indexed once, by its real path"

    library = store.get_library(library_id)
    assert library is not None
    report = write_pending_tags(store, library=library, library_roots=[library_root], has_calibration=True)

    assert (report.written, report.skipped, report.failed) == (1, 0, 0)
    assert store.file_counts(library_id)["write_errors"] == 0
    assert scan_library(store, library_root, full=True).changed == 0
    assert (library_root / "links" / "alias.flac").is_symlink()
