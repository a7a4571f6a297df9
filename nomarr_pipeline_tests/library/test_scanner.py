from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from nomarr_pipeline.library.changes import changed_folders
from nomarr_pipeline.library.scanner import LibraryDefaults, ScanReport, rescan_files, scan_library
from nomarr_pipeline.store import Store
from nomarr_pipeline_tests.ml.audio_fixtures import make_audio
from nomarr_pipeline_tests.store_dump import library_files

from .conftest import write_wav


def _by_name(store: Store, library_id: str) -> dict[str, dict]:
    return {Path(f["path"]).name: f for f in library_files(store, library_id)}


def test_first_scan_records_audio_files_with_duration(store: Store, library: Path) -> None:
    report = scan_library(store, library)
    assert (report.total, report.new, report.changed, report.removed, report.errors) == (3, 3, 0, 0, 0)
    files = _by_name(store, report.library_id)
    assert set(files) == {"a.wav", "01 song.wav", "02 song.WAV"}
    assert files["01 song.wav"]["duration_s"] == pytest.approx(1.0, abs=0.01)
    assert files["a.wav"]["size"] == (library / "a.wav").stat().st_size
    lib = store.get_library(report.library_id)
    assert lib is not None and lib["root_path"] == str(library.resolve())
    assert lib["file_write_mode"] == "full" and lib["auto_write_tags"] is False


def test_a_librarys_write_mode_can_be_changed_after_its_first_scan(store: Store, library: Path) -> None:
    report = scan_library(store, library, LibraryDefaults(file_write_mode="minimal", auto_write_tags=True))
    created = store.get_library(report.library_id)
    scan_library(store, library, LibraryDefaults(file_write_mode="none", write_raw_scores=True))
    changed = store.get_library(report.library_id)
    assert (changed["file_write_mode"], changed["auto_write_tags"], changed["write_raw_scores"]) == (
        "none", False, True
    )
    assert changed["created_at"] == created["created_at"]


def _prediction(file_id: str) -> dict[str, object]:
    return {"_key": f"{file_id}|t1", "file_id": file_id, "model_key": "m", "head_name": "h",
            "label": "x", "value": 0.5, "std": 0.0, "calibrated_value": 0.4, "nomarr_only": True,
            "tagger_version": "v"}  # fmt: skip


def test_rescan_detects_new_changed_removed_and_resets_stale_analysis(store: Store, library: Path) -> None:
    first = scan_library(store, library)
    files = _by_name(store, first.library_id)
    song = files["01 song.wav"]
    store.write_predictions([_prediction(song["_key"])])
    store.upsert_files(
        [{"_key": song["_key"], "analyzed_at": 5, "calibration_hash": "H", "file_tags_pending": True}]
    )
    unchanged = scan_library(store, library)
    assert (unchanged.new, unchanged.changed, unchanged.removed, unchanged.unchanged) == (0, 0, 0, 3)
    assert unchanged.folders_skipped == unchanged.folders  # nothing was stat'ed

    # Saved the way most tools save: a new file renamed over the old one.
    write_wav(library / "Artist" / "Album" / "tmp", seconds=2.0)
    os.replace(library / "Artist" / "Album" / "tmp", library / "Artist" / "Album" / "01 song.wav")
    os.remove(library / "a.wav")
    write_wav(library / "New" / "b.wav")
    report = scan_library(store, library)
    assert (report.new, report.changed, report.removed, report.total) == (1, 1, 1, 3)
    files = _by_name(store, report.library_id)
    changed = files["01 song.wav"]
    assert changed["duration_s"] == pytest.approx(2.0, abs=0.01)
    assert changed["analyzed_at"] is None and changed["calibration_hash"] is None
    assert changed["file_tags_pending"] is False
    assert store.file_tags_for_files([changed["_key"]]) == []
    assert "a.wav" not in files and "b.wav" in files


