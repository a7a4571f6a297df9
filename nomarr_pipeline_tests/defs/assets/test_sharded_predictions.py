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
from nomarr_pipeline_tests.defs.assets.sharded_runs import (
    HEADS,
    LIBRARY,
    finish,
    launch,
    new_store,
    step_events,
    stored,
    track_names,
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
    names = track_names(8, (".wav", ".mp3", ".flac"))
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
    # The shards claimed the files between them: each file went to one shard, for both heads
    # (a file analysed by two shards would count twice).
    outputs = step_events(instance, runs[4]["run_id"], DagsterEventType.STEP_OUTPUT)
    metadata = [e.dagster_event.step_output_data.metadata for e in outputs
                if "analysis_shard" in (e.step_key or "")]
    assert len(metadata) == 4
    assert sum(m["files"].value for m in metadata) == len(names)
    for head in HEADS:
        assert sum(m["shard_report"].value[head]["analysed"] for m in metadata) == len(names)
        assert {m["shard_report"].value[head]["engines"] for m in metadata} == {"onnx"}

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
        assert materialization.metadata["analysed"].value == len(names)
        assert materialization.metadata["shards"].value == 4


def test_a_killed_shard_is_retried_and_each_file_is_analysed_once(
    tmp_path: Path, two_head_models: Path, dagster_home: dg.DagsterInstance
) -> None:
    # One long file among short ones, fourth in key order (claims go in key order, so files
    # are stored before it): the shard that claims it is killed while it analyses it, and its
    # retry takes back exactly its own unfinished claim.
    names = track_names(6, (".wav",))
    long_name = sorted(names, key=lambda name: file_key(LIBRARY, name))[3]
    root = tmp_path / "music"
    for seed, name in enumerate(names):
        make_audio(root / name, 600.0 if name == long_name else 3.0, seed=seed)
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
    killed = kill_shard_holding(dagster_home, path, file_key(LIBRARY, long_name))
    run = finish(process)

    assert killed is not None and run["success"]
    starts = [e.step_key for kind in (DagsterEventType.STEP_START, DagsterEventType.STEP_RESTARTED)
              for e in step_events(dagster_home, run["run_id"], kind)]
    other = f"file_tags.analysis_shard_{1 - killed}_of_2"
    assert starts.count(f"file_tags.analysis_shard_{killed}_of_2") == 2
    assert starts.count(other) == 1
    with sqlite3.connect(path) as db:
        counts = db.execute("SELECT file_id, head_name, label, COUNT(*) FROM inserted "
                            "GROUP BY file_id, head_name, label").fetchall()
        analysed = db.execute("SELECT COUNT(*) FROM library_files WHERE analyzed_at IS NOT NULL "
                              "AND analysis_error IS NULL").fetchone()[0]
        claims_left = db.execute("SELECT COUNT(*) FROM analysis_claims").fetchone()[0]
    assert len(counts) == len(names) * 4
    assert {row[3] for row in counts} == {1}, counts  # nothing written twice
    assert analysed == len(names)
    assert claims_left == 0  # the report released the run's claims
    (materialization, *_) = [
        m.asset_materialization
        for m in dagster_home.fetch_materializations(dg.AssetKey("file_tags"), limit=4).records
        if m.run_id == run["run_id"] and m.asset_materialization
    ]
    assert materialization.metadata["shard_restarts"].value == 1


def kill_shard_holding(instance: dg.DagsterInstance, db_path: Path, file_id: str,
                       *, timeout_s: float = 300.0) -> int | None:
    """SIGKILL the shard step that claimed ``file_id`` (before it finished that file);
    returns the shard's index."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.05)
        runs = instance.get_runs(limit=1)
        if not runs:
            continue
        with sqlite3.connect(db_path, timeout=10) as db:
            claim = db.execute("SELECT shard FROM analysis_claims WHERE run_id = ? AND file_id = ?",
                               (runs[0].run_id, file_id)).fetchone()
            (done,) = db.execute("SELECT analyzed_at FROM library_files WHERE _key = ?",
                                 (file_id,)).fetchone()
        if claim is None:
            continue
        assert done is None, "the long file finished before its shard could be killed"
        step_key = f"file_tags.analysis_shard_{claim[0]}_of_2"
        (start,) = [e for e in step_events(instance, runs[0].run_id, DagsterEventType.STEP_START)
                    if e.step_key == step_key]
        os.kill(start.dagster_event.pid, signal.SIGKILL)
        return int(claim[0])
    return None
