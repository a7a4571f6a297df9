"""The production store: PostgreSQL through psycopg 3.

One connection per process and thread, opened lazily; every protocol call is one transaction,
retried a bounded number of times on a transient failure (serialization failure, deadlock, a
dropped connection, a restarting server). Anything else is a :class:`StoreError` with one line
that says what to fix. Unlike SQLite, ``file_tags.value`` is a double: a value that is not a
number is stored as null (ineligible for calibration either way).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from nomarr_pipeline.store import redact_url
from nomarr_pipeline.store.protocol import (
    AnalysisClaim,
    ClaimedFile,
    HeadVersion,
    SparseHistogram,
    StoreError,
)
from nomarr_pipeline.store.schema import FILE_TAGS, Doc, check_claim, document_table, file_tag_rows
from nomarr_pipeline.store.sql import ANALYSABLE, NEEDS_SOME_HEAD, Dialect, SqlStore, pyformat

T = TypeVar("T")

# A transient failure is retried this many times, waiting RETRY_BACKOFF_S * 2**attempt
# between attempts (0.25 .. 4 s, about 8 s in all: long enough for a server restart).
MAX_RETRIES = 5
RETRY_BACKOFF_S = 0.25
CONNECT_TIMEOUT_S = 10
# Label histograms of one head queried at once, each on a connection of its own: the server
# runs them in parallel (a head's labels are independent index ranges).
HISTOGRAM_CONNECTIONS = 4
# SQLSTATEs worth another attempt (the statement may succeed as it is): serialization_failure,
# deadlock_detected, admin_shutdown, crash_shutdown, cannot_connect_now (server starting up).
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03"})
_READER_THREAD = "nomarr-pg-reader"
# What libpq says (without a SQLSTATE) when the server cannot be reached or went away.
_UNREACHABLE = re.compile(
    "connection refused|could not connect|timeout expired|server closed the connection|could not translate "
    "host name|no route to host|connection reset|the database system is|consuming input failed"
)


def _heads_params(heads: Sequence[HeadVersion]) -> Doc:
    return {"model_keys": [h.model_key for h in heads], "head_names": [h.head_name for h in heads],
            "tagger_versions": [h.tagger_version for h in heads]}  # fmt: skip


DIALECT = Dialect(
    in_list="{column} = ANY(:{param})",
    list_value=list,
    # The heads of an analysis query: three parallel arrays, numbered from 0.
    heads="""WITH heads AS (
    SELECT position - 1 AS position, model_key, head_name, tagger_version
    FROM unnest(:model_keys::text[], :head_names::text[], :tagger_versions::text[])
         WITH ORDINALITY AS h(model_key, head_name, tagger_version, position))""",
    heads_params=_heads_params,
    merge_extra="extra = jsonb_strip_nulls(coalesce({current}, '{{}}') || {new})",
    finite="{v} > '-Infinity'::float8 AND {v} < 'Infinity'::float8",  # NaN sorts above Infinity
    bin_index="LEAST(floor({x})::integer, :bins - 1)",
    append_stat="coalesce(written_stats, '[]'::jsonb) "
    "|| jsonb_build_array(jsonb_build_array(:size::bigint, :mtime_ns::bigint))",
    json_value="CAST(:{param} AS jsonb)",
    json_as_text=False,
)


class _Canonical:
    """A transaction as ``sql.SqlStore`` runs it: SQLite's parameter style, rows as dicts."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._cursor = conn.cursor(row_factory=dict_row)

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> psycopg.Cursor[Any]:
        return self._cursor.execute(pyformat(sql), params)  # type: ignore[arg-type]

    def executemany(self, sql: str, rows: Sequence[Any]) -> None:
        if rows:
            self._cursor.executemany(pyformat(sql), rows)  # type: ignore[arg-type]


