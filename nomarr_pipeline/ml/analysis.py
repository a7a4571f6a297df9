"""Analysis orchestration: which files need which heads, worker dispatch, batched writes.

For the selected heads (possibly of several backbones) the store is paged per head; the
pages are merged so that each file goes to a worker once, with exactly the heads it still
needs, and each backbone runs once per file. Results are written in batches. Memory is
bounded by ``batch_size`` × number of heads, never by the library size.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nomarr_pipeline.ml.discovery import Head
from nomarr_pipeline.ml.inference import FileAnalysis
from nomarr_pipeline.ml.workers import FaultInjection, FileTask, WorkerPool
from nomarr_pipeline.store.protocol import Doc, HeadVersion, KeyRange, Store

MAX_REPORTED_ERRORS = 5


@dataclass
class HeadReport:
    """What one run did for one head."""

    partition_key: str
    analysed: int = 0  # files whose predictions were written
    failed: int = 0  # files that got an analysis_error for this head
    # files that did not need this head (current or failed before); counted over the whole
    # library only, so a shard leaves it to whoever adds the shards up
    skipped: int = 0
    seconds: float = 0.0  # worker time attributed to this head (a file's time split evenly)
    errors: list[str] = field(default_factory=list)  # the first few, for the UI

    def as_metadata(self) -> dict[str, object]:
        return {
            "analysed": self.analysed,
            "failed": self.failed,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "errors": list(self.errors),
        }


@dataclass(frozen=True)
class FileProgress:
    """Reported after each finished file."""

    done: int
    total: int  # files to analyse when the run started (the head with the most)
    file_id: str
    path: Path
    error: str | None


def shard_key_range(index: int, count: int) -> KeyRange:
    """The files of shard ``index`` of ``count``: an equal slice of the hex key space (file
    keys are SHA-1 hex digits, see :func:`nomarr_pipeline.library.identity.file_key`).

    The first shard has no lower bound and the last no upper one, so every key, hex or not,
    falls in exactly one shard.
    """
    if not 0 <= index < count:
        raise ValueError(f"shard {index} does not exist among {count} shards")

    def bound(position: int) -> str:
        return f"{(position << 32) // count:08x}"

    return KeyRange(None if index == 0 else bound(index), None if index == count - 1 else bound(index + 1))


def file_tag_key(file_id: str, model_key: str, head_name: str, label: str) -> str:
    return hashlib.sha1(f"{file_id}|{model_key}|{head_name}|{label}".encode()).hexdigest()


def head_version(head: Head) -> HeadVersion:
    return HeadVersion(head.model_key, head.head_name, head.tagger_version)


def prediction_docs(file_id: str, head: Head, values: Sequence[float],
                    stds: Sequence[float]) -> list[Doc]:
    """``file_tags`` documents for one head on one file, one per label."""
    return [
        {
            "_key": file_tag_key(file_id, head.model_key, head.head_name, label),
            "file_id": file_id,
            "model_key": head.model_key,
            "head_name": head.head_name,
            "label": label,
            "value": float(value),
            "std": float(std),
            "calibrated_value": None,
            "nomarr_only": True,
            "tagger_version": head.tagger_version,
        }
        for label, value, std in zip(head.labels, values, stds, strict=True)
    ]


class _NeededFiles:
    """Merges each head's ``files_needing_analysis`` pages into (file → heads) batches.

    Each head is paged in ``_key`` order. A batch holds every file up to the smallest
    last key among heads with more pages, so by then every head has listed all of its
    files in that range: no file is ever sent twice.
    """

    def __init__(self, store: Store, heads: Sequence[Head], page_size: int,
                 key_range: KeyRange | None) -> None:
        self._store = store
        self._page_size = page_size
        self._key_range = key_range
        self._heads = list(heads)
        self._cursor: dict[str, str | None] = {h.partition_key: None for h in heads}
        self._buffer: dict[str, deque[Doc]] = {h.partition_key: deque() for h in heads}
        self._more: dict[str, bool] = {h.partition_key: True for h in heads}

    def _refill(self) -> None:
        for head in self._heads:
            key = head.partition_key
            if self._buffer[key] or not self._more[key]:
                continue
            page = self._store.files_needing_analysis(
                head_version(head), self._cursor[key], self._page_size, self._key_range
            )
            self._buffer[key].extend(page)
            if page:
                self._cursor[key] = page[-1]["_key"]
            self._more[key] = len(page) >= self._page_size

    def next_batch(self) -> list[tuple[Doc, list[Head]]]:
        """The next files with the heads each needs; empty when everything is done."""
        self._refill()
        open_ends = [self._buffer[h.partition_key][-1]["_key"] for h in self._heads
                     if self._more[h.partition_key]]
        boundary = min(open_ends) if open_ends else None
        files: dict[str, tuple[Doc, list[Head]]] = {}
        for head in self._heads:
            buffer = self._buffer[head.partition_key]
            while buffer and (boundary is None or buffer[0]["_key"] <= boundary):
                doc = buffer.popleft()
                files.setdefault(doc["_key"], (doc, []))[1].append(head)
        return [files[key] for key in sorted(files)]


class _PathResolver:
    """Absolute audio paths: ``path`` as stored, or joined to its library's root."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._roots: dict[str, Path | None] = {}

    def __call__(self, doc: Doc) -> Path:
        path = Path(doc["path"])
        if path.is_absolute():
            return path
        library_id = doc.get("library_id")
        if library_id not in self._roots:
            library = self._store.get_library(library_id) if library_id else None
            root = library.get("root_path") if library else None
            self._roots[library_id] = Path(root) if root else None
        root_path = self._roots[library_id]
        return root_path / path if root_path else path


