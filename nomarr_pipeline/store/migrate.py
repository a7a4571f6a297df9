"""Copy a whole store into another one, between any two engines, and prove the copy.

Pages of every collection go through ``iter_documents``/``put_documents`` (replaced by key, so
a re-run after a crash finishes the job), then every library's folder cache; each collection is
then read back and compared by count and order-independent checksum. Run it while nothing
writes to the source; documents the source lacks make the verification fail.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from nomarr_pipeline.store.protocol import DOCUMENT_COLLECTIONS, Doc, Store

FOLDER_CACHE = "library_folders"
DEFAULT_BATCH_SIZE = 5000
# (collection, documents copied so far, documents in the source collection)
MigrationProgress = Callable[[str, int, int], None]


@dataclass
class Digest:
    """Count and order-independent checksum of a set of documents."""

    count: int = 0
    total: int = 0

    def add(self, docs: Iterable[Any]) -> None:
        for doc in docs:
            data = json.dumps(canonical(doc), sort_keys=True, separators=(",", ":")).encode()
            self.total = (self.total + int.from_bytes(hashlib.blake2b(data, digest_size=8).digest())) % 2**64
            self.count += 1

    @property
    def checksum(self) -> str:
        return f"{self.total:016x}"


@dataclass(frozen=True)
class CollectionCheck:
    collection: str
    source_count: int
    target_count: int
    source_checksum: str
    target_checksum: str

    @property
    def verified(self) -> bool:
        return (self.source_count, self.source_checksum) == (self.target_count, self.target_checksum)

    def describe(self) -> str:
        if self.verified:
            return f"{self.collection}: {self.source_count} documents, checksum {self.source_checksum}"
        return (
            f"{self.collection}: source {self.source_count} documents (checksum {self.source_checksum}), "
            f"target {self.target_count} (checksum {self.target_checksum})"
        )


@dataclass
class MigrationReport:
    checks: list[CollectionCheck] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return all(check.verified for check in self.checks)

    def mismatches(self) -> list[CollectionCheck]:
        return [check for check in self.checks if not check.verified]


def migrate_store(
    source: Store,
    target: Store,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: MigrationProgress | None = None,
) -> MigrationReport:
    """Copy every collection of ``source`` into ``target`` and verify the copy."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    copied: dict[str, Digest] = {}
    for collection in DOCUMENT_COLLECTIONS:
        total = source.count_documents(collection)
        digest = copied[collection] = Digest()
        if progress is not None:
            progress(collection, 0, total)
        for page in source.iter_documents(collection, batch_size=batch_size):
            target.put_documents(collection, page)
            digest.add(page)
            if progress is not None:
                progress(collection, digest.count, max(total, digest.count))
    libraries = [library["_key"] for library in source.list_libraries()]
    folders = copied[FOLDER_CACHE] = Digest()
    for index, library_id in enumerate(libraries, start=1):
        cache = source.load_folder_cache(library_id)
        target.save_folder_cache(library_id, cache)
        folders.add(_folder_docs(library_id, cache))
        if progress is not None:
            progress(FOLDER_CACHE, index, len(libraries))
    return verify_copy(copied, target, batch_size=batch_size)


def verify_copy(copied: dict[str, Digest], target: Store, *, batch_size: int) -> MigrationReport:
    """Read every collection back from ``target`` and compare it with what was copied."""
    report = MigrationReport()
    for collection, source in copied.items():
        found = Digest()
        if collection == FOLDER_CACHE:
            for library in target.list_libraries():
                found.add(_folder_docs(library["_key"], target.load_folder_cache(library["_key"])))
        else:
            for page in target.iter_documents(collection, batch_size=batch_size):
                found.add(page)
        report.checks.append(
            CollectionCheck(collection, source.count, found.count, source.checksum, found.checksum)
        )
    return report


def canonical(value: Any) -> Any:
    """A document as every engine can hold it: null and absent fields are the same, a
    non-finite float is null (ArangoDB's JSON cannot carry it), an integral float is an
    integer (engines differ in how they hand back 3 vs 3.0)."""
    if isinstance(value, dict):
        fields = ((k, canonical(v)) for k, v in value.items())
        return {k: v for k, v in fields if v is not None}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
    return value


def _folder_docs(library_id: str, cache: dict[str, tuple[int, int]]) -> list[Doc]:
    return [
        {"library_id": library_id, "path": path, "mtime_ns": mtime_ns, "entry_count": entries}
        for path, (mtime_ns, entries) in cache.items()
    ]
