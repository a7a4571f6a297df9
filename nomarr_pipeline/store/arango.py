"""The ArangoDB store through python-arango: AQL with bind variables only (collection names
are literals in the text, values never are); SQLite is the reference for semantics.

A single AQL query is one transaction; where several statements must land together (and any
write split into chunks), a stream transaction wraps them. Differences the contract tolerates:
- JSON has no NaN or infinity: non-finite floats are stored as null (ineligible for
  calibration either way, so ``IS_NUMBER`` is a complete finite check here).
- AQL orders strings with ICU collation, SQLite by bytes: pages follow AQL's own ``SORT``/``>``
  (file keys are lowercase hex, where both agree); unpaginated lists are re-sorted in Python.
- ``file_tags`` and calibration keys are percent-encoded for ArangoDB's ``_key`` alphabet
  (:func:`encode_key`); readers get the original keys back.
"""

from __future__ import annotations

import math
import os
import string
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import requests
from arango import ArangoClient
from arango.database import Database, StandardDatabase
from arango.exceptions import ArangoClientError, ArangoServerError
from arango.http import DefaultHTTPClient, HTTPClient
from urllib3.util import Timeout

from nomarr_pipeline.store import redact_url
from nomarr_pipeline.store.protocol import (
    COLLECTIONS,
    FILE_COUNTS,
    AnalysisClaim,
    ClaimedFile,
    Doc,
    HeadVersion,
    SparseHistogram,
    StoreError,
)
from nomarr_pipeline.store.schema import (
    TABLES,
    analysis_error_key,
    check_claim,
    check_histogram_spec,
    document_table,
    sparse_histogram,
    split_pending_guards,
)

# Rows per cursor round trip, and documents per write statement: large enough that a batch of
# files is O(1) requests, small enough that one request body stays a few megabytes.
CURSOR_BATCH_SIZE = 10_000
WRITE_CHUNK_SIZE = 5_000

# ArangoDB error numbers the store reacts to.
ERR_DATABASE_NOT_FOUND = 1228
ERR_DUPLICATE_NAME = 1207
ERR_COLLECTION_NOT_FOUND = 1203
ERR_DOCUMENT_NOT_FOUND = 1202

# Readers fill absent declared fields so that documents have the same shape on every engine.
_READ_DEFAULTS: dict[str, Doc] = {
    name: {**dict.fromkeys(table.columns), **dict(table.defaults)} for name, table in TABLES.items()
}
# SQLite REAL columns come back as floats; ArangoDB prints integral doubles as integers.
_FLOAT_FIELDS: dict[str, frozenset[str]] = {
    "library_files": frozenset({"duration_s"}),
    "file_tags": frozenset({"value", "std", "calibrated_value"}),
    "calibration_state": frozenset({"p5", "p95"}),
    "calibration_history": frozenset({"p5", "p95", "p5_delta", "p95_delta"}),
}

_RETURN_DOC = 'UNSET(d, "_id", "_rev")'


def fast_fail_http_client() -> DefaultHTTPClient:
    """python-arango's default client with few retries and separate connect and read timeouts:
    a store pointed at the wrong port says so at once (the default retries a refused connection
    for about six seconds), while a long AQL statement (a histogram over millions of
    predictions) still gets a generous read timeout."""
    return DefaultHTTPClient(
        request_timeout=Timeout(connect=5.0, read=300.0),  # type: ignore[arg-type]
        retry_attempts=1,
        backoff_factor=0.1,
    )


