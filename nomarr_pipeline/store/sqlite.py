"""The embedded default store: SQLite with WAL, a busy timeout and one connection per
process and thread, opened lazily (Dagster runs each step in its own process)."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from nomarr_pipeline.store.protocol import (
    AnalysisClaim,
    ClaimedFile,
    HeadVersion,
    StoreError,
    StoreFullError,
    StoreReadOnlyError,
)
from nomarr_pipeline.store.schema import FILE_TAGS, Doc, check_claim, file_tag_rows
from nomarr_pipeline.store.sql import ANALYSABLE, NEEDS_RECALIBRATION, NEEDS_SOME_HEAD, Dialect, SqlStore

T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000
# Writers of several processes back to back keep automatic checkpoints from reaching the end
# of the WAL, which then grows without bound: a writer that finds it this large waits for a
# full checkpoint, after which the next writer restarts the WAL and truncates it to this size.
WAL_LIMIT_BYTES = 64 * 1024 * 1024


def _heads_json(heads: Sequence[HeadVersion]) -> Doc:
    return {"heads": json.dumps([[h.model_key, h.head_name, h.tagger_version] for h in heads])}


DIALECT = Dialect(
    in_list="{column} IN (SELECT value FROM json_each(:{param}))",
    list_value=lambda values: json.dumps(list(values)),
    # The heads of an analysis query, bound as one JSON list of [model_key, head_name, tagger_version].
    heads="""WITH heads(position, model_key, head_name, tagger_version) AS (
        SELECT key, value ->> 0, value ->> 1, value ->> 2 FROM json_each(:heads))""",
    heads_params=_heads_json,
    merge_extra="extra = json_patch(coalesce({current}, '{{}}'), {new})",
    # A finite REAL lies strictly between these; 9e999 is SQLite's literal for +infinity.
    finite="typeof({v}) IN ('real', 'integer') AND {v} > -9e999 AND {v} < 9e999",
    bin_index="MIN(CAST({x} AS INTEGER), :bins - 1)",
    append_stat="json_insert(coalesce(written_stats, '[]'), '$[#]', json_array(:size, :mtime_ns))",
    pending="file_tags_pending = 1",
)


class SqliteStore(SqlStore):
    engine = "sqlite"
    concurrent_writers = False
    dialect = DIALECT

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()

    def __reduce__(self) -> tuple[type[SqliteStore], tuple[Path]]:
        # A worker process gets the path and opens its own connection on first use.
        return (SqliteStore, (self.path,))

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        parts = urlsplit(url)
        raw = unquote(parts.path)
        if parts.netloc or not raw.startswith("/") or raw == "/":
            raise StoreError(
                f"a SQLite URL names a file as SQLAlchemy does: sqlite:///nomarr.db (relative to the "
                f"working folder) or sqlite:////data/nomarr.db (absolute); got {url!r}"
            )
        # sqlite:////abs/path leaves "//abs/path"; sqlite:///rel/path leaves "/rel/path".
        return cls(Path(raw[1:]).absolute())

    # ---- connection ------------------------------------------------------------------
    @property
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        if not self.path.parent.is_dir():
            # Never create folders: a mistyped path must not start an empty store somewhere.
            raise StoreError(f"the folder of the SQLite store {self.path} does not exist")
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
            migrate(conn)
        except sqlite3.OperationalError as exc:
            raise self._failure(exc, "cannot open") from exc
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the SQLite store at {self.path}: {exc}") from exc
        self._local.conn = conn
        self._local.pid = os.getpid()
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None

    def _failure(self, exc: sqlite3.OperationalError, doing: str) -> StoreError:
        """A clear :class:`StoreError` for what the disk or the file refused."""
        name = getattr(exc, "sqlite_errorname", "")
        if name == "SQLITE_FULL":
            return StoreFullError(f"the disk holding the SQLite store {self.path} is full ({exc})")
        if name.startswith("SQLITE_READONLY"):
            return StoreReadOnlyError(f"the SQLite store {self.path} is read-only ({exc})")
        if name == "SQLITE_CANTOPEN" and (why := unwritable(self.path)):
            # "unable to open database file": SQLite writes a -wal and a -shm file beside the store.
            return StoreReadOnlyError(
                f"the SQLite store {self.path} cannot be opened: {why} (SQLite writes its -wal and "
                "-shm files beside the store, even to read)"
            )
        return StoreError(f"{doing} the SQLite store at {self.path}: {exc}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; taken IMMEDIATE so concurrent writers queue on busy_timeout.
        A full disk or a read-only file ends it as a :class:`StoreError`, rolled back."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL)
                    conn.execute("ROLLBACK")
                raise
            self._bound_wal(conn)
        except sqlite3.OperationalError as exc:
            raise self._failure(exc, "cannot write to") from exc

    def _bound_wal(self, conn: sqlite3.Connection) -> None:
        try:
            size = os.stat(f"{self.path}-wal").st_size
        except OSError:
            return
        if size <= WAL_LIMIT_BYTES:
            return
        # The checkpoint waits (busy_timeout) for the other connections' transactions, but
        # not for another process's automatic checkpoint: that one ends within milliseconds.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.01)

    def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return work(self._conn)

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._transaction() as conn:
            return work(conn)

    # ---- analysis ----------------------------------------------------------------------
    def claim_files_for_analysis(
        self, heads: Sequence[HeadVersion], claim: AnalysisClaim, limit: int, after_key: str | None = None
    ) -> list[ClaimedFile]:
        params = {**_heads_json(heads), "run_id": claim.run_id, "after": after_key or "", "limit": limit}
        with self._transaction() as conn:  # IMMEDIATE: claimers of a run queue, never overlap
            keys = [row[0] for row in conn.execute(_CLAIMABLE_FOR_ANALYSIS, params)]
            now = int(time.time() * 1000)
            conn.executemany(
                "INSERT INTO analysis_claims (run_id, file_id, shard, claimed_at) VALUES (?, ?, ?, ?)",
                [(claim.run_id, key, claim.shard, now) for key in keys],
            )
            return self._claimed_files(conn, keys, heads)

    def write_predictions(self, docs: Sequence[Doc]) -> None:
        rows = file_tag_rows(docs)
        groups = sorted({key[:3] for key in rows})
        with self._transaction() as conn:
            for table in ("file_tags", "analysis_errors"):
                conn.executemany(
                    f"DELETE FROM {table} WHERE file_id = ? AND model_key = ? AND head_name = ?", groups
                )
            conn.executemany(
                f"INSERT INTO file_tags ({', '.join(FILE_TAGS.columns)}) "
                f"VALUES ({', '.join('?' * len(FILE_TAGS.columns))})",
                list(rows.values()),
            )
            conn.execute(
                "UPDATE library_files SET calibration_hash = NULL "
                "WHERE _key IN (SELECT value FROM json_each(?))",
                (json.dumps(sorted({g[0] for g in groups})),),
            )

    # ---- calibration ---------------------------------------------------------------------
    def recent_history(self, calibration_keys: Sequence[str], per_key: int = 1) -> dict[str, list[Doc]]:
        rows = self._rows(
            """
            SELECT * FROM (
                SELECT *, ROW_NUMBER() OVER (
                    PARTITION BY calibration_key ORDER BY snapshot_at DESC, rowid DESC
                ) AS recency
                FROM calibration_history
                WHERE calibration_key IN (SELECT value FROM json_each(?))
            ) WHERE recency <= ? ORDER BY calibration_key, recency
            """,
            (json.dumps(list(calibration_keys)), per_key),
        )
        return self._by_calibration(rows)

    # ---- recalibration -----------------------------------------------------------------
    def claim_files_for_recalibration(
        self, expected_hash: str, run: str, claim: str, limit: int, library_id: str | None = None
    ) -> list[str]:
        check_claim(run, claim)
        with self._transaction() as conn:
            rows = conn.execute(
                "UPDATE library_files SET calibration_hash = :claim WHERE _key IN ("
                f"SELECT _key FROM library_files WHERE {NEEDS_RECALIBRATION} AND (calibration_hash IS NULL "
                "OR substr(calibration_hash, 1, length(:run)) != :run) LIMIT :limit) "
                "RETURNING _key",
                {"hash": expected_hash, "run": run, "claim": claim, "library_id": library_id,
                 "limit": limit},
            ).fetchall()  # fmt: skip
        return sorted(r[0] for r in rows)

    def tier_inputs(self, file_ids: Sequence[str]) -> list[tuple[Any, ...]]:
        reader = self._conn.cursor()
        reader.row_factory = None  # plain tuples, as the protocol promises
        return reader.execute(_TIER_INPUTS, (json.dumps(list(file_ids)),)).fetchall()

    def finish_claimed_recalibration(
        self, claim: str, expected_hash: str, mood_tiers: Mapping[str, Doc | None]
    ) -> list[str]:
        with self._transaction() as conn:
            held_sql = (
                "SELECT _key FROM library_files WHERE calibration_hash = ? "
                "AND _key IN (SELECT value FROM json_each(?)) ORDER BY _key"
            )
            held = [row[0] for row in conn.execute(held_sql, (claim, json.dumps(list(mood_tiers))))]
            conn.execute(_APPLY_CALIBRATION, (json.dumps(held),))
            conn.executemany(
                "UPDATE library_files SET calibration_hash = ?, mood_tiers = ?, file_tags_pending = 1 "
                "WHERE _key = ?",
                [(expected_hash, json.dumps(mood_tiers[key], sort_keys=True), key) for key in held],
            )
        return held


_CLAIMABLE_FOR_ANALYSIS = f"""{DIALECT.heads} SELECT f._key FROM library_files f
    WHERE f._key > :after AND {ANALYSABLE} AND {NEEDS_SOME_HEAD}
      AND NOT EXISTS (SELECT 1 FROM analysis_claims c WHERE c.run_id = :run_id AND c.file_id = f._key)
    ORDER BY f._key LIMIT :limit"""

# One subquery for the value a finished recalibration stores and the value tier_inputs
# reports, so that tiers computed from a read agree with the stored values to the last bit.
_CALIBRATED = f"""(
    SELECT CASE WHEN c.p95 > c.p5 AND {DIALECT.finite.format(v="t.value")}
                THEN MIN(MAX((t.value - c.p5) / (c.p95 - c.p5), 0.0), 1.0) END
    FROM calibration_state c
    WHERE c.model_key = t.model_key AND c.head_name = t.head_name AND c.label = t.label)"""

_APPLY_CALIBRATION = f"""
    UPDATE file_tags AS t SET calibrated_value = {_CALIBRATED}
    WHERE file_id IN (SELECT value FROM json_each(?))
"""

_TIER_INPUTS = f"""
    SELECT t.file_id, t.head_name, t.label, t.std, {_CALIBRATED}
    FROM file_tags t WHERE t.file_id IN (SELECT value FROM json_each(?))
"""


def unwritable(path: Path) -> str | None:
    """Why SQLite cannot write the store at ``path`` or beside it, or None."""
    for target in (path, path.parent):
        if not target.exists() or os.access(target, os.W_OK):
            continue
        if os.statvfs(target).f_flag & os.ST_RDONLY:
            return f"{target} is on a read-only file system"
        return f"{target} is not writable by this user"
    return None


# ---- schema: migrations applied in order under PRAGMA user_version --------------------------
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
# visits the table.
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
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
