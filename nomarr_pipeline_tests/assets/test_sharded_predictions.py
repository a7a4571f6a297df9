"""Predictions runs split into shard steps, run by Dagster's multiprocess executor for real.

Each run is launched as a separate process (``predictions_run``) on a persistent instance, as
the CLI and the daemon launch them; the tests read what happened from the instance's event log
and from the store.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import DagsterEventType

from nomarr_pipeline.library.identity import file_key
from nomarr_pipeline_tests.assets.sharded_runs import (
    HAPPY,
    HEADS,
    LIBRARY,
    SAD,
    finish,
    launch,
    names_per_shard,
    new_store,
    step_events,
    stored,
)
from nomarr_pipeline_tests.ml.audio_fixtures import make_audio

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "postgres"])
def two_stores(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, str]]:
    """Two empty stores of one engine: for a 1-shard and a 4-shard run."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'one.sqlite3'}", f"sqlite:///{tmp_path / 'four.sqlite3'}"
        return
    database = request.getfixturevalue("postgres_db")
    # The runs read NOMARR_PG_PASSWORD, this test's own store connections libpq's PGPASSWORD.
    monkeypatch.setenv("NOMARR_PG_PASSWORD", database.password)
    monkeypatch.setenv("PGPASSWORD", database.password)
    second = database.server.create_database()
    yield database.url, database.server.url(second)
    database.server.drop_database(second)


def test_four_shards_store_exactly_what_one_shard_stores(
    tmp_path: Path, two_head_models: Path, dagster_home: dg.DagsterInstance, two_stores: tuple[str, str]
) -> None:
    groups = names_per_shard(4, 2, (".wav", ".mp3", ".flac"))
    names = [name for group in groups for name in group]
    root = tmp_path / "music"
    for seed, name in enumerate(names):
        make_audio(root / name, 4.0, seed=seed)
    one, four = two_stores
    new_store(one, root, names)
    new_store(four, root, names)

    runs = {1: finish(launch(one, two_head_models, 1)), 4: finish(launch(four, two_head_models, 4))}

    instance = dagster_home
    for shards, run in runs.items():
        assert run["success"]
        succeeded = {e.step_key for e in step_events(instance, run["run_id"], DagsterEventType.STEP_SUCCESS)}
        shard_steps = {f"file_tags.analysis_shard_{i}_of_{shards}" for i in range(shards)}
        assert succeeded == shard_steps | {"file_tags.file_tags_report"}
        # Each step ran in a process of its own (the multiprocess executor), not in the run's.
        starts = step_events(instance, run["run_id"], DagsterEventType.STEP_START)
        pids = {e.step_key: e.dagster_event.pid for e in starts}
        assert len(set(pids.values())) == shards + 1
    # Each of the four shards analysed its own two files, for both heads.
    outputs = step_events(instance, runs[4]["run_id"], DagsterEventType.STEP_OUTPUT)
    reports = {e.step_key: e.dagster_event.step_output_data.metadata["shard_report"].value
               for e in outputs if "analysis_shard" in (e.step_key or "")}
    assert len(reports) == 4
    for report in reports.values():
        assert {head: part["analysed"] for head, part in report.items()} == {HAPPY: 2, SAD: 2}

    ids = [file_key(LIBRARY, name) for name in names]
    tags_one, files_one = stored(one, ids)
    tags_four, files_four = stored(four, ids)
    assert len(tags_one) == len(names) * 4  # two labels for each of two heads
    assert tags_four == tags_one
    assert files_four == files_one == sorted((i, None, True) for i in ids)

    materializations = instance.fetch_materializations(dg.AssetKey("file_tags"), limit=10).records
    latest = [m.asset_materialization for m in materializations
              if m.run_id == runs[4]["run_id"] and m.asset_materialization]
    assert {m.partition for m in latest} == set(HEADS)
    for materialization in latest:
        assert materialization.metadata["head_analysed"].value == len(names)
        assert materialization.metadata["shards"].value == 4


