"""TagWriters' scheduling: how many writers, when a pool starts, stopping on a failed job;
and a chunk's prepare-then-commit order on real files.

The pool's real work (spawned processes writing real files) is tested through the batch in
test_batch.py; here the job function is replaced in a thread pool to control what fails when.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from nomarr_pipeline.tagging import parallel
from nomarr_pipeline.tagging.atomic import DiskFullError, PreparedWrite, WriteOutcome
from nomarr_pipeline.tagging.formats import read_nom_tags
from nomarr_pipeline.tagging.parallel import TagWriters, WriteJob, WriteResult
from nomarr_pipeline_tests.tagging.audio_helpers import stat_of, temp_leftovers


@pytest.fixture(autouse=True)
def chunks_of_four(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduling tests' job counts are sized for chunks of 4 (a few chunks per writer);
    the scheduling itself does not depend on the size."""
    monkeypatch.setattr(parallel, "CHUNK_SIZE", 4)


def job(index: int) -> WriteJob:
    return WriteJob(f"/music/{index}.flac", {"nom:version": "v"}, 10, 20, ("/music",), False, True)


def test_writer_count_defaults_to_the_cpus_capped_at_four() -> None:
    assert parallel.resolve_writers(0) == min(4, os.cpu_count() or 1)
    assert parallel.resolve_writers(3) == 3
    with pytest.raises(ValueError, match="writers"):
        parallel.resolve_writers(-1)


def test_jobs_and_results_are_plain_picklable_data() -> None:
    result = WriteResult("failed", error_kind="CorruptFileError", message="/music/1.flac: cannot be read")
    assert pickle.loads(pickle.dumps(job(1))) == job(1)
    assert pickle.loads(pickle.dumps(result)) == result


def test_a_crashing_job_stops_submission_and_is_raised_after_in_flight_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[int] = []
    lock = threading.Lock()

    def fake_write(item: WriteJob, _spares: object = None) -> WriteResult:
        index = int(os.path.basename(item.path).split(".")[0])
        with lock:
            started.append(index)
        if index == 1:
            raise ValueError("a bug in the writer")
        time.sleep(0.05)  # the others are still in flight when job 1 fails
        return WriteResult("written", size=1, mtime_ns=1)

    monkeypatch.setattr(parallel, "write_job", fake_write)
    writers = TagWriters(2)
    writers._executor = ThreadPoolExecutor(2)  # same scheduling, swappable job function
    try:
        seen: list[int] = []
        with pytest.raises(parallel.WriterCrashed, match="ValueError: a bug in the writer"):
            for index, _ in writers.run([job(i) for i in range(40)], expected=40):
                seen.append(index)
    finally:
        writers.close()
    assert 0 in seen and 1 not in seen
    in_flight = 2 * 2 * parallel.CHUNK_SIZE  # two chunks per writer
    assert len(started) <= in_flight, "no job is started once one has failed, beyond those in flight"
    # Job 1's chunk ends at the failure; every other job that ran has its result seen.
    assert sorted(seen) == sorted(i for i in started if i != 1)


