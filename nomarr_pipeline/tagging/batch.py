"""Writing every pending file of a library: the batch workflow over the Store protocol.

Per page of ``store.files_pending_write``: load the files' predictions, select their tags
(:func:`~nomarr_pipeline.tagging.selection.select_tags`), write each file atomically
(:func:`~nomarr_pipeline.tagging.atomic.write_file_tags`) and record the results with
``store.record_writes``. Outcomes per file:

- written / unchanged — ``written_at`` set, ``write_error`` cleared, ``file_tags_pending``
  cleared; a written file's new size and mtime are stored too, so the next scan does not
  take Nomarr's own write for an outside change and re-analyse the file;
- skipped, nothing to write (e.g. ``minimal`` mode before calibration exists) — nothing is
  recorded and the file stays pending until there is something to write (seed 004: files
  tagged before calibration are picked up again later);
- skipped, changed on disk — recorded as ``write_error``, stays pending (a rescan resets it);
- failed (missing, permission, corrupt, outside the roots, …) — recorded, stays pending;
- disk full — what was done so far is recorded and :class:`WriteBatchStopped` is raised:
  every later file would fail the same way.

Files are written by up to ``writers`` worker processes at once
(:mod:`~nomarr_pipeline.tagging.parallel`; ``writers=1`` writes them one after the other in
this process). Selection, recording and the store stay in this process. The writers pull
jobs from one stream over all pages, so the next page is fetched and selected while the last
writes of the one before run; each page is still recorded on its own (one ``record_writes`` +
``upsert_files``), in order, once all its writes are in. On a full disk no further file is
started, the writes in flight finish and everything done is recorded before the stop.

``file_write_mode == "none"`` writes nothing and records nothing. ``dry_run=True`` reads the
files' current tags and returns preview rows (file, key, current value, proposed value)
built by the same selection; files and the store are left untouched.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nomarr_pipeline.tagging.atomic import (
    DiskFullError,
    WriteError,
    remove_stale_temps_in,
    resolve_inside_roots,
)
from nomarr_pipeline.tagging.formats import NomTags, normalize_tags, read_nom_tags
from nomarr_pipeline.tagging.parallel import (
    ReportedDiskFull,
    TagWriters,
    WriteJob,
    WriteResult,
)
from nomarr_pipeline.tagging.selection import select_tags

if TYPE_CHECKING:
    import pandas as pd

    from nomarr_pipeline.store.protocol import Doc, Store

log = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 100
PREVIEW_COLUMNS = ("file_id", "path", "key", "current", "proposed", "action")
LIST_SEPARATOR = "; "  # how a multi-valued tag is shown in a preview

TaggerVersionSource = str | Callable[[Sequence["Doc"]], str]
PreviewAction = Literal["add", "change", "remove", "keep"]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def tagger_version_from_predictions(predictions: Sequence[Doc]) -> str:
    """The ``tagger_version`` of a file's predictions; several distinct ones joined by ``,``."""
    versions = sorted({str(doc["tagger_version"]) for doc in predictions if doc.get("tagger_version")})
    return ",".join(versions) or "unknown"


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
    errors: list[dict[str, str]] = field(default_factory=list)
    errors_not_listed: int = 0
    preview: list[PreviewRow] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return self.written + self.unchanged + self.skipped + self.failed

    def add_error(self, file_id: str, path: str, error: BaseException | str, kind: str | None = None) -> None:
        """``kind`` defaults to the error's class name (``"skipped"`` for a plain message)."""
        if len(self.errors) >= MAX_REPORTED_ERRORS:
            self.errors_not_listed += 1
            return
        if kind is None:
            kind = type(error).__name__ if isinstance(error, BaseException) else "skipped"
        self.errors.append({"file_id": file_id, "path": path, "kind": kind, "error": str(error)})

    def summary(self) -> dict[str, Any]:
        """Plain numbers and strings, fit for Dagster metadata or a CLI line."""
        return {
            "library_id": self.library_id,
            "mode": self.mode,
            "dry_run": self.dry_run,
            "written": self.written,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            "failed": self.failed,
            "stale_temps_removed": self.stale_temps_removed,
            "errors_listed": len(self.errors),
            "errors_not_listed": self.errors_not_listed,
            "preview_rows": len(self.preview),
        }


class WriteBatchStopped(DiskFullError):
    """The disk filled up mid-batch; the files handled before were recorded."""

    def __init__(self, cause: DiskFullError, report: WriteReport) -> None:
        self.report = report
        self.path = cause.path
        OSError.__init__(
            self,
            errno.ENOSPC,
            f"tag writing for library {report.library_id!r} stopped: {cause.strerror} "
            f"Done before stopping: {report.written} written, {report.unchanged} unchanged, "
            f"{report.skipped} skipped, {report.failed} failed.",
        )


# ---- preview -----------------------------------------------------------------------------


