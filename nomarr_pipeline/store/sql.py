"""What SQLite and PostgreSQL run alike, written once with SQLite's parameters (``:name``,
``?``; PostgreSQL rewrites them, :func:`pyformat`) and the engine's :class:`Dialect` for what
the two spell differently. The hot paths stay hand-written in each engine.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from nomarr_pipeline.store.protocol import (
    FILE_COUNTS,
    AnalysisClaim,
    ClaimedFile,
    Doc,
    HeadVersion,
    SparseHistogram,
    StoreError,
)
from nomarr_pipeline.store.schema import (
    ANALYSIS_ERRORS,
    CALIBRATION_HISTORY,
    CALIBRATION_STATE,
    FILE_TAGS,
    LIBRARIES,
    LIBRARY_FILES,
    Table,
    analysis_error_key,
    check_histogram_spec,
    document_table,
    sparse_histogram,
    split_pending_guards,
)

T = TypeVar("T")

# Which files an analysis needs; ``f`` is a ``library_files`` row and ``h`` a row of the
# query's ``heads`` (position, model_key, head_name, tagger_version).
ANALYSABLE = "f.scan_error IS NULL AND f.analysis_error IS NULL"
# Neither predictions nor a failure of head `h` at its version: the file needs that head.
NEEDS_HEAD = """NOT EXISTS (
        SELECT 1 FROM file_tags t WHERE t.file_id = f._key AND t.model_key = h.model_key
          AND t.head_name = h.head_name AND t.tagger_version = h.tagger_version)
    AND NOT EXISTS (
        SELECT 1 FROM analysis_errors e WHERE e.file_id = f._key AND e.model_key = h.model_key
          AND e.head_name = h.head_name AND e.tagger_version = h.tagger_version)"""
NEEDS_SOME_HEAD = f"EXISTS (SELECT 1 FROM heads h WHERE {NEEDS_HEAD})"
_IN_LIBRARY = "CAST(:library_id AS TEXT) IS NULL OR library_id = :library_id"
# Three index-served ranges instead of `!=`, so finished files are never re-read.
NEEDS_RECALIBRATION = f"""(calibration_hash IS NULL OR calibration_hash < :hash OR calibration_hash > :hash)
    AND analyzed_at IS NOT NULL AND ({_IN_LIBRARY})"""


@dataclass(frozen=True)
class Dialect:
    """How an engine spells what standard SQL leaves open."""

    # ``{column}`` is one of the list bound as ``:{param}``.
    in_list: str
    # The list as the driver binds it.
    list_value: Callable[[Sequence[str]], object]
    # A CTE ``heads(position, model_key, head_name, tagger_version)`` from ``heads_params``.
    heads: str
    heads_params: Callable[[Sequence[HeadVersion]], Doc]
    # ``{current}`` JSON object with the keys of ``{new}`` set (a null removes the key).
    merge_extra: str
    # ``{v}`` is a finite number.
    finite: str
    # The histogram bin of ``{x}`` (``(value - lo) * bins / (hi - lo)``, not negative), at most the last.
    bin_index: str
    # ``written_stats`` with ``[:size, :mtime_ns]`` appended.
    append_stat: str
    # A JSON value bound as ``:{param}``.
    json_value: str = ":{param}"
    json_as_text: bool = True
    # Pending writes, as the planner matches the partial index on them.
    pending: str = "file_tags_pending"

    def among(self, column: str, param: str) -> str:
        return self.in_list.format(column=column, param=param)


@functools.lru_cache(maxsize=512)
def pyformat(sql: str) -> str:
    """A statement with SQLite's parameters in psycopg's: ``:name`` -> ``%(name)s``, ``?`` -> ``%s``."""
    sql = sql.replace("%", "%%").replace("?", "%s")
    return re.sub(r"(?<![:\w]):([A-Za-z_]\w*)", r"%(\1)s", sql)


class SqlStore:
    """The Store protocol's simple methods; an engine supplies transactions and the hot paths.

    ``_read``/``_write`` run ``work(conn)`` in one transaction, where ``conn.execute(sql,
    params)`` takes this module's parameter style and returns a cursor whose rows index by
    column name, and ``conn.executemany(sql, rows)`` does the same for many rows.
    """

    dialect: Dialect

    def _read(self, work: Callable[[Any], T]) -> T:
        raise NotImplementedError

    def _write(self, work: Callable[[Any], T]) -> T:
        raise NotImplementedError

    def _rows(self, sql: str, params: Sequence[Any] | Doc = ()) -> list[Any]:
        return self._read(lambda conn: conn.execute(sql, params).fetchall())

    def _count(self, sql: str, params: Sequence[Any] | Doc = ()) -> int:
        """The ``n`` column of a one-row query."""
        return int(self._rows(sql, params)[0]["n"])

    def _doc(self, table: Table, row: Any) -> Doc:
        return table.from_row(row, json_as_text=self.dialect.json_as_text)

    def _docs(self, table: Table, sql: str, params: Sequence[Any] | Doc = ()) -> list[Doc]:
        return [self._doc(table, row) for row in self._rows(sql, params)]

    def _get(self, table: Table, keys: Sequence[str], column: str = "_key") -> list[Doc]:
        """The rows whose ``column`` is one of ``keys``, in the order of the table's key."""
        if not keys:
            return []
        where = self.dialect.among(column, "keys")
        sql = f"SELECT * FROM {table.name} WHERE {where} ORDER BY {', '.join(table.key)}"
        return self._docs(table, sql, {"keys": self.dialect.list_value(keys)})

    def _upsert(self, conn: Any, table: Table, docs: Sequence[Doc], *, replace: bool) -> None:
        """Insert or update by the table's key; with ``replace=False`` only the given fields
        change, else the whole document (absent fields null, or their column default)."""
        groups: dict[tuple[str, ...], list[Doc]] = {}
        defaults = dict(table.defaults)
        for doc in docs:
            if "_key" not in doc:
                raise ValueError(f"{table.name} document without _key: {doc!r}")
            row = table.to_row(doc)
            if replace:
                row = {c: row[c] if row.get(c) is not None else defaults.get(c) for c in table.stored_columns}
            groups.setdefault(tuple(sorted(row)), []).append(row)
        for columns, rows in groups.items():
            values = ", ".join(self._value(table, c) for c in columns)
            sets = [
                self.dialect.merge_extra.format(current=f"{table.name}.extra", new="excluded.extra")
                if c == "extra" and not replace
                else f"{c} = excluded.{c}"
                for c in columns
                if c not in table.key
            ]
            conflict = f"DO UPDATE SET {', '.join(sets)}" if sets else "DO NOTHING"
            conn.executemany(
                f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({values}) "
                f"ON CONFLICT ({', '.join(table.key)}) {conflict}",
                rows,
            )

    def _update_in(self, conn: Any, table: Table, docs: Sequence[Doc]) -> None:
        """Set the given fields of existing documents; unknown keys are ignored."""
        groups: dict[tuple[str, ...], list[Doc]] = {}
        for doc in docs:
            row = table.to_row(doc)
            if len(row) > 1:
                groups.setdefault(tuple(sorted(row)), []).append(row)
        for columns, rows in groups.items():
            sets = ", ".join(
                self.dialect.merge_extra.format(current="extra", new=self._value(table, c))
                if c == "extra"
                else f"{c} = {self._value(table, c)}"
                for c in columns
                if c != "_key"
            )
            conn.executemany(f"UPDATE {table.name} SET {sets} WHERE _key = :_key", rows)

    def _value(self, table: Table, column: str) -> str:
        if column in table.json_columns or column == "extra":
            return self.dialect.json_value.format(param=column)
        return f":{column}"

    def _update(self, table: Table, docs: Sequence[Doc]) -> None:
        if any(len(doc) > 1 for doc in docs):
            self._write(lambda conn: self._update_in(conn, table, docs))

    # ---- libraries -------------------------------------------------------------------
    def ensure_library(self, doc: Doc) -> Doc:
        row = LIBRARIES.to_row(doc)
        values = ", ".join(f":{c}" for c in row)
        self._write(
            lambda conn: conn.execute(
                f"INSERT INTO libraries ({', '.join(row)}) VALUES ({values}) ON CONFLICT (_key) DO NOTHING",
                row,
            )
        )
        library = self.get_library(doc["_key"])
        if library is None:  # only a delete racing between the two statements gets here
            raise StoreError(f"library {doc['_key']!r} vanished while it was being added")
        return library

    def get_library(self, key: str) -> Doc | None:
        found = self._get(LIBRARIES, [key])
        return found[0] if found else None

    def list_libraries(self) -> list[Doc]:
        return self._docs(LIBRARIES, "SELECT * FROM libraries ORDER BY _key")

    def update_library(self, key: str, fields: Doc) -> None:
        self._update(LIBRARIES, [{**fields, "_key": key}])

    # ---- scanning --------------------------------------------------------------------
    def load_folder_cache(self, library_id: str) -> dict[str, tuple[int, int]]:
        rows = self._rows(
            "SELECT path, mtime_ns, entry_count FROM library_folders WHERE library_id = ?", (library_id,)
        )
        return {r["path"]: (r["mtime_ns"], r["entry_count"]) for r in rows}

    def save_folder_cache(self, library_id: str, folders: dict[str, tuple[int, int]]) -> None:
        def save(conn: Any) -> None:
            conn.execute("DELETE FROM library_folders WHERE library_id = ?", (library_id,))
            conn.executemany(
                "INSERT INTO library_folders (library_id, path, mtime_ns, entry_count) VALUES (?, ?, ?, ?)",
                [(library_id, path, m, n) for path, (m, n) in folders.items()],
            )

        self._write(save)

    def file_index(self, library_id: str) -> dict[str, Doc]:
        rows = self._rows(
            "SELECT path, _key, size, mtime_ns, written_stats FROM library_files WHERE library_id = ?",
            (library_id,),
        )
        decode = json.loads if self.dialect.json_as_text else lambda value: value
        return {
            row["path"]: {"_key": row["_key"], "size": row["size"], "mtime_ns": row["mtime_ns"],
                          "written_stats": row["written_stats"] and decode(row["written_stats"])}
            for row in rows
        }  # fmt: skip

    def upsert_files(self, docs: Sequence[Doc]) -> None:
        self._write(lambda conn: self._upsert(conn, LIBRARY_FILES, docs, replace=False))

    def delete_files(self, file_ids: Sequence[str]) -> None:
        def delete(conn: Any) -> None:
            params = self._delete_analysis_results(conn, file_ids)
            conn.execute(f"DELETE FROM library_files WHERE {self.dialect.among('_key', 'ids')}", params)

        self._write(delete)

    def delete_file_tags(self, file_ids: Sequence[str]) -> None:
        self._write(lambda conn: self._delete_analysis_results(conn, file_ids))

    def _delete_analysis_results(self, conn: Any, file_ids: Sequence[str]) -> Doc:
        params = {"ids": self.dialect.list_value(file_ids)}
        for table in ("file_tags", "analysis_errors"):
            conn.execute(f"DELETE FROM {table} WHERE {self.dialect.among('file_id', 'ids')}", params)
        return params

    def get_files(self, file_ids: Sequence[str]) -> list[Doc]:
        return self._get(LIBRARY_FILES, file_ids)

    def file_counts(self, library_id: str | None = None) -> Doc:
        (row,) = self._rows(
            f"""
            SELECT COUNT(*) AS total,
                   COUNT(*) FILTER (WHERE analyzed_at IS NOT NULL AND analysis_error IS NULL) AS analysed,
                   COUNT(analysis_error) AS analysis_errors,
                   COUNT(scan_error) AS scan_errors,
                   COUNT(*) FILTER (WHERE file_tags_pending) AS pending_writes,
                   COUNT(write_error) AS write_errors,
                   COUNT(written_at) AS written
            FROM library_files WHERE {_IN_LIBRARY}
            """,
            {"library_id": library_id},
        )
        return {k: int(row[k]) for k in FILE_COUNTS}

    # ---- analysis ----------------------------------------------------------------------
    def count_files_needing_analysis(self, head: HeadVersion) -> int:
        return self._count(
            f"{self.dialect.heads} SELECT COUNT(*) AS n FROM library_files f "
            f"WHERE {ANALYSABLE} AND {NEEDS_SOME_HEAD}",
            self.dialect.heads_params([head]),
        )

    def reclaim_files_for_analysis(
        self, heads: Sequence[HeadVersion], claim: AnalysisClaim
    ) -> list[ClaimedFile]:
        params = {**self.dialect.heads_params(heads), "run_id": claim.run_id, "shard": claim.shard}

        def take_back(conn: Any) -> list[ClaimedFile]:
            keys = [row["_key"] for row in conn.execute(
                f"""{self.dialect.heads} SELECT f._key FROM analysis_claims c
                JOIN library_files f ON f._key = c.file_id
                WHERE c.run_id = :run_id AND c.shard = :shard AND {ANALYSABLE} AND {NEEDS_SOME_HEAD}
                ORDER BY f._key""",
                params)]  # fmt: skip
            return self._claimed_files(conn, keys, heads)

        return self._read(take_back)

    def _claimed_files(
        self, conn: Any, keys: Sequence[str], heads: Sequence[HeadVersion]
    ) -> list[ClaimedFile]:
        """The documents of ``keys`` with the heads each still needs, in key order."""
        if not keys:
            return []
        params = {**self.dialect.heads_params(heads), "keys": self.dialect.list_value(keys)}
        needed: dict[str, list[int]] = {}
        for row in conn.execute(
            f"""{self.dialect.heads} SELECT f._key, h.position FROM library_files f CROSS JOIN heads h
            WHERE {self.dialect.among("f._key", "keys")} AND {NEEDS_HEAD} ORDER BY f._key, h.position""",
            params,
        ):
            needed.setdefault(row["_key"], []).append(row["position"])
        docs = conn.execute(
            f"SELECT * FROM library_files WHERE {self.dialect.among('_key', 'keys')} ORDER BY _key",
            {"keys": params["keys"]},
        ).fetchall()
        return [ClaimedFile(self._doc(LIBRARY_FILES, row), tuple(heads[i] for i in needed[row["_key"]]))
                for row in docs if row["_key"] in needed]  # fmt: skip

    def release_analysis_claims(self, run_id: str, claimed_before_ms: int) -> int:
        return self._write(lambda conn: conn.execute(
            "DELETE FROM analysis_claims WHERE run_id = ? OR claimed_at < ?", (run_id, claimed_before_ms)
        ).rowcount)  # fmt: skip

    def record_analysis(self, results: Sequence[Doc]) -> None:
        self._update(LIBRARY_FILES, results)

    def record_analysis_errors(self, errors: Sequence[Doc]) -> None:
        docs = [
            {**e, "_key": analysis_error_key(e["file_id"], e["model_key"], e["head_name"])} for e in errors
        ]
        if docs:
            self._write(lambda conn: self._upsert(conn, ANALYSIS_ERRORS, docs, replace=True))

    def count_files_with_analysis_errors(
        self, heads: Sequence[HeadVersion], library_id: str | None = None
    ) -> int:
        return self._count(
            f"""{self.dialect.heads} SELECT COUNT(DISTINCT e.file_id) AS n FROM heads h
            JOIN analysis_errors e ON e.model_key = h.model_key AND e.head_name = h.head_name
                                  AND e.tagger_version = h.tagger_version
            JOIN library_files f ON f._key = e.file_id
            WHERE CAST(:library_id AS TEXT) IS NULL OR f.library_id = :library_id""",
            {**self.dialect.heads_params(heads), "library_id": library_id},
        )

    def errors_of_unproven_heads(self, heads: Sequence[HeadVersion]) -> list[Doc]:
        return self._docs(
            ANALYSIS_ERRORS,
            f"""{self.dialect.heads} SELECT e.* FROM heads h
            JOIN analysis_errors e ON e.model_key = h.model_key AND e.head_name = h.head_name
                                  AND e.tagger_version = h.tagger_version
            WHERE NOT EXISTS (SELECT 1 FROM file_tags t WHERE t.model_key = h.model_key
                              AND t.head_name = h.head_name AND t.tagger_version = h.tagger_version)
            ORDER BY e._key""",
            self.dialect.heads_params(heads),
        )

    def file_tags_for_files(self, file_ids: Sequence[str]) -> list[Doc]:
        return self._get(FILE_TAGS, file_ids, "file_id")

    # ---- calibration -------------------------------------------------------------------
    def histograms(
        self, model_key: str, head_name: str, labels: Sequence[str], lo: float, hi: float, bins: int
    ) -> Iterator[tuple[str, SparseHistogram]]:
        for label in labels:
            yield label, self._histogram(model_key, head_name, label, lo, hi, bins)

    def _histogram(
        self, model_key: str, head_name: str, label: str, lo: float, hi: float, bins: int
    ) -> SparseHistogram:
        check_histogram_spec(lo, hi, bins)
        # Multiplying by bins/(hi - lo) rather than dividing by the bin width keeps a value on a
        # bin edge (0.3 of 10,000 bins) in the bin that edge starts (docs/ARCHITECTURE.md §6).
        in_range = self.dialect.bin_index.format(x="(value - :lo) * :bins / (:hi - :lo)")
        sql, params = (
            f"""SELECT CASE WHEN value < :lo THEN -1 WHEN value > :hi THEN :bins ELSE {in_range}
                   END AS bin_index, COUNT(*) AS bin_count
            FROM file_tags
            WHERE model_key = :model_key AND head_name = :head_name AND label = :label
              AND nomarr_only = TRUE AND {self.dialect.finite.format(v="value")}
            GROUP BY bin_index ORDER BY bin_index""",
            {
                "lo": float(lo),
                "hi": float(hi),
                "bins": int(bins),
                "model_key": model_key,
                "head_name": head_name,
                "label": label,
            },
        )
        # Rows read off the cursor one at a time: a list of 10,000 row objects per label would cost
        # more peak memory than the histogram itself.
        return self._read(
            lambda conn: sparse_histogram(
                ((row["bin_index"], row["bin_count"]) for row in conn.execute(sql, params)), bins
            )
        )

    def labels_of_head(self, model_key: str, head_name: str) -> list[str]:
        rows = self._rows(
            "SELECT DISTINCT label FROM file_tags WHERE model_key = ? AND head_name = ? ORDER BY label",
            (model_key, head_name),
        )
        return [r["label"] for r in rows]

    def _by_calibration(self, history_rows: Sequence[Any]) -> dict[str, list[Doc]]:
        """``calibration_history`` rows in the order read, grouped by their calibration."""
        found: dict[str, list[Doc]] = {}
        for row in history_rows:
            found.setdefault(row["calibration_key"], []).append(self._doc(CALIBRATION_HISTORY, row))
        return found

    def get_calibrations(self, keys: Sequence[str]) -> dict[str, Doc]:
        return {doc["_key"]: doc for doc in self._get(CALIBRATION_STATE, keys)}

    def list_calibrations(self) -> list[Doc]:
        return self._docs(CALIBRATION_STATE, "SELECT * FROM calibration_state ORDER BY _key")

    def save_calibrations(self, states: Sequence[Doc], history: Sequence[Doc]) -> None:
        def save(conn: Any) -> None:
            self._upsert(conn, CALIBRATION_STATE, states, replace=True)
            self._upsert(conn, CALIBRATION_HISTORY, history, replace=True)

        self._write(save)

    # ---- recalibration -----------------------------------------------------------------
    def count_files_needing_recalibration(self, expected_hash: str, library_id: str | None = None) -> int:
        return self._count(
            f"SELECT COUNT(*) AS n FROM library_files WHERE {NEEDS_RECALIBRATION}",
            {"hash": expected_hash, "library_id": library_id},
        )

    def reset_calibration_hashes(self, library_id: str | None = None) -> int:
        return self._write(lambda conn: conn.execute(
            "UPDATE library_files SET calibration_hash = NULL "
            f"WHERE calibration_hash IS NOT NULL AND ({_IN_LIBRARY})",
            {"library_id": library_id},
        ).rowcount)  # fmt: skip

    # ---- tag writing -------------------------------------------------------------------
    def files_pending_write(self, library_id: str, after_key: str | None, limit: int) -> list[Doc]:
        return self._docs(
            LIBRARY_FILES,
            f"SELECT * FROM library_files WHERE library_id = ? AND {self.dialect.pending} AND _key > ? "
            "ORDER BY _key LIMIT ?",
            (library_id, after_key or "", limit),
        )

    def add_written_stats(self, stats: Sequence[Doc]) -> None:
        # Appended in the row itself, so what concurrent writers appended is kept.
        rows = [{"_key": s["_key"], "size": s["size"], "mtime_ns": s["mtime_ns"]} for s in stats]
        sql = f"UPDATE library_files SET written_stats = {self.dialect.append_stat} WHERE _key = :_key"
        if rows:
            self._write(lambda conn: conn.executemany(sql, rows))

    def record_writes(self, results: Sequence[Doc]) -> None:
        updates, guards = split_pending_guards(results)

        def record(conn: Any) -> None:
            self._update_in(conn, LIBRARY_FILES, updates)
            conn.executemany(
                "UPDATE library_files SET file_tags_pending = FALSE "
                "WHERE _key = ? AND calibration_hash IS NOT DISTINCT FROM ?",
                guards,
            )

        self._write(record)

    # ---- moving a store ----------------------------------------------------------------
    def count_documents(self, collection: str) -> int:
        return self._count(f"SELECT COUNT(*) AS n FROM {document_table(collection).name}")

    def iter_documents(self, collection: str, batch_size: int = 1000) -> Iterator[list[Doc]]:
        table = document_table(collection)
        order = ", ".join(table.key)
        after: tuple[Any, ...] | None = None
        while True:
            where = f"WHERE ({order}) > ({', '.join('?' * len(table.key))})" if after else ""
            rows = self._rows(
                f"SELECT * FROM {table.name} {where} ORDER BY {order} LIMIT ?", (*(after or ()), batch_size)
            )
            if not rows:
                return
            yield [self._doc(table, r) for r in rows]
            after = tuple(rows[-1][column] for column in table.key)

    def put_documents(self, collection: str, docs: Sequence[Doc]) -> None:
        table = document_table(collection)
        self._write(lambda conn: self._upsert(conn, table, docs, replace=True))
