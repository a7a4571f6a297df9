"""A predictions run through dagster-dask's executor on a real Dask cluster, against PostgreSQL.

The test starts a ``distributed.LocalCluster`` (a scheduler and two worker processes) and
launches the run with ``NOMARR_EXECUTOR=dask`` pointed at that scheduler, as a deployment does
with ``deploy/executors/dask.yaml``; every shard step must have run in a Dask worker process
and stored its files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import distributed  # the dask extra: the test command installs it, so never a skip
import pytest
from dagster._core.events import DagsterEventType

from nomarr_pipeline.library.identity import file_key
from nomarr_pipeline_tests.defs.assets.sharded_runs import (
    HAPPY,
    LIBRARY,
    REPO,
    SAD,
    finish,
    launch,
    new_store,
    step_events,
    stored,
    track_names,
)
from nomarr_pipeline_tests.ml.audio_fixtures import make_audio
from nomarr_pipeline_tests.postgres_server import free_port

pytestmark = pytest.mark.slow
SHARDS = 3


@pytest.fixture
def settings(two_head_models: Path, postgres_db: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The deployment's environment, with the shipped executor config; the Dask workers
    started after this see it too (they load the definitions, executor included)."""
    env = {"NOMARR_STORE_URL": postgres_db.url, "NOMARR_PG_PASSWORD": postgres_db.password,
           "PGPASSWORD": postgres_db.password, "NOMARR_MODELS_DIR": str(two_head_models),
           "NOMARR_ANALYSIS_SHARDS": str(SHARDS), "NOMARR_EXECUTOR": "dask",
           "NOMARR_EXECUTOR_CONFIG": str(REPO / "deploy" / "executors" / "dask.yaml"),
           "DASK_SCHEDULER_ADDRESS": f"tcp://127.0.0.1:{free_port()}"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def cluster(settings: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    import dask

    # A shard starts worker processes: the Dask worker processes must not be daemonic.
    with (
        dask.config.set({"distributed.worker.daemon": False}),
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                 scheduler_port=int(settings["DASK_SCHEDULER_ADDRESS"].rsplit(":", 1)[1]),
                                 dashboard_address=None, local_directory=str(tmp_path / "dask")) as local,
    ):
        yield local


def test_a_dask_cluster_runs_every_shard_against_postgresql(
    tmp_path: Path, two_head_models: Path, dagster_home: dg.DagsterInstance,
    settings: dict[str, str], cluster: Any,
) -> None:
    names = track_names(SHARDS * 2, (".mp3", ".flac"))
    root = tmp_path / "music"
    for seed, name in enumerate(names):
        make_audio(root / name, 4.0, seed=seed)
    url = settings["NOMARR_STORE_URL"]
    new_store(url, root, names)
    assert cluster.scheduler_address == settings["DASK_SCHEDULER_ADDRESS"]
    with distributed.Client(cluster) as client:
        worker_pids = set(client.run(os.getpid).values())

    run = finish(launch(url, two_head_models, SHARDS, executor="dask",
                        executor_config=Path(settings["NOMARR_EXECUTOR_CONFIG"])))

    assert run["success"]
    starts = step_events(dagster_home, run["run_id"], DagsterEventType.STEP_START)
    ran = {e.step_key: e.dagster_event.pid for e in starts}
    shard_steps = {f"file_tags.analysis_shard_{i}_of_{SHARDS}" for i in range(SHARDS)}
    assert set(ran) == shard_steps | {"file_tags.file_tags_report"}
    assert set(ran.values()) <= worker_pids, (ran, worker_pids)  # all in Dask worker processes
    outputs = step_events(dagster_home, run["run_id"], DagsterEventType.STEP_OUTPUT)
    reports = [e.dagster_event.step_output_data.metadata["shard_report"].value
               for e in outputs if "analysis_shard" in (e.step_key or "")]
    assert len(reports) == SHARDS
    # every file analysed by exactly one shard, for both heads (a file twice would count twice)
    assert {head: sum(r[head]["analysed"] for r in reports) for head in (HAPPY, SAD)} == {
        HAPPY: len(names), SAD: len(names)}
    tags, files = stored(url, [file_key(LIBRARY, name) for name in names])
    assert len(tags) == len(names) * 4
    assert files == sorted((file_key(LIBRARY, name), None, True) for name in names)
