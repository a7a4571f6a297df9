"""Analysis orchestration: which files need which heads, worker dispatch, batched writes.

Files are claimed from the store a few at a time, each with exactly the heads it still needs
(one backbone pass per file for all of them). Shards of one run claim from the same store, so
a fast machine takes more files and no file is analysed twice. Memory is bounded by
``batch_size`` × number of heads, never by the library size.

Undecodable audio fails the file (until it changes); anything else fails one (file, head) at the
head's ``tagger_version``. A head whose first files all fail with the same model fault is a broken
model: stopped for this run and, until its ``tagger_version`` changes, the next ones.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nomarr_pipeline.ml.discovery import Head
from nomarr_pipeline.ml.inference import FileAnalysis, HeadOutcome
from nomarr_pipeline.ml.workers import FileTask, WorkerPool
from nomarr_pipeline.store.protocol import AnalysisClaim, ClaimedFile, Doc, HeadVersion, Store

MAX_REPORTED_ERRORS = 5
# A head whose first this many failures (before any success) are the same model fault is a
# broken model: more files would only fail the same way.
BROKEN_AFTER = 3


@dataclass
class HeadReport:
    """What one run did for one head."""

    partition_key: str
    engines: str = ""  # what ran it (Head.engines)
    analysed: int = 0  # files whose predictions were written
    failed: int = 0  # files that failed for this head (an analysis_errors document or the file's own error)
    # files that did not need this head (current or failed before); counted over the whole
    # library only, so a shard leaves it to whoever adds the shards up
    skipped: int = 0
    seconds: float = 0.0  # worker time attributed to this head (a file's time split evenly)
    errors: list[str] = field(default_factory=list)  # the first few, for the UI
    faults: dict[str, int] = field(default_factory=dict)  # model fault -> files it failed
    broken: str | None = None  # the model fault that stopped this head, if it was stopped

    def as_metadata(self) -> dict[str, object]:
        metadata = asdict(self)
        del metadata["partition_key"]
        return {**metadata, "seconds": round(self.seconds, 3)}

    def broken_model(self) -> str | None:
        """The fault of a broken model: one that was stopped, or that worked on no file and
        failed with one and the same model fault (how reports added up across shards, each
        seeing fewer than :data:`BROKEN_AFTER` files, are judged)."""
        if self.broken:
            return self.broken
        if self.analysed == 0 and len(self.faults) == 1:
            return next(iter(self.faults))
        return None


@dataclass(frozen=True)
class FileProgress:
    """Reported after each finished file."""

    done: int
    total: int  # files this analysis expects to do (an estimate for one of several shards)
    file_id: str
    path: Path
    error: str | None


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


class _BrokenModels:
    """Tells broken models from bad files by each head's first outcomes."""

    def __init__(self) -> None:
        self._working: set[str] = set()
        self._faults: dict[str, list[str]] = {}
        self.broken: dict[str, str] = {}  # partition key -> the model fault

    def observe(self, outcome: HeadOutcome) -> str | None:
        """Take one outcome into account; the fault when it makes its head broken."""
        key = outcome.partition_key
        if key in self._working or key in self.broken:
            return None
        if outcome.error is None:
            self._working.add(key)
            return None
        if outcome.model_fault is None:
            return None  # the file's trouble (too short, a worker crash): says nothing of the model
        faults = self._faults.setdefault(key, [])
        faults.append(outcome.model_fault)
        if len(faults) < BROKEN_AFTER:
            return None
        if len(set(faults)) > 1:
            self._working.add(key)  # different faults on different files: not one broken model
            return None
        self.broken[key] = faults[0]
        return faults[0]


def remembered_broken_models(store: Store, heads: Sequence[Head]) -> dict[str, str]:
    """Heads found broken by an earlier run, partition key -> model fault: at their current
    ``tagger_version``, no prediction and at least :data:`BROKEN_AFTER` failed files, every one
    with the same model fault."""
    versions = {head_version(head): head.partition_key for head in heads}
    faults: dict[str, list[str | None]] = {}
    for error in store.errors_of_unproven_heads(list(versions)):
        version = HeadVersion(error["model_key"], error["head_name"], error["tagger_version"])
        faults.setdefault(versions[version], []).append(error.get("model_fault"))
    return {key: found[0] for key, found in faults.items()
            if len(found) >= BROKEN_AFTER and found[0] is not None and len(set(found)) == 1}


