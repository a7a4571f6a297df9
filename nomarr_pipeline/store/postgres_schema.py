"""PostgreSQL's tables: the columns of ``schema``, the rest of a document in ``extra`` (jsonb).
Text columns compare as ``COLLATE "C"`` (bytes, like SQLite), so keyset pages and sort orders
agree between the engines.

Migrations are a list of scripts applied in order; ``nomarr_meta`` holds the schema version.
Each runs in one transaction under an advisory lock, so two processes opening a fresh
database at once wait for each other instead of racing.
"""

from __future__ import annotations

from typing import Any

# Any constant unique to this project: pg_advisory_xact_lock(key) serialises migrations.
MIGRATION_LOCK_KEY = 0x6E6F6D617272  # "nomarr"

_V1 = """
CREATE TABLE nomarr_meta (
    _key text COLLATE "C" PRIMARY KEY, version integer NOT NULL, updated_at bigint);
CREATE TABLE libraries (
    _key text COLLATE "C" PRIMARY KEY, name text, root_path text, auto_write_tags boolean,
    file_write_mode text, write_raw_scores boolean, created_at bigint, extra jsonb);
CREATE TABLE library_folders (
    library_id text COLLATE "C" NOT NULL, path text COLLATE "C" NOT NULL, mtime_ns bigint,
    entry_count bigint, PRIMARY KEY (library_id, path));
CREATE TABLE library_files (
    _key text COLLATE "C" PRIMARY KEY, library_id text COLLATE "C", path text COLLATE "C",
    size bigint, mtime_ns bigint, duration_s double precision, scanned_at bigint, scan_error text,
    analyzed_at bigint, analysis_error text, calibration_hash text COLLATE "C", mood_tiers jsonb,
    file_tags_pending boolean NOT NULL DEFAULT false, written_at bigint, write_error text,
    written_stats jsonb, extra jsonb) WITH (fillfactor = 90);
-- file_index(): the scanner's whole index of a library without visiting the table.
CREATE INDEX idx_library_files_library_path ON library_files (library_id, path)
    INCLUDE (_key, size, mtime_ns, written_stats);
-- count/claim files needing recalibration: three range scans (null, below, above the hash).
CREATE INDEX idx_library_files_calibration_hash ON library_files (calibration_hash);
-- files_pending_write().
CREATE INDEX idx_library_files_pending ON library_files (library_id, _key) WHERE file_tags_pending;
-- One (file, head)'s labels are one primary-key range: replacing, reading and recalibrating
-- a batch of files goes by file. Half of each page is left free so that a recalibration's
-- update of calibrated_value stays on its page (a HOT update: no index is touched). At 90 %
-- most updates moved rows and rewrote both indexes: 3.4x slower to finish a batch of 1,000
-- files (docs/BENCHMARKS.md). The histogram reads only its index, never these pages.
CREATE TABLE file_tags (
    _key text COLLATE "C" NOT NULL, file_id text COLLATE "C" NOT NULL,
    model_key text COLLATE "C" NOT NULL, head_name text COLLATE "C" NOT NULL,
    label text COLLATE "C" NOT NULL, value double precision, std double precision,
    calibrated_value double precision, nomarr_only boolean NOT NULL DEFAULT true,
    tagger_version text COLLATE "C",
    PRIMARY KEY (file_id, model_key, head_name, label)) WITH (fillfactor = 50);
-- histogram(), labels_of_head() and count_predictions(): index-only scans per (head, label).
CREATE INDEX idx_file_tags_histogram ON file_tags (model_key, head_name, label, nomarr_only, value)
    INCLUDE (file_id);
CREATE TABLE calibration_state (
    _key text COLLATE "C" PRIMARY KEY, model_key text COLLATE "C", head_name text COLLATE "C",
    label text COLLATE "C", calibration_def_hash text, version integer, histogram jsonb,
    p5 double precision, p95 double precision, n bigint, underflow_count bigint,
    overflow_count bigint, created_at bigint, updated_at bigint, last_computation_at bigint,
    extra jsonb);
-- Calibrating a prediction joins its label's p5/p95 without visiting the table; one state
-- per label (its _key is "{model_key}:{head_name}:{label}"), so the join is well defined.
CREATE UNIQUE INDEX idx_calibration_state_params ON calibration_state (model_key, head_name, label)
    INCLUDE (p5, p95);
CREATE TABLE calibration_history (
    _key text COLLATE "C" PRIMARY KEY, calibration_key text COLLATE "C" NOT NULL,
    snapshot_at bigint, p5 double precision, p95 double precision, n bigint,
    underflow_count bigint, overflow_count bigint, p5_delta double precision,
    p95_delta double precision, n_delta bigint, extra jsonb,
    -- insertion order breaks ties between snapshots of the same millisecond
    seq bigint GENERATED ALWAYS AS IDENTITY);
CREATE INDEX idx_calibration_history_key ON calibration_history (calibration_key, snapshot_at, seq);
"""

# Analysis errors per (file, head) and the claims of predictions runs (SQLite's version 5 says
# why, and why earlier errors are cleared once).
_V2 = """
CREATE TABLE analysis_errors (
    _key text COLLATE "C" PRIMARY KEY, file_id text COLLATE "C" NOT NULL,
    model_key text COLLATE "C" NOT NULL, head_name text COLLATE "C" NOT NULL,
    tagger_version text COLLATE "C", error text, failed_at bigint, extra jsonb);
-- the analysis queries' probe per (file, head), and deletes by file
CREATE INDEX idx_analysis_errors_file ON analysis_errors (file_id, model_key, head_name, tagger_version);
-- count_files_with_analysis_errors() per head
CREATE INDEX idx_analysis_errors_head ON analysis_errors (model_key, head_name, tagger_version);
CREATE TABLE analysis_claims (
    run_id text COLLATE "C" NOT NULL, file_id text COLLATE "C" NOT NULL, shard integer NOT NULL,
    claimed_at bigint NOT NULL, PRIMARY KEY (run_id, file_id));
CREATE INDEX idx_analysis_claims_claimed_at ON analysis_claims (claimed_at);
UPDATE library_files SET analyzed_at = NULL, file_tags_pending = false
    WHERE analysis_error IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM file_tags t WHERE t.file_id = library_files._key);
UPDATE library_files SET analysis_error = NULL WHERE analysis_error IS NOT NULL;
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2)
SCHEMA_VERSION = len(MIGRATIONS)


def as_double(value: Any) -> float | None:
    """A prediction value as a double precision column holds it. Anything that is not a
    number (a string, say) is stored as null: ineligible for calibration, as it is on the
    other engines."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
