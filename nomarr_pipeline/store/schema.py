"""The fields of each collection, which every engine stores (docs/ARCHITECTURE.md, data model).

SQLite and PostgreSQL keep one column per declared field and the rest of a document in an
``extra`` JSON column, so documents round-trip whole; ArangoDB fills absent declared fields on
read so that documents have the same shape everywhere. Engine DDL lives with each engine.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nomarr_pipeline.store.protocol import DOCUMENT_COLLECTIONS, Doc, SparseHistogram


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]
    json_columns: frozenset[str] = frozenset()
    bool_columns: frozenset[str] = frozenset()
    has_extra: bool = True
    # What identifies a row: the conflict target of an upsert, the order of a keyset page.
    key: tuple[str, ...] = ("_key",)
    # NOT NULL columns and the value a document without that field gets.
    defaults: tuple[tuple[str, Any], ...] = ()

    def to_row(self, doc: Mapping[str, Any]) -> Doc:
        """Column -> value a driver can send, for the fields present in ``doc``. JSON is encoded
        here (a value JSON cannot hold fails now, before anything is written)."""
        row: Doc = {}
        extra: Doc = {}
        for field, value in doc.items():
            if field in self.columns:
                if field in self.json_columns:
                    row[field] = None if value is None else json.dumps(value, sort_keys=True)
                elif field in self.bool_columns:
                    row[field] = None if value is None else bool(value)
                else:
                    row[field] = value
            elif self.has_extra:
                extra[field] = value
            else:
                raise ValueError(f"{self.name} has no field {field!r}")
        if extra:
            row["extra"] = json.dumps(extra, sort_keys=True)
        return row

    def from_row(self, row: Mapping[str, Any], *, json_as_text: bool) -> Doc:
        """The document of a row; ``json_as_text`` where the driver returns JSON undecoded."""
        doc: Doc = {}
        for field in self.columns:
            value = row[field]
            if value is not None and field in self.json_columns and json_as_text:
                value = json.loads(value)
            elif value is not None and field in self.bool_columns:
                value = bool(value)
            doc[field] = value
        if self.has_extra and row["extra"]:
            doc.update(json.loads(row["extra"]) if json_as_text else row["extra"])
        return doc

    @property
    def stored_columns(self) -> tuple[str, ...]:
        return (*self.columns, *(("extra",) if self.has_extra else ()))


LIBRARIES = Table(
    "libraries",
    (
        "_key",
        "name",
        "root_path",
        "auto_write_tags",
        "file_write_mode",
        "write_raw_scores",
        "created_at",
    ),
    bool_columns=frozenset({"auto_write_tags", "write_raw_scores"}),
)
LIBRARY_FILES = Table(
    "library_files",
    (
        "_key",
        "library_id",
        "path",
        "size",
        "mtime_ns",
        "duration_s",
        "scanned_at",
        "scan_error",
        "analyzed_at",
        "analysis_error",
        "calibration_hash",
        "mood_tiers",
        "file_tags_pending",
        "written_at",
        "write_error",
        "written_stats",
    ),
    json_columns=frozenset({"mood_tiers", "written_stats"}),
    bool_columns=frozenset({"file_tags_pending"}),
    defaults=(("file_tags_pending", False),),
)
FILE_TAGS = Table(
    "file_tags",
    (
        "_key",
        "file_id",
        "model_key",
        "head_name",
        "label",
        "value",
        "std",
        "calibrated_value",
        "nomarr_only",
        "tagger_version",
    ),
    bool_columns=frozenset({"nomarr_only"}),
    has_extra=False,
    key=("file_id", "model_key", "head_name", "label"),
    defaults=(("nomarr_only", True),),
)
ANALYSIS_ERRORS = Table(
    "analysis_errors",
    (
        "_key",
        "file_id",
        "model_key",
        "head_name",
        "tagger_version",
        "error",
        "failed_at",
    ),
)
CALIBRATION_STATE = Table(
    "calibration_state",
    (
        "_key",
        "model_key",
        "head_name",
        "label",
        "calibration_def_hash",
        "version",
        "histogram",
        "p5",
        "p95",
        "n",
        "underflow_count",
        "overflow_count",
        "created_at",
        "updated_at",
        "last_computation_at",
    ),
    json_columns=frozenset({"histogram"}),
)
CALIBRATION_HISTORY = Table(
    "calibration_history",
    (
        "_key",
        "calibration_key",
        "snapshot_at",
        "p5",
        "p95",
        "n",
        "underflow_count",
        "overflow_count",
        "p5_delta",
        "p95_delta",
        "n_delta",
    ),
)

# Collection -> its table, for the collections whose documents move whole.
TABLES: dict[str, Table] = {
    t.name: t
    for t in (LIBRARIES, LIBRARY_FILES, FILE_TAGS, ANALYSIS_ERRORS, CALIBRATION_STATE, CALIBRATION_HISTORY)
}


def document_table(collection: str) -> Table:
    if collection not in DOCUMENT_COLLECTIONS:
        raise ValueError(f"not a document collection: {collection!r} (one of {DOCUMENT_COLLECTIONS})")
    return TABLES[collection]


def file_tag_rows(
    docs: Iterable[Mapping[str, Any]], number: Callable[[Any], Any] = lambda value: value
) -> dict[tuple[str, str, str, str], tuple[Any, ...]]:
    """``file_tags`` documents as rows in column order (the bulk writers' format) by (file,
    model, head, label): the last document of a prediction wins. ``number`` converts the value,
    std and calibrated value to what the engine's columns hold."""
    rows: dict[tuple[str, str, str, str], tuple[Any, ...]] = {}
    for doc in docs:
        unknown = doc.keys() - _FILE_TAG_FIELDS
        if unknown or "_key" not in doc:
            raise ValueError(f"file_tags has no field {sorted(unknown)[0]!r}" if unknown
                             else f"file_tags document without _key: {doc!r}")  # fmt: skip
        nomarr_only = doc.get("nomarr_only")
        row = (doc["_key"], doc["file_id"], doc["model_key"], doc["head_name"], doc["label"],
               number(doc.get("value")), number(doc.get("std")), number(doc.get("calibrated_value")),
               True if nomarr_only is None else bool(nomarr_only), doc.get("tagger_version"))  # fmt: skip
        rows[row[1:5]] = row
    return rows


