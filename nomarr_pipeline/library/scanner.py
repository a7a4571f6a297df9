"""Scan library roots into ``library_files``: new, changed and removed files, errors per file.

A changed file (its size or mtime is neither the one stored nor the one a tag writer recorded
for the copy it renames into place) loses its analysis state and predictions so it is analysed
again; a removed file is deleted with its predictions. Before a file counts as changed, its
stored stat is read again: a tag writer may have written it since the scan read the index.
Files in a folder that could not be read are kept as they were: an unreadable folder is not a
deleted one. :func:`rescan_files` does the same for given files, wherever they are (a tag
writer found them changed on disk by another program, in a folder whose mtime did not move).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mutagen

from nomarr_pipeline.library.identity import displayable, file_key, is_valid_utf8, library_key
from nomarr_pipeline.library.walk import SeenFile, Walk, not_regular, walk_library, within
from nomarr_pipeline.store import Doc, Store

WRITE_BATCH = 1000

# Times a changed file is read again after the store while a writer is renaming it.
_STILL_ROUNDS = 3
# Fields a changed file loses so that it is analysed, calibrated and written again.
STALE_ANALYSIS_RESET: Doc = {
    "analyzed_at": None,
    "analysis_error": None,
    "calibration_hash": None,
    "mood_tiers": None,
    "file_tags_pending": False,
    "written_at": None,
    "write_error": None,
    "written_stats": None,
}


@dataclass(frozen=True)
class FileStat:
    """What the scanner compares to decide whether a file changed: the (size, mtime_ns) the scan
    recorded and ``written``, the stats of the copies tag writers are renaming into place
    (``library_files.written_stats``, recorded before each rename, which keeps both)."""

    key: str
    size: int
    mtime_ns: int
    written: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> FileStat:
        written = tuple((int(size), int(mtime_ns)) for size, mtime_ns in doc.get("written_stats") or ())
        return cls(doc["_key"], doc.get("size") or 0, doc.get("mtime_ns") or 0, written)

    @property
    def known(self) -> tuple[tuple[int, int], ...]:
        """Every (size, mtime_ns) under which the file is the one the scan saw."""
        return ((self.size, self.mtime_ns), *self.written)

    def matches(self, size: int, mtime_ns: int) -> bool:
        return (size, mtime_ns) in self.known


@dataclass
class ScanReport:
    library_id: str
    root: str
    total: int = 0
    new: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    errors: int = 0
    folders: int = 0
    folders_skipped: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class LibraryDefaults:
    """A library's settings as configured; each scan writes them onto the library document."""

    file_write_mode: str = "full"
    auto_write_tags: bool = False
    write_raw_scores: bool = False


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ensure_library(store: Store, root: Path, defaults: LibraryDefaults) -> Doc:
    """The library document of ``root``, its settings brought in line with ``defaults`` (the
    configuration the scan runs with: a changed write mode applies from this scan on)."""
    resolved = root.resolve()
    settings = asdict(defaults)
    library = store.ensure_library(
        {
            "_key": library_key(resolved),
            "name": resolved.name or str(resolved),
            "root_path": str(resolved),
            "created_at": now_ms(),
            **settings,
        }
    )
    changed = {field: value for field, value in settings.items() if library.get(field) != value}
    if changed:
        store.update_library(library["_key"], changed)
    return {**library, **changed}