def test_a_full_disk_stops_submission(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_write(item: WriteJob, _spares: object = None) -> WriteResult:
        if item.path.endswith("/0.flac"):
            return WriteResult("disk_full", error_kind="DiskFullError", message="full", strerror="full")
        time.sleep(0.02)
        return WriteResult("written", size=1, mtime_ns=1)

    monkeypatch.setattr(parallel, "write_job", fake_write)
    writers = TagWriters(2)
    writers._executor = ThreadPoolExecutor(2)
    try:
        seen = [index for index, _ in writers.run([job(i) for i in range(40)], expected=40)]
    finally:
        writers.close()
    assert 0 in seen and len(seen) <= 2 * 2 * parallel.CHUNK_SIZE
    first_chunk = set(range(parallel.CHUNK_SIZE))
    assert not (first_chunk - {0}) & set(seen), "the chunk stops at the full disk"


def test_small_batches_run_inline_until_a_pool_is_worth_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    unchanged = WriteResult("unchanged", size=1, mtime_ns=1)
    monkeypatch.setattr(parallel, "write_job", lambda item, _spares=None: unchanged)
    with TagWriters(2) as writers:
        small = [job(i) for i in range(parallel.POOL_MIN_FILES - 1)]
        assert len(list(writers.run(small, expected=len(small)))) == len(small)
        assert not writers.started


def run_with_thread_pool(writers: int, jobs: list[WriteJob]) -> list[int]:
    """``TagWriters(writers).run`` with its worker processes played by threads."""
    tag_writers = TagWriters(writers)
    tag_writers._executor = ThreadPoolExecutor(tag_writers.processes)
    try:
        return [index for index, _ in tag_writers.run(jobs, expected=len(jobs))]
    finally:
        tag_writers.close()


def test_this_process_writes_alongside_its_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    writer_of: dict[int, str] = {}

    def fake_write(item: WriteJob, _spares: object = None) -> WriteResult:
        writer_of[int(os.path.basename(item.path).split(".")[0])] = threading.current_thread().name
        time.sleep(0.002)
        return WriteResult("written", size=1, mtime_ns=1)

    monkeypatch.setattr(parallel, "write_job", fake_write)
    seen = run_with_thread_pool(3, [job(i) for i in range(60)])

    assert sorted(seen) == list(range(60)), "every job once"
    assert TagWriters(3).processes == 2
    here = {index for index, name in writer_of.items() if name == threading.main_thread().name}
    assert here and len(here) < 60, "this process wrote some files, the workers the others"
    assert set(range(2 * 2 * parallel.CHUNK_SIZE)).isdisjoint(here), "the workers' chunks are queued first"


def test_a_full_disk_in_this_process_stops_submission(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[int] = []
    here_first = 2 * parallel.CHUNK_SIZE  # the first job of the first chunk this process writes

    def fake_write(item: WriteJob, _spares: object = None) -> WriteResult:
        index = int(os.path.basename(item.path).split(".")[0])
        started.append(index)
        if index == here_first:
            return WriteResult("disk_full", error_kind="DiskFullError", message="full", strerror="full")
        time.sleep(0.02)  # the workers' chunks are still running when this process hits the full disk
        return WriteResult("written", size=1, mtime_ns=1)

    monkeypatch.setattr(parallel, "write_job", fake_write)
    seen = run_with_thread_pool(2, [job(i) for i in range(40)])

    assert sorted(seen) == sorted(started), "the writes in flight finish and are reported"
    assert sorted(started) == [*range(here_first), here_first], "nothing starts after the full disk"


def test_a_crash_in_this_process_is_raised_after_the_workers_results(monkeypatch: pytest.MonkeyPatch) -> None:
    here_first = 2 * parallel.CHUNK_SIZE
    seen: list[int] = []

    def fake_write(item: WriteJob, _spares: object = None) -> WriteResult:
        if item.path.endswith(f"/{here_first}.flac"):
            raise ValueError("a bug in the writer")
        time.sleep(0.02)
        return WriteResult("written", size=1, mtime_ns=1)

    monkeypatch.setattr(parallel, "write_job", fake_write)
    tag_writers = TagWriters(2)
    tag_writers._executor = ThreadPoolExecutor(1)
    try:
        with pytest.raises(parallel.WriterCrashed, match="ValueError: a bug in the writer"):
            for index, _ in tag_writers.run([job(i) for i in range(40)], expected=40):
                seen.append(index)
    finally:
        tag_writers.close()
    assert sorted(seen) == list(range(here_first)), "the workers' chunks in flight are reported first"


# ---- a chunk: prepared one by one, committed together ------------------------------------------


def real_job(path: Path, root: Path) -> WriteJob:
    size, mtime_ns = stat_of(path)
    return WriteJob(str(path), {"nom:version": "v2", "nom:mood-strict": ["happy"]}, size, mtime_ns,
                    (str(root),), False, True)  # fmt: skip


def record_prepares_and_commits(
    monkeypatch: pytest.MonkeyPatch, describe_commit: Callable[[PreparedWrite], str]
) -> list[str]:
    """The real prepare and commit, each logged as it starts (a file by its name)."""
    events: list[str] = []
    real_prepare, real_commit = parallel.prepare_file_write, PreparedWrite.commit

    def prepare(path: str, *args: Any, **kwargs: Any) -> WriteOutcome | PreparedWrite:
        events.append(f"prepare {Path(path).name}")
        return real_prepare(path, *args, **kwargs)

    def commit(self: PreparedWrite) -> WriteOutcome:
        events.append(describe_commit(self))
        return real_commit(self)

    monkeypatch.setattr(parallel, "prepare_file_write", prepare)
    monkeypatch.setattr(PreparedWrite, "commit", commit)
    return events


def test_a_chunk_prepares_every_file_before_committing_any(
    make_file: Callable[..., Path], library_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [make_file(ext, f"{i}.{ext}") for i, ext in enumerate(["mp3", "flac", "m4a", "opus"])]
    events = record_prepares_and_commits(monkeypatch, lambda prepared: f"commit {prepared.target.name}")
    results = parallel.write_chunk([real_job(path, library_root) for path in paths])

    names = [path.name for path in paths]
    assert events == [f"prepare {name}" for name in names] + [f"commit {name}" for name in names]
    assert [result.status for result in results] == ["written"] * 4
    for path, result in zip(paths, results, strict=True):
        assert read_nom_tags(path)["nom:version"] == ["v2"]
        assert (result.size, result.mtime_ns) == stat_of(path)
    assert temp_leftovers(library_root) == []


def test_a_file_edited_before_the_chunk_commits_is_reported_changed_and_kept(
    make_file: Callable[..., Path], library_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = make_file("flac", "a.flac"), make_file("mp3", "b.mp3")
    real_prepare = parallel.prepare_file_write

    def prepare(path: str, *args: Any, **kwargs: Any) -> WriteOutcome | PreparedWrite:
        prepared = real_prepare(path, *args, **kwargs)
        if Path(path) == second:  # another program edits the first file while the second is prepared
            with first.open("ab") as other_program:
                other_program.write(b"\x00")
        return prepared

    monkeypatch.setattr(parallel, "prepare_file_write", prepare)
    edited_size = stat_of(first)[0] + 1
    results = parallel.write_chunk([real_job(first, library_root), real_job(second, library_root)])

    assert [(result.status, result.error_kind) for result in results] == [
        ("changed", "FileChangedError"),
        ("written", None),
    ]
    assert stat_of(first)[0] == edited_size and "nom:version" not in read_nom_tags(first)
    assert read_nom_tags(second)["nom:version"] == ["v2"]
    assert temp_leftovers(library_root) == []


@pytest.mark.parametrize("contain_crashes", [True, False])
def test_a_crash_mid_chunk_commits_the_files_before_and_deletes_nothing_else(
    contain_crashes: bool, make_file: Callable[..., Path], library_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [make_file(ext, f"{i}.{ext}") for i, ext in enumerate(["mp3", "flac", "m4a"])]
    contents = [path.read_bytes() for path in paths]
    real_prepare = parallel.prepare_file_write

    def prepare(path: str, *args: Any, **kwargs: Any) -> WriteOutcome | PreparedWrite:
        if Path(path) == paths[2]:
            raise ValueError("a bug in the writer")
        return real_prepare(path, *args, **kwargs)

    monkeypatch.setattr(parallel, "prepare_file_write", prepare)
    jobs = [real_job(path, library_root) for path in paths]
    if contain_crashes:
        results = parallel.write_chunk(jobs)
        assert [result.status for result in results] == ["written", "written", "crashed"]
        assert all(read_nom_tags(path)["nom:version"] == ["v2"] for path in paths[:2])
    else:
        with pytest.raises(ValueError, match="a bug"):
            parallel.write_chunk(jobs, contain_crashes=False)
        # Inline, the error propagates at once: the prepared copies are deleted, not committed.
        assert [path.read_bytes() for path in paths[:2]] == contents[:2]
    assert paths[2].read_bytes() == contents[2]
    assert temp_leftovers(library_root) == []


@pytest.mark.parametrize("group_bytes", [1, "two files"])
def test_copies_are_committed_once_a_group_holds_commit_group_bytes(
    group_bytes: int | str,
    make_file: Callable[..., Path],
    library_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    paths = [make_file("flac", f"{i}.flac") for i in range(5)]
    if group_bytes == "two files":
        group_bytes = 2 * stat_of(paths[0])[0]  # same generated audio: the same size each
    monkeypatch.setattr(parallel, "COMMIT_GROUP_BYTES", group_bytes)
    events = record_prepares_and_commits(
        monkeypatch,
        lambda prepared: f"commit {prepared.target.name}, {len(temp_leftovers(library_root))} copies",
    )
    results = parallel.write_chunk([real_job(path, library_root) for path in paths])

    assert [result.status for result in results] == ["written"] * 5
    if group_bytes == 1:  # every copy is a full group: committed before the next file is prepared
        assert events == [e for i in range(5) for e in (f"prepare {i}.flac", f"commit {i}.flac, 1 copies")]
    else:
        assert events == [
            "prepare 0.flac", "prepare 1.flac", "commit 0.flac, 2 copies", "commit 1.flac, 1 copies",
            "prepare 2.flac", "prepare 3.flac", "commit 2.flac, 2 copies", "commit 3.flac, 1 copies",
            "prepare 4.flac", "commit 4.flac, 1 copies",
        ]  # fmt: skip
    assert all(read_nom_tags(path)["nom:version"] == ["v2"] for path in paths)
    assert temp_leftovers(library_root) == []


class FakePrepared(PreparedWrite):
    """A prepared write whose commit gives a set answer (no file behind it)."""

    def __init__(self, answer: WriteOutcome | BaseException, size: int = 0) -> None:
        self.answer = answer
        self.expected_size = size
        self.discarded = False

    def commit(self) -> WriteOutcome:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    def discard(self) -> None:
        self.discarded = True


def test_inline_writing_reports_every_result_of_a_chunk_that_hit_a_full_disk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers: dict[int, WriteOutcome | DiskFullError | WriteResult] = {
        0: DiskFullError("/music/0.flac", "no space"),
        1: WriteOutcome(Path("/music/1.flac"), "written", 5, 6),
        2: WriteResult("unchanged", size=1, mtime_ns=1),
        3: WriteResult("failed", error_kind="CorruptFileError", message="/music/3.flac: cannot be read"),
    }

    def fake_write(item: WriteJob, _spares: object = None) -> WriteResult | PreparedWrite:
        answer = answers[int(os.path.basename(item.path).split(".")[0])]
        return answer if isinstance(answer, WriteResult) else FakePrepared(answer)

    monkeypatch.setattr(parallel, "write_job", fake_write)
    with TagWriters(1) as writers:
        seen = list(writers.run([job(i) for i in range(3 * parallel.CHUNK_SIZE)], expected=12))
    assert [(index, result.status) for index, result in seen] == [
        (0, "disk_full"),
        (1, "written"),  # committed after the full disk was seen: its file is written, so it is reported
        (2, "unchanged"),
        (3, "failed"),
    ], "the whole chunk is reported, and nothing after it is started"


def test_a_commit_that_raises_deletes_the_later_copies_of_its_group(monkeypatch: pytest.MonkeyPatch) -> None:
    later = FakePrepared(WriteOutcome(Path("/music/1.flac"), "written", 5, 6))
    prepared = {0: FakePrepared(RuntimeError("a bug in commit")), 1: later}
    monkeypatch.setattr(parallel, "write_job", lambda item, _spares=None: prepared[int(Path(item.path).stem)])

    results = parallel.write_chunk([job(0), job(1)])

    assert [(result.status, result.message) for result in results] == [("crashed", "a bug in commit")]
    assert later.discarded, "a copy that will not be committed is deleted, not left behind"


@pytest.mark.parametrize("stop", [DiskFullError("/music/0.flac", "full"), RuntimeError("a bug in commit")])
def test_a_full_disk_or_a_crash_in_a_group_commit_ends_the_chunk(
    stop: BaseException, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parallel, "COMMIT_GROUP_BYTES", 100)
    prepared_jobs: list[int] = []

    def fake_write(item: WriteJob, _spares: object = None) -> PreparedWrite:
        index = int(Path(item.path).stem)
        prepared_jobs.append(index)
        if index == 0:
            return FakePrepared(stop, size=100)
        return FakePrepared(WriteOutcome(Path(item.path), "written", 1, 1))

    monkeypatch.setattr(parallel, "write_job", fake_write)
    results = parallel.write_chunk([job(i) for i in range(4)])

    assert prepared_jobs == [0], "no file is prepared after the group that stopped"
    expected = "disk_full" if isinstance(stop, DiskFullError) else "crashed"
    assert [result.status for result in results] == [expected]