def test_a_tag_writers_recorded_stat_is_no_change(store: Store, library: Path) -> None:
    """The stat a tag writer recorded before renaming its copy into place is Nomarr's own write,
    also when the writer recorded it after this scan read the index."""
    first = scan_library(store, library)
    a = _by_name(store, first.library_id)["a.wav"]
    store.write_predictions([_prediction(a["_key"])])
    index = store.file_index
    write_wav(library / "a.tmp", seconds=0.7)  # the "tag writer's copy": another size and mtime

    def index_then_writer_records_and_renames(library_id: str) -> dict:
        before = index(library_id)
        copy = os.stat(library / "a.tmp")
        store.add_written_stats([{"_key": a["_key"], "size": copy.st_size, "mtime_ns": copy.st_mtime_ns}])
        os.replace(library / "a.tmp", library / "a.wav")
        return before

    store.file_index = index_then_writer_records_and_renames  # type: ignore[method-assign]
    report = scan_library(store, library)
    assert (report.changed, report.unchanged) == (0, 3)
    assert len(store.file_tags_for_files([a["_key"]])) == 1, "the predictions are kept"
    store.file_index = index  # type: ignore[method-assign]
    assert scan_library(store, library, full=True).changed == 0


def test_a_write_recorded_after_the_walk_saw_the_old_file_is_no_change(store: Store, library: Path) -> None:
    """The walk saw the file before a tag writer renamed its copy into place and recorded the
    final stat (which drops the copy's from ``written_stats``): the file is read again."""
    first = scan_library(store, library)
    a = _by_name(store, first.library_id)["a.wav"]
    store.write_predictions([_prediction(a["_key"])])
    index = store.file_index
    write_wav(library / "a.tmp", seconds=0.7)

    def writer_renames_and_records_then_index(library_id: str) -> dict:
        copy = os.stat(library / "a.tmp")
        store.add_written_stats([{"_key": a["_key"], "size": copy.st_size, "mtime_ns": copy.st_mtime_ns}])
        os.replace(library / "a.tmp", library / "a.wav")
        store.record_writes([{"_key": a["_key"], "size": copy.st_size, "mtime_ns": copy.st_mtime_ns,
                              "written_stats": None, "written_at": 1}])  # fmt: skip
        return index(library_id)

    store.file_index = writer_renames_and_records_then_index  # type: ignore[method-assign]
    report = scan_library(store, library, full=True)
    assert (report.changed, report.unchanged) == (0, 3)
    assert len(store.file_tags_for_files([a["_key"]])) == 1, "the predictions are kept"


def test_in_place_edit_needs_a_full_scan(store: Store, library: Path) -> None:
    scan_library(store, library)
    target = library / "a.wav"
    folder_mtime = (library).stat().st_mtime_ns
    with open(target, "ab") as f:
        f.write(b"\0" * 10)
    os.utime(library, ns=(folder_mtime, folder_mtime))
    assert scan_library(store, library).changed == 0
    assert scan_library(store, library, full=True).changed == 1


def test_rescan_files_records_in_place_edits_that_no_folder_scan_sees(store: Store, library: Path) -> None:
    report = scan_library(store, library)
    files = _by_name(store, report.library_id)
    edited, kept = files["a.wav"], files["01 song.wav"]
    store.write_predictions([_prediction(edited["_key"]), _prediction(kept["_key"])])
    store.upsert_files([{"_key": edited["_key"], "analyzed_at": 5, "file_tags_pending": True}])
    folder_mtime = library.stat().st_mtime_ns
    with open(library / "a.wav", "ab") as other_program:
        other_program.write(b"\0" * 10)
    os.utime(library, ns=(folder_mtime, folder_mtime))
    library_doc = store.get_library(report.library_id)

    assert rescan_files(store, library_doc, [edited, kept]) == 1

    (now,) = store.get_files([edited["_key"]])
    assert now["size"] == edited["size"] + 10 and now["analyzed_at"] is None
    assert now["file_tags_pending"] is False and store.file_tags_for_files([edited["_key"]]) == []
    assert len(store.file_tags_for_files([kept["_key"]])) == 1
    assert scan_library(store, library, full=True).changed == 0, "recorded as a scan would"


def test_removed_folder_removes_its_files(store: Store, library: Path) -> None:
    scan_library(store, library)
    shutil.rmtree(library / "Artist")
    report = scan_library(store, library)
    assert (report.removed, report.total) == (2, 1)


