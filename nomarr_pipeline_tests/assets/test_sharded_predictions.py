"""Predictions runs split into shard steps, run by Dagster's multiprocess executor for real.

Each run is launched as a separate process (``predictions_run``) on a persistent instance, as
the CLI and the daemon launch them; the tests read what happened from the instance's event log
and from the store.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.events import DagsterEventType

from nomarr_pipeline.library.identity import file_key
from nomarr_pipeline.ml.analysis import shard_key_range
from nomarr_pipeline.ml.demo_models import write_demo_models
from nomarr_pipeline.store import open_store
from nomarr_pipeline_tests.ml.audio_fixtures import make_audio

pytestmark = pytest.mark.slow

LIBRARY = "lib"
HAPPY = "effnet-discogs-effnet-1:mood_happy"
SAD = "musicnn-msd-musicnn-1:mood_sad"
HEADS = (HAPPY, SAD)
REPO = Path(__file__).resolve().parents[2]


def names_per_shard(shards: int, per_shard: int, suffixes: tuple[str, ...]) -> list[list[str]]:
    """File names whose keys put ``per_shard`` files into each of ``shards`` shards."""
    found: list[list[str]] = [[] for _ in range(shards)]
    ranges = [shard_key_range(index, shards) for index in range(shards)]
    number = 0
    while any(len(names) < per_shard for names in found):
        name = f"track{number:03d}{suffixes[number % len(suffixes)]}"
        number += 1
        index = next(i for i, r in enumerate(ranges) if file_key(LIBRARY, name) in r)
        if len(found[index]) < per_shard:
            found[index].append(name)
    return found


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    dest = tmp_path / "models"
    write_demo_models(dest, heads=("mood_happy-discogs-effnet-1", "mood_sad-msd-musicnn-1"))
    return dest


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("heads", list(HEADS))
        yield instance


def new_store(url: str, root: Path, names: list[str]) -> None:
    store = open_store(url)
    store.ensure_library({"_key": LIBRARY, "name": "test", "root_path": str(root)})
    docs = []
    for name in names:
        stat = (root / name).stat()
        docs.append({"_key": file_key(LIBRARY, name), "library_id": LIBRARY, "path": name,
                     "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    store.upsert_files(docs)
    store.close()


def launch(store_url: str, models_dir: Path, shards: int, *, batch_size: int = 64,
           executor: str = "multiprocess", executor_config: Path | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "NOMARR_STORE_URL": store_url, "NOMARR_MODELS_DIR": str(models_dir),
           "NOMARR_ANALYSIS_SHARDS": str(shards), "NOMARR_EXECUTOR": executor,
           "NOMARR_EXECUTOR_CONFIG": str(executor_config or "")}
    # One worker with one TensorFlow thread everywhere: the same arithmetic in every run.
    config = {"resources": {"models": {"config": {
        "processes": 1, "tf_threads": 1, "file_timeout_s": 120, "batch_size": batch_size}}}}
    return subprocess.Popen(
        [sys.executable, "-m", "nomarr_pipeline_tests.assets.predictions_run", HEADS[0], HEADS[-1],
         json.dumps(config)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, text=True,
    )


def finish(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])


def step_events(instance: dg.DagsterInstance, run_id: str, kind: DagsterEventType) -> list[Any]:
    return [r.event_log_entry for r in instance.get_records_for_run(run_id, of_type=kind).records]


def stored(url: str, file_ids: list[str]) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
    """Every prediction of these files, and their analysis outcome (time of day aside)."""
    store = open_store(url)
    tags = store.file_tags_for_files(file_ids)
    files = sorted((f["_key"], f["analysis_error"], f["analyzed_at"] is not None)
                   for f in store.get_files(file_ids))
    store.close()
    return tags, files


def test_four_shards_store_exactly_what_one_shard_stores(
    tmp_path: Path, models_dir: Path, dagster_home: dg.DagsterInstance
) -> None:
    groups = names_per_shard(4, 2, (".wav", ".mp3", ".flac"))
    names = [name for group in groups for name in group]
    root = tmp_path / "music"
    for seed, name in enumerate(names):
        make_audio(root / name, 4.0, seed=seed)
    one, four = f"sqlite:///{tmp_path / 'one.sqlite3'}", f"sqlite:///{tmp_path / 'four.sqlite3'}"
    new_store(one, root, names)
    new_store(four, root, names)

    runs = {1: finish(launch(one, models_dir, 1)), 4: finish(launch(four, models_dir, 4))}

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
    tmp_path: Path, models_dir: Path, dagster_home: dg.DagsterInstance
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

    process = launch(url, models_dir, 2, batch_size=1)
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