class ArangoStore:
    """The Store protocol on ArangoDB. Holds configuration only until first used."""

    engine = "arango"
    # One writer: concurrent writers were never measured against a live ArangoDB here.
    concurrent_writers = False

    def __init__(
        self,
        url: str,
        *,
        database: str = "nomarr",
        username: str | None = None,
        password: str | None = None,
        http_client: HTTPClient | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StoreError(f"ArangoDB URL must look like http(s)://host:port, got {redact_url(url)!r}")
        # Credentials may ride in the URL; explicit arguments win. The client never sees them
        # in the host URL, so no request line or error message can carry them.
        netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        self._host = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self._display_url = redact_url(url)
        self._database_name = database
        self._username = username or parts.username or "root"
        self._password = password if password is not None else (parts.password or "")
        self._http_client = http_client
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._client: ArangoClient | None = None
        self._db: StandardDatabase | None = None

    def __repr__(self) -> str:
        return f"ArangoStore({self._display_url!r}, database={self._database_name!r})"

    def __getstate__(self) -> Doc:
        # A worker process gets the settings (credentials travel only through the private
        # pipe to the child) and connects on first use; never the parent's connection.
        state = dict(self.__dict__)
        state.update(_lock=None, _pid=None, _client=None, _db=None)
        return state

    def __setstate__(self, state: Doc) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ---- connection and schema ----------------------------------------------------------
    def _database(self) -> StandardDatabase:
        """The database handle of this process, connecting and migrating on first use."""
        if self._db is not None and self._pid == os.getpid():
            return self._db
        with self._lock:
            if self._db is not None and self._pid == os.getpid():
                return self._db
            # After a fork the parent's sessions are not ours to close: drop the references.
            client = ArangoClient(hosts=self._host, http_client=self._http_client or fast_fail_http_client())
            db = client.db(self._database_name, username=self._username, password=self._password)
            with self._translate_errors("connect to"):
                self._ensure_database(client, db)
                self._migrate(db)
            self._client, self._db, self._pid = client, db, os.getpid()
            return db

    def _ensure_database(self, client: ArangoClient, db: StandardDatabase) -> None:
        """Probe the target database; create it through ``_system`` when it does not exist."""
        try:
            db.version()
            return
        except ArangoServerError as exc:
            if exc.error_code != ERR_DATABASE_NOT_FOUND and exc.http_code != 404:
                raise
        try:
            system = client.db("_system", username=self._username, password=self._password)
            system.create_database(self._database_name)
        except ArangoServerError as exc:
            if exc.error_code == ERR_DUPLICATE_NAME:
                return  # another process created it first
            raise StoreError(
                f"ArangoDB database {self._database_name!r} does not exist at "
                f"{self._display_url} and user {self._username!r} cannot create it "
                f"({_scrub(str(exc), self._password)}); create it or grant the user access"
            ) from exc

    def _migrate(self, db: StandardDatabase) -> None:
        stored_version = self._schema_version(db)
        if stored_version > SCHEMA_VERSION:
            raise StoreError(
                f"ArangoDB database {self._database_name!r} has schema version {stored_version}, "
                f"newer than this nomarr_pipeline understands ({SCHEMA_VERSION}); upgrade it"
            )
        if stored_version == SCHEMA_VERSION:
            return
        existing = {c["name"] for c in db.collections()}
        for migration in MIGRATIONS:
            if migration.version <= stored_version:
                continue
            for name in migration.collections:
                if name not in existing:
                    try:
                        db.create_collection(name)
                    except ArangoServerError as exc:
                        if exc.error_code != ERR_DUPLICATE_NAME:
                            raise
                    existing.add(name)
            for collection, name, fields in migration.indexes:
                # Creating an identical index returns the existing one: idempotent.
                index = dict(type="persistent", name=name, fields=list(fields), unique=False, sparse=False)
                db.collection(collection).add_index(index)
            for statement in migration.statements:
                db.aql.execute(statement)
        db.aql.execute(
            f"UPSERT {{_key: @key}} INSERT {{_key: @key, version: @version, updated_at: DATE_NOW()}} "
            f"UPDATE {{version: @version, updated_at: DATE_NOW()}} IN {META_COLLECTION}",
            bind_vars={"key": SCHEMA_DOC_KEY, "version": SCHEMA_VERSION},
        )

    def _schema_version(self, db: StandardDatabase) -> int:
        """0 for a database this code never opened."""
        try:
            doc = db.collection(META_COLLECTION).get(SCHEMA_DOC_KEY)
        except ArangoServerError as exc:
            if exc.error_code in (ERR_COLLECTION_NOT_FOUND, ERR_DOCUMENT_NOT_FOUND):
                return 0
            raise
        return int(doc["version"]) if doc else 0

    @contextmanager
    def _translate_errors(self, action: str = "use") -> Iterator[None]:
        """Turn transport and authentication failures into a StoreError naming the redacted URL."""
        try:
            yield
        except StoreError:
            raise
        except (requests.RequestException, ConnectionError) as exc:
            raise StoreError(
                f"cannot {action} ArangoDB at {self._display_url}: "
                f"{_scrub(_root_cause(exc), self._password)} "
                "(is the server running, and are the URL and port right?)"
            ) from None
        except ArangoServerError as exc:
            if exc.http_code in (401, 403) and action == "connect to":
                raise StoreError(
                    f"ArangoDB at {self._display_url} refused user {self._username!r} for database "
                    f"{self._database_name!r} (HTTP {exc.http_code}): check the user and password"
                ) from None
            raise
        except ArangoClientError as exc:
            raise StoreError(
                f"cannot {action} ArangoDB at {self._display_url}: {_scrub(str(exc), self._password)}"
            ) from None

    def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            with suppress(Exception):
                self._client.close()
        self._client = self._db = None
        self._pid = None

    # ---- query helpers -------------------------------------------------------------------
    def _query(self, aql: str, bind_vars: Doc | None = None, *, db: Database | None = None) -> list[Any]:
        """Run one AQL statement and return every row. Warnings fail the query: an AQL warning
        (division by zero, a bad type in arithmetic) means a silently wrong answer."""
        target = db if db is not None else self._database()
        with self._translate_errors():
            cursor = target.aql.execute(
                aql,
                bind_vars=bind_vars or {},
                batch_size=CURSOR_BATCH_SIZE,
                fail_on_warning=True,
            )
            return list(cursor)

    def _count(self, aql: str, bind_vars: Doc | None = None) -> int:
        rows = self._query(aql, bind_vars)
        return int(rows[0]) if rows else 0

    def _docs(self, collection: str, aql: str, bind_vars: Doc | None = None) -> list[Doc]:
        return [_from_stored(collection, row) for row in self._query(aql, bind_vars)]

    @contextmanager
    def _transaction(self, write: Sequence[str], exclusive: Sequence[str] = ()) -> Iterator[Database]:
        """A stream transaction: everything executed through the yielded handle commits
        together, or is aborted when the block raises. ``exclusive`` collections are locked
        for it alone: another such transaction waits until this one ends."""
        db = self._database()
        with self._translate_errors():
            txn = db.begin_transaction(write=list(write), exclusive=list(exclusive) or None)
        try:
            yield txn
        except BaseException:
            with suppress(Exception):
                txn.abort_transaction()
            raise
        with self._translate_errors():
            txn.commit_transaction()

    def _per_chunk(
        self,
        aql: str,
        name: str,
        rows: Sequence[Any],
        extra: Doc | None = None,
        *,
        db: Database | None = None,
    ) -> list[Any]:
        """Run ``aql`` once per chunk of ``rows`` bound as ``@<name>``; every row it returns."""
        found: list[Any] = []
        for start in range(0, len(rows), WRITE_CHUNK_SIZE):
            chunk = list(rows[start : start + WRITE_CHUNK_SIZE])
            found += self._query(aql, {name: chunk, **(extra or {})}, db=db)
        return found

    def _replace(self, collection: str, stored: Sequence[Doc], db: Database | None) -> None:
        """Insert or replace whole stored documents by key."""
        aql = f'FOR d IN @docs INSERT d INTO {collection} OPTIONS {{overwriteMode: "replace"}}'
        self._per_chunk(aql, "docs", stored, db=db)

    @contextmanager
    def _atomic(self, write: Sequence[str], statements: int) -> Iterator[Database | None]:
        """A transaction when more than one statement must land together; one statement is
        atomic by itself and needs no extra round trips."""
        if statements <= 1:
            yield None
            return
        with self._transaction(write) as txn:
            yield txn

    def _update_by_key(self, collection: str, rows: Sequence[Doc], *, db: Database | None = None) -> None:
        """Set the given fields on existing documents; unknown keys are ignored (as in SQLite).
        All chunks commit together (inside ``db`` when that is a transaction already)."""
        prepared = [_to_stored(collection, row) for row in rows]
        aql = (
            f"FOR row IN @rows FOR d IN {collection} FILTER d._key == row._key "
            f'UPDATE d WITH UNSET(row, "_key") IN {collection} '
            "OPTIONS {keepNull: true, mergeObjects: false}"
        )
        if db is not None:
            self._per_chunk(aql, "rows", prepared, db=db)
            return
        with self._atomic([collection], _chunk_count(prepared)) as txn:
            self._per_chunk(aql, "rows", prepared, db=txn)

    # ---- libraries -------------------------------------------------------------------------
    def ensure_library(self, doc: Doc) -> Doc:
        stored = _to_stored("libraries", doc)
        # overwriteMode "ignore": an existing library keeps the user's settings.
        self._query('INSERT @doc INTO libraries OPTIONS {overwriteMode: "ignore"}', {"doc": stored})
        library = self.get_library(doc["_key"])
        if library is None:  # only if someone deleted it in between
            raise StoreError(f"library {doc['_key']!r} vanished while it was being created")
        return library

    def get_library(self, key: str) -> Doc | None:
        aql = f"FOR d IN libraries FILTER d._key == @key RETURN {_RETURN_DOC}"
        found = self._docs("libraries", aql, {"key": key})
        return found[0] if found else None

    def list_libraries(self) -> list[Doc]:
        return sorted(self._docs("libraries", f"FOR d IN libraries RETURN {_RETURN_DOC}"), key=_by_key)

    def update_library(self, key: str, fields: Doc) -> None:
        self._update_by_key("libraries", [{**fields, "_key": key}])

    # ---- scanning ---------------------------------------------------------------------------
    def load_folder_cache(self, library_id: str) -> dict[str, tuple[int, int]]:
        rows = self._query(
            "FOR d IN library_folders FILTER d.library_id == @library_id "
            "RETURN [d.path, d.mtime_ns, d.entry_count]",
            {"library_id": library_id},
        )
        return {path: (mtime_ns, entry_count) for path, mtime_ns, entry_count in rows}

    def save_folder_cache(self, library_id: str, folders: dict[str, tuple[int, int]]) -> None:
        rows = [[path, mtime_ns, entry_count] for path, (mtime_ns, entry_count) in folders.items()]
        # Removal and insertion touch the same collection, which one AQL statement cannot do.
        with self._transaction(["library_folders"]) as txn:
            remove = "FOR d IN library_folders FILTER d.library_id == @library_id REMOVE d IN library_folders"
            self._query(remove, {"library_id": library_id}, db=txn)
            insert = (
                "FOR row IN @folders INSERT {library_id: @library_id, path: row[0], "
                "mtime_ns: row[1], entry_count: row[2]} INTO library_folders"
            )
            self._per_chunk(insert, "folders", rows, {"library_id": library_id}, db=txn)

    def file_index(self, library_id: str) -> dict[str, Doc]:
        rows = self._query(
            "FOR d IN library_files FILTER d.library_id == @library_id "
            "RETURN [d.path, d._key, d.size, d.mtime_ns, d.written_stats]",
            {"library_id": library_id},
        )
        return {
            path: {"_key": key, "size": size, "mtime_ns": mtime_ns, "written_stats": written}
            for path, key, size, mtime_ns, written in rows
        }

    def upsert_files(self, docs: Sequence[Doc]) -> None:
        stored = _stored_docs("library_files", docs)
        # overwriteMode "update" changes only the given fields; mergeObjects false replaces an
        # object-valued field (mood_tiers) whole, like SQLite's column.
        options = '{overwriteMode: "update", keepNull: true, mergeObjects: false}'
        self._per_chunk(f"FOR d IN @docs INSERT d INTO library_files OPTIONS {options}", "docs", stored)

    def delete_files(self, file_ids: Sequence[str]) -> None:
        self._remove_by_file(file_ids, ("file_tags", "analysis_errors", "library_files"))

    def delete_file_tags(self, file_ids: Sequence[str]) -> None:
        self._remove_by_file(file_ids, ("file_tags", "analysis_errors"))

    def _remove_by_file(self, file_ids: Sequence[str], collections: Sequence[str]) -> None:
        """Remove these files' documents from ``collections`` in one transaction."""
        ids = list(file_ids)
        with self._transaction(collections) as txn:
            for name in collections:
                field = "_key" if name == "library_files" else "file_id"
                remove = f"FOR d IN {name} FILTER d.{field} IN @file_ids REMOVE d IN {name}"
                self._per_chunk(remove, "file_ids", ids, db=txn)

    def get_files(self, file_ids: Sequence[str]) -> list[Doc]:
        if not file_ids:
            return []
        aql = f"FOR d IN library_files FILTER d._key IN @file_ids RETURN {_RETURN_DOC}"
        return sorted(self._docs("library_files", aql, {"file_ids": list(file_ids)}), key=_by_key)

    def file_counts(self, library_id: str | None = None) -> Doc:
        scope = "FILTER d.library_id == @library_id " if library_id is not None else ""
        rows = self._query(
            f"FOR d IN library_files {scope}"
            "COLLECT AGGREGATE total = COUNT(1), "
            "analysed = SUM(d.analyzed_at != null AND d.analysis_error == null ? 1 : 0), "
            "analysis_errors = SUM(d.analysis_error != null ? 1 : 0), "
            "scan_errors = SUM(d.scan_error != null ? 1 : 0), "
            "pending_writes = SUM(d.file_tags_pending == true ? 1 : 0), "
            "write_errors = SUM(d.write_error != null ? 1 : 0), "
            "written = SUM(d.written_at != null ? 1 : 0) "
            "RETURN {total, analysed, analysis_errors, scan_errors, pending_writes, "
            "write_errors, written}",
            {"library_id": library_id} if library_id is not None else {},
        )
        # Without groups COLLECT yields one row even for no input; SUM of nothing may be null.
        row = rows[0] if rows else {}
        return {k: int(row.get(k) or 0) for k in FILE_COUNTS}

    # ---- analysis -----------------------------------------------------------------------------
    def count_files_needing_analysis(self, head: HeadVersion) -> int:
        return self._count(
            f"LET heads = @heads FOR d IN library_files FILTER {_ANALYSABLE} "
            f"FILTER {_NEEDS_HEAD.format(head='heads[0]')} COLLECT WITH COUNT INTO files RETURN files",
            {"heads": _heads_var([head])},
        )

    def claim_files_for_analysis(
        self, heads: Sequence[HeadVersion], claim: AnalysisClaim, limit: int, after_key: str | None = None
    ) -> list[ClaimedFile]:
        # Claimers take analysis_claims exclusively, one after the other: each sees the
        # claims of those before it. A claim's _key is derived from (run, file), so even a
        # second insert of one could not succeed.
        with self._transaction(["analysis_claims"], exclusive=["analysis_claims"]) as txn:
            rows = self._query(
                CLAIMABLE_FOR_ANALYSIS_AQL,
                {"heads": _heads_var(heads), "run_id": claim.run_id, "after_key": after_key or "",
                 "limit": limit},
                db=txn,
            )
            self._query(
                "FOR file_id IN @file_ids INSERT {_key: SHA1(CONCAT(@run_id, '|', file_id)), "
                "run_id: @run_id, file_id, shard: @shard, claimed_at: DATE_NOW()} INTO analysis_claims",
                {"file_ids": [row["doc"]["_key"] for row in rows], "run_id": claim.run_id,
                 "shard": claim.shard},
                db=txn,
            )
        return _claimed_files(rows, heads)

    def reclaim_files_for_analysis(
        self, heads: Sequence[HeadVersion], claim: AnalysisClaim
    ) -> list[ClaimedFile]:
        rows = self._query(
            "LET heads = @heads FOR c IN analysis_claims "
            "FILTER c.run_id == @run_id AND c.shard == @shard "
            "FOR d IN library_files FILTER d._key == c.file_id "
            f"FILTER {_ANALYSABLE} {_NEEDED_HEADS} SORT d._key RETURN {{doc: {_RETURN_DOC}, heads: needed}}",
            {"heads": _heads_var(heads), "run_id": claim.run_id, "shard": claim.shard},
        )
        return _claimed_files(rows, heads)

    def release_analysis_claims(self, run_id: str, claimed_before_ms: int) -> int:
        return self._count(
            "FOR c IN analysis_claims FILTER c.run_id == @run_id OR c.claimed_at < @before "
            "REMOVE c IN analysis_claims COLLECT WITH COUNT INTO removed RETURN removed",
            {"run_id": run_id, "before": claimed_before_ms},
        )

    def write_predictions(self, docs: Sequence[Doc]) -> None:
        if not docs:
            return
        stored = _stored_docs("file_tags", docs)
        groups = sorted({_head_of(d) for d in docs})
        file_ids = sorted({g[0] for g in groups})
        with self._transaction(["file_tags", "analysis_errors", "library_files"]) as txn:
            # The old labels of each (file, head) go, whatever they were, and its failure.
            remove_tags = (
                "FOR g IN @groups FOR d IN file_tags FILTER d.file_id == g[0] "
                "AND d.model_key == g[1] AND d.head_name == g[2] REMOVE d IN file_tags"
            )
            self._per_chunk(remove_tags, "groups", [list(g) for g in groups], db=txn)
            remove_errors = "FOR key IN @keys REMOVE key IN analysis_errors OPTIONS {ignoreErrors: true}"
            self._per_chunk(remove_errors, "keys", [analysis_error_key(*g) for g in groups], db=txn)
            self._replace("file_tags", stored, txn)
            clear_hashes = (
                "FOR d IN library_files FILTER d._key IN @file_ids "
                "UPDATE d WITH {calibration_hash: null} IN library_files OPTIONS {keepNull: true}"
            )
            self._per_chunk(clear_hashes, "file_ids", file_ids, db=txn)

    def record_analysis(self, results: Sequence[Doc]) -> None:
        self._update_by_key("library_files", results)

    def record_analysis_errors(self, errors: Sequence[Doc]) -> None:
        stored = [
            _to_stored("analysis_errors", {**e, "_key": analysis_error_key(*_head_of(e))}) for e in errors
        ]
        with self._atomic(["analysis_errors"], _chunk_count(stored)) as txn:
            self._replace("analysis_errors", stored, txn)

    def count_files_with_analysis_errors(
        self, heads: Sequence[HeadVersion], library_id: str | None = None
    ) -> int:
        scope = "FILTER DOCUMENT('library_files', e.file_id).library_id == @library_id " if library_id else ""
        return self._count(
            "FOR h IN @heads FOR e IN analysis_errors "
            "FILTER e.model_key == h[0] AND e.head_name == h[1] AND e.tagger_version == h[2] "
            f"{scope}COLLECT file_id = e.file_id COLLECT WITH COUNT INTO failed_files RETURN failed_files",
            {"heads": _heads_var(heads), **({"library_id": library_id} if library_id else {})},
        )

    def errors_of_unproven_heads(self, heads: Sequence[HeadVersion]) -> list[Doc]:
        return self._docs(
            "analysis_errors",
            "FOR h IN @heads "
            "FILTER LENGTH(FOR t IN file_tags FILTER t.model_key == h[0] AND t.head_name == h[1] "
            "AND t.tagger_version == h[2] LIMIT 1 RETURN 1) == 0 "
            "FOR d IN analysis_errors "
            "FILTER d.model_key == h[0] AND d.head_name == h[1] AND d.tagger_version == h[2] "
            f"SORT d._key RETURN {_RETURN_DOC}",
            {"heads": _heads_var(heads)},
        )

    def file_tags_for_files(self, file_ids: Sequence[str]) -> list[Doc]:
        if not file_ids:
            return []
        aql = f"FOR d IN file_tags FILTER d.file_id IN @file_ids RETURN {_RETURN_DOC}"
        tags = self._docs("file_tags", aql, {"file_ids": list(file_ids)})
        return sorted(tags, key=lambda t: (t["file_id"], t["model_key"], t["head_name"], t["label"]))

    # ---- calibration ----------------------------------------------------------------------------
    def histograms(
        self, model_key: str, head_name: str, labels: Sequence[str], lo: float, hi: float, bins: int
    ) -> Iterator[tuple[str, SparseHistogram]]:
        check_histogram_spec(lo, hi, bins)
        for label in labels:
            bind = {"model_key": model_key, "head_name": head_name, "label": label}
            rows = self._query(HISTOGRAM_AQL, {**bind, "lo": lo, "hi": hi, "bins": bins})
            yield label, sparse_histogram(sorted((r["bin_index"], r["bin_count"]) for r in rows), bins)

    def labels_of_head(self, model_key: str, head_name: str) -> list[str]:
        rows = self._query(
            "FOR d IN file_tags FILTER d.model_key == @model_key AND d.head_name == @head_name "
            "COLLECT label = d.label RETURN label",
            {"model_key": model_key, "head_name": head_name},
        )
        return sorted(rows)

    def get_calibrations(self, keys: Sequence[str]) -> dict[str, Doc]:
        aql = f"FOR d IN calibration_state FILTER d._key IN @keys RETURN {_RETURN_DOC}"
        docs = self._docs("calibration_state", aql, {"keys": [encode_key(key) for key in keys]})
        return {doc["_key"]: doc for doc in docs}

    def list_calibrations(self) -> list[Doc]:
        docs = self._docs("calibration_state", f"FOR d IN calibration_state RETURN {_RETURN_DOC}")
        return sorted(docs, key=_by_key)

    def save_calibrations(self, states: Sequence[Doc], history: Sequence[Doc]) -> None:
        stored_states = _stored_docs("calibration_state", states)
        stored_history = _stored_docs("calibration_history", history)
        # A state document is replaced whole, as SQLite's INSERT OR REPLACE does.
        with self._transaction(["calibration_state", "calibration_history"]) as txn:
            self._replace("calibration_state", stored_states, txn)
            self._replace("calibration_history", stored_history, txn)

    def recent_history(self, calibration_keys: Sequence[str], per_key: int = 1) -> dict[str, list[Doc]]:
        # One index range per key (the subquery keeps LIMIT per key). Ties on snapshot_at
        # break by _key: SQLite uses insertion order, which ArangoDB lacks.
        docs = self._docs(
            "calibration_history",
            "FOR key IN @calibration_keys "
            "LET recent = (FOR d IN calibration_history FILTER d.calibration_key == key "
            f"SORT d.snapshot_at DESC, d._key DESC LIMIT @per_key RETURN {_RETURN_DOC}) "
            "FOR d IN recent RETURN d",
            {"calibration_keys": list(calibration_keys), "per_key": per_key},
        )
        found: dict[str, list[Doc]] = {}
        for doc in docs:
            found.setdefault(doc["calibration_key"], []).append(doc)
        return found

    # ---- recalibration ------------------------------------------------------------------------
    def count_files_needing_recalibration(self, expected_hash: str, library_id: str | None = None) -> int:
        scope, bind = _needs_recalibration(expected_hash, library_id)
        return self._count(
            f"FOR d IN library_files FILTER {scope} COLLECT WITH COUNT INTO files RETURN files", bind
        )

    def claim_files_for_recalibration(
        self, expected_hash: str, run: str, claim: str, limit: int, library_id: str | None = None
    ) -> list[str]:
        check_claim(run, claim)
        scope, bind = _needs_recalibration(expected_hash, library_id)
        claimed = self._query(
            f"FOR d IN library_files FILTER {scope} "
            "AND (d.calibration_hash == null OR LEFT(d.calibration_hash, LENGTH(@run)) != @run) "
            "SORT d._key LIMIT @limit "
            "UPDATE d WITH {calibration_hash: @claim} IN library_files RETURN NEW._key",
            {**bind, "run": run, "claim": claim, "limit": limit},
        )
        return sorted(claimed)

    def tier_inputs(self, file_ids: Sequence[str]) -> list[tuple[Any, ...]]:
        rows = self._per_chunk(TIER_INPUTS_AQL, "file_ids", list(file_ids))
        return [
            (file_id, head_name, label, _as_float(std), _as_float(value))
            for file_id, head_name, label, std, value in rows
        ]

    def finish_claimed_recalibration(
        self, claim: str, expected_hash: str, mood_tiers: Mapping[str, Doc | None]
    ) -> list[str]:
        with self._transaction(["file_tags", "library_files"]) as txn:
            held_aql = (
                "FOR d IN library_files FILTER d._key IN @file_ids AND d.calibration_hash == @claim "
                "RETURN d._key"
            )
            held = sorted(self._per_chunk(held_aql, "file_ids", list(mood_tiers), {"claim": claim}, db=txn))
            self._per_chunk(APPLY_CALIBRATION_AQL, "file_ids", held, db=txn)
            finished = {"calibration_hash": expected_hash, "file_tags_pending": True}
            updates = [{"_key": key, **finished, "mood_tiers": mood_tiers[key]} for key in held]
            self._update_by_key("library_files", updates, db=txn)
        return held

    def reset_calibration_hashes(self, library_id: str | None = None) -> int:
        scope = "d.library_id == @library_id AND " if library_id is not None else ""
        return self._count(
            f"LET reset = (FOR d IN library_files FILTER {scope}d.calibration_hash != null "
            "UPDATE d WITH {calibration_hash: null} IN library_files OPTIONS {keepNull: true} "
            "RETURN 1) RETURN LENGTH(reset)",
            {"library_id": library_id} if library_id is not None else {},
        )

    # ---- tag writing ----------------------------------------------------------------------------
    def files_pending_write(self, library_id: str, after_key: str | None, limit: int) -> list[Doc]:
        return self._docs(
            "library_files",
            "FOR d IN library_files FILTER d.library_id == @library_id "
            "AND d.file_tags_pending == true AND d._key > @after_key "
            f"SORT d._key LIMIT @limit RETURN {_RETURN_DOC}",
            {"library_id": library_id, "after_key": after_key or "", "limit": limit},
        )

    def add_written_stats(self, stats: Sequence[Doc]) -> None:
        rows = [{"_key": s["_key"], "stat": [s["size"], s["mtime_ns"]]} for s in stats]
        # Read and update in one statement: a concurrent append is never lost (ArangoDB
        # serialises or refuses conflicting writes of one document).
        aql = (
            "FOR row IN @rows FOR d IN library_files FILTER d._key == row._key "
            "UPDATE d WITH {written_stats: PUSH(d.written_stats || [], row.stat)} IN library_files"
        )
        with self._atomic(["library_files"], _chunk_count(rows)) as txn:
            self._per_chunk(aql, "rows", rows, db=txn)

    def record_writes(self, results: Sequence[Doc]) -> None:
        updates, guards = split_pending_guards(results)
        rows = [{"_key": key, "hash": written_for} for key, written_for in guards]
        statements = sum(_chunk_count(part) for part in (updates, rows) if part)
        with self._atomic(["library_files"], statements) as txn:
            self._update_by_key("library_files", updates, db=txn)
            written = (
                "FOR row IN @rows FOR d IN library_files "
                "FILTER d._key == row._key AND d.calibration_hash == row.hash "
                "UPDATE d WITH {file_tags_pending: false} IN library_files"
            )
            self._per_chunk(written, "rows", rows, db=txn)

    # ---- moving a store --------------------------------------------------------------------------
    def count_documents(self, collection: str) -> int:
        return self._count(f"RETURN LENGTH({_document_collection(collection)})")

    def iter_documents(self, collection: str, batch_size: int = 1000) -> Iterator[list[Doc]]:
        name = _document_collection(collection)
        aql = f"FOR d IN {name} FILTER d._key > @after_key SORT d._key LIMIT @limit RETURN {_RETURN_DOC}"
        after_key = ""  # the stored (encoded) key: pages follow AQL's own order
        while True:
            rows = self._query(aql, {"after_key": after_key, "limit": batch_size})
            if not rows:
                return
            yield [_from_stored(name, r) for r in rows]
            after_key = rows[-1]["_key"]

    def put_documents(self, collection: str, docs: Sequence[Doc]) -> None:
        name = _document_collection(collection)
        stored = _stored_docs(name, docs)
        with self._atomic([name], _chunk_count(stored)) as txn:
            self._replace(name, stored, txn)


# ---- AQL ------------------------------------------------------------------------------------
# The histogram of docs/ARCHITECTURE.md §6, per label, with values outside [lo, hi] counted apart:
# bin -1 collects underflow, bin @bins overflow. Multiplying by bins/(hi - lo) rather than
# dividing by the bin width keeps a value on a bin edge in the bin it starts, exactly as the
# SQLite engine computes it. COLLECT ... AGGREGATE keeps one counter per bin (never INTO,
# which would hold every document of a group in memory). AQL's MIN takes an array.
HISTOGRAM_AQL = """
FOR ft IN file_tags
  FILTER ft.model_key == @model_key AND ft.head_name == @head_name AND ft.label == @label
  FILTER ft.nomarr_only == true
  FILTER IS_NUMBER(ft.value)
  LET bin_idx = ft.value < @lo ? -1
    : (ft.value > @hi ? @bins : MIN([FLOOR((ft.value - @lo) * @bins / (@hi - @lo)), @bins - 1]))
  COLLECT bin_index = bin_idx AGGREGATE bin_count = COUNT(1)
  SORT bin_index
  RETURN {bin_index, bin_count}
""".strip()

# Set-based: every prediction of the batch's files gets its calibrated value, or null where
# no calibration exists, p95 <= p5 or the value is not a number. Two AQL facts shape it:
# null compares less than every number (`0.5 > null` is true), hence the IS_NUMBER guards;
# and a division by zero is a warning (queries run with failOnWarning), so the divisor is
# never zero whichever branches AQL chooses to evaluate.
# One expression for the value apply_calibration() stores and the value tier_inputs()
# reports, so that tiers computed from a read agree with the stored values to the last bit.
_CALIBRATED_VALUE_AQL = """
FOR ft IN file_tags
  FILTER ft.file_id IN @file_ids
  LET cal = FIRST(
    FOR c IN calibration_state
      FILTER c.model_key == ft.model_key AND c.head_name == ft.head_name AND c.label == ft.label
      LIMIT 1
      RETURN c)
  LET usable = cal != null AND IS_NUMBER(cal.p5) AND IS_NUMBER(cal.p95) AND cal.p95 > cal.p5
    AND IS_NUMBER(ft.value)
  LET value = usable ? ft.value : 0
  LET p5 = usable ? cal.p5 : 0
  LET span = usable ? cal.p95 - cal.p5 : 1
  LET calibrated = usable ? MIN([MAX([(value - p5) / span, 0]), 1]) : null
""".strip()

APPLY_CALIBRATION_AQL = (
    _CALIBRATED_VALUE_AQL
    + "\n  UPDATE ft WITH {calibrated_value: calibrated} IN file_tags OPTIONS {keepNull: true}"
)

# Only what mood tiers need, with the calibrated value as apply_calibration() would store it.
TIER_INPUTS_AQL = (
    _CALIBRATED_VALUE_AQL + "\n  RETURN [ft.file_id, ft.head_name, ft.label, ft.std, calibrated]"
)

# Analysis queries get their heads as @heads, a list of [model_key, head_name, tagger_version].
_ANALYSABLE = "d.scan_error == null AND d.analysis_error == null"
# Neither predictions nor a failure of {head} at its version: the file needs that head. The
# failure is found by its _key (SHA1 of "file|model|head", as analysis_error_key computes it).
_NEEDS_HEAD = (
    "FIRST(FOR t IN file_tags FILTER t.file_id == d._key AND t.model_key == {head}[0] "
    "AND t.head_name == {head}[1] AND t.tagger_version == {head}[2] LIMIT 1 RETURN 1) == null "
    "AND DOCUMENT('analysis_errors', SHA1(CONCAT(d._key, '|', {head}[0], '|', {head}[1])))"
    ".tagger_version != {head}[2]"
)
# `needed`: the positions in @heads of the heads the file `d` needs; files needing none go.
_NEEDED_HEADS = (
    f"LET needed = (FOR i IN 0..LENGTH(heads) - 1 FILTER {_NEEDS_HEAD.format(head='heads[i]')} RETURN i) "
    "FILTER LENGTH(needed) > 0"
)
CLAIMABLE_FOR_ANALYSIS_AQL = (
    f"LET heads = @heads FOR d IN library_files FILTER d._key > @after_key AND {_ANALYSABLE} "
    "FILTER DOCUMENT('analysis_claims', SHA1(CONCAT(@run_id, '|', d._key))) == null "
    f"{_NEEDED_HEADS} SORT d._key LIMIT @limit RETURN {{doc: {_RETURN_DOC}, heads: needed}}"
)


def _by_key(doc: Doc) -> str:
    return doc["_key"]


def _heads_var(heads: Sequence[HeadVersion]) -> list[list[str]]:
    return [[h.model_key, h.head_name, h.tagger_version] for h in heads]


def _claimed_files(rows: Sequence[Doc], heads: Sequence[HeadVersion]) -> list[ClaimedFile]:
    return [ClaimedFile(_from_stored("library_files", row["doc"]), tuple(heads[i] for i in row["heads"]))
            for row in rows]


def _document_collection(collection: str) -> str:
    """A collection name checked against the fixed list before it goes into AQL text."""
    return document_table(collection).name


def _as_float(number: Any) -> Any:
    """SQLite returns REAL columns as floats; ArangoDB prints integral doubles as integers."""
    return float(number) if number.__class__ is int else number


def _needs_recalibration(expected_hash: str, library_id: str | None) -> tuple[str, Doc]:
    # `!=` is true for a null hash too: null and a differing hash both need recalibration.
    scope = "d.analyzed_at != null AND d.calibration_hash != @expected_hash"
    bind: Doc = {"expected_hash": expected_hash}
    if library_id is not None:
        scope = "d.library_id == @library_id AND " + scope
        bind["library_id"] = library_id
    return scope, bind


# ---- documents in and out ---------------------------------------------------------------------
_BOOL_FIELDS: dict[str, frozenset[str]] = {name: table.bool_columns for name, table in TABLES.items()}


def _stored_docs(collection: str, docs: Sequence[Doc]) -> list[Doc]:
    """Whole documents as stored; each must have its ``_key``."""
    for doc in docs:
        if "_key" not in doc:
            raise ValueError(f"{collection} document without _key: {doc!r}")
    return [_to_stored(collection, doc) for doc in docs]


def _head_of(doc: Doc) -> tuple[str, str, str]:
    return doc["file_id"], doc["model_key"], doc["head_name"]


def _to_stored(collection: str, doc: Mapping[str, Any]) -> Doc:
    """The document as ArangoDB stores it: booleans as booleans (SQLite coerces them too),
    non-finite floats as null (JSON cannot carry them), ``_key`` encoded where needed."""
    bools = _BOOL_FIELDS.get(collection, frozenset())
    stored: Doc = {}
    for field, value in doc.items():
        if field in ("_id", "_rev"):
            continue
        if field in bools and value is not None:
            value = bool(value)
        stored[field] = _json_safe(value)
    if "_key" in stored:
        key = stored["_key"]
        stored["_key"] = (
            encode_key(key)
            if collection in ENCODED_KEY_COLLECTIONS
            else check_plain_key(key, f"{collection} key")
        )
    if collection == "file_tags":
        stored.setdefault("nomarr_only", True)
    return stored


def _from_stored(collection: str, stored: Mapping[str, Any]) -> Doc:
    """The document as the protocol returns it: every declared field present (null when
    never set), floats as floats and the original ``_key``."""
    doc: Doc = {**_READ_DEFAULTS.get(collection, {}), **stored}
    for field in _FLOAT_FIELDS.get(collection, ()):
        doc[field] = _as_float(doc.get(field))
    if collection in ENCODED_KEY_COLLECTIONS and isinstance(doc.get("_key"), str):
        doc["_key"] = decode_key(doc["_key"])
    return doc


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _chunk_count(rows: Sequence[Any]) -> int:
    return max(1, math.ceil(len(rows) / WRITE_CHUNK_SIZE))


# ---- schema ---------------------------------------------------------------------------------
# ``nomarr_meta`` holds ``{"_key": "schema", "version", "updated_at"}``; on open, the migrations
# after the stored version run in order. Each is idempotent (creating an existing collection or
# an identical index is a no-op), so processes opening a fresh database at once are safe.
META_COLLECTION = "nomarr_meta"
SCHEMA_DOC_KEY = "schema"


class Index(NamedTuple):
    """A non-unique, non-sparse persistent index, named so that it can be found and dropped."""

    collection: str
    name: str
    fields: tuple[str, ...]


# Every index names the queries it serves; an index no query uses only slows writes down.
INDEXES: tuple[Index, ...] = (
    # The histogram index of docs/ARCHITECTURE.md §6, kept for head-wide scans.
    Index("file_tags", "idx_file_tags_histogram", ("model_key", "head_name", "nomarr_only")),
    # histogram() and labels_of_head() are per (head, label).
    Index("file_tags", "idx_file_tags_label_histogram", ("model_key", "head_name", "label", "nomarr_only")),
    # write_predictions() replaces (file, head) groups; files_needing_analysis() probes
    # (file, head, tagger_version); file_tags_for_files()/tier_inputs()/delete_* go by file.
    Index("file_tags", "idx_file_tags_file", ("file_id", "model_key", "head_name", "tagger_version")),
    # file_index() and upsert lookups by path.
    Index("library_files", "idx_library_files_library_path", ("library_id", "path")),
    # count_files_needing_recalibration() and claim_files_for_recalibration() per library.
    Index("library_files", "idx_library_files_calibration_hash", ("library_id", "calibration_hash")),
    # files_pending_write().
    Index("library_files", "idx_library_files_pending", ("library_id", "file_tags_pending")),
    # load/save_folder_cache().
    Index("library_folders", "idx_library_folders_library", ("library_id",)),
    # tier_inputs() and finish_claimed_recalibration() join file_tags to their calibration by these fields.
    Index("calibration_state", "idx_calibration_state_label", ("model_key", "head_name", "label")),
    # recent_history(): newest snapshots of each calibration of a head.
    Index("calibration_history", "idx_calibration_history_key", ("calibration_key", "snapshot_at")),
)

# Version 2: analysis errors per (file, head) and the claims of predictions runs.
ANALYSIS_INDEXES: tuple[Index, ...] = (
    # delete_files()/delete_file_tags() by file (the analysis queries look errors up by _key).
    Index("analysis_errors", "idx_analysis_errors_file", ("file_id", "model_key", "head_name")),
    # count_files_with_analysis_errors() per head.
    Index("analysis_errors", "idx_analysis_errors_head", ("model_key", "head_name", "tagger_version")),
    # reclaim_files_for_analysis(): a shard's claims in a run.
    Index("analysis_claims", "idx_analysis_claims_shard", ("run_id", "shard")),
    # release_analysis_claims(): claims of runs that died.
    Index("analysis_claims", "idx_analysis_claims_claimed_at", ("claimed_at",)),
)
# Errors recorded before version 2 mixed failures of the file and of single heads: they are
# cleared once (those files are tried again); a failed file without predictions is no longer
# "analysed", so it has nothing to recalibrate and no tag write pending.
ANALYSIS_ERRORS_RESET: tuple[str, ...] = (
    "FOR d IN library_files FILTER d.analysis_error != null "
    "FILTER FIRST(FOR t IN file_tags FILTER t.file_id == d._key LIMIT 1 RETURN 1) == null "
    "UPDATE d WITH {analyzed_at: null, file_tags_pending: false} IN library_files OPTIONS {keepNull: true}",
    "FOR d IN library_files FILTER d.analysis_error != null "
    "UPDATE d WITH {analysis_error: null} IN library_files OPTIONS {keepNull: true}",
)


@dataclass(frozen=True)
class Migration:
    """One schema step: collections to create, then indexes to ensure, then AQL statements to
    run (each idempotent)."""

    version: int
    collections: tuple[str, ...]
    indexes: tuple[Index, ...]
    statements: tuple[str, ...] = ()


_VERSION_1_COLLECTIONS = tuple(c for c in COLLECTIONS if c not in ("analysis_errors", "analysis_claims"))
MIGRATIONS: tuple[Migration, ...] = (
    Migration(version=1, collections=(*_VERSION_1_COLLECTIONS, META_COLLECTION), indexes=INDEXES),
    Migration(version=2, collections=("analysis_errors", "analysis_claims"), indexes=ANALYSIS_INDEXES,
              statements=ANALYSIS_ERRORS_RESET),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

# ---- document keys -------------------------------------------------------------------
# ArangoDB keys allow only ASCII letters, digits and ``_-:.@()+,=;$!*'%`` and at most 254
# bytes. Calibration keys are "{model_key}:{head_name}:{label}" and labels come from model
# metadata ("Hip Hop", "Folk, World, & Country"), so those keys are percent-encoded: every
# character outside the allowed set, and '%' itself, becomes %XX of its UTF-8 bytes. The
# encoding is the identity for keys that are already valid and contain no '%', and it is
# reversible, so readers get back exactly the key that was written.
_KEY_SAFE_CHARACTERS = string.ascii_letters + string.digits + "_-:.@()+,=;$!*'"
MAX_KEY_BYTES = 254

# Collections whose keys the store encodes: their keys embed labels (and file_tags keys join
# their parts with '|'). Library and file keys are referenced from other documents
# (file_tags.file_id, library_files.library_id) and compared in AQL, so they are stored
# verbatim and must already be valid keys (the scanner makes them hex digests).
ENCODED_KEY_COLLECTIONS = frozenset({"file_tags", "calibration_state", "calibration_history"})


def encode_key(key: str) -> str:
    """The ArangoDB ``_key`` that stores the logical key ``key``."""
    if not isinstance(key, str) or not key:
        raise StoreError(f"document keys must be non-empty strings, got {key!r}")
    # quote() always leaves '~' alone, but ArangoDB rejects it in keys.
    encoded = quote(key, safe=_KEY_SAFE_CHARACTERS).replace("~", "%7E")
    if len(encoded) > MAX_KEY_BYTES:
        raise StoreError(
            f"key {key!r} is {len(encoded)} bytes once encoded for ArangoDB (at most {MAX_KEY_BYTES})"
        )
    return encoded


def decode_key(stored_key: str) -> str:
    """The logical key of a stored ``_key`` (inverse of :func:`encode_key`)."""
    return unquote(stored_key)


def check_plain_key(key: object, what: str) -> str:
    """A key stored verbatim: reject what ArangoDB would reject, with a message that says why."""
    if (
        not isinstance(key, str)
        or not key
        or len(key.encode()) > MAX_KEY_BYTES
        or any(ch not in _KEY_SAFE_CHARACTERS and ch != "%" for ch in key)
    ):
        raise StoreError(
            f"{what} {key!r} is not a valid ArangoDB document key: use 1-{MAX_KEY_BYTES} "
            f"characters from letters, digits and _-:.@()+,=;$!*'%"
        )
    return key


# ---- messages -----------------------------------------------------------------------------------
def _scrub(message: str, password: str) -> str:
    """Belt and braces: no message leaves this module with the password in it."""
    return message.replace(password, "***") if password else message


def _root_cause(exc: BaseException) -> str:
    """The innermost reason (e.g. "Connection refused") rather than urllib3's retry wrapper."""
    seen: set[int] = set()
    current: BaseException | None = exc
    reason = str(exc)
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if str(current):
            reason = str(current)
        current = current.__cause__ or current.__context__ or getattr(current, "reason", None)
        if current is not None and not isinstance(current, BaseException):
            break
    return reason