def test_bad_files_become_per_file_errors(store: Store, library: Path) -> None:
    (library / "empty.mp3").write_bytes(b"")
    (library / "text.flac").write_text("this is not a flac file at all" * 10)
    truncated = library / "truncated.wav"
    truncated.write_bytes((library / "a.wav").read_bytes()[:30])
    report = scan_library(store, library)
    assert report.errors == 3 and report.total == 6
    files = _by_name(store, report.library_id)
    assert files["empty.mp3"]["scan_error"] == "empty file (0 bytes)"
    assert "not readable as audio" in files["text.flac"]["scan_error"] or (
        files["text.flac"]["scan_error"] == "not a recognised audio file"
    )
    assert files["truncated.wav"]["scan_error"]
    assert files["a.wav"]["scan_error"] is None


def test_undecodable_file_name_is_an_error_not_a_crash(store: Store, library: Path) -> None:
    raw = os.fsencode(str(library)) + b"/caf\xe9.wav"
    write_wav(Path(os.fsdecode(raw)))
    report = scan_library(store, library)
    assert report.errors == 1
    (bad,) = [f for f in library_files(store, report.library_id) if f["scan_error"]]
    assert "not valid UTF-8" in bad["scan_error"] and bad["path"].endswith("caf\\xe9.wav")


# Root reads every folder; the scan runs in a child process without the capabilities that
# let root bypass file permissions.
WITHOUT_CAPS = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux) to drop capabilities")
def test_unreadable_folder_keeps_known_files_and_records_an_error(tmp_path: Path) -> None:
    root = tmp_path / "music"
    write_wav(root / "open" / "a.wav")
    write_wav(root / "locked" / "b.wav")
    db = tmp_path / "s.sqlite3"
    script = (
        "from pathlib import Path;"
        "from nomarr_pipeline.store import open_store;"
        "from nomarr_pipeline.library.scanner import scan_library;"
        f"s = open_store('sqlite:///{db}'); r = scan_library(s, Path('{root}'));"
        "print(r.total, r.errors, r.removed)"
    )
    run = [*WITHOUT_CAPS, sys.executable, "-c", script]
    assert subprocess.run(run, capture_output=True, text=True, check=True).stdout.split() == ["2", "0", "0"]
    os.chmod(root / "locked", 0o000)
    try:
        out = subprocess.run(run, capture_output=True, text=True, check=True).stdout.split()
    finally:
        os.chmod(root / "locked", 0o755)
    assert out == ["3", "1", "0"]  # b.wav kept, plus an error document for the folder