def scan_library(
    store: Store,
    root: Path,
    defaults: LibraryDefaults = LibraryDefaults(),
    *,
    full: bool = False,
    probe: Callable[[str], float | None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ScanReport:
    """Bring ``library_files`` in line with the folder ``root``. Never raises for one bad file.

    Probed files are stored a batch at a time, so an interrupted first scan of a large library
    keeps what it read; ``progress(done, total)`` follows the files seen in the walk.
    """
    started = time.perf_counter()
    if not root.is_dir():
        raise NotADirectoryError(f"library root {root} is not a folder (or cannot be reached)")
    library = ensure_library(store, root, defaults)
    library_id, root_path = library["_key"], library["root_path"]
    cache = store.load_folder_cache(library_id)
    walk = walk_library(root_path, cache, full=full)
    report = ScanReport(library_id=library_id, root=root_path, folders=len(walk.folders))
    report.folders_skipped = len(walk.unchanged_folders)
    if _nothing_changed(walk, cache):
        # Every folder as the cache has it: no file can be new, changed or gone, so the file
        # index (some 400 bytes per file in memory) is not even read.
        report.total = report.unchanged = store.file_counts(library_id)["total"]
        report.seconds = time.perf_counter() - started
        return report
    index = {path: FileStat.of(doc) for path, doc in store.file_index(library_id).items()}
    probe = probe or audio_duration

    upserts: list[Doc] = []
    candidates: list[tuple[SeenFile, FileStat]] = []  # known files whose stat differs
    seen: set[str] = set()
    scanned_at = now_ms()

    def flush() -> None:
        changed = _changed_docs(store, library_id, root_path, candidates, scanned_at, probe)
        report.changed += len(changed)
        report.unchanged += len(candidates) - len(changed)
        report.errors += sum(doc["scan_error"] is not None for doc in changed)
        _store(store, upserts, changed)
        candidates.clear()
        upserts.clear()

    for done, item in enumerate(walk.files, start=1):
        seen.add(item.path)
        known = index.get(item.path)
        if known is None:
            doc = _file_doc(library_id, root_path, item, scanned_at, probe)
            report.new += 1
            report.errors += doc["scan_error"] is not None
            upserts.append(doc)
        elif known.matches(item.size, item.mtime_ns):
            report.unchanged += 1
        else:
            candidates.append((item, known))
        if len(upserts) + len(candidates) >= WRITE_BATCH:
            flush()
        if progress is not None and (done % WRITE_BATCH == 0 or done == len(walk.files)):
            progress(done, len(walk.files))
    for path, reason in [*walk.file_errors.items(), *walk.unreadable_folders.items()]:
        seen.add(path)
        upserts.append(_path_doc(library_id, root_path, path, reason, scanned_at))
        report.errors += 1
    flush()

    removed = _removed(index, seen, walk)
    report.removed = len(removed)
    # Known files in unchanged or unreadable folders are kept as they are.
    report.unchanged += sum(1 for path in index if path not in seen and path not in removed)

    removed_keys = [index[path].key for path in removed]
    for start in range(0, len(removed_keys), WRITE_BATCH):
        store.delete_files(removed_keys[start : start + WRITE_BATCH])
    # Saved last: a crash before this point makes the next scan look at every folder again.
    store.save_folder_cache(library_id, walk.folders)
    report.total = store.file_counts(library_id)["total"]
    report.seconds = time.perf_counter() - started
    return report


def rescan_files(
    store: Store, library: Doc, docs: Sequence[Doc], probe: Callable[[str], float | None] | None = None
) -> int:
    """Stat the files ``docs`` of ``library`` again and record those changed on disk as a scan
    would (new stat and duration, predictions dropped, analysed and written again); returns how
    many. A file that is gone is left to the next scan of its folder."""
    candidates, errors, scanned_at = [], [], now_ms()
    for doc in docs:
        try:
            info = os.stat(doc["path"])
        except OSError:
            continue
        if reason := not_regular(info):  # never opened: reading a FIFO would block
            errors.append(_path_doc(library["_key"], library["root_path"], doc["path"], reason, scanned_at))
        else:
            candidates.append((SeenFile(doc["path"], info.st_size, info.st_mtime_ns), FileStat.of(doc)))
    changed = _changed_docs(
        store, library["_key"], library["root_path"], candidates, scanned_at, probe or audio_duration
    )
    _store(store, errors, changed)
    return len(changed)


def _changed_docs(
    store: Store,
    library_id: str,
    root: str,
    candidates: Sequence[tuple[SeenFile, FileStat]],
    scanned_at: int,
    probe: Callable[[str], float | None],
) -> list[Doc]:
    """New documents for the ``candidates`` changed on disk. A tag writer records its copy's
    stat before renaming it into place, so the store is read again and then the file: it
    counts as changed when that stat is unknown to the store and the file held still since the
    walk. A file still moving after a few rounds is left to the next scan."""
    changed: list[Doc] = []
    for _ in range(_STILL_ROUNDS):
        if not candidates:
            break
        current = {
            doc["_key"]: FileStat.of(doc) for doc in store.get_files([known.key for _, known in candidates])
        }
        moving = []
        for item, known in candidates:
            try:
                info = os.stat(item.path)
            except OSError:
                continue  # gone: the next scan of its folder
            again = SeenFile(item.path, info.st_size, info.st_mtime_ns)
            now = current.get(known.key)
            if now is not None and now.matches(again.size, again.mtime_ns):
                continue
            if again == item:
                doc = _file_doc(library_id, root, item, scanned_at, probe)
                changed.append({**doc, **STALE_ANALYSIS_RESET})
            else:
                moving.append((again, known))
        candidates = moving
    return changed


def _store(store: Store, new: list[Doc], changed: list[Doc]) -> None:
    # A changed file's old predictions go before its new scan fields land.
    if changed:
        store.delete_file_tags([doc["_key"] for doc in changed])
    if new or changed:
        store.upsert_files(new + changed)


def _file_doc(
    library_id: str, root: str, item: SeenFile, scanned_at: int, probe: Callable[[str], float | None]
) -> Doc:
    doc: Doc = {
        **_path_doc(library_id, root, item.path, None, scanned_at),
        "size": item.size,
        "mtime_ns": item.mtime_ns,
        "duration_s": None,
    }
    if not is_valid_utf8(item.path):
        doc["scan_error"] = "file name is not valid UTF-8; rename the file to analyse it"
    elif item.size == 0:
        doc["scan_error"] = "empty file (0 bytes)"
    else:
        try:
            doc["duration_s"] = probe(item.path)
        except FileNotFoundError:
            doc["scan_error"] = "file vanished during the scan"
        except Exception as exc:  # mutagen raises many types for damaged files
            doc["scan_error"] = f"not readable as audio: {type(exc).__name__}: {exc}"
        else:
            if doc["duration_s"] is None:
                doc["scan_error"] = "not a recognised audio file"
    return doc


def _path_doc(library_id: str, root: str, path: str, reason: str | None, scanned_at: int) -> Doc:
    return {
        "_key": file_key(library_id, os.path.relpath(path, root)),
        "library_id": library_id,
        "path": displayable(path),
        "size": None,
        "mtime_ns": None,
        "scanned_at": scanned_at,
        "scan_error": reason,
    }


def audio_duration(path: str) -> float | None:
    """Duration in seconds via mutagen; ``None`` when mutagen does not recognise the file."""
    audio = mutagen.File(path)
    if audio is None or audio.info is None:
        return None
    return float(audio.info.length)


def _nothing_changed(walk: Walk, cache: dict[str, tuple[int, int]]) -> bool:
    """Every folder unchanged, none gone, none unreadable (a removed folder changes its
    parent's stamp; a stamp is (mtime, entry count))."""
    return (
        not walk.files
        and not walk.file_errors
        and not walk.unreadable_folders
        and len(walk.unchanged_folders) == len(walk.folders) == len(cache)
    )


def _removed(index: dict[str, FileStat], seen: set[str], walk: Walk) -> set[str]:
    """Known paths that are gone: not seen, and not in a folder that was skipped as unchanged
    or could not be read (an unreadable folder is not a deleted one)."""
    return {
        path
        for path in index
        if path not in seen
        and os.path.dirname(path) not in walk.unchanged_folders
        and not any(within(path, folder) for folder in walk.unreadable_folders)
    }
