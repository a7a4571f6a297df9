"""The whole pipeline (scan -> predictions -> calibration -> recalibration -> tag writing) as
``nomarr-pipeline run`` runs it, once on the embedded SQLite store and once on PostgreSQL, on
two identical copies of the demo library with the same generated models: the stores hold the
same documents and the files carry the same tags."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from nomarr_pipeline import cli
from nomarr_pipeline.demo import build_demo_library, build_demo_models
from nomarr_pipeline.store import DOCUMENT_COLLECTIONS, Store, open_store
from nomarr_pipeline.store.migrate import canonical
from nomarr_pipeline.tagging.formats import read_nom_tags
from nomarr_pipeline_tests.conftest import PostgresDatabase

pytestmark = pytest.mark.slow

# Fields that differ between two runs of the same pipeline by nature: when, and where.
TIMESTAMPS = {"created_at", "updated_at", "last_computation_at", "snapshot_at", "scanned_at", "analyzed_at",
              "written_at", "mtime_ns", "adopted_at"}  # fmt: skip
LOCATION = {"_key", "library_id", "file_id", "root_path", "name", "calibration_key"}


def _run(source: Path, root: Path, models: Path, store_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Copies of one library: the demo's noise tracks are random each time they are generated.
    library = Path(shutil.copytree(source, root / "library"))
    (root / "data").mkdir()
    for name, value in {
        "DAGSTER_HOME": str(root / "dagster_home"),
        "NOMARR_DATA_DIR": str(root / "data"),
        "NOMARR_STORE_URL": store_url,
        "NOMARR_LIBRARY_ROOTS": str(library),
        "NOMARR_MODELS_DIR": str(models),
        "NOMARR_FILE_WRITE_MODE": "full",
        "NOMARR_AUTO_WRITE_TAGS": "true",
    }.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["run"]) == 0
    return library


def _documents(store: Store) -> dict[str, list[Any]]:
    """Every collection, with file references replaced by the file's path in its library and
    run-specific fields dropped, sorted so that the two stores compare line by line."""
    roots = {library["_key"]: library["root_path"] for library in store.list_libraries()}
    paths = {
        f["_key"]: os.path.relpath(f["path"], roots[f["library_id"]])
        for page in store.iter_files()
        for f in page
    }
    found: dict[str, list[Any]] = {}
    for collection in DOCUMENT_COLLECTIONS:
        docs = []
        for page in store.iter_documents(collection, batch_size=500):
            for doc in page:
                comparable = {k: v for k, v in doc.items() if k not in TIMESTAMPS | LOCATION}
                if "file_id" in doc:
                    comparable["file"] = paths[doc["file_id"]]
                if collection == "library_files":
                    comparable["path"] = paths[doc["_key"]]
                docs.append(canonical(comparable))
        found[collection] = sorted(docs, key=repr)
    return found


def test_pipeline_on_postgres_gives_the_same_documents_as_on_sqlite(
    tmp_path: Path, postgres_db: PostgresDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = build_demo_models(tmp_path / "models")
    source = build_demo_library(tmp_path / "library")
    sqlite_url = f"sqlite:///{tmp_path / 'sqlite' / 'nomarr.sqlite3'}"
    sqlite_library = _run(source, tmp_path / "sqlite", models, sqlite_url, monkeypatch)
    monkeypatch.setenv("NOMARR_PG_PASSWORD", postgres_db.password)
    postgres_library = _run(source, tmp_path / "postgres", models, postgres_db.url, monkeypatch)

    on_sqlite = _documents(open_store(sqlite_url))
    on_postgres = _documents(open_store(postgres_db.url, pg_password=postgres_db.password))
    assert on_sqlite["file_tags"] and on_sqlite["calibration_state"]
    assert all(f["calibration_hash"] and not f.get("file_tags_pending") for f in on_sqlite["library_files"])
    for collection in DOCUMENT_COLLECTIONS:
        assert on_postgres[collection] == on_sqlite[collection], collection

    written = sorted(p.relative_to(sqlite_library) for p in sqlite_library.rglob("*") if p.is_file())
    assert written
    for relative in written:
        tags = read_nom_tags(sqlite_library / relative)
        assert tags and tags == read_nom_tags(postgres_library / relative), relative
