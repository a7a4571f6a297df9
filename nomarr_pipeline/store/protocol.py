"""The Store protocol: every operation the pipeline performs on its database, implemented by
each engine with the same collection and field names (docs/ARCHITECTURE.md §3). Documents are
plain dicts keyed by field name; timestamps are integer milliseconds since the epoch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

Doc = dict[str, Any]
TIER_INPUT_FIELDS = ("file_id", "head_name", "label", "std", "calibrated_value")

# Collections whose documents carry a key, which count/iter/put_documents move whole (the
# folder cache moves through load/save_folder_cache; analysis claims live for one run).
DOCUMENT_COLLECTIONS = (
    "libraries",
    "library_files",
    "file_tags",
    "analysis_errors",
    "calibration_state",
    "calibration_history",
)
COLLECTIONS = (*DOCUMENT_COLLECTIONS, "library_folders", "analysis_claims")

# The counts of ``Store.file_counts``.
FILE_COUNTS = (
    "total",
    "analysed",
    "analysis_errors",
    "scan_errors",
    "pending_writes",
    "write_errors",
    "written",
)


@dataclass(frozen=True)
class HeadVersion:
    """A head as the analysis query sees it: predictions with another tagger_version are stale."""

    model_key: str
    head_name: str
    tagger_version: str


@dataclass(frozen=True)
class AnalysisClaim:
    """Shard ``shard`` of predictions run ``run_id``: no file is analysed by two shards of a run,
    a retried shard takes back its own unfinished claims, claims of other runs are ignored."""

    run_id: str
    shard: int = 0


@dataclass(frozen=True)
class ClaimedFile:
    """A claimed ``library_files`` document and the heads (of those asked for) it still needs."""

    doc: Doc
    heads: tuple[HeadVersion, ...]


@dataclass(frozen=True)
class SparseHistogram:
    """Non-empty bins of one (head, label): ``(bin_index, count)`` sorted by index for values in
    ``[lo, hi]`` (``hi`` falls in the last bin); values below and above are counted apart."""

    bins: list[tuple[int, int]]
    underflow_count: int
    overflow_count: int

    @property
    def n(self) -> int:
        return sum(count for _, count in self.bins) + self.underflow_count + self.overflow_count


class StoreError(RuntimeError):
    """A database problem the user can act on (unreachable server, bad URL, bad schema)."""


class StoreFullError(StoreError):
    """The disk (or quota) holding the store is full: the write was rolled back."""


class StoreReadOnlyError(StoreError):
    """The store can be read but not written (file permissions, read-only mount)."""


@runtime_checkable
class Store(Protocol):
    """One database holding the library, predictions and calibrations."""

    engine: str
    # True where several processes write at once without waiting for each other (a server
    # engine: row locks), so e.g. recalibration finishes batches in several processes; False
    # where writers take turns (SQLite's single write lock: more writers only wait).
    concurrent_writers: bool

    def close(self) -> None: ...

    # ---- libraries -------------------------------------------------------------------
    def ensure_library(self, doc: Doc) -> Doc:
        """Insert ``doc`` (with ``_key``) unless a library with that key exists; return the stored one."""

    def get_library(self, key: str) -> Doc | None: ...

    def list_libraries(self) -> list[Doc]: ...

    def update_library(self, key: str, fields: Doc) -> None:
        """Set these fields of the library (a scan brings its settings in line with the configuration)."""

    # ---- scanning --------------------------------------------------------------------
    def load_folder_cache(self, library_id: str) -> dict[str, tuple[int, int]]:
        """Folder path -> (mtime_ns, entry_count) as saved by the last scan."""

    def save_folder_cache(self, library_id: str, folders: dict[str, tuple[int, int]]) -> None:
        """Replace the library's folder cache with ``folders``."""

    def file_index(self, library_id: str) -> dict[str, Doc]:
        """Path -> ``{"_key", "size", "mtime_ns", "written_stats"}`` for every file of the library."""

    def upsert_files(self, docs: Sequence[Doc]) -> None:
        """Insert or update ``library_files`` documents by ``_key`` (only the fields given)."""

    def delete_files(self, file_ids: Sequence[str]) -> None:
        """Remove files with their ``file_tags`` and ``analysis_errors``."""

    def delete_file_tags(self, file_ids: Sequence[str]) -> None:
        """Remove the ``file_tags`` and ``analysis_errors`` of these files (their audio changed)."""

    def get_files(self, file_ids: Sequence[str]) -> list[Doc]: ...

    def file_counts(self, library_id: str | None = None) -> Doc:
        """The :data:`FILE_COUNTS` of the library's files (or all files) as integers."""

    # ---- analysis --------------------------------------------------------------------
    def count_files_needing_analysis(self, head: HeadVersion) -> int:
        """Files that need this head: no ``scan_error``, no file-wide ``analysis_error``, and
        neither ``file_tags`` nor an ``analysis_errors`` document for this head at this
        ``tagger_version`` (a changed model is tried again)."""

    def claim_files_for_analysis(
        self, heads: Sequence[HeadVersion], claim: AnalysisClaim, limit: int, after_key: str | None = None
    ) -> list[ClaimedFile]:
        """Up to ``limit`` files (by ``_key``, after ``after_key``) that need one of ``heads`` and
        that no shard of ``claim.run_id`` holds, claimed in the same transaction, each with the
        heads it needs: callers of one run never get the same file."""

    def reclaim_files_for_analysis(
        self, heads: Sequence[HeadVersion], claim: AnalysisClaim
    ) -> list[ClaimedFile]:
        """The files ``claim`` (this run and shard) claimed earlier that still need one of
        ``heads``, ordered by ``_key``: what a shard that died left unfinished."""

    def release_analysis_claims(self, run_id: str, claimed_before_ms: int) -> int:
        """Delete the claims of ``run_id`` and every claim made before ``claimed_before_ms``
        (runs that died); returns how many."""

    def write_predictions(self, docs: Sequence[Doc]) -> None:
        """Replace each (file_id, model_key, head_name) group with the given ``file_tags``, all
        labels or none, removing the group's ``analysis_errors`` document and clearing the
        files' ``calibration_hash`` (so recalibration picks them up)."""

    def record_analysis(self, results: Sequence[Doc]) -> None:
        """``[{"_key", "analyzed_at"?, "analysis_error", "analysis_engine"?}]`` onto ``library_files``
        (``analysis_engine``: the engines that ran the file's new predictions, ``onnx+tensorflow``).
        ``analysis_error`` is a file-wide failure (the audio cannot be decoded)."""

    def record_analysis_errors(self, errors: Sequence[Doc]) -> None:
        """``[{"file_id", "model_key", "head_name", "tagger_version", "error", "failed_at",
        "model_fault"?}]``: one ``analysis_errors`` document per (file, head), replacing an
        older one; the file needs that head again once its ``tagger_version`` changes."""

    def count_files_with_analysis_errors(
        self, heads: Sequence[HeadVersion], library_id: str | None = None
    ) -> int:
        """Files with an ``analysis_errors`` document for one of ``heads`` at its version."""

    def errors_of_unproven_heads(self, heads: Sequence[HeadVersion]) -> list[Doc]:
        """The ``analysis_errors`` documents of those ``heads`` (at their version) that have
        no ``file_tags`` at that version: what tells a broken model before it is tried again."""

    def file_tags_for_files(self, file_ids: Sequence[str]) -> list[Doc]: ...

    # ---- calibration -----------------------------------------------------------------
    def histograms(
        self, model_key: str, head_name: str, labels: Sequence[str], lo: float, hi: float, bins: int
    ) -> Iterator[tuple[str, SparseHistogram]]:
        """``(label, histogram)`` for each label, in order: one grouped query per label over
        eligible ``file_tags`` (``nomarr_only``, finite number); a server engine may run a few at
        once on connections of its own."""

    def labels_of_head(self, model_key: str, head_name: str) -> list[str]:
        """Distinct labels stored for a head (sorted)."""

    def get_calibrations(self, keys: Sequence[str]) -> dict[str, Doc]:
        """The ``calibration_state`` documents of these keys (absent ones are left out), in
        ONE query: a head's labels at once."""

    def list_calibrations(self) -> list[Doc]: ...

    def save_calibrations(self, states: Sequence[Doc], history: Sequence[Doc]) -> None:
        """Upsert ``calibration_state`` documents and append ``calibration_history`` snapshots
        in one transaction (no partial computation is ever visible)."""

    def recent_history(self, calibration_keys: Sequence[str], per_key: int = 1) -> dict[str, list[Doc]]:
        """The newest ``per_key`` snapshots of each of these calibrations, newest first, in ONE
        query (a head's labels at once); calibrations without history are absent. Snapshots
        taken at the same time come newest-written first on SQLite, by ``_key`` elsewhere."""

    # ---- recalibration ---------------------------------------------------------------
    def count_files_needing_recalibration(self, expected_hash: str, library_id: str | None = None) -> int:
        """Analysed files whose ``calibration_hash`` is null or differs from ``expected_hash``."""

    def claim_files_for_recalibration(
        self, expected_hash: str, run: str, claim: str, limit: int, library_id: str | None = None
    ) -> list[str]:
        """Up to ``limit`` files needing recalibration, their ``calibration_hash`` set to ``claim``
        (which starts with ``run``) in the same statement; files holding a claim of the same run
        are skipped. A claimed file still needs recalibration until it is finished (a crash
        loses nothing); predictions written after the claim clear the hash, which voids it."""

    def tier_inputs(self, file_ids: Sequence[str]) -> list[tuple[Any, ...]]:
        """One :data:`TIER_INPUT_FIELDS` tuple per prediction of these files (tuples: the hot read
        of a recalibration), ``calibrated_value`` computed from the current calibration by the
        very expression ``finish_claimed_recalibration`` stores (null without a usable one)."""

    def finish_claimed_recalibration(
        self, claim: str, expected_hash: str, mood_tiers: Mapping[str, Doc | None]
    ) -> list[str]:
        """In ONE transaction, for the files of ``mood_tiers`` that still hold ``claim``: store each
        prediction's ``calibrated_value``, ``mood_tiers``, ``calibration_hash = expected_hash``
        and ``file_tags_pending``; returns them. A file whose claim was voided is left as it is."""

    def reset_calibration_hashes(self, library_id: str | None = None) -> int:
        """Force recalibration: set every hash to null; returns how many files."""

    # ---- tag writing -----------------------------------------------------------------
    def files_pending_write(self, library_id: str, after_key: str | None, limit: int) -> list[Doc]: ...

    def add_written_stats(self, stats: Sequence[Doc]) -> None:
        """``[{"_key", "size", "mtime_ns"}]``: append each (size, mtime_ns) to the file's
        ``written_stats`` in one transaction, keeping what other writers appended meanwhile."""

    def record_writes(self, results: Sequence[Doc]) -> None:
        """Set the given fields of existing ``library_files`` (unknown keys are ignored) in one
        transaction. With ``written_for_hash`` (the hash the file had when its tags were
        selected), ``file_tags_pending = False`` applies only while the file keeps that hash."""

    # ---- moving a store (nomarr_pipeline.store.migrate) ---------------------------------
    def count_documents(self, collection: str) -> int:
        """How many documents ``collection`` (one of :data:`DOCUMENT_COLLECTIONS`) holds."""

    def iter_documents(self, collection: str, batch_size: int = 1000) -> Iterable[list[Doc]]:
        """Every document of ``collection``, whole, in pages (keyset pagination in an order of
        the engine's choosing; each document exactly once)."""

    def put_documents(self, collection: str, docs: Sequence[Doc]) -> None:
        """Insert or replace whole documents by their key, as they are and in one transaction,
        without the pipeline's side effects (``write_predictions`` clearing hashes)."""
