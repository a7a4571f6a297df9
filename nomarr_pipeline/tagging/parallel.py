"""Several files' atomic tag writes at once: this process and a bounded pool of writer processes.

Why processes and not threads: mutagen is pure Python, so parsing, saving and the verifying
re-open (about two thirds of a file's write) hold the GIL; only the copy, fsync and rename
release it. Measured on the 2-core build machine in a quiet moment, two threads wrote
1.0-1.1x as many files per second as one writer, two processes 1.5-1.8x (docs/BENCHMARKS.md has
the figures, and what a busy machine does to them).

Why this process writes too: ``writers`` counts it, so ``writers=2`` starts one worker process,
not two. Each worker keeps two chunks of jobs queued; whenever they are all queued and no
result is waiting, this process writes the next chunk itself instead of idling. That is one
spawned interpreter fewer (~0.1 s of CPU, and the first ~0.1 s of a batch that no worker can
use anyway) and no core left to selection and bookkeeping alone: on the 2-core machine, 300
files went from 628 to 712 files/s against two worker processes (paired runs, same code
otherwise).

Every file still goes through every step of :mod:`~nomarr_pipeline.tagging.atomic`, in a
worker or in this process, a chunk at a time: each file of the chunk is prepared (checked,
copied, written, verified), then the chunk's copies are committed (fsync, re-check, replace)
one after the other, so that their fsyncs share journal commits (one writer, 1000 files on a
journaling ext4: 487 files/s committing each file alone, 583 in groups of 4; no difference on
a filesystem without a journal). A group is also committed as soon as its copies reach
:data:`COMMIT_GROUP_BYTES`, so large files do not pile up temp copies. Each writer keeps the
originals its commits replace as its next chunk's temp copies (:data:`PROCESS_SPARES`, see
:mod:`~nomarr_pipeline.tagging.spares`); :meth:`TagWriters.close` deletes this process'
spares, and each worker deletes its own as it exits. Jobs and results cross the process
boundary as plain data (str, int, dict, tuple). Errors come back as ``(kind, message)``
fields of a :class:`WriteResult`, never as pickled exceptions: ``WriteError(path, reason)``
cannot be rebuilt by pickle, which would turn every per-file error into a broken pool.

Workers are started with ``spawn`` (like the analysis workers in ``ml/workers.py``): a fresh
interpreter inherits neither the run's open database connections nor Dagster's threads, which
``fork`` would copy in an unknown state.
"""

from __future__ import annotations

import atexit
import errno
import itertools
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from types import TracebackType
from typing import Literal, NamedTuple

from nomarr_pipeline.tagging.atomic import (
    DiskFullError,
    FileChangedError,
    PreparedWrite,
    WriteError,
    WriteOutcome,
    prepare_file_write,
)
from nomarr_pipeline.tagging.spares import SpareInodes

MAX_AUTO_WRITERS = 4
# Below this many files to write, a batch is written inline: starting the worker processes
# (a fresh interpreter importing mutagen, ~0.1-0.15 s of CPU each) costs about what 100-200
# files' writes save on two cores, so a pool only pays off beyond. The batch passes the size
# of its first page: with the default page size (200), a pool starts when that page is full.
POOL_MIN_FILES = 200
START_METHOD = "spawn"
# Jobs travel to the workers in chunks: one round trip per file cost ~0.3 ms of CPU (pickling,
# queue threads, wake-ups), a sixth of the write itself; a chunk still stops at a full disk.
# A chunk's copies are committed together, up to COMMIT_GROUP_BYTES at a time. On a journaling
# ext4, two writers, 1000 files of ~470 KB: 740-762 files/s with chunks of 4, 800-877 with 8,
# 886-939 with 16 (docs/BENCHMARKS.md).
CHUNK_SIZE = 16
# Bounds the temp copies a writer holds before committing them (disk space and dirty page
# cache): 16 copies of 40 MB FLACs would be 640 MB; with this bound they commit two at a time.
COMMIT_GROUP_BYTES = 64 * 1024 * 1024

# The replaced originals this process keeps as its next temp copies (tagging/spares.py): one
# chunk's worth, so that a chunk's commits refill what the next chunk's copies take, and no
# more blocks than a commit group's copies.
PROCESS_SPARES = SpareInodes(limit=CHUNK_SIZE, byte_limit=COMMIT_GROUP_BYTES)

ResultStatus = Literal["written", "unchanged", "changed", "failed", "disk_full", "crashed"]


def default_writers() -> int:
    """One writer per CPU, at most :data:`MAX_AUTO_WRITERS`: a write is CPU-bound (mutagen), so
    more writers than CPUs only add processes, and the copies and fsyncs share one disk."""
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


def _result_of(attempt: Callable[[], WriteOutcome | PreparedWrite]) -> WriteResult | PreparedWrite:
    """Per-file errors and a full disk as results; a prepared write as it is."""
    try:
        outcome = attempt()
    except FileChangedError as exc:
        return WriteResult("changed", error_kind=type(exc).__name__, message=str(exc))
    except WriteError as exc:
        return WriteResult("failed", error_kind=type(exc).__name__, message=str(exc))
    except DiskFullError as exc:
        kind = type(exc).__name__
        return WriteResult("disk_full", error_kind=kind, message=str(exc), strerror=exc.strerror)
    if isinstance(outcome, PreparedWrite):
        return outcome
    return WriteResult(outcome.status, size=outcome.size, mtime_ns=outcome.mtime_ns)


