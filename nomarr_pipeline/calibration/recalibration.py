"""Hash-based recalibration (docs/ARCHITECTURE.md §6): bring every file to the calibration in force.

Files whose ``calibration_hash`` differs from the expected one are processed in batches:

1. **claim** (one short statement): up to ``batch_size`` of them get this batch's claim token
   as their hash. A claim is never a real hash, and predictions written after it clear the
   hash, which voids it.
2. **read and compute** (no write lock): the batch's predictions with the calibrated value the
   store is about to set, then each file's mood tiers. Most of the work: it runs in reader
   processes, several batches at once, while the writer commits.
3. **finish** (one transaction per batch): for the files still holding the claim, the
   calibrated values, tiers, expected hash and ``file_tags_pending``. A voided file stays
   mismatching and is claimed again, so tiers of changed predictions are never stored. Where
   writers do not wait for each other (``Store.concurrent_writers``: PostgreSQL) each reader
   finishes its own batch; batches hold different files, so finishers never wait either.

A crash leaves finished files finished and claimed ones mismatching: a rerun resumes. The hash
is computed once per run; a calibration changed meanwhile makes the next run redo this run's
files. Memory is the batches in flight (``readers + 1``), not the library.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from nomarr_pipeline.calibration.hashing import expected_calibration_hash
from nomarr_pipeline.calibration.state import Doc
from nomarr_pipeline.calibration.tiers import TierConfig, TierInput, mood_tiers_of_rows
from nomarr_pipeline.store.protocol import Store

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (files recalibrated so far, last batch size)

CLAIM_PREFIX = "claim:"
MAX_AUTO_READERS = 4
# Below this many files a run reads inline: starting a reader process (a fresh interpreter
# importing the store) costs about what a few batches' reads save.
POOL_MIN_FILES = 5_000
START_METHOD = "spawn"  # a fresh interpreter inherits no open database connection


class RecalibrationStalledError(RuntimeError):
    """The store kept returning files this run already finished: their hash did not stick."""


@dataclass(frozen=True)
class RecalibrationReport:
    expected_hash: str
    recalibrated: int
    batches: int
    remaining: int
    seconds: float
    voided: int = 0  # claims voided by predictions written meanwhile (claimed again)
    readers: int = 1  # processes that read and computed tiers (1: inline)
    writers: int = 1  # processes that finished batches at once


def batch_tiers(store: Store, file_ids: Sequence[str], config: TierConfig) -> dict[str, Doc | None]:
    """Mood tiers of each file of a batch, from one read of its predictions."""
    by_file: dict[str, list[TierInput]] = defaultdict(list)
    for row in store.tier_inputs(file_ids):
        by_file[row[0]].append(row)
    return {file_id: mood_tiers_of_rows(by_file.get(file_id, ()), config) for file_id in file_ids}


def recalibrate(
    store: Store,
    *,
    tier_config: TierConfig | None = None,
    batch_size: int = 1000,
    library_id: str | None = None,
    progress: ProgressCallback | None = None,
    max_files: int | None = None,
    readers: int = 0,
) -> RecalibrationReport:
    """Recalibrate every file whose hash differs from the expected one (at most ``max_files``).
    ``readers``: processes computing tiers while this one writes; 0 picks one per CPU (at most
    :data:`MAX_AUTO_READERS`) for large runs, 1 (inline) for small ones."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if readers < 0:
        raise ValueError(f"readers must be 0 (automatic) or a positive count, got {readers}")
    started = time.perf_counter()
    config = tier_config or TierConfig()
    expected = expected_calibration_hash(store.list_calibrations())
    if readers == 0:
        pending = store.count_files_needing_recalibration(expected, library_id)
        large = min(pending, max_files or pending) >= POOL_MIN_FILES
        readers = max(1, min(MAX_AUTO_READERS, os.cpu_count() or 1)) if large else 1
    finish_in_readers = readers > 1 and store.concurrent_writers
    with _batch_readers(store, config, expected, readers, finish_in_readers) as process:
        run = _Run(store, expected, batch_size, library_id, max_files, progress, process)
        run.until_done(depth=readers + 1)
    remaining = store.count_files_needing_recalibration(expected, library_id)
    seconds = time.perf_counter() - started
    writers = readers if finish_in_readers else 1
    log.info(
        "recalibrated %d files in %d batches (%.1f s, %d readers, %d writers), %d claims voided "
        "by new predictions, %d remaining, hash %s",
        run.recalibrated, run.batches, seconds, readers, writers, run.voided, remaining, expected,
    )  # fmt: skip
    return RecalibrationReport(
        expected, run.recalibrated, run.batches, remaining, seconds, run.voided, readers, writers
    )