def analyze(
    store: Store,
    heads: Sequence[Head],
    *,
    processes: int,
    file_timeout_s: float,
    key_range: KeyRange | None = None,
    environment: Callable[[int], Mapping[str, str]] | None = None,
    batch_size: int = 64,
    progress: Callable[[FileProgress], None] | None = None,
    faults: FaultInjection | None = None,
) -> dict[str, HeadReport]:
    """Analyse every file (in ``key_range``, when given) that lacks current predictions for
    any of ``heads``.

    Returns a report per head partition key. Re-running with nothing to do writes nothing.
    ``environment`` sets up each worker's TensorFlow (see :class:`WorkerPool`); ``faults``
    is a test hook (see :class:`FaultInjection`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    heads = list({head.partition_key: head for head in heads}.values())
    reports = {head.partition_key: HeadReport(head.partition_key) for head in heads}
    if not heads:
        return reports
    needed = {head.partition_key: store.count_files_needing_analysis(head_version(head), key_range)
              for head in heads}
    if key_range is None:
        counts = store.file_counts()
        analysable = int(counts.get("total", 0)) - int(counts.get("scan_errors", 0))
        for key, count in needed.items():
            reports[key].skipped = max(0, analysable - count)
    # Each file goes out once for all its heads, so the head with the most files says how many.
    total = max(needed.values())

    needed_files = _NeededFiles(store, heads, batch_size, key_range)
    resolve_path = _PathResolver(store)
    writer = _ResultWriter(store, reports, flush_every=batch_size)
    done = 0
    with WorkerPool(processes, file_timeout_s, environment=environment, faults=faults) as pool:
        while batch := needed_files.next_batch():
            tasks = [FileTask(doc["_key"], resolve_path(doc), tuple(file_heads))
                     for doc, file_heads in batch]
            for task, result in pool.run(tasks):
                error = writer.add(task, result)
                done += 1
                if progress is not None:
                    progress(FileProgress(done, max(total, done), task.file_id, task.path, error))
            writer.flush()
    return reports


class _ResultWriter:
    """Buffers predictions and analysis outcomes; writes them in batches."""

    def __init__(self, store: Store, reports: dict[str, HeadReport], flush_every: int) -> None:
        self._store = store
        self._reports = reports
        self._flush_every = flush_every
        self._predictions: list[Doc] = []
        self._analysed: list[Doc] = []

    def add(self, task: FileTask, result: FileAnalysis) -> str | None:
        """Record one file's result; returns its analysis_error (None when all heads worked)."""
        heads = {head.partition_key: head for head in task.heads}
        share = result.duration_s / max(1, len(task.heads))
        errors: list[str] = []
        for outcome in result.outcomes:
            head = heads[outcome.partition_key]
            report = self._reports[outcome.partition_key]
            report.seconds += share
            if outcome.error is None:
                self._predictions.extend(
                    prediction_docs(task.file_id, head, outcome.values, outcome.stds)
                )
                report.analysed += 1
            else:
                errors.append(outcome.error)
                report.failed += 1
                if len(report.errors) < MAX_REPORTED_ERRORS:
                    report.errors.append(f"{task.path.name}: {outcome.error}")
        # A file-wide failure repeats the same message for every head: say it once.
        error = "; ".join(dict.fromkeys(errors)) or None
        self._analysed.append(
            {"_key": task.file_id, "analyzed_at": int(time.time() * 1000),
             "analysis_error": error}
        )
        if len(self._analysed) >= self._flush_every:
            self.flush()
        return error

    def flush(self) -> None:
        # Predictions first: a file is only marked analysed once its values are stored.
        if self._predictions:
            self._store.write_predictions(self._predictions)
            self._predictions = []
        if self._analysed:
            self._store.record_analysis(self._analysed)
            self._analysed = []
