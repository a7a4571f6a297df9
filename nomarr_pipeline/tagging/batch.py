"""Writing every pending file of a library: the batch workflow over the Store protocol.

First, every temp copy that a dead writer left anywhere under the library roots is deleted
(:func:`~nomarr_pipeline.tagging.temps.remove_abandoned_temps`; ``stale_temps_removed``).
Then, a page of ``store.files_pending_write`` at a time: load the files' predictions, select
their tags (:func:`~nomarr_pipeline.tagging.selection.select_tags`) and write the files a
chunk at a time, in this process or, for a batch of :data:`POOL_MIN_FILES` or more, in worker
processes while this process selects the next chunks (mutagen is pure Python and holds the
GIL, so threads would not help; several writers also overlap their waits for the disk). A
chunk's files are prepared (checked,
copied, written, verified, fsynced: :func:`~nomarr_pipeline.tagging.atomic.prepare_write`),
their copies' sizes and mtimes added to the files' ``written_stats`` in one store call, and
the copies renamed into place (:func:`~nomarr_pipeline.tagging.atomic.commit_write`); this
process then records the outcomes. A scan running meanwhile thus recognises Nomarr's own
writes, whatever moment it looks at a file.

Outcomes per file:

- written / unchanged — ``written_at`` set, ``write_error`` cleared, ``file_tags_pending``
  cleared, the file's new size and mtime stored;
- skipped, nothing to write (e.g. ``minimal`` mode before calibration exists) — nothing is
  recorded and the file stays pending until there is something to write (seed 004);
- changed on disk — first the store is asked again: if the file's stat is one Nomarr recorded
  meanwhile (another batch wrote it), the file is written with that stat. Otherwise another
  program edited it: recorded as ``write_error`` and handed to ``rescan``, which records the
  new stat and has the file analysed and written again;
- failed (missing, permission, corrupt, outside the roots, …) — recorded, stays pending;
- disk full — no further chunk is started, the chunks running finish, what was done is
  recorded and :class:`WriteBatchStopped` is raised: every later file would fail the same way.

``file_write_mode == "none"`` writes nothing and records nothing. ``dry_run=True`` reads the
files' current tags and returns preview rows (file, key, current value, proposed value)
built by the same selection; files and the store are left untouched.
"""

from __future__ import annotations

import errno
import itertools
import logging
import multiprocessing
import os
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from nomarr_pipeline.store.protocol import FileStat
from nomarr_pipeline.tagging.atomic import (
    DiskFullError,
    FileChangedError,
    PreparedWrite,
    Stat,
    WriteError,
    WriteOutcome,
    commit_write,
    discard_write,
    prepare_write,
)
from nomarr_pipeline.tagging.formats import NomTags, normalize_tags, read_nom_tags
from nomarr_pipeline.tagging.selection import select_tags
from nomarr_pipeline.tagging.temps import Owner, remove_abandoned_temps, this_process

if TYPE_CHECKING:
    import pandas as pd

    from nomarr_pipeline.store.protocol import Doc, Store

log = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 100
PREVIEW_COLUMNS = ("file_id", "path", "key", "current", "proposed", "action")
LIST_SEPARATOR = "; "  # how a multi-valued tag is shown in a preview
CHUNK_SIZE = 16  # files per task of a writer; their written stats go to the store in one call
MAX_AUTO_WRITERS = 4
# Starting worker processes (a fresh interpreter importing mutagen) costs about what 100 files'
# writes save on two cores: smaller pages are written in this process.
POOL_MIN_FILES = 100

TaggerVersionSource = str | Callable[[Sequence["Doc"]], str]
PreviewAction = Literal["add", "change", "remove", "keep"]
Prepared = WriteOutcome | PreparedWrite | WriteError | DiskFullError
Finished = WriteOutcome | WriteError | DiskFullError


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def tagger_version_from_predictions(predictions: Sequence[Doc]) -> str:
    """The ``tagger_version`` of a file's predictions; several distinct ones joined by ``,``."""
    versions = sorted({str(doc["tagger_version"]) for doc in predictions if doc.get("tagger_version")})
    return ",".join(versions) or "unknown"


