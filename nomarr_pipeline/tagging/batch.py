"""Writing every pending file of a library: the batch workflow over the Store protocol.

Dead writers' temp copies under the library roots are deleted first. Then, a page of
``store.files_pending_write`` at a time, tags are selected (:mod:`.selection`) and the files
written a chunk at a time by ``writers`` threads (which overlap the disk waits): prepared
(:func:`~.atomic.prepare_write`), the copies' stats added to ``written_stats`` in one store
call, the copies renamed into place and the outcomes recorded, so a scan at any moment and
the next batch after a crash know Nomarr's own writes.

A file with nothing to write (``minimal`` before calibration, a failed analysis) is left
untouched and not pending. One changed on disk is written under the stat another batch
recorded meanwhile, else (another program's edit) it is an error handed to ``rescan``. Other
failures leave it pending; a full disk stops the batch (:class:`WriteBatchStopped`) after
recording what was done. ``dry_run`` lists the changes and touches nothing.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from nomarr_pipeline.library.scanner import FileStat
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
from nomarr_pipeline.tagging.formats import NomTags, OpenedAudio, normalize_tags
from nomarr_pipeline.tagging.selection import DEFAULT_OPTIONS, TagOptions, select_tags
from nomarr_pipeline.tagging.standard import planned_tags
from nomarr_pipeline.tagging.temps import remove_abandoned_temps, this_process

if TYPE_CHECKING:
    import pandas as pd

    from nomarr_pipeline.store.protocol import Doc, Store

log = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 100
PREVIEW_COLUMNS = ("file_id", "path", "key", "current", "proposed", "action")
CHUNK_SIZE = 16  # files whose written stats go to the store in one call
DEFAULT_WRITERS = 4  # threads: enough to overlap the disk waits of a shared disk

Finished = WriteOutcome | WriteError | DiskFullError | None  # None: not started (disk full)


class PreviewRow(NamedTuple):
    file_id: str
    path: str
    key: str
    current: str | None  # a multi-valued tag's values joined by "; "
    proposed: str | None
    action: str  # add, change, remove or keep


@dataclass
class WriteReport:
    """Counts and the first :data:`MAX_REPORTED_ERRORS` errors of one batch."""

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
        else:
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
        self.report, self.path = report, cause.path
        OSError.__init__(
            self,
            errno.ENOSPC,
            f"tag writing for library {report.library_id!r} stopped: {cause.strerror} Done before "
            f"stopping: {report.written} written, {report.unchanged} unchanged, {report.skipped} "
            f"skipped, {report.failed} failed.",
        )


def preview_frame(rows: Sequence[PreviewRow]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(list(rows), columns=list(PREVIEW_COLUMNS))


def _preview_rows(file_id: str, path: str, current: NomTags, proposed: NomTags) -> list[PreviewRow]:
    rows = []
    for key in sorted(current.keys() | proposed.keys()):
        now, then = current.get(key), proposed.get(key)
        action = "add" if now is None else "remove" if then is None else "keep" if now == then else "change"
        shown = [None if values is None else "; ".join(values) for values in (now, then)]
        rows.append(PreviewRow(file_id, path, key, shown[0], shown[1], action))
    return rows


def wanted_tags(
    doc: Doc, library: Doc, predictions: Sequence[Doc], *, has_calibration: bool, options: TagOptions
) -> NomTags:
    """The tags ``doc``'s file carries once written, by the store and ``library``'s mode."""
    return normalize_tags(select_tags(
        mode=str(library.get("file_write_mode") or "full"), has_calibration=has_calibration,
        write_raw_scores=bool(library.get("write_raw_scores")), predictions=predictions,
        mood_tiers=doc.get("mood_tiers"), options=options,
    ))  # fmt: skip


def predictions_by_file(store: Store, docs: Sequence[Doc]) -> defaultdict[str, list[Doc]]:
    predictions: defaultdict[str, list[Doc]] = defaultdict(list)
    for prediction in store.file_tags_for_files([doc["_key"] for doc in docs]):
        predictions[prediction["file_id"]].append(prediction)
    return predictions


def file_path(doc: Doc, library: Doc) -> str:
    # The scanner stores absolute paths; a relative one is relative to the root.
    return os.path.join(str(library["root_path"]), str(doc["path"]))


class _Job(NamedTuple):
    doc: Doc
    path: str
    tags: NomTags
    known_stats: tuple[Stat, ...]


@dataclass
class _Batch:
    store: Store
    library: Doc
    report: WriteReport
    roots: tuple[str, ...]
    has_calibration: bool
    options: TagOptions
    progress: Callable[[WriteReport], None] | None
    rescan: Callable[[list[Doc]], int] | None
    pool: ThreadPoolExecutor
    stopped: DiskFullError | None = None
    shown: int = -1

    def run(self, batch_size: int) -> None:
        after = None
        while self.stopped is None and (
            docs := self.store.files_pending_write(self.library["_key"], after, batch_size)
        ):
            after = docs[-1]["_key"]
            jobs = self._select(docs)
            for start in range(0, len(jobs), CHUNK_SIZE):
                if self.stopped is None:
                    self._finish(jobs[start : start + CHUNK_SIZE])
                    self._show_progress()
            self._show_progress()

    def _show_progress(self) -> None:
        if self.progress is not None and self.report.processed != self.shown:
            self.shown = self.report.processed
            self.progress(self.report)

    def _select(self, docs: list[Doc]) -> list[_Job]:
        """The files to write with their tags; the others are counted (and recorded) here."""
        predictions = predictions_by_file(self.store, docs)
        jobs, records = [], []
        for doc in docs:
            path, own = file_path(doc, self.library), predictions[doc["_key"]]
            try:
                tags = wanted_tags(doc, self.library, own, has_calibration=self.has_calibration,
                                   options=self.options)  # fmt: skip
            except ValueError as exc:  # stored data that cannot become a tag (TagKeyError, …)
                records.append(self._count(doc, WriteError(path, f"cannot build tags: {exc}")))
                continue
            if not tags:
                self.report.skipped += 1
                records.append({"_key": doc["_key"], "file_tags_pending": False, "write_error": None,
                                "written_for_hash": doc.get("calibration_hash")})
            elif self.report.dry_run:
                self._preview(doc["_key"], path, tags)
            elif doc.get("size") is None or doc.get("mtime_ns") is None:
                records.append(self._count(doc, WriteError(path, "has no scanned size/mtime; rescan first")))
            else:
                jobs.append(_Job(doc, path, tags, FileStat.of(doc).known))
        if records and not self.report.dry_run:
            self.store.record_writes(records)
        return jobs

    def _preview(self, file_id: str, path: str, tags: NomTags) -> None:
        try:
            before = OpenedAudio(path).state()
            planned = planned_tags(before, tags, self.options.replace_fields)
            rows = _preview_rows(file_id, path, before.tags(), planned)
        except Exception as exc:  # a preview shows every problem instead of stopping on one
            self.report.failed += 1
            self.report.add_error(file_id, path, exc)
            return
        self.report.preview += rows
        if any(row.action != "keep" for row in rows):
            self.report.written += 1
        else:
            self.report.unchanged += 1

    def _prepare(self, job: _Job) -> WriteOutcome | PreparedWrite | WriteError | DiskFullError | None:
        if self.stopped is not None:
            return None  # the disk is full: every later file would fail the same way
        try:
            return prepare_write(
                job.path, job.tags, library_roots=self.roots, known_stats=job.known_stats,
                replace_fields=self.options.replace_fields,
            )  # fmt: skip
        except WriteError as exc:
            return exc
        except DiskFullError as exc:
            self.stopped = self.stopped or exc
            return exc

    @staticmethod
    def _commit(prepared: WriteOutcome | PreparedWrite | WriteError | DiskFullError | None) -> Finished:
        if not isinstance(prepared, PreparedWrite):
            return prepared
        try:
            return commit_write(prepared)
        except (WriteError, DiskFullError) as exc:
            return exc

    def _write(self, jobs: list[_Job]) -> list[Finished]:
        """Prepare every file, record the copies' stats, rename the copies into place."""
        prepared = list(self.pool.map(self._prepare, jobs))
        copies = [(job.doc["_key"], copy) for job, copy in zip(jobs, prepared, strict=True)
                  if isinstance(copy, PreparedWrite)]  # fmt: skip
        try:
            if copies:
                self.store.add_written_stats(
                    [{"_key": key, "size": copy.size, "mtime_ns": copy.mtime_ns} for key, copy in copies]
                )
        except BaseException:
            for _, copy in copies:
                discard_write(copy)
            raise
        return list(self.pool.map(self._commit, prepared))

    def _finish(self, chunk: list[_Job]) -> None:
        """Write the chunk, count and record the outcomes; files another program changed go to
        ``rescan``."""
        records, changed = [], []
        for job, result in zip(chunk, self._write(chunk), strict=True):
            if isinstance(result, FileChangedError):
                result = self._retry(job, result)
                if isinstance(result, FileChangedError):
                    changed.append(job.doc)
            if result is not None:
                records.append(self._count(job.doc, result))
        if records:
            self.store.record_writes(records)
        if changed and self.rescan is not None:
            self.report.rescanned += self.rescan(changed)

    def _retry(self, job: _Job, changed: FileChangedError) -> Finished:
        """If the store knows the stat now (another batch wrote the file since the page was
        read), write the file again under that stat."""
        current = self.store.get_files([job.doc["_key"]])
        if not current or not FileStat.of(current[0]).matches(*changed.found):
            return changed
        return self._write([job._replace(known_stats=(changed.found,))])[0]

    def _count(self, doc: Doc, result: WriteOutcome | WriteError | DiskFullError) -> Doc:
        """Count one file's outcome; the store update that records it."""
        report, file_id = self.report, doc["_key"]
        if isinstance(result, WriteOutcome):
            if result.status == "written":
                report.written += 1
            else:
                report.unchanged += 1
            # The stat is final: the writers' stats are needed no longer.
            return {"_key": file_id, "written_at": int(time.time() * 1000), "write_error": None,
                    "file_tags_pending": False, "size": result.size, "mtime_ns": result.mtime_ns,
                    "written_stats": None, "written_for_hash": doc.get("calibration_hash")}  # fmt: skip
        if isinstance(result, FileChangedError):
            report.skipped += 1
        elif not isinstance(result, DiskFullError):  # a full disk is in no total: not handled
            log.warning("tag write failed: %s", result)
            report.failed += 1
        report.add_error(file_id, file_path(doc, self.library), result)
        return {"_key": file_id, "written_at": None, "write_error": str(result), "file_tags_pending": True}