_FILE_TAG_FIELDS = frozenset(FILE_TAGS.columns)


def analysis_error_key(file_id: str, model_key: str, head_name: str) -> str:
    """The ``_key`` of a (file, head)'s ``analysis_errors`` document (hex, valid everywhere)."""
    return hashlib.sha1(f"{file_id}|{model_key}|{head_name}".encode()).hexdigest()


def split_pending_guards(results: Sequence[Doc]) -> tuple[list[Doc], list[tuple[str, str | None]]]:
    """``record_writes``' results as plain field updates and ``(key, written_for_hash)``
    pairs whose pending flag is cleared only while the file keeps that hash."""
    updates: list[Doc] = []
    guards: list[tuple[str, str | None]] = []
    for result in results:
        if "written_for_hash" not in result:
            updates.append(dict(result))
            continue
        fields = {k: v for k, v in result.items() if k != "written_for_hash"}
        if fields.get("file_tags_pending") is False:
            del fields["file_tags_pending"]
            guards.append((result["_key"], result["written_for_hash"]))
        updates.append(fields)
    return updates, guards


def sparse_histogram(rows: Iterable[tuple[int, int]], bins: int) -> SparseHistogram:
    """``(bin_index, count)`` rows, -1 for underflow and ``bins`` for overflow; read once, so
    the rows can come straight from the cursor."""
    inside: list[tuple[int, int]] = []
    under = over = 0
    for index, count in rows:
        if index < 0:
            under += int(count)
        elif index >= bins:
            over += int(count)
        else:
            inside.append((int(index), int(count)))
    return SparseHistogram(bins=inside, underflow_count=under, overflow_count=over)


def check_histogram_spec(lo: float, hi: float, bins: int) -> None:
    if not hi > lo or bins < 1:
        raise ValueError(f"invalid histogram spec lo={lo} hi={hi} bins={bins}")


def check_claim(run: str, claim: str) -> None:
    if not run or not claim.startswith(run):
        raise ValueError(f"claim {claim!r} must start with its run {run!r}")
