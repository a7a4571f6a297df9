"""The production instance file (deploy/dagster.postgres.yaml) against a real PostgreSQL.

The session's throwaway cluster (``nomarr_pipeline_tests/postgres_server.py``) gets a database
of its own. A head-partitioned asset that declares the ``tag_writing`` pool is
materialized through ``DagsterInstance.from_config``; the run, the materialization of its
partition and the pool limit are then read back from PostgreSQL itself.
"""


import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from nomarr_pipeline_tests.postgres_server import PostgresServer
from nomarr_pipeline_tests.ui.dagster_dev import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture
def dagster_db(postgres_server: PostgresServer) -> Iterator[str]:
    name = postgres_server.create_database("dagster")
    yield name
    postgres_server.drop_database(name)


heads = dg.StaticPartitionsDefinition(["effnet-demo:mood_happy", "effnet-demo:mood_sad"])


@dg.asset(partitions_def=heads, pool="tag_writing")
def pooled_head_asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"head": context.partition_key})


def test_production_instance_stores_runs_and_materializations_in_postgres(
    postgres_server: PostgresServer, dagster_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO_ROOT / "deploy" / "dagster.postgres.yaml", home / "dagster.yaml")
    for name, value in {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(postgres_server.port),
        "DAGSTER_PG_USER": postgres_server.user,
        "DAGSTER_PG_PASSWORD": postgres_server.password,
        "DAGSTER_PG_DB": dagster_db,
    }.items():
        monkeypatch.setenv(name, value)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        # The pool limit the deployment guide tells operators to set, stored in PostgreSQL.
        instance.event_log_storage.set_concurrency_slots("tag_writing", 1)
        result = dg.materialize(
            [pooled_head_asset], instance=instance, partition_key="effnet-demo:mood_sad"
        )
        assert result.success
        run_id = result.run_id

    with postgres_server.connect(dagster_db) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT status FROM runs WHERE run_id = %s", (run_id,))
        assert cursor.fetchone() == ("SUCCESS",)
        cursor.execute(
            "SELECT asset_key, partition FROM event_logs"
            " WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
            (run_id,),
        )
        assert cursor.fetchall() == [('["pooled_head_asset"]', "effnet-demo:mood_sad")]
        cursor.execute("SELECT count(*) FROM concurrency_slots WHERE concurrency_key = 'tag_writing'")
        assert cursor.fetchone() == (1,)