def _shown(values: list[str] | None) -> str | None:
    return None if values is None else LIST_SEPARATOR.join(values)


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
        rows.append(PreviewRow(file_id, path, key, _shown(now), _shown(then), action))
    return rows


def preview_frame(rows: Sequence[PreviewRow]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(
        [[getattr(row, c) for c in PREVIEW_COLUMNS] for row in rows], columns=list(PREVIEW_COLUMNS)
    )


def write_preview_csv(rows: Sequence[PreviewRow], path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    preview_frame(rows).to_csv(target, index=False)
    return target


# ---- the batch ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _BatchSettings:
    mode: str
    has_calibration: bool
    write_raw_scores: bool
    library_roots: tuple[str, ...]
    tagger_version_of: TaggerVersionSource
    standard_mood: bool
    dry_run: bool
    durable: bool

    def version_for(self, predictions: Sequence[Doc]) -> str:
        if callable(self.tagger_version_of):
            return self.tagger_version_of(predictions)
        return self.tagger_version_of


def _file_path(doc: Doc, library: Doc) -> str:
    path = str(doc["path"])
    # The scanner stores absolute paths; a relative one is taken as relative to the root.
    return path if os.path.isabs(path) else os.path.join(str(library["root_path"]), path)


def _record(doc: Doc, *, error: str | None, pending: bool) -> Doc:
    return {
        "_key": doc["_key"],
        "written_at": None if error else now_ms(),
        "write_error": error,
        "file_tags_pending": pending,
    }


@dataclass
class _Page:
    """One page of pending files on its way through the writers, until it is recorded."""

    records: list[Doc] = field(default_factory=list)
    new_stats: list[Doc] = field(default_factory=list)
    in_flight: int = 0  # jobs handed to the writers whose result is not in yet
    complete: bool = False  # every file of the page became a job, a record or a skip

    @property
    def done(self) -> bool:
        return self.complete and self.in_flight == 0


class _PageStream:
    """Turns pages of pending files into write jobs and records each page once its results are in.

    The jobs of all pages form one stream that the writers pull from, so the next page is
    fetched and its tags selected while the last writes of the page before are still running;
    a page is still recorded on its own, in one ``record_writes`` + ``upsert_files``, and in
    order.
    """

    def __init__(
        self,
        store: Store,
        library: Doc,
        settings: _BatchSettings,
        report: WriteReport,
        batch_size: int,
        progress: Callable[[WriteReport], None] | None,
    ) -> None:
        self.store, self.library, self.settings, self.report = store, library, settings, report
        self.batch_size, self.progress = batch_size, progress
        self.pages: list[_Page] = []  # not yet recorded, oldest first
        self.job_files: list[tuple[_Page, Doc]] = []  # by job index
        self.swept_folders: set[str] = set()

    def fetch(self, after_key: str | None) -> list[Doc]:
        return self.store.files_pending_write(self.library["_key"], after_key, self.batch_size)

    def jobs(self, first_page: list[Doc]) -> Iterator[WriteJob]:
        page_docs = first_page
        while page_docs:
            page = _Page()
            self.pages.append(page)
            yield from self._page_jobs(page_docs, page)
            page.complete = True
            self.record_done_pages()
            page_docs = self.fetch(page_docs[-1]["_key"])

    def _page_jobs(self, docs: list[Doc], page: _Page) -> Iterator[WriteJob]:
        settings, report = self.settings, self.report
        predictions_by_file: dict[str, list[Doc]] = defaultdict(list)
        for prediction in self.store.file_tags_for_files([doc["_key"] for doc in docs]):
            predictions_by_file[prediction["file_id"]].append(prediction)
        for doc in docs:
            file_id, path = doc["_key"], _file_path(doc, self.library)
            predictions = predictions_by_file.get(file_id, [])
            try:
                tags = select_tags(
                    mode=settings.mode,
                    has_calibration=settings.has_calibration,
                    write_raw_scores=settings.write_raw_scores,
                    predictions=predictions,
                    mood_tiers=doc.get("mood_tiers"),
                    tagger_version=settings.version_for(predictions),
                )
                normalize_tags(tags)
            except ValueError as exc:  # stored data that cannot become a tag (TagKeyError, …)
                report.failed += 1
                report.add_error(file_id, path, exc)
                if not settings.dry_run:
                    page.records.append(_record(doc, error=f"cannot build tags: {exc}", pending=True))
                continue
            if not tags:
                # Nothing selectable yet: leave the file (and any older nom: tags) alone.
                report.skipped += 1
                continue
            if settings.dry_run:
                _preview_file(file_id, path, tags, report)
                continue
            if doc.get("size") is None or doc.get("mtime_ns") is None:
                unscanned = WriteError(path, "has no scanned size/mtime; rescan the library first")
                _count_failure(doc, path, unscanned, report, page.records)
                continue
            self._sweep_folder_of(path)
            page.in_flight += 1
            self.job_files.append((page, doc))
            yield WriteJob(
                path=path,
                tags=tags,
                expected_size=int(doc["size"]),
                expected_mtime_ns=int(doc["mtime_ns"]),
                library_roots=settings.library_roots,
                standard_mood=settings.standard_mood,
                durable=settings.durable,
            )

    def _sweep_folder_of(self, path: str) -> None:
        """Delete what a crashed writer left (temp copies, spare inodes) in ``path``'s folder,
        once per batch: a crash happens mid-batch, and the next batch writes the same files."""
        folder = os.path.dirname(path)
        if folder in self.swept_folders:
            return
        self.swept_folders.add(folder)
        # Where the writer puts its copies: next to the file's real path, inside a root.
        with contextlib.suppress(OSError, WriteError):  # outside the roots, unreadable: the write reports it
            real_folder = resolve_inside_roots(path, self.settings.library_roots).parent
            self.report.stale_temps_removed += len(remove_stale_temps_in(real_folder))

    def count(self, index: int, result: WriteResult) -> None:
        page, doc = self.job_files[index]
        _count_result(doc, _file_path(doc, self.library), result, self.report, page.records, page.new_stats)
        page.in_flight -= 1
        self.record_done_pages()

    def record_done_pages(self) -> None:
        while self.pages and self.pages[0].done:
            self._record(self.pages.pop(0))
            if self.progress is not None:
                self.progress(self.report)

    def record_all(self) -> None:
        """On the way out of a stop: what was done in the unfinished pages is recorded too."""
        while self.pages:
            self._record(self.pages.pop(0))

    def _record(self, page: _Page) -> None:
        if page.new_stats:
            self.store.upsert_files(page.new_stats)
        if page.records:
            self.store.record_writes(page.records)


def _count_failure(doc: Doc, path: str, error: WriteError, report: WriteReport, records: list[Doc]) -> None:
    log.warning("tag write failed: %s", error)
    report.failed += 1
    report.add_error(doc["_key"], path, error)
    records.append(_record(doc, error=str(error), pending=True))


def _count_result(
    doc: Doc, path: str, result: WriteResult, report: WriteReport, records: list[Doc], new_stats: list[Doc]
) -> None:
    """Count one file's result in the report and queue its store updates."""
    file_id = doc["_key"]
    if result.status in ("written", "unchanged"):
        records.append(_record(doc, error=None, pending=False))
        if result.status == "unchanged":
            report.unchanged += 1
            return
        report.written += 1
        stat = {"size": result.size, "mtime_ns": result.mtime_ns}
        new_stats.append({"_key": file_id, "library_id": doc["library_id"], **stat})
        return
    message = result.message or result.status
    if result.status == "changed":
        report.skipped += 1
    elif result.status == "failed":
        log.warning("tag write failed: %s", message)
        report.failed += 1
    # A full disk counts in none of the totals (as before): the file was not handled.
    report.add_error(file_id, path, message, kind=result.error_kind)
    records.append(_record(doc, error=message, pending=True))


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
) -> WriteReport:
    """Write (or preview) the tags of every file of ``library`` with ``file_tags_pending``.

    In a dry run the counts say what a real run would do: ``written`` = files whose tags
    would change. ``durable=False`` skips the per-file fsync before the replace (faster; on a
    crash a just-written file may come back without its data on filesystems that do not
    flush a replaced file's data themselves, as ext4 does by default) — keep the default for libraries
    you care about. ``writers`` files are written at once (``0``: one per CPU, at most 4;
    ``1``: one after the other, in this process); a dry run reads files in this process.
    Raises :class:`WriteBatchStopped` when the disk is full.
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
    settings = _BatchSettings(
        mode=mode,
        has_calibration=has_calibration,
        write_raw_scores=bool(library.get("write_raw_scores")),
        library_roots=tuple(os.fspath(root) for root in library_roots),
        tagger_version_of=tagger_version_of,
        standard_mood=standard_mood,
        dry_run=dry_run,
        durable=durable,
    )
    stream = _PageStream(store, library, settings, report, batch_size, progress)
    first_page = stream.fetch(None)
    disk_full: DiskFullError | None = None
    # A dry run only reads tags (no atomic write to spread), so it never starts writers.
    with TagWriters(1 if dry_run else writers) as file_writers:
        try:
            for index, result in file_writers.run(stream.jobs(first_page), expected=len(first_page)):
                stream.count(index, result)
                if result.status == "disk_full" and disk_full is None:
                    path = _file_path(stream.job_files[index][1], library)
                    disk_full = ReportedDiskFull(path, result.strerror or "disk full")
        finally:
            # Runs on the way out of a disk-full stop too: what was written stays recorded.
            stream.record_all()
    if disk_full is not None:
        raise WriteBatchStopped(disk_full, report) from disk_full
    return report
