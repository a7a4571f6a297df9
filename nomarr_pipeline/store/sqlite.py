"""The embedded default store: SQLite with WAL, a busy timeout and one connection per
process and thread, opened lazily (Dagster runs each step in its own process)."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from nomarr_pipeline.store.protocol import (
    DOCUMENT_COLLECTIONS,
    AnalysisClaim,
    ClaimedFile,
    Doc,
    FileStat,
    HeadVersion,
    SparseHistogram,
    StoreError,
    StoreFullError,
    StoreReadOnlyError,
    analysis_error_key,
    split_pending_guards,
)
from nomarr_pipeline.store.sqlite_schema import (
    ANALYSABLE,
    ANALYSIS_ERRORS,
    CALIBRATION_HISTORY,
    CALIBRATION_STATE,
    FILE_TAGS,
    LIBRARIES,
    LIBRARY_FILES,
    NEEDS_HEAD,
    NEEDS_SOME_HEAD,
    Table,
    migrate,
)

BUSY_TIMEOUT_MS = 30_000
# Writers of several processes back to back keep SQLite's automatic (passive) checkpoints
# from ever reaching the end of the WAL, so it never starts over and grows without bound
# (1.9 GB for a 106 MB store written by 2 processes). A writer that finds it this large waits
# for a checkpoint of all of it, after which the next writer starts the WAL again from the
# beginning and truncates it to this size.
WAL_LIMIT_BYTES = 64 * 1024 * 1024
# A finite REAL lies strictly between these; 9e999 is SQLite's literal for +infinity.
_FINITE_NUMBER = "typeof(value) IN ('real', 'integer') AND value > -9e999 AND value < 9e999"


class SqliteStore:
    engine = "sqlite"
    concurrent_writers = False

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
        if parts.netloc or not raw.startswith("/"):
            raise StoreError(
                f"SQLite URL must name an absolute path, like sqlite:////data/nomarr.db "
                f"or sqlite:///{Path('nomarr.db').absolute()}; got {url!r}"
            )
        # sqlite:////abs/path leaves "//abs/path", which POSIX paths keep as it is.
        return cls(Path("/" + raw.lstrip("/")))

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
    def _write(self) -> Iterator[sqlite3.Connection]:
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

    def _query(self, sql: str, params: Sequence[object] | dict[str, object] = ()) -> list[sqlite3.Row]:
        return self._conn.execute(sql, params).fetchall()

    # ---- generic document helpers -----------------------------------------------------
    @staticmethod
    def _upsert(conn: sqlite3.Connection, table: Table, docs: Sequence[Doc], *, replace: bool) -> None:
        """Insert or update by ``_key``; with ``replace=False`` only the given fields change."""
        groups: dict[tuple[str, ...], list[Doc]] = {}
        for doc in docs:
            if "_key" not in doc:
                raise ValueError(f"{table.name} document without _key: {doc!r}")
            row = table.to_row(doc)
            groups.setdefault(tuple(sorted(row)), []).append(row)
        for columns, rows in groups.items():
            names = ", ".join(columns)
            values = ", ".join(f":{c}" for c in columns)
            if replace:
                sql = f"INSERT OR REPLACE INTO {table.name} ({names}) VALUES ({values})"
            else:
                sets = [
                    "extra = json_patch(coalesce(extra, '{}'), excluded.extra)"
                    if c == "extra"
                    else f"{c} = excluded.{c}"
                    for c in columns
                    if c != "_key"
                ]
                conflict = f"DO UPDATE SET {', '.join(sets)}" if sets else "DO NOTHING"
                sql = f"INSERT INTO {table.name} ({names}) VALUES ({values}) ON CONFLICT(_key) {conflict}"
            conn.executemany(sql, rows)

    def _update(self, table: Table, docs: Sequence[Doc]) -> None:
        """Update existing documents' given fields; unknown keys are ignored."""
        with self._write() as conn:
            self._update_in(conn, table, docs)

    @staticmethod
    def _update_in(conn: sqlite3.Connection, table: Table, docs: Sequence[Doc]) -> None:
        for doc in docs:
            row = table.to_row(doc)
            key = row.pop("_key")
            if not row:
                continue
            sets = ", ".join(
                "extra = json_patch(coalesce(extra, '{}'), :extra)" if c == "extra" else f"{c} = :{c}"
                for c in row
            )
            conn.execute(f"UPDATE {table.name} SET {sets} WHERE _key = :_key", {**row, "_key": key})

    def _get(self, table: Table, keys: Sequence[str]) -> list[Doc]:
        if not keys:
            return []
        rows = self._query(
            f"SELECT * FROM {table.name} WHERE _key IN (SELECT value FROM json_each(?)) ORDER BY _key",
            (json.dumps(list(keys)),),
        )
        return [table.from_row(r) for r in rows]

    # ---- libraries ---------------------------------------------------------------------
    def ensure_library(self, doc: Doc) -> Doc:
        with self._write() as conn:
            row = LIBRARIES.to_row(doc)
            names = ", ".join(row)
            conn.execute(
                f"INSERT INTO libraries ({names}) VALUES ({', '.join(':' + c for c in row)}) "
                "ON CONFLICT(_key) DO NOTHING",
                row,
            )
        library = self.get_library(doc["_key"])
        if library is None:  # only a delete racing between the two statements gets here
            raise StoreError(f"library {doc['_key']!r} vanished while it was being added")
        return library

    def get_library(self, key: str) -> Doc | None:
        found = self._get(LIBRARIES, [key])
        return found[0] if found else None

    def list_libraries(self) -> list[Doc]:
        return [LIBRARIES.from_row(r) for r in self._query("SELECT * FROM libraries ORDER BY _key")]

    def update_library(self, key: str, fields: Doc) -> None:
        self._update(LIBRARIES, [{**fields, "_key": key}])

    # ---- scanning ----------------------------------------------------------------------
    def load_folder_cache(self, library_id: str) -> dict[str, tuple[int, int]]:
        rows = self._query(
            "SELECT path, mtime_ns, entry_count FROM library_folders WHERE library_id = ?",
            (library_id,),
        )
        return {r["path"]: (r["mtime_ns"], r["entry_count"]) for r in rows}

    def save_folder_cache(self, library_id: str, folders: dict[str, tuple[int, int]]) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM library_folders WHERE library_id = ?", (library_id,))
            conn.executemany(
                "INSERT INTO library_folders (library_id, path, mtime_ns, entry_count) VALUES (?, ?, ?, ?)",
                [(library_id, path, m, n) for path, (m, n) in folders.items()],
            )

    def file_index(self, library_id: str) -> dict[str, FileStat]:
        rows = self._conn.execute(
            "SELECT path, _key, size, mtime_ns, written_stats FROM library_files WHERE library_id = ?",
            (library_id,),
        )
        return {
            path: FileStat.of({"_key": key, "size": size, "mtime_ns": mtime_ns,
                               "written_stats": written and json.loads(written)})
            for path, key, size, mtime_ns, written in rows
        }  # fmt: skip

    def upsert_files(self, docs: Sequence[Doc]) -> None:
        with self._write() as conn:
            self._upsert(conn, LIBRARY_FILES, docs, replace=False)

    def delete_files(self, file_ids: Sequence[str]) -> None:
        ids = json.dumps(list(file_ids))
        with self._write() as conn:
            _delete_analysis_results(conn, ids)
            conn.execute("DELETE FROM library_files WHERE _key IN (SELECT value FROM json_each(?))", (ids,))

    def delete_file_tags(self, file_ids: Sequence[str]) -> None:
        with self._write() as conn:
            _delete_analysis_results(conn, json.dumps(list(file_ids)))

    def get_files(self, file_ids: Sequence[str]) -> list[Doc]:
        return self._get(LIBRARY_FILES, file_ids)

    def iter_files(self, library_id: str | None = None, batch_size: int = 1000) -> Iterator[list[Doc]]:
        after = ""
        while True:
            rows = self._query(
                "SELECT * FROM library_files WHERE _key > ? AND (? IS NULL OR library_id = ?) "
                "ORDER BY _key LIMIT ?",
                (after, library_id, library_id, batch_size),
            )
            if not rows:
                return
            yield [LIBRARY_FILES.from_row(r) for r in rows]
            after = rows[-1]["_key"]

    def file_counts(self, library_id: str | None = None) -> Doc:
        row = self._query(
            """
            SELECT COUNT(*) AS total,
                   COALESCE(SUM(analyzed_at IS NOT NULL AND analysis_error IS NULL), 0) AS analysed,
                   COUNT(analysis_error) AS analysis_errors,
                   COUNT(scan_error) AS scan_errors,
                   COALESCE(SUM(file_tags_pending), 0) AS pending_writes,
                   COUNT(write_error) AS write_errors,
                   COUNT(written_at) AS written
            FROM library_files WHERE ? IS NULL OR library_id = ?
            """,
            (library_id, library_id),
        )[0]
        return {k: int(row[k]) for k in row.keys()}  # noqa: SIM118 - sqlite3.Row has no items()

    # ---- analysis ----------------------------------------------------------------------
    def count_files_needing_analysis(self, head: HeadVersion) -> int:
        sql = f"{_HEADS} SELECT COUNT(*) FROM library_files f WHERE {ANALYSABLE} AND {NEEDS_SOME_HEAD}"
        return int(self._query(sql, {"heads": _heads_json([head])})[0][0])

    def claim_files_for_analysis(
        self, heads: Sequence[HeadVersion], claim: AnalysisClaim, limit: int, after_key: str | None = None
    ) -> list[ClaimedFile]:
        params = {"heads": _heads_json(heads), "run_id": claim.run_id, "after": after_key or "",
                  "limit": limit}
        with self._write() as conn:  # IMMEDIATE: claimers of a run queue, never overlap
            keys = [row[0] for row in conn.execute(
                f"""{_HEADS} SELECT f._key FROM library_files f
                WHERE f._key > :after AND {ANALYSABLE} AND {NEEDS_SOME_HEAD}
                  AND NOT EXISTS (SELECT 1 FROM analysis_claims c
                                  WHERE c.run_id = :run_id AND c.file_id = f._key)
                ORDER BY f._key LIMIT :limit""", params)]
            now = int(time.time() * 1000)
            conn.executemany(
                "INSERT INTO analysis_claims (run_id, file_id, shard, claimed_at) VALUES (?, ?, ?, ?)",
                [(claim.run_id, key, claim.shard, now) for key in keys],
            )
            return _claimed_files(conn, keys, heads)

    def reclaim_files_for_analysis(
        self, heads: Sequence[HeadVersion], claim: AnalysisClaim
    ) -> list[ClaimedFile]:
        conn = self._conn
        keys = [row[0] for row in conn.execute(
            f"""{_HEADS} SELECT f._key FROM analysis_claims c JOIN library_files f ON f._key = c.file_id
            WHERE c.run_id = :run_id AND c.shard = :shard AND {ANALYSABLE} AND {NEEDS_SOME_HEAD}
            ORDER BY f._key""",
            {"heads": _heads_json(heads), "run_id": claim.run_id, "shard": claim.shard})]
        return _claimed_files(conn, keys, heads)

    def release_analysis_claims(self, run_id: str, claimed_before_ms: int) -> int:
        with self._write() as conn:
            return conn.execute(
                "DELETE FROM analysis_claims WHERE run_id = ? OR claimed_at < ?", (run_id, claimed_before_ms)
            ).rowcount

    def write_predictions(self, docs: Sequence[Doc]) -> None:
        groups = {(d["file_id"], d["model_key"], d["head_name"]) for d in docs}
        with self._write() as conn:
            for table in ("file_tags", "analysis_errors"):
                conn.executemany(
                    f"DELETE FROM {table} WHERE file_id = ? AND model_key = ? AND head_name = ?",
                    sorted(groups),
                )
            self._upsert(conn, FILE_TAGS, docs, replace=True)
            conn.execute(
                "UPDATE library_files SET calibration_hash = NULL "
                "WHERE _key IN (SELECT value FROM json_each(?))",
                (json.dumps(sorted({g[0] for g in groups})),),
            )

    def record_analysis(self, results: Sequence[Doc]) -> None:
        self._update(LIBRARY_FILES, results)

    def record_analysis_errors(self, errors: Sequence[Doc]) -> None:
        with self._write() as conn:
            self._upsert(conn, ANALYSIS_ERRORS, [_with_error_key(e) for e in errors], replace=True)

    def count_files_with_analysis_errors(
        self, heads: Sequence[HeadVersion], library_id: str | None = None
    ) -> int:
        sql = f"""{_HEADS} SELECT COUNT(DISTINCT e.file_id) FROM heads h
            JOIN analysis_errors e ON e.model_key = h.model_key AND e.head_name = h.head_name
                                  AND e.tagger_version = h.tagger_version
            JOIN library_files f ON f._key = e.file_id
            WHERE :library_id IS NULL OR f.library_id = :library_id"""
        return int(self._query(sql, {"heads": _heads_json(heads), "library_id": library_id})[0][0])

    def file_tags_for_files(self, file_ids: Sequence[str]) -> list[Doc]:
        if not file_ids:
            return []
        rows = self._query(
            "SELECT * FROM file_tags WHERE file_id IN (SELECT value FROM json_each(?)) "
            "ORDER BY file_id, model_key, head_name, label",
            (json.dumps(list(file_ids)),),
        )
        return [FILE_TAGS.from_row(r) for r in rows]

    def count_predictions(self, model_key: str, head_name: str) -> int:
        return int(
            self._query(
                "SELECT COUNT(DISTINCT file_id) FROM file_tags WHERE model_key = ? AND head_name = ?",
                (model_key, head_name),
            )[0][0]
        )

    # ---- calibration ---------------------------------------------------------------------
    def histogram(
        self, model_key: str, head_name: str, label: str, lo: float, hi: float, bins: int
    ) -> SparseHistogram:
        if not hi > lo or bins < 1:
            raise ValueError(f"invalid histogram spec lo={lo} hi={hi} bins={bins}")
        # Multiplying by bins/(hi-lo) rather than dividing by bin_width keeps values that sit
        # exactly on a bin edge (0.3 with 10,000 bins) in the bin that edge starts.
        rows = self._query(
            f"""
            SELECT CASE WHEN value < :lo THEN -1
                        WHEN value > :hi THEN :bins
                        ELSE MIN(CAST((value - :lo) * :bins / (:hi - :lo) AS INTEGER), :bins - 1)
                   END AS bin_index,
                   COUNT(*) AS count
            FROM file_tags
            WHERE model_key = :model_key AND head_name = :head_name AND label = :label
              AND nomarr_only = 1 AND {_FINITE_NUMBER}
            GROUP BY bin_index ORDER BY bin_index
            """,
            {
                "lo": lo,
                "hi": hi,
                "bins": bins,
                "model_key": model_key,
                "head_name": head_name,
                "label": label,
            },
        )
        in_range = [(int(r["bin_index"]), int(r["count"])) for r in rows if 0 <= r["bin_index"] < bins]
        under = sum(int(r["count"]) for r in rows if r["bin_index"] < 0)
        over = sum(int(r["count"]) for r in rows if r["bin_index"] >= bins)
        return SparseHistogram(bins=in_range, underflow_count=under, overflow_count=over)

    def histograms(
        self, model_key: str, head_name: str, labels: Sequence[str], lo: float, hi: float, bins: int
    ) -> Iterator[tuple[str, SparseHistogram]]:
        for label in labels:
            yield label, self.histogram(model_key, head_name, label, lo, hi, bins)

    def labels_of_head(self, model_key: str, head_name: str) -> list[str]:
        rows = self._query(
            "SELECT DISTINCT label FROM file_tags WHERE model_key = ? AND head_name = ? ORDER BY label",
            (model_key, head_name),
        )
        return [r[0] for r in rows]

    def get_calibration(self, key: str) -> Doc | None:
        found = self._get(CALIBRATION_STATE, [key])
        return found[0] if found else None

    def list_calibrations(self) -> list[Doc]:
        rows = self._query("SELECT * FROM calibration_state ORDER BY _key")
        return [CALIBRATION_STATE.from_row(r) for r in rows]

    def save_calibrations(self, states: Sequence[Doc], history: Sequence[Doc]) -> None:
        with self._write() as conn:
            self._upsert(conn, CALIBRATION_STATE, states, replace=True)
            self._upsert(conn, CALIBRATION_HISTORY, history, replace=True)

    def recent_history(self, calibration_keys: Sequence[str], per_key: int = 1) -> dict[str, list[Doc]]:
        rows = self._query(
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
        found: dict[str, list[Doc]] = {}
        for row in rows:
            found.setdefault(row["calibration_key"], []).append(CALIBRATION_HISTORY.from_row(row))
        return found

    # ---- recalibration -----------------------------------------------------------------
    # Three index-served ranges instead of `!=`, so finished files are never re-read.
    _NEEDS_RECALIBRATION = """
        FROM library_files
        WHERE (calibration_hash IS NULL OR calibration_hash < :hash OR calibration_hash > :hash)
          AND analyzed_at IS NOT NULL AND (:library_id IS NULL OR library_id = :library_id)
    """

    def count_files_needing_recalibration(self, expected_hash: str, library_id: str | None = None) -> int:
        params = {"hash": expected_hash, "library_id": library_id}
        return int(self._query(f"SELECT COUNT(*) {self._NEEDS_RECALIBRATION}", params)[0][0])

    def apply_calibration(self, file_ids: Sequence[str]) -> None:
        with self._write() as conn:
            conn.execute(_APPLY_CALIBRATION, (json.dumps(list(file_ids)),))

    def finish_recalibration(self, updates: Sequence[Doc]) -> None:
        self._update(LIBRARY_FILES, updates)

    def claim_files_for_recalibration(
        self, expected_hash: str, run: str, claim: str, limit: int, library_id: str | None = None
    ) -> list[str]:
        _check_claim(run, claim)
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE library_files SET calibration_hash = :claim WHERE _key IN ("
                f"SELECT _key {self._NEEDS_RECALIBRATION} AND (calibration_hash IS NULL "
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
        with self._write() as conn:
            held = [
                row[0]
                for row in conn.execute(
                    "SELECT _key FROM library_files WHERE calibration_hash = ? "
                    "AND _key IN (SELECT value FROM json_each(?)) ORDER BY _key",
                    (claim, json.dumps(list(mood_tiers))),
                )
            ]
            conn.execute(_APPLY_CALIBRATION, (json.dumps(held),))
            conn.executemany(
                "UPDATE library_files SET calibration_hash = ?, mood_tiers = ?, file_tags_pending = 1 "
                "WHERE _key = ?",
                [
                    (expected_hash, json.dumps(mood_tiers[file_id], sort_keys=True), file_id)
                    for file_id in held
                ],
            )
        return held

    def reset_calibration_hashes(self, library_id: str | None = None) -> int:
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE library_files SET calibration_hash = NULL "
                "WHERE calibration_hash IS NOT NULL AND (? IS NULL OR library_id = ?)",
                (library_id, library_id),
            )
            return cur.rowcount

    # ---- tag writing ---------------------------------------------------------------------
    def files_pending_write(self, library_id: str, after_key: str | None, limit: int) -> list[Doc]:
        rows = self._query(
            "SELECT * FROM library_files WHERE library_id = ? AND file_tags_pending = 1 "
            "AND _key > ? ORDER BY _key LIMIT ?",
            (library_id, after_key or "", limit),
        )
        return [LIBRARY_FILES.from_row(r) for r in rows]

    def add_written_stats(self, stats: Sequence[Doc]) -> None:
        with self._write() as conn:
            conn.executemany(
                "UPDATE library_files SET written_stats = "
                "json_insert(coalesce(written_stats, '[]'), '$[#]', json_array(:size, :mtime_ns)) "
                "WHERE _key = :_key",
                [{"_key": s["_key"], "size": s["size"], "mtime_ns": s["mtime_ns"]} for s in stats],
            )

    def record_writes(self, results: Sequence[Doc]) -> None:
        updates, guards = split_pending_guards(results)
        with self._write() as conn:
            self._update_in(conn, LIBRARY_FILES, updates)
            conn.executemany(
                "UPDATE library_files SET file_tags_pending = 0 WHERE _key = ? AND calibration_hash IS ?",
                guards,
            )

    # ---- moving a store ------------------------------------------------------------------
    def count_documents(self, collection: str) -> int:
        table = _document_table(collection)
        return int(self._query(f"SELECT COUNT(*) FROM {table.name}")[0][0])

    def iter_documents(self, collection: str, batch_size: int = 1000) -> Iterator[list[Doc]]:
        table = _document_table(collection)
        # file_tags pages by its primary key (the _key column is not indexed there).
        key = _FILE_TAGS_KEY if table is FILE_TAGS else ("_key",)
        order = ", ".join(key)
        after: tuple[Any, ...] | None = None
        while True:
            where = f"WHERE ({order}) > ({', '.join('?' * len(key))})" if after else ""
            rows = self._query(
                f"SELECT * FROM {table.name} {where} ORDER BY {order} LIMIT ?", (*(after or ()), batch_size)
            )
            if not rows:
                return
            yield [table.from_row(r) for r in rows]
            after = tuple(rows[-1][column] for column in key)

    def put_documents(self, collection: str, docs: Sequence[Doc]) -> None:
        table = _document_table(collection)
        with self._write() as conn:
            self._upsert(conn, table, docs, replace=True)


# One subquery for the value apply_calibration stores and the value tier_inputs reports, so
# that tiers computed from a read agree with the stored values to the last bit.
_CALIBRATED = f"""(
    SELECT CASE WHEN c.p95 > c.p5 AND {_FINITE_NUMBER.replace("value", "t.value")}
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


_FILE_TAGS_KEY = ("file_id", "model_key", "head_name", "label")
_DOCUMENT_TABLES = {
    table.name: table
    for table in (
        LIBRARIES, LIBRARY_FILES, FILE_TAGS, ANALYSIS_ERRORS, CALIBRATION_STATE, CALIBRATION_HISTORY
    )
}


def _document_table(collection: str) -> Table:
    if collection not in DOCUMENT_COLLECTIONS:
        raise ValueError(f"not a document collection: {collection!r} (one of {DOCUMENT_COLLECTIONS})")
    return _DOCUMENT_TABLES[collection]


def _check_claim(run: str, claim: str) -> None:
    if not run or not claim.startswith(run):
        raise ValueError(f"claim {claim!r} must start with its run {run!r}")


# The heads of an analysis query, bound as one JSON list of [model_key, head_name, tagger_version].
_HEADS = """WITH heads(position, model_key, head_name, tagger_version) AS (
    SELECT key, value ->> 0, value ->> 1, value ->> 2 FROM json_each(:heads))"""


def _heads_json(heads: Sequence[HeadVersion]) -> str:
    return json.dumps([[h.model_key, h.head_name, h.tagger_version] for h in heads])


def _claimed_files(
    conn: sqlite3.Connection, keys: Sequence[str], heads: Sequence[HeadVersion]
) -> list[ClaimedFile]:
    """The documents of ``keys`` with the heads each still needs, in key order."""
    if not keys:
        return []
    params = {"heads": _heads_json(heads), "keys": json.dumps(list(keys))}
    needed: dict[str, list[int]] = {}
    for key, position in conn.execute(
        f"""{_HEADS} SELECT f._key, h.position FROM library_files f, heads h
        WHERE f._key IN (SELECT value FROM json_each(:keys)) AND {NEEDS_HEAD}
        ORDER BY f._key, h.position""", params,
    ):
        needed.setdefault(key, []).append(position)
    docs = conn.execute(
        "SELECT * FROM library_files WHERE _key IN (SELECT value FROM json_each(?)) ORDER BY _key",
        (params["keys"],),
    ).fetchall()
    return [ClaimedFile(LIBRARY_FILES.from_row(row), tuple(heads[i] for i in needed[row["_key"]]))
            for row in docs if row["_key"] in needed]


def _with_error_key(error: Doc) -> Doc:
    return {**error, "_key": analysis_error_key(error["file_id"], error["model_key"], error["head_name"])}


def _delete_analysis_results(conn: sqlite3.Connection, file_ids_json: str) -> None:
    for table in ("file_tags", "analysis_errors"):
        conn.execute(
            f"DELETE FROM {table} WHERE file_id IN (SELECT value FROM json_each(?))", (file_ids_json,)
        )


def unwritable(path: Path) -> str | None:
    """Why SQLite cannot write the store at ``path`` or beside it, or None."""
    for target in (path, path.parent):
        if not target.exists() or os.access(target, os.W_OK):
            continue
        if os.statvfs(target).f_flag & os.ST_RDONLY:
            return f"{target} is on a read-only file system"
        return f"{target} is not writable by this user"
    return None
