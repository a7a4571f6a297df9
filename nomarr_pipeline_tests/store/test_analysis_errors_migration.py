"""Stores written before analysis errors were per (file, head) are migrated on open: the old
file-wide errors (which mixed failures of the audio and of single models) are cleared once so
that those files are tried again, and a failed file without predictions is no longer
"analysed" (nothing to recalibrate, no tag write pending)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from nomarr_pipeline.store import AnalysisClaim, HeadVersion, Store, open_store, postgres, sqlite
from nomarr_pipeline_tests.conftest import PostgresDatabase

HEAD = HeadVersion("m", "h", "v")
# (key, analyzed_at, analysis_error, file_tags_pending, has predictions)
OLD_FILES = [
    ("ok", 5, None, 1, True),
    ("partly", 5, "head m:broken failed: RuntimeError", 1, True),  # other heads worked
    ("poisoned", 5, "head m:h failed: Invalid GraphDef", 1, False),  # every head failed
    ("never", None, None, 0, False),
]


def _old_rows(insert_file: object, insert_tag: object) -> None:
    for key, analyzed_at, error, pending, predictions in OLD_FILES:
        insert_file((key, "lib", f"/m/{key}.mp3", analyzed_at, error, pending))  # type: ignore[operator]
        if predictions:
            insert_tag((f"{key}|m|h|x", key, "m", "h", "x", 0.5, 0.1, "v"))  # type: ignore[operator]


def _check(store: Store) -> None:
    files = {f["_key"]: f for f in store.get_files([row[0] for row in OLD_FILES])}
    assert {k: (f["analyzed_at"], f["analysis_error"], f["file_tags_pending"]) for k, f in files.items()} == {
        "ok": (5, None, True),
        "partly": (5, None, True),  # its predictions stay, it is tried again for the failed head
        "poisoned": (None, None, False),
        "never": (None, None, False),
    }
    claimed = store.claim_files_for_analysis([HeadVersion("m", "broken", "v"), HEAD], AnalysisClaim("r"), 10)
    assert [(c.doc["_key"], [h.head_name for h in c.heads]) for c in claimed] == [
        ("never", ["broken", "h"]), ("ok", ["broken"]), ("partly", ["broken"]),
        ("poisoned", ["broken", "h"])]


def test_sqlite_version_4_store(tmp_path: Path) -> None:
    path = tmp_path / "v4.sqlite3"
    conn = sqlite3.connect(path)
    for script in sqlite.MIGRATIONS[:4]:
        conn.executescript(script)
    conn.execute("PRAGMA user_version = 4")
    _old_rows(
        lambda row: conn.execute("INSERT INTO library_files (_key, library_id, path, analyzed_at, "
                                 "analysis_error, file_tags_pending) VALUES (?, ?, ?, ?, ?, ?)", row),
        lambda row: conn.execute("INSERT INTO file_tags (_key, file_id, model_key, head_name, label, value, "
                                 "std, tagger_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row),
    )
    conn.commit()
    conn.close()
    store = open_store(f"sqlite:///{path}")
    _check(store)
    store.close()


def test_postgresql_version_1_store(postgres_db: PostgresDatabase) -> None:
    conn = postgres_db.server.connect(postgres_db.name)
    conn.execute(postgres.MIGRATIONS[0])
    conn.execute("INSERT INTO nomarr_meta (_key, version) VALUES ('schema', 1)")
    _old_rows(
        lambda row: conn.execute(
            "INSERT INTO library_files (_key, library_id, path, analyzed_at, analysis_error, "
            "file_tags_pending) VALUES (%s, %s, %s, %s, %s, %s::int::bool)", row),
        lambda row: conn.execute("INSERT INTO file_tags (_key, file_id, model_key, head_name, label, value, "
                                 "std, tagger_version) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", row),
    )
    conn.close()
    store = open_store(postgres_db.url, pg_password=postgres_db.password)
    _check(store)
    store.close()
