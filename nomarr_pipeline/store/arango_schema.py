"""ArangoDB schema: collections, persistent indexes, schema version and document keys.

Schema versioning: the collection ``nomarr_meta`` holds one document ``{"_key": "schema",
"version": <int>, "updated_at": <ms>}``. On open the store reads it; when it is missing or
older than :data:`SCHEMA_VERSION`, the migrations after the stored version run in order and
the document is rewritten. Every migration is idempotent (creating an existing collection or
an identical index is a no-op), so two processes opening a fresh database at once are safe.
To change the schema, append a step to :data:`MIGRATIONS` and bump nothing else.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from urllib.parse import quote, unquote

from nomarr_pipeline.store.protocol import COLLECTIONS, StoreError

META_COLLECTION = "nomarr_meta"
SCHEMA_DOC_KEY = "schema"


@dataclass(frozen=True)
class PersistentIndex:
    """A non-unique, non-sparse persistent index, named so that it can be found and dropped."""

    collection: str
    name: str
    fields: tuple[str, ...]

    def definition(self) -> dict[str, object]:
        """The body of ``POST /_api/index?collection=<collection>``."""
        return {
            "type": "persistent",
            "name": self.name,
            "fields": list(self.fields),
            "unique": False,
            "sparse": False,
        }


# Every index names the queries it serves; an index no query uses only slows writes down.
INDEXES: tuple[PersistentIndex, ...] = (
    # The histogram index of docs/ARCHITECTURE.md §6, kept for head-wide scans.
    PersistentIndex("file_tags", "idx_file_tags_histogram", ("model_key", "head_name", "nomarr_only")),
    # histogram() and labels_of_head() are per (head, label).
    PersistentIndex(
        "file_tags",
        "idx_file_tags_label_histogram",
        ("model_key", "head_name", "label", "nomarr_only"),
    ),
    # write_predictions() replaces (file, head) groups; files_needing_analysis() probes
    # (file, head, tagger_version); file_tags_for_files()/tier_inputs()/delete_* go by file.
    PersistentIndex(
        "file_tags",
        "idx_file_tags_file",
        ("file_id", "model_key", "head_name", "tagger_version"),
    ),
    # file_index() and upsert lookups by path.
    PersistentIndex("library_files", "idx_library_files_library_path", ("library_id", "path")),
    # count_files_needing_recalibration() and claim_files_for_recalibration() per library.
    PersistentIndex(
        "library_files", "idx_library_files_calibration_hash", ("library_id", "calibration_hash")
    ),
    # files_pending_write().
    PersistentIndex("library_files", "idx_library_files_pending", ("library_id", "file_tags_pending")),
    # load/save_folder_cache().
    PersistentIndex("library_folders", "idx_library_folders_library", ("library_id",)),
    # tier_inputs() and finish_claimed_recalibration() join file_tags to their calibration by these fields.
    PersistentIndex("calibration_state", "idx_calibration_state_label", ("model_key", "head_name", "label")),
    # recent_history(): newest snapshots of each calibration of a head.
    PersistentIndex("calibration_history", "idx_calibration_history_key", ("calibration_key", "snapshot_at")),
)

# Version 2: analysis errors per (file, head) and the claims of predictions runs.
ANALYSIS_INDEXES: tuple[PersistentIndex, ...] = (
    # delete_files()/delete_file_tags() by file (the analysis queries look errors up by _key).
    PersistentIndex("analysis_errors", "idx_analysis_errors_file", ("file_id", "model_key", "head_name")),
    # count_files_with_analysis_errors() per head.
    PersistentIndex(
        "analysis_errors", "idx_analysis_errors_head", ("model_key", "head_name", "tagger_version")
    ),
    # reclaim_files_for_analysis(): a shard's claims in a run.
    PersistentIndex("analysis_claims", "idx_analysis_claims_shard", ("run_id", "shard")),
    # release_analysis_claims(): claims of runs that died.
    PersistentIndex("analysis_claims", "idx_analysis_claims_claimed_at", ("claimed_at",)),
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
    indexes: tuple[PersistentIndex, ...]
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