def default_writers() -> int:
    """One writer per CPU, at most :data:`MAX_AUTO_WRITERS` (the copies share one disk)."""
    return max(1, min(MAX_AUTO_WRITERS, os.cpu_count() or 1))


@dataclass(frozen=True)
class PreviewRow:
    file_id: str
    path: str
    key: str
    current: str | None
    proposed: str | None
    action: PreviewAction


@dataclass
class WriteReport:
    """Counts and bounded details of one batch; ``errors`` keeps the first
    :data:`MAX_REPORTED_ERRORS`, ``errors_not_listed`` counts the rest."""

    library_id: str
    mode: str
    dry_run: bool = False
    written: int = 0
    unchanged: int = 0
    skipped: int = 0
    failed: int = 0
    stale_temps_removed: int = 0
    rescanned: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    errors_not_listed: int = 0
    preview: list[PreviewRow] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return self.written + self.unchanged + self.skipped + self.failed

    def add_error(self, file_id: str, path: str, error: BaseException) -> None:
        if len(self.errors) >= MAX_REPORTED_ERRORS:
            self.errors_not_listed += 1
            return
        self.errors.append(
            {"file_id": file_id, "path": path, "kind": type(error).__name__, "error": str(error)}
        )

    def summary(self) -> dict[str, Any]:
        """Plain numbers and strings, fit for Dagster metadata or a CLI line."""
        counts = {name: value for name, value in vars(self).items() if not isinstance(value, list)}
        return {**counts, "errors_listed": len(self.errors), "preview_rows": len(self.preview)}


class WriteBatchStopped(DiskFullError):
    """The disk filled up mid-batch; the files handled before were recorded."""

    def __init__(self, cause: DiskFullError, report: WriteReport) -> None:
        self.report, self.path, self.detail = report, cause.path, cause.detail
        OSError.__init__(
            self,
            errno.ENOSPC,
            f"tag writing for library {report.library_id!r} stopped: {cause.strerror} "
            f"Done before stopping: {report.written} written, {report.unchanged} unchanged, "
            f"{report.skipped} skipped, {report.failed} failed.",
        )


# ---- preview -----------------------------------------------------------------------------


def preview_rows_for(file_id: str, path: str, current: NomTags, proposed: NomTags) -> list[PreviewRow]:
    """One row per key present now or proposed, in key order."""
    rows: list[PreviewRow] = []
    for key in sorted(current.keys() | proposed.keys()):
        now, then = current.get(key), proposed.get(key)
        action: PreviewAction
        if now is None:
            action = "add"
        elif then is None:
            action = "remove"
        else:
            action = "keep" if now == then else "change"
        shown = [None if values is None else LIST_SEPARATOR.join(values) for values in (now, then)]
        rows.append(PreviewRow(file_id, path, key, *shown, action))
    return rows