class PostgresStore(SqlStore):
    """The Store protocol on PostgreSQL. Holds configuration only until first used."""

    engine = "postgres"
    concurrent_writers = True
    dialect = DIALECT

    def __init__(self, url: str, *, password: str | None = None) -> None:
        self._url = url
        self._password = password
        self._conninfo = _conninfo(url)
        self._display_url = redact_url(url)
        self._user = self._conninfo.get("user") or os.environ.get("PGUSER") or getpass.getuser()
        self._dbname = self._conninfo.get("dbname") or self._user
        self._local = threading.local()
        self._readers: ThreadPoolExecutor | None = None
        self._readers_pid: int | None = None
        self._reader_connections: list[psycopg.Connection[Any]] = []
        self._readers_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PostgresStore({self._display_url!r})"

    def __reduce__(self) -> tuple[type[PostgresStore], tuple[str], Doc]:
        # A worker process gets the settings (the password only through the private pipe to
        # the child) and connects on first use; never the parent's connection.
        return (PostgresStore, (self._url,), {"_password": self._password})

    def __setstate__(self, state: Doc) -> None:
        self._password = state["_password"]

    # ---- connection and schema ---------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid() and not conn.closed:
            return conn
        try:
            conn = psycopg.connect(**self._conninfo, password=self._password, autocommit=True)
            # Compiling index range scans and batch updates costs more than it saves.
            conn.execute("SET jit = off")
        except psycopg.Error as exc:
            raise self._error(exc, "connect to") from None
        try:
            self._migrate(conn)
        except psycopg.Error as exc:
            conn.close()
            raise self._error(exc, "create the nomarr tables in") from None
        except BaseException:
            conn.close()
            raise
        self._local.conn, self._local.pid = conn, os.getpid()
        if threading.current_thread().name.startswith(_READER_THREAD):
            with self._readers_lock:
                self._reader_connections.append(conn)
        return conn

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        if self._schema_version(conn) == SCHEMA_VERSION:
            return
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            version = self._schema_version(conn)  # another process may have migrated meanwhile
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the PostgreSQL database {self._dbname!r} has nomarr schema version {version}, "
                    f"newer than this nomarr_pipeline understands ({SCHEMA_VERSION}); upgrade it"
                )
            for number, script in enumerate(MIGRATIONS, start=1):
                if version < number:
                    conn.execute(script)  # type: ignore[arg-type]  # the schema's own literal SQL
            conn.execute(
                "INSERT INTO nomarr_meta (_key, version, updated_at) VALUES ('schema', %s, %s) "
                "ON CONFLICT (_key) DO UPDATE SET version = excluded.version, "
                "updated_at = excluded.updated_at",
                (SCHEMA_VERSION, int(time.time() * 1000)),
            )

    @staticmethod
    def _schema_version(conn: psycopg.Connection[Any]) -> int:
        """0 for a database this code never opened."""
        # pg_tables through the statement's snapshot, not to_regclass: that one reads a catalog
        # snapshot that waiting for the migration lock does not refresh, and would miss the
        # tables another process created meanwhile.
        exists = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables "
            "WHERE schemaname = current_schema() AND tablename = 'nomarr_meta')"
        ).fetchone()
        if not exists or not exists[0]:
            return 0
        row = conn.execute("SELECT version FROM nomarr_meta WHERE _key = 'schema'").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._drop_connection()
        with self._readers_lock:
            readers, self._readers = self._readers, None
            reader_connections, self._reader_connections = self._reader_connections, []
        if readers is not None and self._readers_pid == os.getpid():
            readers.shutdown(wait=True)
            for reader in reader_connections:
                with suppress(psycopg.Error):
                    reader.close()

    def _drop_connection(self) -> None:
        """Close this thread's connection (the next call opens a new one)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            with suppress(psycopg.Error):
                conn.close()
        self._local.conn = None

    def _reader_pool(self) -> ThreadPoolExecutor:
        """Threads with a connection each, for queries that run side by side (per process)."""
        with self._readers_lock:
            if self._readers is None or self._readers_pid != os.getpid():
                self._readers = ThreadPoolExecutor(HISTOGRAM_CONNECTIONS, thread_name_prefix=_READER_THREAD)
                self._readers_pid = os.getpid()
                self._reader_connections = []
            return self._readers

    def _run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``work`` in one transaction; a transient failure rolls it back and runs it again
        (on a new connection when the old one is gone)."""
        attempt = 0
        while True:
            try:
                conn = self._connection()
                with conn.transaction():
                    return work(conn)
            except StoreError as exc:
                # A failed reconnect while the server restarts is transient too; the first
                # connection of a process fails at once (a wrong port should say so now).
                cause = exc.__context__
                if attempt == 0 or not _is_unreachable(cause):
                    raise
                if attempt >= MAX_RETRIES:
                    raise self._error(cause, "connect to", retried=attempt) from None  # type: ignore[arg-type]
            except psycopg.Error as exc:
                broken = getattr(self._local, "conn", None) is None or self._local.conn.broken
                if broken:
                    self._drop_connection()
                if attempt >= MAX_RETRIES or not (broken or exc.sqlstate in _TRANSIENT_SQLSTATES):
                    raise self._error(exc, "use", retried=attempt) from None
            time.sleep(RETRY_BACKOFF_S * 2**attempt)
            attempt += 1

    # ---- errors --------------------------------------------------------------------------
    def _error(self, exc: psycopg.Error, action: str, retried: int = 0) -> StoreError:
        """One line naming what to fix; never the password."""
        reason = _reason(exc)
        lower = reason.lower()
        where = f"PostgreSQL at {self._display_url}"
        if "password authentication failed" in lower or "no password supplied" in lower:
            message = (
                f"{where} refused user {self._user!r}: wrong or missing password "
                "(set NOMARR_PG_PASSWORD, or libpq's PGPASSWORD / ~/.pgpass)"
            )
        elif "role" in lower and "does not exist" in lower:
            message = f"{where} has no user {self._user!r}: create it or fix the user in NOMARR_STORE_URL"
        elif exc.sqlstate == "3D000" or ("database" in lower and "does not exist" in lower):
            message = (
                f"database {self._dbname!r} does not exist on {where}: create it "
                f"(createdb -O {self._user} {self._dbname}) or fix NOMARR_STORE_URL"
            )
        elif isinstance(exc, pg_errors.InsufficientPrivilege):
            message = (
                f"user {self._user!r} lacks privileges in database {self._dbname!r} ({reason}): "
                f"as its owner, GRANT USAGE, CREATE ON SCHEMA public TO {self._user} and "
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {self._user}"
            )
        elif _is_unreachable(exc) or getattr(exc, "sqlstate", None) in _TRANSIENT_SQLSTATES:
            message = f"cannot {action} {where}: {reason}"
            if retried:
                message += (
                    f" (gave up after {retried} retries): the server went away; once it is back, "
                    "a re-run resumes where this one stopped"
                )
            else:
                message += "; is the server running, and are host and port in NOMARR_STORE_URL right?"
        else:
            message = f"{where}: {reason}"
        if self._password:
            message = message.replace(self._password, "***")
        error = StoreError(message)
        error.__context__ = exc
        return error

    def _read(self, work: Callable[[Any], T]) -> T:
        return self._run(lambda conn: work(_Canonical(conn)))

    _write = _read

    # ---- scanning ----------------------------------------------------------------------------
    def save_folder_cache(self, library_id: str, folders: dict[str, tuple[int, int]]) -> None:
        def save(conn: psycopg.Connection[Any]) -> None:
            # Two scans of one library at once (two first commands): the second replaces the
            # first's cache after it, instead of inserting the same keys beside it.
            conn.execute("SELECT 1 FROM libraries WHERE _key = %s FOR UPDATE", (library_id,))
            conn.execute("DELETE FROM library_folders WHERE library_id = %s", (library_id,))
            with (
                conn.cursor() as cur,
                cur.copy("COPY library_folders (library_id, path, mtime_ns, entry_count) FROM STDIN") as copy,
            ):
                for path, (mtime_ns, entry_count) in folders.items():
                    copy.write_row((library_id, path, mtime_ns, entry_count))

        self._run(save)

    # ---- analysis ----------------------------------------------------------------------------
    def claim_files_for_analysis(
        self, heads: Sequence[HeadVersion], claim: AnalysisClaim, limit: int, after_key: str | None = None
    ) -> list[ClaimedFile]:
        params = {
            **_heads_params(heads),
            "run_id": claim.run_id,
            "shard": claim.shard,
            "after": after_key or "",
            "limit": limit,
            "now": int(time.time() * 1000),
        }

        def take(conn: psycopg.Connection[Any]) -> list[ClaimedFile]:
            keys = [row[0] for row in conn.execute(CLAIM_FOR_ANALYSIS_SQL, params)]  # type: ignore[arg-type]
            return self._claimed_files(_Canonical(conn), sorted(keys), heads)

        return self._run(take)

    def write_predictions(self, docs: Sequence[Doc]) -> None:
        if not docs:
            return
        rows = file_tag_rows(docs, as_double)
        groups = sorted({key[:3] for key in rows})
        file_ids = sorted({g[0] for g in groups})
        files_by_head: dict[tuple[str, str], list[str]] = {}
        for file_id, model_key, head_name in groups:
            files_by_head.setdefault((model_key, head_name), []).append(file_id)

        def write(conn: psycopg.Connection[Any]) -> None:
            # Files first, in key order: a concurrent recalibration finishing these files
            # either sees their hash cleared (its claim is void) or finishes before this
            # write, whose hash clearing then makes them stale again. Never a lost update.
            conn.execute(
                "UPDATE library_files SET calibration_hash = NULL WHERE _key IN ("
                "SELECT _key FROM library_files WHERE _key = ANY(%s) ORDER BY _key FOR UPDATE)",
                (file_ids,),
            )
            # One plain primary-key range per head: planned as an index scan even before the
            # table has statistics (a fresh store's first analysis); a join with unnest() was
            # planned as a scan of the whole table per batch there.
            for (model_key, head_name), head_files in files_by_head.items():
                for table in ("file_tags", "analysis_errors"):
                    conn.execute(
                        f"DELETE FROM {table} WHERE file_id = ANY(%s) AND model_key = %s AND head_name = %s",  # type: ignore[arg-type]
                        (head_files, model_key, head_name),
                    )
            _copy_file_tags(conn, rows.values())

        self._run(write)

    # ---- calibration -------------------------------------------------------------------------
    def histograms(
        self, model_key: str, head_name: str, labels: Sequence[str], lo: float, hi: float, bins: int
    ) -> Iterator[tuple[str, SparseHistogram]]:
        pending = iter(labels)
        in_flight: deque[tuple[str, Future[SparseHistogram]]] = deque()

        def submit() -> None:
            label = next(pending, None)
            if label is not None:
                read = self._reader_pool().submit(self._histogram, model_key, head_name, label, lo, hi, bins)
                in_flight.append((label, read))

        for _ in range(HISTOGRAM_CONNECTIONS):
            submit()
        while in_flight:
            label, future = in_flight.popleft()
            submit()
            yield label, future.result()

    def recent_history(self, calibration_keys: Sequence[str], per_key: int = 1) -> dict[str, list[Doc]]:
        # A backward scan of idx_calibration_history_key per calibration, however long its
        # history; the identity column orders snapshots of one millisecond as written.
        rows = self._rows(
            "SELECT h.* FROM unnest(CAST(? AS text[])) WITH ORDINALITY AS k(key, position) "
            "CROSS JOIN LATERAL (SELECT * FROM calibration_history WHERE calibration_key = k.key "
            "ORDER BY snapshot_at DESC, seq DESC LIMIT ?) AS h ORDER BY k.position",
            (list(dict.fromkeys(calibration_keys)), per_key),
        )
        return self._by_calibration(rows)

    # ---- recalibration -----------------------------------------------------------------------
    def claim_files_for_recalibration(
        self, expected_hash: str, run: str, claim: str, limit: int, library_id: str | None = None
    ) -> list[str]:
        check_claim(run, claim)
        params = {"hash": expected_hash, "run": run, "claim": claim, "limit": limit, "library_id": library_id}

        rows = self._run(lambda conn: conn.execute(CLAIM_SQL, params).fetchall())
        return sorted(r[0] for r in rows)

    def tier_inputs(self, file_ids: Sequence[str]) -> list[tuple[Any, ...]]:
        ids = list(file_ids)
        if not ids:
            return []

        def read(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            # Binary rows: half the client time of text for 50,000 predictions a batch (the
            # floats arrive as they are stored, so the values stay exact).
            with conn.cursor(binary=True) as cur:
                return cur.execute(TIER_INPUTS_SQL, (ids,)).fetchall()

        return self._run(read)

    def finish_claimed_recalibration(
        self, claim: str, expected_hash: str, mood_tiers: Mapping[str, Doc | None]
    ) -> list[str]:
        candidates = sorted(mood_tiers)

        def finish(conn: psycopg.Connection[Any]) -> list[str]:
            held_sql = (
                "SELECT _key FROM library_files WHERE _key = ANY(%s) AND calibration_hash = %s "
                "ORDER BY _key FOR UPDATE"
            )
            held = [row[0] for row in conn.execute(held_sql, (candidates, claim))]
            tiers = [json.dumps(mood_tiers[file_id], sort_keys=True) for file_id in held]
            # This commit (only this one) does not wait for the WAL flush: a server crash may
            # lose the batches finished last, never part of one (hash, tiers and calibrated
            # values commit together), and their files still hold their claim, never the
            # expected hash, so the next run claims and redoes them. Nothing is written here
            # that cannot be recomputed; predictions keep synchronous commits.
            conn.execute("SET LOCAL synchronous_commit = off")
            conn.execute(
                "UPDATE library_files f SET calibration_hash = %s, mood_tiers = v.tiers::jsonb, "
                "file_tags_pending = true FROM unnest(%s::text[], %s::text[]) AS v(key, tiers) "
                "WHERE f._key = v.key",
                (expected_hash, held, tiers),
            )
            _apply_calibration(conn, held)  # last: it changes the planner for the transaction
            return held

        return self._run(finish)

    # ---- moving a store --------------------------------------------------------------------
    def put_documents(self, collection: str, docs: Sequence[Doc]) -> None:
        if document_table(collection) is not FILE_TAGS:
            super().put_documents(collection, docs)
            return
        rows = file_tag_rows(docs, as_double)
        columns = ", ".join(FILE_TAGS.columns)
        updates = ", ".join(f"{c} = excluded.{c}" for c in FILE_TAGS.columns if c not in FILE_TAGS.key)

        def put(conn: psycopg.Connection[Any]) -> None:
            # Staged by COPY, then one upsert on the primary key (its arbiter index is used
            # whatever the table's statistics say, also while a fresh store fills up).
            conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS nomarr_staged_file_tags "
                "(LIKE file_tags INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            _copy_file_tags(conn, rows.values(), table="nomarr_staged_file_tags")
            conn.execute(
                f"INSERT INTO file_tags ({columns}) SELECT {columns} FROM nomarr_staged_file_tags "  # type: ignore[arg-type]
                f"ON CONFLICT (file_id, model_key, head_name, label) DO UPDATE SET {updates}"
            )

        self._run(put)


# ---- SQL ---------------------------------------------------------------------------------------
# One expression for the value apply_calibration stores and the value tier_inputs reports,
# so that tiers computed from a read agree with the stored values to the last bit. The
# calibration joins by (model_key, head_name, label), unique in calibration_state.
_CALIBRATED = f"""CASE WHEN c.p95 > c.p5 AND {DIALECT.finite.format(v="t.value")}
    THEN LEAST(GREATEST((t.value - c.p5) / (c.p95 - c.p5), 0.0::float8), 1.0::float8) END"""
_SAME_LABEL = "c.model_key = t.model_key AND c.head_name = t.head_name AND c.label = t.label"

# Predictions with a calibration, then those without one, as joins; rows whose value does not
# change are not rewritten (no new row version, no WAL).
APPLY_CALIBRATION_SQL = (
    f"""UPDATE file_tags AS t SET calibrated_value = {_CALIBRATED} FROM calibration_state c
    WHERE t.file_id = ANY(%s) AND {_SAME_LABEL} AND t.calibrated_value IS DISTINCT FROM {_CALIBRATED}""",
    f"""UPDATE file_tags AS t SET calibrated_value = NULL
    WHERE t.file_id = ANY(%s) AND t.calibrated_value IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM calibration_state c WHERE {_SAME_LABEL})""",
)

TIER_INPUTS_SQL = f"""
SELECT t.file_id, t.head_name, t.label, t.std, {_CALIBRATED}
FROM file_tags t LEFT JOIN calibration_state c ON {_SAME_LABEL}
WHERE t.file_id = ANY(%s)
"""


def _apply_calibration(conn: psycopg.Connection[Any], file_ids: list[str]) -> None:
    # A hash join with calibration_state is the right plan at every size, but lagging
    # statistics make the planner pick nested loops, many times slower (docs/BENCHMARKS.md).
    # Nested loops stay off for the rest of the transaction: callers apply last.
    conn.execute("SET LOCAL enable_nestloop = off")
    for statement in APPLY_CALIBRATION_SQL:
        conn.execute(statement, (file_ids,))  # type: ignore[arg-type]


# Three index range scans (no hash, below, above the expected one), each taking unlocked rows
# only: concurrent recalibrations claim different files and never wait for each other. A CTE
# is read on demand, so the later ranges are not scanned once the first fills the batch.
_CLAIMABLE = """
    SELECT _key FROM library_files
    WHERE {hash_range} AND analyzed_at IS NOT NULL
      AND (%(library_id)s::text IS NULL OR library_id = %(library_id)s)
      AND (calibration_hash IS NULL OR left(calibration_hash, length(%(run)s)) <> %(run)s)
    LIMIT %(limit)s FOR UPDATE SKIP LOCKED"""
CLAIM_SQL = f"""
WITH unhashed AS ({_CLAIMABLE.format(hash_range="calibration_hash IS NULL")}),
     below AS ({_CLAIMABLE.format(hash_range="calibration_hash < %(hash)s")}),
     above AS ({_CLAIMABLE.format(hash_range="calibration_hash > %(hash)s")})
UPDATE library_files SET calibration_hash = %(claim)s
WHERE _key IN (
    SELECT _key FROM (
        SELECT _key FROM unhashed UNION ALL SELECT _key FROM below UNION ALL SELECT _key FROM above
    ) AS claimable LIMIT %(limit)s)
RETURNING _key
"""


def _copy_file_tags(conn: psycopg.Connection[Any], rows: Any, table: str = "file_tags") -> None:
    columns = ", ".join(FILE_TAGS.columns)
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:  # type: ignore[arg-type]
        for row in rows:
            copy.write_row(row)


# Shards of one run claim files that need a head and that no shard of the run holds. Rows
# another claimer is taking are skipped (FOR NO KEY UPDATE SKIP LOCKED), so concurrent shards
# take different files without waiting; the primary key (run_id, file_id) is the guarantee.
CLAIM_FOR_ANALYSIS_SQL = pyformat(f"""{DIALECT.heads},
candidates AS (
    SELECT f._key FROM library_files f
    WHERE f._key > :after AND {ANALYSABLE} AND {NEEDS_SOME_HEAD}
      AND NOT EXISTS (SELECT 1 FROM analysis_claims c WHERE c.run_id = :run_id AND c.file_id = f._key)
    ORDER BY f._key LIMIT :limit
    FOR NO KEY UPDATE OF f SKIP LOCKED)
INSERT INTO analysis_claims (run_id, file_id, shard, claimed_at)
SELECT :run_id, _key, :shard, :now FROM candidates
ON CONFLICT (run_id, file_id) DO NOTHING
RETURNING file_id
""")


# ---- schema ---------------------------------------------------------------------------------
# Text columns compare as COLLATE "C" (bytes, like SQLite), so keyset pages and sort orders agree
# between the engines. Migrations apply in order, each in one transaction under an advisory lock
# (two processes opening a fresh database wait for each other); nomarr_meta holds the version.
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


# ---- URLs and messages ---------------------------------------------------------------------------
def _conninfo(url: str) -> dict[str, Any]:
    """libpq connection parameters from the URL, with a connect timeout unless it sets one.
    A password in the URL is refused: it would end up wherever the URL is shown."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        params = conninfo_to_dict(url)
    except (ValueError, psycopg.Error) as exc:
        raise StoreError(
            f"malformed PostgreSQL URL {redact_url(url)!r} ({_reason(exc)}): set NOMARR_STORE_URL "
            "to postgresql://user@host:port/dbname[?sslmode=...]"
        ) from None
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise StoreError(f"not a PostgreSQL URL: {redact_url(url)!r}")
    if "password" in params:
        raise StoreError(
            f"NOMARR_STORE_URL {redact_url(url)!r} carries a password: remove it and set "
            "NOMARR_PG_PASSWORD (or libpq's PGPASSWORD / ~/.pgpass) instead"
        )
    params.setdefault("connect_timeout", str(CONNECT_TIMEOUT_S))
    params.setdefault("application_name", "nomarr_pipeline")
    return params


def _reason(exc: BaseException) -> str:
    """The gist of a psycopg/libpq message on one line."""
    text = " ".join(str(exc).split())
    # libpq: 'connection to server at "h" (ip), port p failed: Connection refused Is the server ...'
    if "failed:" in text:
        text = text.rsplit("failed:", 1)[1].strip()
    return text.split(" Is the server running")[0].strip() or type(exc).__name__


def _is_unreachable(exc: BaseException | None) -> bool:
    if not isinstance(exc, psycopg.OperationalError):
        return False
    if exc.sqlstate is not None:
        return exc.sqlstate.startswith("08") or exc.sqlstate in _TRANSIENT_SQLSTATES
    return _UNREACHABLE.search(str(exc).lower()) is not None
