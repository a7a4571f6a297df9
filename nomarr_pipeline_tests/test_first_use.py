"""First use is safe under concurrency (issue 25, item 3): several commands started at the same
moment on a fresh Dagster instance and a fresh store all succeed, and later commands work.
Without the locks, 1 trial in 12 broke a fresh PostgreSQL instance and every trial a fresh
SQLite one (two alembic heads, ``table alembic_version already exists``; docs/RELIABILITY.md).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from nomarr_pipeline_tests.cli.cli_processes import PipelineFolder, build_library, write_one_head_models
from nomarr_pipeline_tests.postgres_server import PostgresServer
from nomarr_pipeline_tests.ui.dagster_dev import REPO_ROOT

pytestmark = pytest.mark.slow

# Whole commands start in seconds on a busy machine, so rarely within the same instant: one
# trial of them checks the store side; processes that open the instance after a barrier race
# every time (before the locks: 6 of 6 trials on SQLite, 2 of 20 on PostgreSQL).
COMMANDS_AT_ONCE = 3
INSTANCE_TRIALS = 4
OPENERS = 4


def _dagster_pg_env(server: PostgresServer, database: str) -> dict[str, str]:
    return {
        "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(server.port),
        "DAGSTER_PG_USER": server.user, "DAGSTER_PG_PASSWORD": server.password, "DAGSTER_PG_DB": database,
    }


def test_scans_started_together_on_a_fresh_postgres_instance_and_store_all_succeed(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    library = build_library(tmp_path / "library", 1)
    models = write_one_head_models(tmp_path / "models")
    store_db = postgres_server.create_database("store")
    folder = PipelineFolder(
        tmp_path / "pipeline", library=library, models=models,
        store_url=postgres_server.url(store_db), pg_password=postgres_server.password,
    )
    folder.home.mkdir(parents=True)
    shutil.copyfile(REPO_ROOT / "deploy" / "dagster.postgres.yaml", folder.home / "dagster.yaml")
    dagster_db = postgres_server.create_database("dagster")
    folder.env.update(_dagster_pg_env(postgres_server, dagster_db))
    scans = [folder.start("scan") for _ in range(COMMANDS_AT_ONCE)]
    for scan in scans:
        assert scan.wait(600) == 0, scan.stderr[-2000:]
    later = folder.run("status")
    assert later.returncode == 0, later.stderr[-2000:]
    with postgres_server.connect(dagster_db) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM alembic_version")
        assert cursor.fetchone() == (1,)
    with folder.store() as store:
        assert store.file_counts()["total"] == len(list(library.rglob("*.*")))


def _open_instance_at_once(home: str, env: dict[str, str], barrier: Any, results: Any) -> None:
    os.environ.update(env, DAGSTER_HOME=home)
    from nomarr_pipeline.cli.runner import dagster_instance

    barrier.wait()  # imports done: every process opens the instance at the same moment
    try:
        with dagster_instance() as instance:
            instance.get_runs(limit=1)
        results.put("ok")
    except Exception as error:  # the failure is the test's message
        results.put(f"{type(error).__name__}: {error}")


def _open_together(home: Path, env: dict[str, str], processes: int) -> list[str]:
    """What each of ``processes`` processes opening the instance at once, then one more after
    them, got: "ok" or its error."""
    context = multiprocessing.get_context("spawn")
    outcomes = []
    for count in (processes, 1):
        barrier, results = context.Barrier(count), context.Queue()
        started = [context.Process(target=_open_instance_at_once, args=(str(home), env, barrier, results))
                   for _ in range(count)]
        for process in started:
            process.start()
        outcomes += [results.get(timeout=300) for _ in started]
        for process in started:
            process.join(60)
    return outcomes


def test_processes_opening_a_fresh_postgres_instance_together_all_succeed(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    for trial in range(INSTANCE_TRIALS):
        home = tmp_path / f"home{trial}"
        home.mkdir()
        shutil.copyfile(REPO_ROOT / "deploy" / "dagster.postgres.yaml", home / "dagster.yaml")
        env = _dagster_pg_env(postgres_server, postgres_server.create_database("dagster"))
        assert _open_together(home, env, OPENERS) == ["ok"] * (OPENERS + 1), f"trial {trial}"


def test_processes_opening_a_fresh_sqlite_instance_together_all_succeed(tmp_path: Path) -> None:
    for trial in range(INSTANCE_TRIALS):
        outcomes = _open_together(tmp_path / f"home{trial}", {}, OPENERS)
        assert outcomes == ["ok"] * (OPENERS + 1), f"trial {trial}"
