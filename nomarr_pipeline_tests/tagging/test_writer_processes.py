"""Tag writers as real processes: killed mid-chunk, stopped mid-chunk while a scan and another
batch run, and two at once. Real files, a real SQLite store shared between the processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nomarr_pipeline.library.scanner import scan_library
from nomarr_pipeline.store import Store
from nomarr_pipeline.tagging import keys
from nomarr_pipeline.tagging.batch import write_pending_tags
from nomarr_pipeline_tests.tagging.audio_helpers import FORMATS, decoded_audio_hash, stat_of, temp_leftovers
from nomarr_pipeline_tests.tagging.library_helpers import scanned_library
from nomarr_pipeline_tests.tagging.tag_helpers import read_nom_tags

REPO = Path(__file__).resolve().parents[2]
EXPECTED_KEYS = {keys.MOOD_STRICT, keys.MOOD_REGULAR, keys.MOOD_LOOSE, keys.VERSION}

pytestmark = pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs POSIX process groups")


@pytest.fixture
def library(make_file: Callable[..., Path], library_root: Path) -> Path:
    """21 tracks, three of each format, in three album folders."""
    for index, extension in enumerate(list(FORMATS) * 3):
        make_file(extension, f"album{index % 3}/{index:02d}.{extension}")
    return library_root


@pytest.fixture
def writers() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:  # a failed test must not leave a stopped writer behind
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_writer(
    started: list[subprocess.Popen[str]], store: Store, library_id: str, *args: str
) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "nomarr_pipeline_tests.tagging.writer_process",
               f"sqlite:///{store.path}", library_id, *args]  # type: ignore[attr-defined]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    started.append(process)
    return process


def wait_stopped(process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
            return
        time.sleep(0.02)
    raise AssertionError("the writer never reached its stop")


def finish(process: subprocess.Popen[str]) -> dict[str, object]:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return json.loads(out)


def batch(store: Store, library_id: str, root: Path) -> object:
    library = store.get_library(library_id)
    assert library is not None
    return write_pending_tags(store, library=library, library_roots=[root], has_calibration=True)


def assert_all_written(store: Store, library_id: str, root: Path, files: dict[str, Path]) -> None:
    """Every file carries the whole new tag set, the store knows each file's stat, no temp is
    left, and a scan finds nothing changed and keeps every prediction."""
    tag_sets = [read_nom_tags(path) for path in files.values()]
    assert set(tag_sets[0]) >= EXPECTED_KEYS and all(tags == tag_sets[0] for tags in tag_sets)
    counts = store.file_counts(library_id)
    assert (counts["pending_writes"], counts["write_errors"]) == (0, 0)
    for key, path in files.items():
        (doc,) = store.get_files([key])
        assert (doc["size"], doc["mtime_ns"]) == stat_of(path) and doc["written_stats"] is None
    assert temp_leftovers(root) == []
    assert scan_library(store, root, full=True).changed == 0
    assert all(store.file_tags_for_files([key]) for key in files), "no prediction was dropped"


@pytest.mark.parametrize("threads", [1, 4])
def test_a_killed_writers_temps_are_removed_by_the_next_batch(
    threads: int, store: Store, library: Path, writers: list[subprocess.Popen[str]]
) -> None:
    library_id, files = scanned_library(store, library)
    audio = {key: decoded_audio_hash(path) for key, path in files.items()}
    options = ["--writers", str(threads), "--signal", "KILL", "--after-renames", "3"]
    killed = start_writer(writers, store, library_id, *options)
    assert killed.wait(timeout=120) == -signal.SIGKILL, killed.communicate()
    left = temp_leftovers(library)
    assert left, "the kill left temp copies behind (the case under test)"
    # One of its temps in a folder where nothing is left to write.
    (library / "Other").mkdir()
    shutil.copyfile(left[0], library / "Other" / left[0].name)

    report = batch(store, library_id, library)

    assert report.stale_temps_removed == len(left) + 1
    assert (report.failed, report.skipped) == (0, 0)
    assert report.written + report.unchanged == len(files) and report.unchanged >= 3
    assert_all_written(store, library_id, library, files)
    assert {key: decoded_audio_hash(path) for key, path in files.items()} == audio


def test_a_scan_and_another_batch_while_a_writer_is_stopped_mid_chunk(
    store: Store, library: Path, writers: list[subprocess.Popen[str]]
) -> None:
    library_id, files = scanned_library(store, library)
    stopped = start_writer(writers, store, library_id, "--signal", "STOP", "--after-renames", "3")
    wait_stopped(stopped)
    held = temp_leftovers(library)
    assert held, "the writer holds prepared copies (the case under test)"

    # Three files renamed, not yet recorded: the scan must know the writer's own stats.
    scan = scan_library(store, library)
    assert (scan.changed, scan.new) == (0, 0)
    assert all(store.file_tags_for_files([key]) for key in files), "no prediction was dropped"
    # A second batch at the same time: it writes what is pending, and the live writer's
    # copies are not its to delete.
    report = batch(store, library_id, library)
    assert report.stale_temps_removed == 0 and all(path.exists() for path in held)
    assert (report.failed, report.skipped) == (0, 0)

    os.killpg(stopped.pid, signal.SIGCONT)
    summary = finish(stopped)
    # Every file it had prepared was written by the other batch meanwhile: no false change.
    assert (summary["failed"], summary["skipped"]) == (0, 0), summary
    assert_all_written(store, library_id, library, files)


def test_two_writers_with_threads_and_scans_at_once(
    store: Store, library: Path, writers: list[subprocess.Popen[str]]
) -> None:
    library_id, files = scanned_library(store, library)
    both = [start_writer(writers, store, library_id, "--writers", "4") for _ in range(2)]
    scans = 0
    while any(process.poll() is None for process in both):
        report = scan_library(store, library)
        assert (report.changed, report.new, report.removed) == (0, 0, 0)
        scans += 1
    summaries = [finish(process) for process in both]
    for summary in summaries:
        assert (summary["failed"], summary["skipped"]) == (0, 0), summary
    assert scans > 0
    assert_all_written(store, library_id, library, files)