def test_a_killed_shard_is_retried_and_each_file_is_analysed_once(
    tmp_path: Path, two_head_models: Path, dagster_home: dg.DagsterInstance
) -> None:
    # Shard 0 gets three short files and, third in key order, a long one: the shard is
    # killed while it analyses the long file, after the first two are stored.
    first, second = names_per_shard(2, 4, (".wav",))
    first.sort(key=lambda name: file_key(LIBRARY, name))
    long_name = first[2]
    names = [*first, *second[:2]]
    root = tmp_path / "music"
    for seed, name in enumerate(names):
        make_audio(root / name, 600.0 if name == long_name else 3.0, seed=seed)
    shard0 = [file_key(LIBRARY, name) for name in first]
    path = tmp_path / "killed.sqlite3"
    url = f"sqlite:///{path}"
    new_store(url, root, names)
    with sqlite3.connect(path) as db:
        # Every prediction row ever inserted, to count writes per (file, head, label).
        db.executescript("""
            CREATE TABLE inserted (file_id TEXT, head_name TEXT, label TEXT);
            CREATE TRIGGER count_inserts AFTER INSERT ON file_tags BEGIN
                INSERT INTO inserted VALUES (NEW.file_id, NEW.head_name, NEW.label); END;
        """)

    process = launch(url, two_head_models, 2, batch_size=1)
    killed = kill_shard_after(dagster_home, path, "file_tags.analysis_shard_0_of_2", shard0, done=2)
    run = finish(process)

    assert killed and run["success"]
    starts = [e.step_key for kind in (DagsterEventType.STEP_START, DagsterEventType.STEP_RESTARTED)
              for e in step_events(dagster_home, run["run_id"], kind)]
    assert starts.count("file_tags.analysis_shard_0_of_2") == 2
    assert starts.count("file_tags.analysis_shard_1_of_2") == 1
    with sqlite3.connect(path) as db:
        counts = db.execute("SELECT file_id, head_name, label, COUNT(*) FROM inserted "
                            "GROUP BY file_id, head_name, label").fetchall()
        analysed = db.execute("SELECT COUNT(*) FROM library_files WHERE analyzed_at IS NOT NULL "
                              "AND analysis_error IS NULL").fetchone()[0]
    assert len(counts) == len(names) * 4
    assert {row[3] for row in counts} == {1}, counts  # nothing written twice
    assert analysed == len(names)
    (materialization, *_) = [
        m.asset_materialization
        for m in dagster_home.fetch_materializations(dg.AssetKey("file_tags"), limit=4).records
        if m.run_id == run["run_id"] and m.asset_materialization
    ]
    assert materialization.metadata["shard_restarts"].value == 1


def kill_shard_after(instance: dg.DagsterInstance, db_path: Path, step_key: str, file_ids: list[str],
                     *, done: int, timeout_s: float = 300.0) -> bool:
    """SIGKILL the process of ``step_key`` once ``done`` of ``file_ids`` are analysed."""
    deadline = time.monotonic() + timeout_s
    marks = ",".join("?" * len(file_ids))
    while time.monotonic() < deadline:
        time.sleep(0.05)
        runs = instance.get_runs(limit=1)
        if not runs:
            continue
        starts = [e for e in step_events(instance, runs[0].run_id, DagsterEventType.STEP_START)
                  if e.step_key == step_key]
        if not starts:
            continue
        with sqlite3.connect(db_path, timeout=10) as db:
            finished = db.execute(
                f"SELECT COUNT(*) FROM library_files WHERE analyzed_at IS NOT NULL AND _key IN ({marks})",
                file_ids).fetchone()[0]
        if finished >= done:
            assert finished < len(file_ids), "the shard finished before it could be killed"
            os.kill(starts[0].dagster_event.pid, signal.SIGKILL)
            return True
    return False
