"""Several files' atomic tag writes at once: a bounded pool of writer processes.

Why processes and not threads: mutagen is pure Python, so parsing, saving and the verifying
re-open (about two thirds of a file's write) hold the GIL; only the copy, fsync and rename
release it. Measured on the 2-core build machine (docs/BENCHMARKS.md), two threads were no
faster than one writer, two processes close to twice as fast.

Every file still goes through :func:`~nomarr_pipeline.tagging.atomic.write_file_tags`
unchanged, inside the worker; jobs and results cross the process boundary as plain data
(str, int, dict, tuple). Errors come back as ``(kind, message)`` fields of a
:class:`WriteResult`, never as pickled exceptions: ``WriteError(path, reason)`` cannot be
rebuilt by pickle, which would turn every per-file error into a broken pool.

Workers are started with ``spawn`` (like the analysis workers in ``ml/workers.py``): a fresh
interpreter inherits neither the run's open database connections nor Dagster's threads, which
``fork`` would copy in an unknown state.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from types import TracebackType
from typing import Literal, NamedTuple

from nomarr_pipeline.tagging.atomic import DiskFullError, FileChangedError, WriteError, write_file_tags

MAX_AUTO_WRITERS = 4
# Below this many files to write, a batch is written inline: starting the worker processes
# (~0.1 s, a fresh interpreter importing mutagen) costs more than a few files' writes save.
POOL_MIN_FILES = 32
START_METHOD = "spawn"

ResultStatus = Literal["written", "unchanged", "changed", "failed", "disk_full"]


def default_writers() -> int:
    """One writer per CPU, at most :data:`MAX_AUTO_WRITERS` (the disk, not the CPU, limits beyond)."""
    return max(1, min(MAX_AUTO_WRITERS, os.cpu_count() or 1))


def resolve_writers(writers: int) -> int:
    """``0`` means automatic (:func:`default_writers`); a negative count is a mistake."""
    if writers < 0:
        raise ValueError(f"writers must be 0 (automatic) or a positive count, got {writers}")
    return writers or default_writers()


class WriteJob(NamedTuple):
    """One file to write, as plain data a worker process can receive."""

    path: str
    tags: dict[str, str | list[str]]
    expected_size: int
    expected_mtime_ns: int
    library_roots: tuple[str, ...]
    standard_mood: bool
    durable: bool


class WriteResult(NamedTuple):
    """What happened to one file, as plain data: an outcome (size and mtime after the write)
    or an error (``error_kind`` = the error class's name, ``message`` = its text)."""

    status: ResultStatus
    size: int | None = None
    mtime_ns: int | None = None
    error_kind: str | None = None
    message: str | None = None
    # A full disk's OSError.strerror, so the caller can rebuild the DiskFullError it stops on.
    strerror: str | None = None


def write_job(job: WriteJob) -> WriteResult:
    """Run one job through ``write_file_tags``; per-file errors and a full disk become results.

    Anything else (KeyboardInterrupt, a bug) propagates, as it does in the sequential batch.
    """
    try:
        outcome = write_file_tags(
            job.path,
            job.tags,
            library_roots=job.library_roots,
            expected_size=job.expected_size,
            expected_mtime_ns=job.expected_mtime_ns,
            standard_mood=job.standard_mood,
            durable=job.durable,
        )
    except FileChangedError as exc:
        return WriteResult("changed", error_kind=type(exc).__name__, message=str(exc))
    except WriteError as exc:
        return WriteResult("failed", error_kind=type(exc).__name__, message=str(exc))
    except DiskFullError as exc:
        kind = type(exc).__name__
        return WriteResult("disk_full", error_kind=kind, message=str(exc), strerror=exc.strerror)
    return WriteResult(outcome.status, size=outcome.size, mtime_ns=outcome.mtime_ns)


class ReportedDiskFull(DiskFullError):
    """The :class:`DiskFullError` a writer reported, rebuilt in this process from its text."""

    def __init__(self, path: str, strerror: str) -> None:
        self.path = path
        OSError.__init__(self, errno.ENOSPC, strerror)


class TagWriters:
    """Runs write jobs with ``writers`` files in flight at most.

    ``writers == 1`` writes inline, one file after the other: the sequential path. Otherwise a
    process pool is started at the first batch of at least :data:`POOL_MIN_FILES` jobs and
    kept for later batches (a library's pages); smaller batches before that run inline.
    Use as a context manager so that the pool is shut down.
    """

    def __init__(self, writers: int = 0) -> None:
        self.writers = resolve_writers(writers)
        self._executor: Executor | None = None

    @property
    def started(self) -> bool:
        return self._executor is not None

    def __enter__(self) -> TagWriters:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            # Waits for writes still running (e.g. after Ctrl-C), so none is cut off mid-file
            # by the interpreter exiting; jobs not yet started are dropped.
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _pool(self) -> Executor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.writers, mp_context=multiprocessing.get_context(START_METHOD)
            )
        return self._executor

    def run(self, jobs: Iterable[WriteJob], expected: int) -> Iterator[tuple[int, WriteResult]]:
        """Yield ``(index of the job in jobs, result)`` as files finish, in completion order.

        ``jobs`` is consumed lazily, one job per free slot, so the caller's work that makes a
        job (selecting tags) overlaps the writes in flight. ``expected``: about how many jobs
        there are, to decide whether starting the pool is worth it.

        After a ``disk_full`` result no further job is started; the writes already in flight
        finish and are yielded (their files may be written: the caller must record them), then
        the iteration ends. A job that raised (a worker process died, an interrupt) also stops
        submission; the other in-flight results are yielded first, then that error is raised.
        """
        if self.writers == 1 or (self._executor is None and expected < POOL_MIN_FILES):
            for index, job in enumerate(jobs):
                result = write_job(job)
                yield index, result
                if result.status == "disk_full":
                    return
            return
        yield from self._run_pooled(self._pool(), jobs)

    def _run_pooled(self, executor: Executor, jobs: Iterable[WriteJob]) -> Iterator[tuple[int, WriteResult]]:
        # Two jobs per writer: each worker has its next file queued when it finishes one, and
        # a full disk leaves at most that many writes to finish before the batch stops.
        max_in_flight = 2 * self.writers
        in_flight: dict[Future[WriteResult], int] = {}
        pending = enumerate(jobs)
        exhausted = stopping = False
        failure: BaseException | None = None
        try:
            while True:
                while not (stopping or exhausted) and len(in_flight) < max_in_flight:
                    item = next(pending, None)
                    if item is None:
                        exhausted = True
                    else:
                        in_flight[executor.submit(write_job, item[1])] = item[0]
                if not in_flight:
                    break
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=in_flight.__getitem__):
                    index = in_flight.pop(future)
                    try:
                        result = future.result()
                    except BaseException as exc:  # re-raised once the in-flight writes are in
                        stopping = True
                        failure = failure or exc
                        continue
                    if result.status == "disk_full":
                        stopping = True
                    yield index, result
        finally:
            # Reached early only if the consumer stopped iterating or this thread was
            # interrupted: jobs not started yet are dropped; running ones finish in close().
            for future in in_flight:
                future.cancel()
        if failure is not None:
            raise failure