# A batch's tiers, and the files finished when the reader finished the batch itself (None:
# the caller finishes it).
BatchResult = tuple[dict[str, Doc | None], list[str] | None]
ProcessBatch = Callable[[str, list[str]], "Future[BatchResult]"]


class _Run:
    """The claim -> compute -> finish loop, keeping ``depth`` batches in flight."""

    def __init__(
        self,
        store: Store,
        expected: str,
        batch_size: int,
        library_id: str | None,
        max_files: int | None,
        progress: ProgressCallback | None,
        process: ProcessBatch,
    ) -> None:
        self.store, self.expected = store, expected
        self.batch_size, self.library_id, self.max_files = batch_size, library_id, max_files
        self.progress, self.process = progress, process
        # Unique per run, so files claimed by a crashed or concurrent run are claimed anew; and
        # per batch, so a file voided and claimed again by a later batch is never finished by
        # the earlier batch, whose tiers it no longer matches.
        self.run = f"{CLAIM_PREFIX}{uuid.uuid4().hex}:"
        self.claims = 0
        self.claimed = self.recalibrated = self.voided = self.batches = 0
        self.last_finished: list[str] = []

    def until_done(self, depth: int) -> None:
        in_flight: deque[tuple[str, list[str], Future[BatchResult]]] = deque()
        exhausted = False
        try:
            while True:
                while not exhausted and len(in_flight) < depth:
                    claim, file_ids = self._claim()
                    if not file_ids:
                        exhausted = True
                        break
                    in_flight.append((claim, file_ids, self.process(claim, file_ids)))
                if not in_flight:
                    return
                claim, file_ids, processed = in_flight.popleft()
                if self._finish(claim, file_ids, *processed.result()):
                    exhausted = False  # voided claims are mismatching again: claim them anew
        finally:
            for _, _, future in in_flight:
                future.cancel()

    def _claim(self) -> tuple[str, list[str]]:
        limit = self.batch_size
        if self.max_files is not None:
            limit = min(limit, self.max_files - self.claimed)
            if limit <= 0:
                return "", []
        self.claims += 1
        claim = f"{self.run}{self.claims}"
        file_ids = self.store.claim_files_for_recalibration(
            self.expected, self.run, claim, limit, self.library_id
        )
        if file_ids and file_ids == self.last_finished:
            raise RecalibrationStalledError(
                f"files {file_ids[:3]}... still need recalibration after being finished"
            )
        self.claimed += len(file_ids)
        return claim, file_ids

    def _finish(
        self, claim: str, file_ids: list[str], tiers: dict[str, Doc | None], finished: list[str] | None
    ) -> int:
        """Store the batch (unless its reader did); returns how many of its claims were voided."""
        if finished is None:
            finished = self.store.finish_claimed_recalibration(claim, self.expected, tiers)
        self.recalibrated += len(finished)
        voided = len(file_ids) - len(finished)
        if voided:
            self.voided += voided
            self.claimed -= voided  # they count against max_files once, when finished
            log.info("%d files got new predictions while recalibrating; they are redone", voided)
        self.last_finished = finished
        self.batches += 1
        if self.progress is not None:
            self.progress(self.recalibrated, len(finished))
        return voided


@contextmanager
def _batch_readers(
    store: Store, config: TierConfig, expected: str, readers: int, finish: bool
) -> Iterator[ProcessBatch]:
    """``process(claim, file_ids) -> Future[(tiers, finished)]``: inline, or in ``readers``
    reader processes that each open their own store connection and, with ``finish``, also
    finish their batch there."""
    if readers <= 1:

        def inline(claim: str, file_ids: list[str]) -> Future[BatchResult]:
            future: Future[BatchResult] = Future()
            future.set_result((batch_tiers(store, file_ids, config), None))
            return future

        yield inline
        return
    context = multiprocessing.get_context(START_METHOD)
    with ProcessPoolExecutor(
        readers, mp_context=context, initializer=_init_reader, initargs=(store, config)
    ) as pool:
        try:
            yield lambda claim, file_ids: pool.submit(
                _reader_process_batch, claim, file_ids, expected if finish else None
            )
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


_reader: tuple[Store, TierConfig] | None = None


def _init_reader(store: Store, config: TierConfig) -> None:
    global _reader
    # A Ctrl-C reaches the whole process group; the parent decides what to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _reader = (store, config)


def _reader_process_batch(claim: str, file_ids: list[str], finish_with: str | None) -> BatchResult:
    """Tiers of a batch; with ``finish_with`` (the expected hash) the batch finished too."""
    if _reader is None:
        raise RuntimeError("recalibration reader process was not initialised")
    store, config = _reader
    tiers = batch_tiers(store, file_ids, config)
    if finish_with is None:
        return tiers, None
    return tiers, store.finish_claimed_recalibration(claim, finish_with, tiers)