def test_symlinks_never_leave_the_root_and_loops_end(store: Store, library: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_wav(outside / "secret.wav")
    (library / "escape").symlink_to(outside, target_is_directory=True)
    (library / "escape.wav").symlink_to(outside / "secret.wav")
    (library / "Artist" / "loop").symlink_to(library, target_is_directory=True)
    (library / "alias.wav").symlink_to(library / "a.wav")
    (library / "Artist" / "Album" / "alias of a.wav").symlink_to(library / "a.wav")
    report = scan_library(store, library)
    names = set(_by_name(store, report.library_id))
    assert "secret.wav" not in names and "escape.wav" not in names
    # A link to a file inside the root is that file: indexed once, by its real path.
    assert names == {"a.wav", "01 song.wav", "02 song.WAV"} and report.total == 3
    assert _by_name(store, report.library_id)["a.wav"]["path"] == str(library.resolve() / "a.wav")
    assert scan_library(store, library, full=True).changed == 0


def test_changed_folders_sees_additions_and_removals(store: Store, library: Path) -> None:
    report = scan_library(store, library)
    cache = store.load_folder_cache(report.library_id)
    assert changed_folders(cache, report.root) == []
    write_wav(library / "Artist" / "Album" / "03 new.wav")
    assert changed_folders(cache, report.root) == [str(library.resolve() / "Artist" / "Album")]
    assert changed_folders({}, report.root) == [report.root]


def test_missing_root_is_a_clear_error(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError, match="not a folder"):
        scan_library(store, tmp_path / "nope")


def test_mp3_from_ffmpeg_has_duration(store: Store, tmp_path: Path) -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is installed by the test command; run it through scripts/test.sh")
    root = tmp_path / "lib"
    make_audio(root / "tone.mp3", seconds=1.5, seed=3)
    report = scan_library(store, root)
    (f,) = [f for f in library_files(store, report.library_id)]
    assert f["duration_s"] == pytest.approx(1.5, abs=0.1) and f["scan_error"] is None


def test_hidden_files_are_not_tracks(store: Store, library: Path) -> None:
    write_wav(library / ".a.nomarr-tmp-x1.wav")  # a tag writer's temporary copy
    write_wav(library / "._a.wav")  # macOS resource fork
    assert scan_library(store, library).total == 3


def test_progress_and_work_kept_when_a_scan_is_interrupted(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nomarr_pipeline.library import scanner

    monkeypatch.setattr(scanner, "WRITE_BATCH", 4)
    root = tmp_path / "big"
    for i in range(10):
        write_wav(root / f"{i:02d}.wav", seconds=0.05)
    probed: list[str] = []

    def dies_on_the_ninth(path: str) -> float:
        if len(probed) == 8:
            raise KeyboardInterrupt  # the process is stopped mid-scan
        probed.append(path)
        return 0.05

    with pytest.raises(KeyboardInterrupt):
        scan_library(store, root, probe=dies_on_the_ninth)
    assert store.file_counts()["total"] == 8  # two full batches were stored before the stop

    calls: list[tuple[int, int]] = []
    report = scan_library(store, root, progress=lambda done, total: calls.append((done, total)))
    assert (report.new, report.unchanged, report.total) == (2, 8, 10)
    assert calls[-1] == (10, 10) and all(total == 10 for _, total in calls)


def _without_blocking(action: Callable[[], object], fifo: Path) -> object:
    """Run ``action``; if it is still running after 20 s it opened ``fifo`` and blocks on it:
    unblock it and fail."""
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(action()), daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the blocked reader gets EOF
        worker.join(20)
        pytest.fail(f"{fifo} was opened: reading a FIFO blocks until someone writes into it")
    return done[0]


def test_a_fifo_is_reported_as_what_it_is_and_never_opened(store: Store, library: Path) -> None:
    fifo = library / "Artist" / "pipe.mp3"
    os.mkfifo(fifo)
    (library / "link to pipe.flac").symlink_to(fifo)

    report = _without_blocking(lambda: scan_library(store, library), fifo)

    assert isinstance(report, ScanReport) and report.errors == 1
    files = _by_name(store, report.library_id)
    assert files["pipe.mp3"]["scan_error"] == "not a regular file but a FIFO (named pipe)"
    assert "link to pipe.flac" not in files, "a link to it is that FIFO, listed once"

    # A file replaced by a FIFO after the scan (a tag writer hands it to rescan_files).
    song = library / "a.wav"
    (doc,) = [f for f in files.values() if f["path"] == str(song)]
    song.unlink()
    os.mkfifo(song)
    lib = store.get_library(report.library_id)
    assert _without_blocking(lambda: rescan_files(store, lib, [doc]), song) == 0
    (now,) = store.get_files([doc["_key"]])
    assert now["scan_error"] == "not a regular file but a FIFO (named pipe)"


def test_an_unchanged_rescan_does_not_read_the_file_index(store: Store, library: Path) -> None:
    """One stat per folder and nothing per file: the index of every file is what made an
    unchanged rescan of 600,000 files take twice the memory of the scan of 6,000 (issue 14)."""

    class CountingStore:
        def __init__(self, inner: Store) -> None:
            self.inner, self.index_reads = inner, 0

        def file_index(self, library_id: str):
            self.index_reads += 1
            return self.inner.file_index(library_id)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    scan_library(store, library)
    counting = CountingStore(store)
    again = scan_library(counting, library)  # type: ignore[arg-type]
    assert counting.index_reads == 0
    assert (again.total, again.unchanged, again.new, again.changed, again.removed) == (3, 3, 0, 0, 0)
    (library / "Artist").rename(library / "Artist moved")  # the root's stamp changes
    moved = scan_library(counting, library)  # type: ignore[arg-type]
    assert counting.index_reads == 1 and (moved.new, moved.removed) == (2, 2)
