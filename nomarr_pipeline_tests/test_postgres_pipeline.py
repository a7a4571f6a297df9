"""The whole pipeline (scan -> predictions -> calibration -> recalibration -> tag writing) as
``nomarr-pipeline run`` runs it, once on the embedded SQLite store and once on PostgreSQL, on
two identical copies of the demo library with the same generated models: the stores hold the
same documents and the files carry the same tags."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nomarr_pipeline.cli import main as cli
from nomarr_pipeline.cli.demo import build_demo_library
from nomarr_pipeline.ml.demo_models import write_demo_models
from nomarr_pipeline.store import DOCUMENT_COLLECTIONS, open_store
from nomarr_pipeline_tests.conftest import PostgresDatabase
from nomarr_pipeline_tests.store_dump import store_documents
from nomarr_pipeline_tests.tagging.tag_helpers import read_nom_tags

pytestmark = pytest.mark.slow


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


def test_pipeline_on_postgres_gives_the_same_documents_as_on_sqlite(
    tmp_path: Path, postgres_db: PostgresDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    write_demo_models(models, onnx=True)
    source = build_demo_library(tmp_path / "library")
    sqlite_url = f"sqlite:///{tmp_path / 'sqlite' / 'nomarr.sqlite3'}"
    sqlite_library = _run(source, tmp_path / "sqlite", models, sqlite_url, monkeypatch)
    monkeypatch.setenv("NOMARR_PG_PASSWORD", postgres_db.password)
    postgres_library = _run(source, tmp_path / "postgres", models, postgres_db.url, monkeypatch)

    on_sqlite = store_documents(open_store(sqlite_url))
    on_postgres = store_documents(open_store(postgres_db.url, pg_password=postgres_db.password))
    assert on_sqlite["file_tags"] and on_sqlite["calibration_state"]
    assert all(f["calibration_hash"] and not f.get("file_tags_pending") for f in on_sqlite["library_files"])
    for collection in DOCUMENT_COLLECTIONS:
        assert on_postgres[collection] == on_sqlite[collection], collection

    written = sorted(p.relative_to(sqlite_library) for p in sqlite_library.rglob("*") if p.is_file())
    assert written
    for relative in written:
        tags = read_nom_tags(sqlite_library / relative)
        assert tags and tags == read_nom_tags(postgres_library / relative), relative
