"""SQLite's tables (the columns of ``schema``), as migrations applied in order under
``PRAGMA user_version``."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

# Version 1. `file_tags.value` is declared without a type on purpose: no type affinity, so a
# string stays a string (ineligible for calibration) exactly as it would in ArangoDB.
_V1 = """
CREATE TABLE IF NOT EXISTS libraries (
    _key TEXT PRIMARY KEY, name TEXT, root_path TEXT, auto_write_tags INTEGER,
    file_write_mode TEXT, write_raw_scores INTEGER, created_at INTEGER, extra TEXT);
CREATE TABLE IF NOT EXISTS library_folders (
    library_id TEXT NOT NULL, path TEXT NOT NULL, mtime_ns INTEGER, entry_count INTEGER,
    PRIMARY KEY (library_id, path));
CREATE TABLE IF NOT EXISTS library_files (
    _key TEXT PRIMARY KEY, library_id TEXT, path TEXT, size INTEGER,
    mtime_ns INTEGER, duration_s REAL, scanned_at INTEGER, scan_error TEXT, analyzed_at INTEGER,
    analysis_error TEXT, calibration_hash TEXT, mood_tiers TEXT,
    file_tags_pending INTEGER NOT NULL DEFAULT 0, written_at INTEGER, write_error TEXT,
    extra TEXT);
CREATE INDEX IF NOT EXISTS idx_library_files_library_path ON library_files(library_id, path);
CREATE INDEX IF NOT EXISTS idx_library_files_calibration_hash
    ON library_files(calibration_hash);
CREATE INDEX IF NOT EXISTS idx_library_files_pending
    ON library_files(library_id, _key) WHERE file_tags_pending = 1;
CREATE TABLE IF NOT EXISTS file_tags (
    _key TEXT PRIMARY KEY, file_id TEXT NOT NULL, model_key TEXT NOT NULL,
    head_name TEXT NOT NULL, label TEXT NOT NULL, value, std REAL, calibrated_value REAL,
    nomarr_only INTEGER NOT NULL DEFAULT 1, tagger_version TEXT);
CREATE INDEX IF NOT EXISTS idx_file_tags_histogram
    ON file_tags(model_key, head_name, label, nomarr_only, value);
CREATE INDEX IF NOT EXISTS idx_file_tags_file
    ON file_tags(file_id, model_key, head_name, tagger_version);
CREATE TABLE IF NOT EXISTS calibration_state (
    _key TEXT PRIMARY KEY, model_key TEXT, head_name TEXT, label TEXT,
    calibration_def_hash TEXT, version INTEGER, histogram TEXT, p5 REAL, p95 REAL, n INTEGER,
    underflow_count INTEGER, overflow_count INTEGER, created_at INTEGER, updated_at INTEGER,
    last_computation_at INTEGER, extra TEXT);
CREATE INDEX IF NOT EXISTS idx_calibration_state_label
    ON calibration_state(model_key, head_name, label);
CREATE TABLE IF NOT EXISTS calibration_history (
    _key TEXT PRIMARY KEY, calibration_key TEXT NOT NULL, snapshot_at INTEGER, p5 REAL,
    p95 REAL, n INTEGER, underflow_count INTEGER, overflow_count INTEGER, p5_delta REAL,
    p95_delta REAL, n_delta INTEGER, extra TEXT);
CREATE INDEX IF NOT EXISTS idx_calibration_history_key
    ON calibration_history(calibration_key, snapshot_at);
"""

# Version 2: file_tags clustered by file (WITHOUT ROWID, primary key file_id, model_key,
# head_name, label), so one file's predictions are one contiguous range: reading, replacing
# and recalibrating a batch of files touches few pages, and the per-file index goes away.
_V2 = """
CREATE TABLE file_tags_v2 (
    _key TEXT NOT NULL, file_id TEXT NOT NULL, model_key TEXT NOT NULL,
    head_name TEXT NOT NULL, label TEXT NOT NULL, value, std REAL, calibrated_value REAL,
    nomarr_only INTEGER NOT NULL DEFAULT 1, tagger_version TEXT,
    PRIMARY KEY (file_id, model_key, head_name, label)) WITHOUT ROWID;
INSERT OR REPLACE INTO file_tags_v2
    SELECT _key, file_id, model_key, head_name, label, value, std, calibrated_value,
           nomarr_only, tagger_version FROM file_tags;
DROP TABLE file_tags;
ALTER TABLE file_tags_v2 RENAME TO file_tags;
CREATE INDEX idx_file_tags_histogram ON file_tags(model_key, head_name, label, nomarr_only, value);
"""

# Version 3: calibrating a prediction looks up its label's p5/p95 (finish_claimed_recalibration and
# tier_inputs do it for every row of a batch); with p5 and p95 in the index the lookup never
# visits the table (-14 % CPU for a batch's tier inputs).
_V3 = """
DROP INDEX IF EXISTS idx_calibration_state_label;
CREATE INDEX idx_calibration_state_params ON calibration_state(model_key, head_name, label, p5, p95);
"""

# Version 4: the stats of the copies tag writers are renaming into place (a JSON list of
# [size, mtime_ns], recorded before each rename), so that a scan recognises their own changes.
_V4 = """
ALTER TABLE library_files ADD COLUMN written_stats TEXT;
"""

# Version 5: analysis errors belong to (file, head), not to the file. `analysis_errors` holds
# the last failure of a head on a file, at the head's tagger_version (a changed model tries the
# file again); `library_files.analysis_error` keeps only failures of the file itself (audio
# that cannot be decoded). `analysis_claims` records which shard of a predictions run works
# on a file. Errors recorded before this version mixed both kinds, so they are cleared once
# (those files are tried again); a failed file without predictions is no longer "analysed",
# so it has nothing to recalibrate and no tag write pending.
_V5 = """
CREATE TABLE analysis_errors (
    _key TEXT PRIMARY KEY, file_id TEXT NOT NULL, model_key TEXT NOT NULL,
    head_name TEXT NOT NULL, tagger_version TEXT, error TEXT, failed_at INTEGER, extra TEXT);
CREATE INDEX idx_analysis_errors_file ON analysis_errors(file_id, model_key, head_name, tagger_version);
CREATE INDEX idx_analysis_errors_head ON analysis_errors(model_key, head_name, tagger_version);
CREATE TABLE analysis_claims (
    run_id TEXT NOT NULL, file_id TEXT NOT NULL, shard INTEGER NOT NULL, claimed_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, file_id)) WITHOUT ROWID;
CREATE INDEX idx_analysis_claims_claimed_at ON analysis_claims(claimed_at);
UPDATE library_files SET analyzed_at = NULL, file_tags_pending = 0
    WHERE analysis_error IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM file_tags t WHERE t.file_id = library_files._key);
UPDATE library_files SET analysis_error = NULL WHERE analysis_error IS NOT NULL;
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4, _V5)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to the newest version; safe to run from many processes at once."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS, start=1):
            if version < number:
                for statement in _statements(script):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> Iterable[str]:
    return (part.strip() for part in script.split(";") if part.strip())