def _claimed_tasks(store: Store, heads: Sequence[Head], claim: AnalysisClaim, claim_size: int,
                   broken: _BrokenModels) -> Iterator[FileTask]:
    """The tasks of one analysis, claimed a few files at a time as workers need them: first the
    files this claim holds from an attempt that died, then new ones. Heads found broken since
    the claim are left out (a file needing only those waits for a repaired model)."""
    by_version = {head_version(head): head for head in heads}
    resolve = _PathResolver(store)

    def active() -> list[HeadVersion]:
        return [version for version, head in by_version.items() if head.partition_key not in broken.broken]

    def tasks(claimed: Sequence[ClaimedFile]) -> Iterator[FileTask]:
        for file in claimed:
            working = tuple(by_version[v] for v in file.heads
                            if by_version[v].partition_key not in broken.broken)
            if working:
                yield FileTask(file.doc["_key"], resolve(file.doc), working)

    yield from tasks(store.reclaim_files_for_analysis(active(), claim))
    after: str | None = None
    while versions := active():
        claimed = store.claim_files_for_analysis(versions, claim, claim_size, after)
        if not claimed:
            return
        after = claimed[-1].doc["_key"]
        yield from tasks(claimed)


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
    claim: AnalysisClaim | None = None,
    shards: int = 1,
    environment: Callable[[int], Mapping[str, str]] | None = None,
    batch_size: int = 64,
    progress: Callable[[FileProgress], None] | None = None,
) -> dict[str, HeadReport]:
    """Analyse every file that lacks current predictions for any of ``heads``, claiming them
    for ``claim`` (one shard of ``shards`` of a run; without one, a run of its own); a report
    per head partition key. ``environment`` sets up each worker (see :class:`WorkerPool`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    heads = list({head.partition_key: head for head in heads}.values())
    reports = {head.partition_key: HeadReport(head.partition_key, head.engines) for head in heads}
    if not heads:
        return reports
    needed = {head.partition_key: store.count_files_needing_analysis(head_version(head)) for head in heads}
    own_run = claim is None
    if claim is None:
        claim = AnalysisClaim(f"analysis-{uuid.uuid4()}")
        counts = store.file_counts()
        analysable = int(counts.get("total", 0)) - int(counts.get("scan_errors", 0))
        for key, count in needed.items():
            reports[key].skipped = max(0, analysable - count)
    broken = _BrokenModels()
    # Not tried on another file: their failures are already stored.
    broken.broken = remembered_broken_models(store, heads)
    for key, fault in broken.broken.items():
        reports[key].broken = fault
    # Each file goes out once for all its heads, so the head with the most files says how
    # many; a shard expects its share (more or fewer, as its machine is faster or slower).
    total = -(-max((n for key, n in needed.items() if key not in broken.broken), default=0) // max(1, shards))
    # As many files as the workers take at once: shards end within about one file of each other.
    tasks = _claimed_tasks(store, heads, claim, claim_size=max(1, processes), broken=broken)
    writer = _ResultWriter(store, reports, flush_every=batch_size)
    done = 0
    try:
        with WorkerPool(processes, file_timeout_s, environment=environment) as pool:
            for task, result in pool.run(tasks):
                error = writer.add(task, result)
                for outcome in result.outcomes:
                    if fault := broken.observe(outcome):
                        reports[outcome.partition_key].broken = fault
                done += 1
                if progress is not None:
                    progress(FileProgress(done, max(total, done), task.file_id, task.path, error))
        writer.flush()
    finally:
        if own_run:
            store.release_analysis_claims(claim.run_id, claimed_before_ms=0)
    return reports


class _ResultWriter:
    """Buffers predictions and analysis outcomes; writes them in batches."""

    def __init__(self, store: Store, reports: dict[str, HeadReport], flush_every: int) -> None:
        self._store = store
        self._reports = reports
        self._flush_every = flush_every
        self._predictions: list[Doc] = []
        self._head_errors: list[Doc] = []
        self._analysed: list[Doc] = []

    def add(self, task: FileTask, result: FileAnalysis) -> str | None:
        """Record one file's result; returns what failed on it (None when every head worked)."""
        heads = {head.partition_key: head for head in task.heads}
        share = result.duration_s / max(1, len(task.heads))
        now = int(time.time() * 1000)
        errors: list[str] = []
        engines: set[str] = set()
        for outcome in result.outcomes:
            head = heads[outcome.partition_key]
            report = self._reports[outcome.partition_key]
            report.seconds += share
            if outcome.error is None:
                self._predictions.extend(
                    prediction_docs(task.file_id, head, outcome.values, outcome.stds)
                )
                report.analysed += 1
                engines.update(head.engines.split("+"))
                continue
            errors.append(outcome.error)
            report.failed += 1
            if outcome.model_fault is not None:
                report.faults[outcome.model_fault] = report.faults.get(outcome.model_fault, 0) + 1
            if len(report.errors) < MAX_REPORTED_ERRORS:
                report.errors.append(f"{task.path.name}: {outcome.error}")
            if result.file_error is None:
                self._head_errors.append({
                    "file_id": task.file_id, "model_key": head.model_key, "head_name": head.head_name,
                    "tagger_version": head.tagger_version, "error": outcome.error, "failed_at": now,
                    **({"model_fault": outcome.model_fault} if outcome.model_fault else {}),
                })
        if result.file_error is not None:
            # The audio itself: no head can use it until the file changes. analyzed_at stays as it
            # was (none for a new file: a file never analysed has nothing to recalibrate or write).
            self._analysed.append({"_key": task.file_id, "analysis_error": result.file_error})
        else:
            # Which engines produced this file's new predictions (the model is the same model
            # on either: stored for the record, never compared).
            self._analysed.append({"_key": task.file_id, "analyzed_at": now, "analysis_error": None,
                                   **({"analysis_engine": "+".join(sorted(engines))} if engines else {})})
        if len(self._analysed) >= self._flush_every:
            self.flush()
        # A file-wide failure repeats the same message for every head: say it once.
        return "; ".join(dict.fromkeys(errors)) or None

    def flush(self) -> None:
        # Predictions first: a file is only marked analysed once its values are stored, and
        # a head's failure only once the heads that worked are stored.
        if self._predictions:
            self._store.write_predictions(self._predictions)
            self._predictions = []
        if self._head_errors:
            self._store.record_analysis_errors(self._head_errors)
            self._head_errors = []
        if self._analysed:
            self._store.record_analysis(self._analysed)
            self._analysed = []