def write_pending_tags(
    store: Store,
    *,
    library: Doc,
    library_roots: Sequence[str | os.PathLike[str]],
    has_calibration: bool,
    options: TagOptions = DEFAULT_OPTIONS,
    batch_size: int = 200,
    dry_run: bool = False,
    writers: int = 0,
    progress: Callable[[WriteReport], None] | None = None,
    rescan: Callable[[list[Doc]], int] | None = None,
) -> WriteReport:
    """Write (or in a dry run preview, ``written`` counting the changes) the tags of every file
    of ``library`` with ``file_tags_pending``. ``writers``: files written at once (0:
    :data:`DEFAULT_WRITERS`); ``rescan(docs)`` gets the files another program changed and
    returns how many it rescanned."""
    if writers < 0:
        raise ValueError(f"writers must be 0 (automatic) or a positive count, got {writers}")
    mode = str(library.get("file_write_mode") or "full")
    report = WriteReport(library_id=library["_key"], mode=mode, dry_run=dry_run)
    if mode == "none":
        log.info("library %s: file_write_mode is 'none'; no files are written", library["_key"])
        return report
    if not has_calibration:
        raw = (
            " (raw scores are written instead)" if library.get("write_raw_scores") and mode == "full" else ""
        )
        log.info("library %s has no calibration: mood-tier tags are skipped%s", library["_key"], raw)
    roots = tuple(os.fspath(root) for root in library_roots)
    if not dry_run:
        report.stale_temps_removed = len(remove_abandoned_temps(roots))
    try:
        with ThreadPoolExecutor(writers or DEFAULT_WRITERS, thread_name_prefix="tag-writer") as pool:
            batch = _Batch(store, library, report, roots, has_calibration, options,
                           progress, rescan, pool)  # fmt: skip
            batch.run(batch_size)
    except BaseException:
        if not dry_run:  # interrupted between a prepare and its commit: the copies are ours
            remove_abandoned_temps(roots, also=this_process())
        raise
    if batch.stopped is not None:
        raise WriteBatchStopped(batch.stopped, report) from batch.stopped
    return report