def write_job(job: WriteJob, spares: SpareInodes | None = None) -> WriteResult | PreparedWrite:
    """Run one job through ``prepare_file_write`` (with ``spares``, if given): per-file errors
    and a full disk become results, a file to replace comes back as its verified
    :class:`PreparedWrite` (for :func:`write_chunk` to commit).

    Anything else (KeyboardInterrupt, a bug) propagates, as it does in the sequential batch.
    """
    return _result_of(
        lambda: prepare_file_write(
            job.path,
            job.tags,
            library_roots=job.library_roots,
            expected_size=job.expected_size,
            expected_mtime_ns=job.expected_mtime_ns,
            standard_mood=job.standard_mood,
            durable=job.durable,
            spares=spares,
        )
    )


def _crashed(exc: Exception) -> WriteResult:
    return WriteResult("crashed", error_kind=type(exc).__name__, message=str(exc))


def write_chunk(
    jobs: list[WriteJob], *, contain_crashes: bool = True, recycle: bool = False
) -> list[WriteResult]:
    """:func:`write_job` for each job in turn, the prepared writes committed one after the other
    in groups; stops after a full disk. Results come in job order, one per job handled.

    A group is committed once it holds :data:`COMMIT_GROUP_BYTES` of copies, and at the end of
    the chunk: its first fsync (its journal commit) then covers the other copies written
    meanwhile, so the later fsyncs return without a wait of their own (see
    :class:`~nomarr_pipeline.tagging.atomic.PreparedWrite`), while large files never pile up
    many copies at once.

    A job that raises (a bug: every file problem becomes a result) ends the chunk with a
    ``crashed`` result, so that the files handled before it are still reported and recorded;
    with ``contain_crashes=False`` (writing inline) the error propagates instead. Copies not
    committed when the chunk ends early are deleted.

    ``recycle``: use and refill :data:`PROCESS_SPARES`; whoever asks for it releases them
    (:meth:`TagWriters.close`, and each worker process when it exits).
    """
    spares = PROCESS_SPARES if recycle else None
    results: list[WriteResult] = []
    group: list[WriteResult | PreparedWrite] = []
    group_bytes = 0
    try:
        for job in jobs:
            try:
                result = write_job(job, spares)
            except Exception as exc:
                if not contain_crashes:
                    raise
                group.append(_crashed(exc))
                break
            group.append(result)
            if isinstance(result, WriteResult) and result.status == "disk_full":
                break
            if isinstance(result, PreparedWrite):
                group_bytes += result.expected_size
                if group_bytes >= COMMIT_GROUP_BYTES:
                    committed = _commit_all(group, contain_crashes=contain_crashes)
                    results += committed
                    group, group_bytes = [], 0
                    if any(outcome.status in ("crashed", "disk_full") for outcome in committed):
                        break
        return results + _commit_all(group, contain_crashes=contain_crashes)
    finally:
        for item in group:
            if isinstance(item, PreparedWrite):
                item.discard()  # a no-op for the committed ones


def _commit_all(handled: list[WriteResult | PreparedWrite], *, contain_crashes: bool) -> list[WriteResult]:
    """Commit the prepared writes in ``handled`` in order, replacing each with its result.

    After a commit that raises, the later prepared writes are deleted, not committed: they
    count as not handled, like after a stop.
    """
    for position, item in enumerate(handled):
        if not isinstance(item, PreparedWrite):
            continue
        try:
            result = _result_of(item.commit)
        except Exception as exc:
            if not contain_crashes:
                raise
            for later in handled[position + 1 :]:
                if isinstance(later, PreparedWrite):
                    later.discard()
            del handled[position + 1 :]
            handled[position] = _crashed(exc)
            break
        assert isinstance(result, WriteResult)
        handled[position] = result
    return [item for item in handled if isinstance(item, WriteResult)]


def _release_spares_at_exit() -> None:
    """Worker process initializer: the spares go when the pool shuts the worker down."""
    atexit.register(PROCESS_SPARES.release)


class WriterCrashed(RuntimeError):
    """A writer process hit an unexpected error (not a file problem); the batch stops."""


class ReportedDiskFull(DiskFullError):
    """The :class:`DiskFullError` a writer reported, rebuilt in this process from its text."""

    def __init__(self, path: str, strerror: str) -> None:
        self.path = path
        OSError.__init__(self, errno.ENOSPC, strerror)


