"""write_pending_tags against the real SQLite store and real audio files."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from nomarr_pipeline.calibration.recalibration import recalibrate
from nomarr_pipeline.calibration.tiers import TierConfig
from nomarr_pipeline.library.scanner import scan_library
from nomarr_pipeline.store import Store, open_store
from nomarr_pipeline.tagging import batch, keys
from nomarr_pipeline.tagging.batch import (
    PREVIEW_COLUMNS,
    WriteBatchStopped,
    preview_frame,
    write_pending_tags,
)
from nomarr_pipeline.tagging.formats import OpenedAudio
from nomarr_pipeline.tagging.selection import TagOptions
from nomarr_pipeline_tests.tagging.audio_helpers import (
    USER_MOOD,
    stat_of,
    temp_leftovers,
    tiny_filesystem,
    unwritable,
    write_nom_tags,
)
from nomarr_pipeline_tests.tagging.library_helpers import (
    LIB,
    MODEL,
    TIERS,
    calibration,
    file_doc,
    library_doc,
    predictions,
    register,
    run,
    scanned_library,
)
from nomarr_pipeline_tests.tagging.tag_helpers import read_nom_tags, score_key


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
        assert tags[score_key("cal", MODEL, "mood_happy", "happy")] == ["0.900000"]
        # Only the mood heads' calibrated scores by default: no raw ones, no genre head's.
        assert not {key for key in tags if key.startswith("nom:raw:") or "genre_discogs400" in key}
        assert OpenedAudio(path).state().standard[keys.MOOD] == [USER_MOOD, "happy", "party"]
        assert tags[keys.VERSION] == ["nomarr-test-7"]
        doc = file_doc(store, key)
        assert doc["file_tags_pending"] is False and doc["write_error"] is None and doc["written_at"] > 0
        assert (doc["size"], doc["mtime_ns"]) == stat_of(path), (
            "the scanner must not see our write as a change"
        )

    assert run(store, library_root).processed == 0  # nothing pending any more
    store.upsert_files([{"_key": k, "mood_tiers": TIERS, "file_tags_pending": True} for k in files])
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


def test_nothing_to_write_is_not_pending_until_recalibration_gives_something(
    store: Store, make_file: Callable[..., Path], library_root: Path
) -> None:
    """``minimal`` before calibration exists: nothing to write, so the file is left alone and
    not pending; the first calibration changes every file's hash, and recalibration marks it
    pending again with its tiers."""
    store.ensure_library(library_doc(library_root, mode="minimal", write_raw_scores=True))
    path = make_file("mp3")
    register(store, {"a": path})
    before = path.read_bytes()

    report = run(store, library_root, has_calibration=False)

    assert (report.written, report.skipped) == (0, 1)
    assert path.read_bytes() == before
    assert file_doc(store, "a")["file_tags_pending"] is False
    assert store.file_counts()["pending_writes"] == 0

    store.record_analysis([{"_key": "a", "analyzed_at": 1, "analysis_error": None}])
    store.save_calibrations([calibration("mood_happy", "happy", 0.1, 0.85)], [])
    recalibrate(store, tier_config=TierConfig(), readers=1)
    assert file_doc(store, "a")["file_tags_pending"] is True
    assert run(store, library_root).written == 1
    assert read_nom_tags(path)[keys.MOOD_STRICT] == ["happy"]


def scanned(key: str, path: Path) -> dict[str, Any]:
    size, mtime_ns = stat_of(path)
    return {"_key": key, "library_id": LIB, "path": str(path), "size": size, "mtime_ns": mtime_ns,
            "scanned_at": 1}  # fmt: skip


def test_a_file_that_can_never_be_analysed_does_not_stay_pending(
    store: Store, make_file: Callable[..., Path], library_root: Path
) -> None:
    """Issue 14: a truncated file, analysed with an error, was marked pending by every
    recalibration and, having nothing to write, stayed under "pending writes" for ever."""
    store.ensure_library(library_doc(library_root))
    good, truncated = make_file("flac", "good.flac"), make_file("flac", "truncated.flac")
    truncated.write_bytes(truncated.read_bytes()[:2000])
    store.upsert_files([scanned("good", good), scanned("truncated", truncated)])
    store.write_predictions(predictions("good"))
    store.record_analysis([{"_key": "good", "analyzed_at": 1, "analysis_error": None},
                           {"_key": "truncated", "analyzed_at": 1, "analysis_error": "short"}])  # fmt: skip
    store.save_calibrations([calibration("mood_happy", "happy", 0.1, 0.85)], [])
    content = truncated.read_bytes()

    recalibrate(store, tier_config=TierConfig(), readers=1)
    report = run(store, library_root)

    assert (report.written, report.skipped, report.failed) == (1, 1, 0)
    assert store.file_counts()["pending_writes"] == 0
    assert file_doc(store, "truncated")["write_error"] is None
    assert truncated.read_bytes() == content
    # Analysed again (its predictions clear the hash): pending and written like any file.
    make_file("flac", "truncated.flac")  # replaced by a whole copy
    store.upsert_files([scanned("truncated", truncated)])
    store.write_predictions(predictions("truncated"))
    recalibrate(store, tier_config=TierConfig(), readers=1)
    assert run(store, library_root).written == 1
    assert store.file_counts()["pending_writes"] == 0


def test_minimal_with_calibration_writes_only_mood_tiers(
    store: Store, make_file: Callable[..., Path], library_root: Path
) -> None:
    store.ensure_library(library_doc(library_root, mode="minimal"))
    path = make_file("aiff")
    write_nom_tags(
        path, {score_key("raw", MODEL, "mood_happy", "happy"): "0.1"}
    )  # from an earlier full run
    register(store, {"a": path})
    report = run(store, library_root)
    assert report.written == 1
    written_mood = keys.WRITTEN_KEYS[keys.MOOD]
    assert set(read_nom_tags(path)) == {keys.MOOD_STRICT, keys.MOOD_REGULAR, keys.MOOD_LOOSE, written_mood}


def test_full_without_calibration_writes_raw_scores_when_asked(
    store: Store, make_file: Callable[..., Path], library_root: Path
) -> None:
    store.ensure_library(library_doc(library_root, write_raw_scores=True))
    path = make_file("m4a")
    register(store, {"a": path})
    run(store, library_root, has_calibration=False)
    assert read_nom_tags(path) == {
        score_key("raw", MODEL, "mood_happy", "happy"): ["0.800000"],  # no genre: not a mood head
        keys.VERSION: ["nomarr-test-7"],
    }


def test_dry_run_previews_without_touching_anything(
    store: Store, make_file: Callable[..., Path], library_root: Path, tmp_path: Path
) -> None:
    store.ensure_library(library_doc(library_root))
    stale_key = score_key("raw", MODEL, "old_head", "gone")
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
            run(store, [library_root, tiny_root], batch_size=10, writers=1)

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


def test_a_recalibration_finished_during_the_write_leaves_the_file_pending(
    store: Store, make_file: Callable[..., Path], library_root: Path
) -> None:
    """New tiers stored while the batch writes the old ones must still reach the file."""
    store.ensure_library(library_doc(library_root))
    files = {"a": make_file("mp3"), "b": make_file("flac")}
    register(store, files)
    store.upsert_files([{"_key": key, "calibration_hash": "h1"} for key in files])
    add_stats = store.add_written_stats

    def recalibration_finishes_meanwhile(stats: list[dict[str, Any]]) -> None:
        add_stats(stats)
        store.upsert_files(
            [{"_key": "a", "calibration_hash": "h2", "mood_tiers": TIERS, "file_tags_pending": True}]
        )

    store.add_written_stats = recalibration_finishes_meanwhile  # type: ignore[method-assign]
    assert run(store, library_root).written == 2
    assert file_doc(store, "a")["file_tags_pending"] is True, "the new tiers are still to be written"
    assert file_doc(store, "b")["file_tags_pending"] is False


def test_an_immutable_file_is_a_clear_error_and_the_batch_goes_on(
    store: Store, make_file: Callable[..., Path], library_root: Path
) -> None:
    store.ensure_library(library_doc(library_root))
    files = {f"{key}": make_file("flac", f"{key}.flac") for key in ("a", "b-immutable", "c")}
    register(store, files)
    locked = files["b-immutable"]
    content = locked.read_bytes()

    with unwritable(locked):  # chattr +i as root, read-only otherwise
        report = run(store, library_root, writers=1)
        assert locked.read_bytes() == content

    assert (report.written, report.failed) == (2, 1)
    doc = file_doc(store, "b-immutable")
    assert doc["write_error"] == f"{locked}: permission denied (the file is read-only or immutable)"
    assert doc["file_tags_pending"] is True
    assert temp_leftovers(library_root) == []
    assert all(keys.MOOD_STRICT in read_nom_tags(files[key]) for key in ("a", "c"))


# ---- a head with hundreds of labels ----------------------------------------------------------


def wide_predictions(file_id: str, labels: int) -> list[dict[str, Any]]:
    return [
        {"_key": f"{file_id}|{MODEL}|styles|{i}", "file_id": file_id, "model_key": MODEL,
         "head_name": "styles", "label": f"Style {i:02d}", "value": i / 100, "std": 0.0,
         "calibrated_value": 1 - i / 100, "nomarr_only": True, "tagger_version": "nomarr-test-7"}
        for i in range(labels)
    ]  # fmt: skip


def style_labels(tags: dict[str, list[str]]) -> set[str]:
    return {key.rsplit(":", 1)[1] for key in tags if key.startswith(f"nom:cal:{MODEL}:styles:")}


def test_a_wide_head_writes_its_strongest_labels_and_the_preview_shows_the_others_go(
    store: Store, make_file: Callable[..., Path], library_root: Path
) -> None:
    store.ensure_library(library_doc(library_root, write_raw_scores=True))
    path = make_file("ogg")
    register(store, {"a": path})
    store.write_predictions(wide_predictions("a", 30))
    every = TagOptions(score_heads="all", max_labels=0)
    assert run(store, library_root, options=every).written == 1  # every label, as before
    assert len(style_labels(read_nom_tags(path))) == 30

    store.upsert_files([{"_key": "a", "mood_tiers": TIERS, "file_tags_pending": True}])
    strongest = TagOptions(score_heads="all", max_labels=10)
    preview = run(store, library_root, dry_run=True, options=strongest)
    removed = {row.key for row in preview.preview if row.action == "remove"}
    assert len(removed) == 40 and all(":styles:Style " in key for key in removed)
    assert {row.action for row in preview.preview if row.key not in removed} == {"keep"}

    assert run(store, library_root, options=strongest).written == 1
    assert style_labels(read_nom_tags(path)) == {f"Style {i:02d}" for i in range(10)}


# ---- several writers at once -----------------------------------------------------------------

EXTENSIONS = ("mp3", "flac", "m4a", "ogg", "opus", "wav", "aiff")


def test_concurrent_batch_writes_every_file(
    store: Store, make_file: Callable[..., Path], library_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch, "CHUNK_SIZE", 4)
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
        store, library_root, batch_size=5, writers=3, progress=lambda r: progress.append(r.processed)
    )

    assert recorded == sorted(files), "every file's outcome recorded once, in order"
    assert progress == [4, 5, 9, 10, 14], "progress after each chunk of each page"
    assert (report.written, report.unchanged, report.skipped, report.failed) == (len(files), 0, 0, 0)
    for key, path in files.items():
        tags = read_nom_tags(path)
        assert tags[keys.MOOD_LOOSE] == ["happy", "party", "relaxed"]
        assert tags[score_key("cal", MODEL, "mood_happy", "happy")] == ["0.900000"]
        assert tags[keys.VERSION] == ["nomarr-test-7"]
        doc = file_doc(store, key)
        assert doc["file_tags_pending"] is False and doc["write_error"] is None
        assert (doc["size"], doc["mtime_ns"]) == stat_of(path)
    assert temp_leftovers(library_root) == []

    store.upsert_files([{"_key": k, "mood_tiers": TIERS, "file_tags_pending": True} for k in files])
    assert run(store, library_root, writers=3).unchanged == len(files)


def test_concurrent_per_file_errors_are_recorded_and_the_batch_goes_on(
    store: Store, make_file: Callable[..., Path], library_root: Path
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

    report = run(store, library_root, writers=4)

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
    store: Store, make_file: Callable[..., Path], library_root: Path, tmp_path: Path
) -> None:
    store.ensure_library(library_doc(library_root))
    first = make_file("flac", "a.flac")
    later = {f"c{i:02d}": make_file("flac", f"c{i:02d}.flac") for i in range(40)}
    originals = {key: path.read_bytes() for key, path in later.items()} | {"a": first.read_bytes()}
    with tiny_filesystem(tmp_path / "tiny", "48k") as tiny_root:
        full = tiny_root / "b.flac"
        shutil.copyfile(first, full)
        full_before = full.read_bytes()
        register(store, {"a": first, "b": full, **later})

        with pytest.raises(WriteBatchStopped, match="stopped") as caught:
            run(store, [library_root, tiny_root], batch_size=50, writers=4)

        assert full.read_bytes() == full_before
        assert temp_leftovers(tiny_root) == []
        assert os.listdir(tiny_root) == ["b.flac"]
    assert temp_leftovers(library_root) == []
    b_doc = file_doc(store, "b")
    assert b_doc["file_tags_pending"] is True and "disk full" in b_doc["write_error"]

    # Every other file is either written and recorded, or untouched and still pending; no file
    # of a later chunk was started.
    written = []
    for key, path in {"a": first, **later}.items():
        doc = file_doc(store, key)
        if doc["file_tags_pending"]:
            assert path.read_bytes() == originals[key] and doc["write_error"] is None
        else:
            written.append(key)
            assert keys.MOOD_STRICT in read_nom_tags(path)
            assert (doc["size"], doc["mtime_ns"]) == stat_of(path)
    assert caught.value.report.written == len(written) < batch.CHUNK_SIZE


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
