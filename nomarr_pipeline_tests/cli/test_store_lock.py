"""The embedded store serves one pipeline at a time: a second command waits, saying for whom."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from nomarr_pipeline_tests.cli.cli_processes import PipelineFolder, build_library, write_one_head_models

pytestmark = pytest.mark.slow


def test_two_runs_at_once_on_the_embedded_store(tmp_path: Path) -> None:
    folder = PipelineFolder(tmp_path)
    build_library(folder.library, 1)
    write_one_head_models(folder.models)
    first = folder.start("run")
    time.sleep(0.5)  # the second one starts while the first is under way
    second = folder.start("run")
    try:
        codes = [first.wait(600), second.wait(600)]
    finally:
        first.kill()
        second.kill()
    assert codes == [0, 0], first.stderr + second.stderr
    messages = [command.stderr for command in (first, second)]
    assert "Traceback" not in "".join(messages)
    waited = [m for m in messages if "it serves one pipeline at a time, so this one waits" in m]
    assert len(waited) == 1
    holder = first if waited[0] is messages[1] else second
    assert f"is in use by `nomarr-pipeline run` (pid {holder.pid} on " in waited[0]

    db = sqlite3.connect(folder.store_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        paths = [row[0] for row in db.execute("SELECT path FROM library_files")]
        assert len(paths) == len(set(paths)) == len([p for p in folder.library.rglob("*") if p.is_file()])
        (duplicates,) = db.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM file_tags GROUP BY file_id, model_key, head_name, label"
            " HAVING COUNT(*) > 1)"
        ).fetchone()
        assert duplicates == 0
        (pending,) = db.execute("SELECT COUNT(*) FROM library_files WHERE file_tags_pending = 1").fetchone()
        assert pending == 0
    finally:
        db.close()
