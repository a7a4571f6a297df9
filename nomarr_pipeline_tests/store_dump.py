"""A whole store as comparable data, read through the Store protocol: the one helper that tells
whether two stores hold the same documents (a pipeline run on SQLite vs PostgreSQL, a run
killed and re-run vs one left alone).

What is left out or rewritten, and why:

- timestamps (``*_at``, ``mtime_ns``): when something happened, never what;
- run-specific claim tokens (any field named ``*claim*``, and a ``calibration_hash`` that is a
  recalibration claim rather than a hash): which run held a file, not its state;
- locations: keys derived from the library's folder (``_key``, ``library_id``, ``file_id``,
  ``root_path``, ``name``) become the file's path relative to its library, so copies of one
  library in two folders compare equal;
- ``calibration_history`` is append-only and every computation adds a snapshot: a computation
  repeated by a re-run after a crash repeats the previous snapshot's values (deltas 0), so
  consecutive repeats of a calibration's snapshot collapse into one.
"""

from __future__ import annotations

import os
from typing import Any

from nomarr_pipeline.calibration.recalibration import CLAIM_PREFIX
from nomarr_pipeline.store import DOCUMENT_COLLECTIONS, Doc, Store
from nomarr_pipeline.store.migrate import canonical

TIMESTAMPS = {"created_at", "updated_at", "last_computation_at", "snapshot_at", "scanned_at", "analyzed_at",
              "written_at", "mtime_ns", "adopted_at"}  # fmt: skip
LOCATION = {"_key", "library_id", "file_id", "root_path", "name", "calibration_key"}
SNAPSHOT_VALUES = ("p5", "p95", "n", "underflow_count", "overflow_count")


def _volatile(field: str) -> bool:
    return field in TIMESTAMPS or field in LOCATION or "claim" in field


def library_files(store: Store, library_id: str | None = None, batch_size: int = 1000) -> list[Doc]:
    """Every ``library_files`` document (of one library), in key order."""
    return [
        doc
        for page in store.iter_documents("library_files", batch_size=batch_size)
        for doc in page
        if library_id is None or doc["library_id"] == library_id
    ]


def store_documents(store: Store, batch_size: int = 500) -> dict[str, list[Any]]:
    """Every document collection, normalised as the module says and sorted, so that two stores
    compare collection by collection and document by document."""
    roots = {library["_key"]: library["root_path"] for library in store.list_libraries()}
    paths = {
        f["_key"]: os.path.relpath(f["path"], roots[f["library_id"]])
        if f["library_id"] in roots
        else f["path"]
        for f in library_files(store, batch_size=batch_size)
    }
    found: dict[str, list[Any]] = {}
    for collection in DOCUMENT_COLLECTIONS:
        docs = [doc for page in store.iter_documents(collection, batch_size=batch_size) for doc in page]
        if collection == "calibration_history":
            docs = _collapse_repeated_snapshots(docs)
        comparable = []
        for doc in docs:
            kept = {k: v for k, v in doc.items() if not _volatile(k)}
            if "file_id" in doc:
                kept["file"] = paths.get(doc["file_id"], doc["file_id"])
            if collection == "library_files":
                kept["path"] = paths[doc["_key"]]
                if str(kept.get("calibration_hash")).startswith(CLAIM_PREFIX):
                    kept["calibration_hash"] = "<claim>"
            if collection == "calibration_history":
                kept["calibration"] = doc.get("calibration_key")
            comparable.append(canonical(kept))
        found[collection] = sorted(comparable, key=repr)
    return found


def _collapse_repeated_snapshots(history: list[Doc]) -> list[Doc]:
    """Per calibration, in the order taken: a snapshot that repeats the one before it (same
    values, no move) is the same computation done again."""
    by_key: dict[str, list[Doc]] = {}
    for doc in sorted(history, key=lambda d: (d.get("calibration_key"), d.get("snapshot_at"), d["_key"])):
        snapshots = by_key.setdefault(doc.get("calibration_key"), [])
        repeat = (
            snapshots
            and all(doc.get(v) == snapshots[-1].get(v) for v in SNAPSHOT_VALUES)
            and all(not doc.get(delta) for delta in ("p5_delta", "p95_delta", "n_delta"))
        )
        if not repeat:
            snapshots.append(doc)
    return [doc for snapshots in by_key.values() for doc in snapshots]


def differences(expected: dict[str, list[Any]], found: dict[str, list[Any]], shown: int = 3) -> list[str]:
    """What differs, collection by collection, readably (a few documents each)."""
    problems = []
    for collection in DOCUMENT_COLLECTIONS:
        want, got = expected.get(collection, []), found.get(collection, [])
        if want == got:
            continue
        missing = [doc for doc in want if doc not in got]
        extra = [doc for doc in got if doc not in want]
        problems.append(
            f"{collection}: expected {len(want)} documents, found {len(got)}; "
            f"missing {missing[:shown]}; unexpected {extra[:shown]}"
        )
    return problems
