"""Worker processes that isolate Essentia (not thread-safe, and it can crash on a corrupt file)
from the run. Each keeps its loaded models for life; a worker that dies or exceeds the per-file
timeout costs only that file: the file gets a clear error and the worker is replaced.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path

from nomarr_pipeline.ml.discovery import Head
from nomarr_pipeline.ml.inference import FileAnalysis, HeadOutcome

# spawn (not fork): TensorFlow's threads do not survive a fork, and a fresh interpreter
# never inherits the parent's open database connections.
START_METHOD = "spawn"
_JOIN_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class FileTask:
    """One file and exactly the heads it still needs."""

    file_id: str
    path: Path
    heads: tuple[Head, ...]


def _worker_main(conn: Connection, environment: Mapping[str, str]) -> None:
    # Before Essentia loads TensorFlow: threads and GPU come from the environment.
    os.environ.update(environment)
    # Keep TensorFlow's C++ logging to real errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # A Ctrl-C in the terminal reaches the whole process group; let the parent decide.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from nomarr_pipeline.ml.inference import ModelSession

    session = ModelSession()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        task: FileTask = message
        try:
            result = session.analyze_file(task.path, task.heads)
        except Exception as exc:  # a bug must cost one file, not the worker
            detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
            result = failed_analysis(task, f"internal error: {detail}")
        conn.send(result)


def failed_analysis(task: FileTask, message: str) -> FileAnalysis:
    return FileAnalysis(
        tuple(HeadOutcome(head.partition_key, error=message) for head in task.heads), 0.0
    )


def _death_message(process: BaseProcess) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"worker crashed (signal {-code}, {name}) while analysing this file"
    return f"worker exited unexpectedly (exit code {code}) while analysing this file"


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    slot: int  # which of the pool's places it holds (its GPU, for one)
    task: FileTask | None = None
    started: float = 0.0

    def busy_task(self) -> FileTask:
        """The task of a worker the pool dispatched to (only those are collected)."""
        if self.task is None:
            raise RuntimeError(f"analysis worker {self.process.pid} has no task to collect")
        return self.task


class WorkerPool:
    """``processes`` workers, each analysing one file at a time with its cached models.
    ``environment(slot)`` gives the variables worker ``slot`` (0 … processes-1, kept by its
    replacement) sets before TensorFlow loads (:meth:`~nomarr_pipeline.ml.capacity.WorkerPlan.environment`).
    """

    def __init__(
        self,
        processes: int | None = None,
        file_timeout_s: float = 300.0,
        *,
        environment: Callable[[int], Mapping[str, str]] | None = None,
    ) -> None:
        self.processes = max(1, processes or os.cpu_count() or 1)
        if file_timeout_s <= 0:
            raise ValueError(f"file_timeout_s must be positive, got {file_timeout_s}")
        self.file_timeout_s = file_timeout_s
        self._environment = environment
        self._context = multiprocessing.get_context(START_METHOD)
        self._workers: list[_Worker] = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _spawn(self) -> _Worker:
        taken = {worker.slot for worker in self._workers}
        slot = min(set(range(self.processes)) - taken)
        environment = dict(self._environment(slot)) if self._environment else {}
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_worker_main, args=(child_end, environment), daemon=True,
            name="nomarr-analysis-worker",
        )
        process.start()
        child_end.close()  # so a dead worker shows up as EOF on parent_end
        worker = _Worker(process, parent_end, slot)
        self._workers.append(worker)
        return worker

    def _discard(self, worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(_JOIN_TIMEOUT_S)
        worker.conn.close()
        self._workers.remove(worker)

    def close(self) -> None:
        for worker in list(self._workers):
            with contextlib.suppress(OSError):  # BrokenPipeError among them
                if worker.process.is_alive() and worker.task is None:
                    worker.conn.send(None)
                    worker.process.join(_JOIN_TIMEOUT_S)
            self._discard(worker)

    def run(self, tasks: Iterable[FileTask]) -> Iterator[tuple[FileTask, FileAnalysis]]:
        """Analyse every task, read lazily as workers are free; yields ``(task, result)`` once
        per task as files finish, with an error result when its worker crashed or timed out."""
        source = iter(tasks)
        while True:
            self._dispatch(source)
            busy = [w for w in self._workers if w.task is not None]
            if not busy:
                return  # every worker is idle only once the tasks are exhausted
            deadline = min(w.started for w in busy) + self.file_timeout_s
            waitables: list[object] = [w.conn for w in busy] + [w.process.sentinel for w in busy]
            ready = set(wait(waitables, timeout=max(0.0, deadline - time.monotonic())))
            for worker in busy:
                yielded = self._collect(worker, ready)
                if yielded is not None:
                    yield yielded

    def _dispatch(self, source: Iterator[FileTask]) -> None:
        retry: FileTask | None = None
        while True:
            idle = [w for w in self._workers if w.task is None]
            if not idle and len(self._workers) >= self.processes:
                return
            task = retry or next(source, None)
            if task is None:
                return
            worker = idle[-1] if idle else self._spawn()
            try:
                worker.conn.send(task)
            except (BrokenPipeError, OSError):
                # It died while idle: replace it and try the task again.
                self._discard(worker)
                retry = task
                continue
            retry = None
            worker.task, worker.started = task, time.monotonic()

    def _collect(
        self, worker: _Worker, ready: set[object]
    ) -> tuple[FileTask, FileAnalysis] | None:
        task = worker.busy_task()
        if worker.conn in ready:
            try:
                result: FileAnalysis = worker.conn.recv()
            except (EOFError, OSError):
                worker.process.join(_JOIN_TIMEOUT_S)
                return self._replace(worker, _death_message(worker.process))
            worker.task = None
            return task, result
        if worker.process.sentinel in ready:
            worker.process.join(_JOIN_TIMEOUT_S)
            return self._replace(worker, _death_message(worker.process))
        if time.monotonic() - worker.started >= self.file_timeout_s:
            return self._replace(
                worker, f"timed out after {self.file_timeout_s:g}s; the worker was stopped"
            )
        return None

    def _replace(self, worker: _Worker, message: str) -> tuple[FileTask, FileAnalysis]:
        task = worker.busy_task()
        self._discard(worker)
        # The replacement is spawned lazily by the next dispatch.
        return task, failed_analysis(task, message)