def preview_frame(rows: Sequence[PreviewRow]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(
        [[getattr(row, c) for c in PREVIEW_COLUMNS] for row in rows], columns=list(PREVIEW_COLUMNS)
    )


# ---- the writers -------------------------------------------------------------------------


class WriteJob(NamedTuple):
    """One file to write, as plain data a worker process can receive."""

    key: str
    path: str
    tags: dict[str, str | list[str]]
    known_stats: tuple[Stat, ...]
    library_roots: tuple[str, ...]
    standard_mood: bool
    durable: bool
    owner: Owner


def _prepare(job: WriteJob) -> Prepared:
    try:
        return prepare_write(
            job.path, job.tags, library_roots=job.library_roots, known_stats=job.known_stats,
            standard_mood=job.standard_mood, durable=job.durable, owner=job.owner,
        )  # fmt: skip
    except (WriteError, DiskFullError) as exc:  # per-file results, not failures of the chunk
        return exc


def _commit(job: WriteJob, prepared: Prepared) -> Finished:
    if not isinstance(prepared, PreparedWrite):
        return prepared
    try:
        return commit_write(prepared, known_stats=job.known_stats)
    except (WriteError, DiskFullError) as exc:
        return exc


def write_chunk(store: Store, jobs: Sequence[WriteJob]) -> list[Finished]:
    """Write ``jobs``' files (in a worker process or this one): prepare each, add the copies'
    stats to ``written_stats`` in one store call, rename them into place. One result per job
    handled; none after a full disk, nor once the batch that owns the jobs is gone."""
    handled: list[tuple[WriteJob, Prepared]] = []
    for job in jobs:
        if os.getpid() != job.owner.pid and os.getppid() != job.owner.pid:
            break  # a worker whose batch died: its files are the next batch's
        handled.append((job, _prepare(job)))
        if isinstance(handled[-1][1], DiskFullError):
            break
    copies = [(job, copy) for job, copy in handled if isinstance(copy, PreparedWrite)]
    try:
        if copies:
            stats = [{"_key": job.key, "size": copy.size, "mtime_ns": copy.mtime_ns} for job, copy in copies]
            store.add_written_stats(stats)
    except BaseException:
        for _, copy in copies:
            discard_write(copy)
        raise
    return [_commit(job, prepared) for job, prepared in handled]


_worker_store: Store | None = None


def _open_worker(store: Store) -> None:
    global _worker_store
    _worker_store = store  # opens its own connection on first use


def _write_chunk_in_worker(jobs: Sequence[WriteJob]) -> list[Finished]:
    if _worker_store is None:
        raise RuntimeError("a tag-writing worker process was started without its store")
    return write_chunk(_worker_store, jobs)


Chunk = list[tuple["Doc", WriteJob]]


class _Writers:
    """Writes chunks in this process, or in ``writers`` worker processes when the batch has at
    least :data:`POOL_MIN_FILES` files, keeping two chunks per worker in flight (so that the
    next chunks are selected while the workers write) and starting none once :attr:`stopping`
    is set."""

    def __init__(self, store: Store, writers: int) -> None:
        if writers < 0:
            raise ValueError(f"writers must be 0 (automatic) or a positive count, got {writers}")
        self.store, self.writers = store, writers or default_writers()
        self.stopping = False
        self._pool: ProcessPoolExecutor | None = None

    def run(self, chunks: Iterator[Chunk]) -> Iterator[tuple[Chunk, list[Finished]]]:
        """Each chunk with its results, in order."""
        first = list(itertools.islice(chunks, -(-POOL_MIN_FILES // CHUNK_SIZE)))
        chunks = itertools.chain(first, chunks)
        if self.writers == 1 or sum(map(len, first)) < POOL_MIN_FILES:
            for chunk in chunks:
                yield chunk, write_chunk(self.store, [job for _, job in chunk])
                if self.stopping:
                    return
            return
        # spawn: a fresh interpreter inherits neither open database connections nor threads.
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(
            self.writers, mp_context=context, initializer=_open_worker, initargs=(self.store,)
        )
        queued: deque[tuple[Chunk, Future[list[Finished]]]] = deque()
        while True:
            while not self.stopping and len(queued) < 2 * self.writers and (chunk := next(chunks, None)):
                queued.append((chunk, self._pool.submit(_write_chunk_in_worker, [job for _, job in chunk])))
            if not queued:
                return
            chunk, future = queued.popleft()
            yield chunk, future.result()

    def close(self) -> None:
        if self._pool is not None:
            # Waits for the chunks running (after an interrupt), so none is cut off mid-file.
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# ---- the batch ---------------------------------------------------------------------------


def _file_path(doc: Doc, library: Doc) -> str:
    path = str(doc["path"])
    # The scanner stores absolute paths; a relative one is taken as relative to the root.
    return path if os.path.isabs(path) else os.path.join(str(library["root_path"]), path)


@dataclass
class _Batch:
    store: Store
    library: Doc
    report: WriteReport
    writers: _Writers
    has_calibration: bool
    library_roots: tuple[str, ...]
    tagger_version_of: TaggerVersionSource
    standard_mood: bool
    durable: bool
    batch_size: int
    progress: Callable[[WriteReport], None] | None
    rescan: Callable[[list[Doc]], int] | None
    owner: Owner = field(default_factory=this_process)
    stopped: DiskFullError | None = None

    def run(self) -> None:
        for chunk, results in self.writers.run(self._chunks()):
            self._finish(chunk, results)
            if self.progress is not None:
                self.progress(self.report)

    def _chunks(self) -> Iterator[Chunk]:
        """The pending files' jobs, :data:`CHUNK_SIZE` at a time, a page read when needed."""
        jobs, after = [], None
        while self.stopped is None and (
            docs := self.store.files_pending_write(self.library["_key"], after, self.batch_size)
        ):
            after = docs[-1]["_key"]
            jobs += self._jobs(docs)
            while len(jobs) >= CHUNK_SIZE:
                yield jobs[:CHUNK_SIZE]
                jobs = jobs[CHUNK_SIZE:]
            if self.report.dry_run and self.progress is not None:
                self.progress(self.report)
        if jobs and self.stopped is None:
            yield jobs

    def _jobs(self, docs: list[Doc]) -> Iterator[tuple[Doc, WriteJob]]:
        report, failures = self.report, []
        predictions_by_file: dict[str, list[Doc]] = defaultdict(list)
        for prediction in self.store.file_tags_for_files([doc["_key"] for doc in docs]):
            predictions_by_file[prediction["file_id"]].append(prediction)
        for doc in docs:
            file_id, path = doc["_key"], _file_path(doc, self.library)
            predictions = predictions_by_file.get(file_id, [])
            try:
                tags = select_tags(
                    mode=report.mode,
                    has_calibration=self.has_calibration,
                    write_raw_scores=bool(self.library.get("write_raw_scores")),
                    predictions=predictions,
                    mood_tiers=doc.get("mood_tiers"),
                    tagger_version=(
                        self.tagger_version_of(predictions)
                        if callable(self.tagger_version_of)
                        else self.tagger_version_of
                    ),
                )
                normalize_tags(tags)
            except ValueError as exc:  # stored data that cannot become a tag (TagKeyError, …)
                failures.append(self._count(doc, WriteError(path, f"cannot build tags: {exc}")))
                continue
            if not tags:
                report.skipped += 1  # nothing selectable yet: the file and its nom: tags stay
            elif report.dry_run:
                _preview_file(file_id, path, tags, report)
            elif doc.get("size") is None or doc.get("mtime_ns") is None:
                unscanned = WriteError(path, "has no scanned size/mtime; rescan the library first")
                failures.append(self._count(doc, unscanned))
            else:
                known = FileStat.of(doc).known
                job = WriteJob(
                    file_id,
                    path,
                    tags,
                    known,
                    self.library_roots,
                    self.standard_mood,
                    self.durable,
                    self.owner,
                )
                yield doc, job
        if failures and not report.dry_run:
            self.store.record_writes(failures)

    def _finish(self, chunk: Chunk, results: list[Finished]) -> None:
        """Count and record the chunk's outcomes (a chunk that ended early leaves the rest
        pending); files another program changed go to ``rescan``."""
        records, changed = [], []
        for (doc, job), result in zip(chunk, results, strict=False):
            if isinstance(result, FileChangedError):
                result = self._retry(job, result)
                if isinstance(result, FileChangedError):
                    changed.append(doc)
            records.append(self._count(doc, result))
        if records:
            self.store.record_writes(records)
        if changed and self.rescan is not None:
            self.report.rescanned += self.rescan(changed)

    def _retry(self, job: WriteJob, changed: FileChangedError) -> Finished:
        """The file's stat is not the page's: if the store knows it now (another batch wrote the
        file since the page was read), write the file again under that stat."""
        current = self.store.get_files([job.key])
        if not current or not FileStat.of(current[0]).matches(*changed.found):
            return changed
        return write_chunk(self.store, [job._replace(known_stats=(changed.found,))])[0]

    def _count(self, doc: Doc, result: Finished) -> Doc:
        """Count one file's outcome in the report; the store update that records it."""
        report, file_id = self.report, doc["_key"]
        if isinstance(result, WriteOutcome):
            if result.status == "written":
                report.written += 1
            else:
                report.unchanged += 1
            # The stat is final: the writers' stats are needed no longer.
            return {"_key": file_id, "written_at": now_ms(), "write_error": None, "file_tags_pending": False,
                    "size": result.size, "mtime_ns": result.mtime_ns, "written_stats": None}  # fmt: skip
        if isinstance(result, DiskFullError):
            self.stopped = self.stopped or result  # in none of the totals: the file was not handled
            self.writers.stopping = True
        elif isinstance(result, FileChangedError):
            report.skipped += 1
        else:
            log.warning("tag write failed: %s", result)
            report.failed += 1
        report.add_error(file_id, _file_path(doc, self.library), result)
        return {"_key": file_id, "written_at": None, "write_error": str(result), "file_tags_pending": True}


def _preview_file(file_id: str, path: str, tags: dict[str, str | list[str]], report: WriteReport) -> None:
    try:
        current = read_nom_tags(path)
    except Exception as exc:  # a preview shows every problem instead of stopping on one
        report.failed += 1
        report.add_error(file_id, path, exc)
        return
    rows = preview_rows_for(file_id, path, current, normalize_tags(tags))
    report.preview.extend(rows)
    if any(row.action != "keep" for row in rows):
        report.written += 1
    else:
        report.unchanged += 1


def write_pending_tags(
    store: Store,
    *,
    library: Doc,
    library_roots: Sequence[str | os.PathLike[str]],
    has_calibration: bool,
    tagger_version_of: TaggerVersionSource = tagger_version_from_predictions,
    standard_mood: bool = False,
    batch_size: int = 200,
    dry_run: bool = False,
    durable: bool = True,
    writers: int = 0,
    progress: Callable[[WriteReport], None] | None = None,
    rescan: Callable[[list[Doc]], int] | None = None,
) -> WriteReport:
    """Write (or preview) the tags of every file of ``library`` with ``file_tags_pending``.

    In a dry run the counts say what a real run would do: ``written`` = files whose tags
    would change. ``durable=False`` skips the per-file fsync (throwaway copies only).
    ``writers`` files are prepared at once (``0``: one per CPU, at most 4; ``1``: one after
    the other, in this process). ``rescan(docs)`` is given the files another program changed
    and returns how many it rescanned. Raises :class:`WriteBatchStopped` when the disk is full.
    """
    mode = str(library.get("file_write_mode") or "full")
    report = WriteReport(library_id=library["_key"], mode=mode, dry_run=dry_run)
    if mode == "none":
        log.info("library %s: file_write_mode is 'none'; no files are written", library["_key"])
        return report
    if not has_calibration:
        log.info(
            "library %s has no calibration: mood-tier tags are skipped%s",
            library["_key"],
            " (raw scores are written instead)" if library.get("write_raw_scores") and mode == "full" else "",
        )
    roots = tuple(os.fspath(root) for root in library_roots)
    if not dry_run:
        report.stale_temps_removed = len(remove_abandoned_temps(roots))
    batch = _Batch(
        store, library, report, _Writers(store, 1 if dry_run else writers), has_calibration, roots,
        tagger_version_of, standard_mood, durable, batch_size, progress, rescan,
    )  # fmt: skip
    finished = False
    try:
        batch.run()
        finished = True
    finally:
        batch.writers.close()
        if not finished and not dry_run:
            # Interrupted between a prepare and its commit: the copies are ours, and dead.
            remove_abandoned_temps(roots, also=batch.owner)
    if batch.stopped is not None:
        raise WriteBatchStopped(batch.stopped, report) from batch.stopped
    return report
