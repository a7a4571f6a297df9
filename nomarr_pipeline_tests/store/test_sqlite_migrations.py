"""The SQLite store migrates an older database on open and keeps its data."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from nomarr_pipeline.store import open_store
from nomarr_pipeline.store.sqlite import _TIER_INPUTS, MIGRATIONS
from nomarr_pipeline_tests.calibration.binning import label_histogram


def test_version_1_database_is_migrated_on_open_and_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
    conn.execute(
        "INSERT INTO file_tags (_key, file_id, model_key, head_name, label, value, std, nomarr_only, "
        "tagger_version) VALUES ('k', 'f1', 'm', 'h', 'happy', 0.25, 0.1, 1, 'v')"
    )
    conn.commit()
    conn.close()

    store = open_store(f"sqlite:///{path}")
    (tag,) = store.file_tags_for_files(["f1"])
    assert (tag["_key"], tag["value"], tag["nomarr_only"]) == ("k", 0.25, True)
    assert label_histogram(store, "m", "h", "happy", 0.0, 1.0, 4).bins == [(1, 1)]
    store.close()

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    ddl = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'file_tags'").fetchone()[0]
    assert "WITHOUT ROWID" in ddl
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "idx_calibration_state_params" in indexes and "idx_calibration_state_label" not in indexes
    plan = " ".join(
        str(row[-1]) for row in conn.execute("EXPLAIN QUERY PLAN " + _TIER_INPUTS, ('["f1"]',))
    )
    assert "COVERING INDEX idx_calibration_state_params" in plan


def test_opening_twice_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.sqlite3'}"
    for _ in range(2):
        store = open_store(url)
        assert store.file_counts()["total"] == 0
        store.close()
