"""Launching predictions runs with shard steps as a deployment does, and reading what they
did from the instance's event log and the store: shared by the sharded-run tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.events import DagsterEventType

from nomarr_pipeline.library.identity import file_key
from nomarr_pipeline.store import open_store

LIBRARY = "lib"
HAPPY = "effnet-discogs-effnet-1:mood_happy"
SAD = "musicnn-msd-musicnn-1:mood_sad"
HEADS = (HAPPY, SAD)
REPO = Path(__file__).resolve().parents[3]


def track_names(count: int, suffixes: tuple[str, ...]) -> list[str]:
    return [f"track{number:03d}{suffixes[number % len(suffixes)]}" for number in range(count)]


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
    # One worker with one TensorFlow thread everywhere: the same arithmetic in every run. A
    # resource's run config replaces its whole configuration, so it names the folder and count.
    config = {"resources": {"models": {"config": {
        "models_dir": str(models_dir), "shards": shards,
        "processes": 1, "tf_threads": 1, "file_timeout_s": 120, "batch_size": batch_size}}}}
    return subprocess.Popen(
        [sys.executable, "-m", "nomarr_pipeline_tests.defs.assets.predictions_run", HEADS[0], HEADS[-1],
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