class TagWriters:
    """Runs write jobs with ``writers`` files in flight at most: one in this process, one in
    each of ``writers - 1`` worker processes.

    ``writers == 1`` writes inline, one file at a time: the sequential path. Otherwise a
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

    @property
    def processes(self) -> int:
        """Worker processes the pool holds: this process is the remaining writer."""
        return self.writers - 1

    def __enter__(self) -> TagWriters:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes (each deletes its spare inodes as it exits) and delete
        this process' spares."""
        try:
            if self._executor is not None:
                # Waits for writes still running (e.g. after Ctrl-C), so none is cut off mid-file
                # by the interpreter exiting; jobs not yet started are dropped.
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None
        finally:
            PROCESS_SPARES.release()

    def _pool(self) -> Executor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.processes,
                mp_context=multiprocessing.get_context(START_METHOD),
                initializer=_release_spares_at_exit,
            )
        return self._executor

    def run(self, jobs: Iterable[WriteJob], expected: int) -> Iterator[tuple[int, WriteResult]]:
        """Yield ``(index of the job in jobs, result)`` as files finish, in completion order.

        ``jobs`` is consumed lazily, one chunk at a time, so the caller's work that makes a job
        (selecting tags) overlaps the writes in flight. ``expected``: how many jobs there are
        at least (later batches' included), to decide whether starting the pool is worth it.

        After a ``disk_full`` result no further job is started; the writes already in flight
        finish and are yielded (their files may be written: the caller must record them), then
        the iteration ends. A job that raised (a worker process died, an interrupt) also stops
        submission; the other in-flight results are yielded first, then that error is raised.
        """
        if self.writers == 1 or (self._executor is None and expected < POOL_MIN_FILES):
            pending, index = iter(jobs), 0
            while chunk := list(itertools.islice(pending, CHUNK_SIZE)):
                results = write_chunk(chunk, contain_crashes=False, recycle=True)
                # Every result is reported, also those after a full disk: their files may be written.
                for offset, result in enumerate(results):
                    yield index + offset, result
                if any(result.status == "disk_full" for result in results):
                    return
                index += len(chunk)
            return
        yield from _PooledRun(self._pool(), jobs, max_in_flight=2 * self.processes).results()


class _PooledRun:
    """One :meth:`TagWriters.run` over the pool, with this process writing alongside it.

    Two chunks per worker process are kept in flight: each worker has its next chunk queued
    when it finishes one, and a full disk leaves at most that many chunks to finish. While
    every worker is busy and no result is waiting, this process writes the next chunk itself
    instead of idling: that is one writer fewer to start (a spawned interpreter costs ~0.1 s
    of CPU) and the files written while the workers start up.
    """

    def __init__(self, executor: Executor, jobs: Iterable[WriteJob], *, max_in_flight: int) -> None:
        self.executor, self.max_in_flight = executor, max_in_flight
        self.pending = enumerate(jobs)
        self.in_flight: dict[Future[list[WriteResult]], list[int]] = {}
        self.exhausted = self.stopping = False
        self.failure: BaseException | None = None

    def _next_chunk(self) -> list[tuple[int, WriteJob]]:
        chunk = list(itertools.islice(self.pending, CHUNK_SIZE))
        self.exhausted = len(chunk) < CHUNK_SIZE
        return chunk

    def _submit(self) -> None:
        while not (self.stopping or self.exhausted) and len(self.in_flight) < self.max_in_flight:
            chunk = self._next_chunk()
            if chunk:
                future = self.executor.submit(write_chunk, [job for _, job in chunk], recycle=True)
                self.in_flight[future] = [index for index, _ in chunk]

    def _accept(self, indices: list[int], results: list[WriteResult]) -> Iterator[tuple[int, WriteResult]]:
        for index, result in zip(indices, results, strict=False):
            if result.status == "crashed":
                self.stopping = True
                self.failure = self.failure or WriterCrashed(f"{result.error_kind}: {result.message}")
                continue
            if result.status == "disk_full":
                self.stopping = True
            yield index, result

    def _write_here(self) -> Iterator[tuple[int, WriteResult]]:
        chunk = self._next_chunk()
        if chunk:
            # write_chunk, as in a worker: a job that raises ends the chunk as "crashed".
            results = write_chunk([job for _, job in chunk], recycle=True)
            yield from self._accept([index for index, _ in chunk], results)

    def _collect(self, done: set[Future[list[WriteResult]]]) -> Iterator[tuple[int, WriteResult]]:
        for future in sorted(done, key=lambda f: self.in_flight[f][0]):
            indices = self.in_flight.pop(future)
            try:
                results = future.result()
            except BaseException as exc:  # re-raised once the in-flight writes are in
                self.stopping = True
                self.failure = self.failure or exc
                continue
            yield from self._accept(indices, results)

    def results(self) -> Iterator[tuple[int, WriteResult]]:
        try:
            while True:
                self._submit()
                done = {future for future in self.in_flight if future.done()}
                if not done and not (self.stopping or self.exhausted):
                    yield from self._write_here()
                    continue
                if not self.in_flight:
                    break
                if not done:
                    done, _ = wait(self.in_flight, return_when=FIRST_COMPLETED)
                yield from self._collect(done)
        finally:
            # Reached early only if the consumer stopped iterating or this thread was
            # interrupted: chunks not started yet are dropped; running ones finish in close().
            for future in self.in_flight:
                future.cancel()
        if self.failure is not None:
            raise self.failure
