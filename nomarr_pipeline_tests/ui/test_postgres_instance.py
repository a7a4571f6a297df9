"""The production instance file (deploy/dagster.postgres.yaml) against a real PostgreSQL.

A throwaway cluster is initialised in a temp folder and started on 127.0.0.1 and a free
port; PostgreSQL refuses to run as root, so as root the server runs as the ``postgres``
user (setpriv). A head-partitioned asset that declares the ``tag_writing`` pool is
materialized through ``DagsterInstance.from_config``; the run, the materialization of its
partition and the pool limit are then read back from PostgreSQL itself.
"""


import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from nomarr_pipeline_tests.ui.dagster_dev import REPO_ROOT, free_port

pytestmark = pytest.mark.slow

PG_BIN_DIRS = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
PG_BIN = Path(PG_BIN_DIRS[0]) if PG_BIN_DIRS and os.path.exists(f"{PG_BIN_DIRS[0]}/initdb") else None
PG_USER = "nomarr_dagster"
PG_PASSWORD = "test-only-password"
PG_DB = "dagster"
START_TIMEOUT_S = 60


def _server_user() -> str | None:
    """The OS user to run PostgreSQL as: ourselves unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "missing"
    return "postgres"


SERVER_USER = _server_user()
SKIP_REASON = (
    "PostgreSQL server binaries are not installed (apt-get install postgresql)"
    if PG_BIN is None
    else "running as root and there is no 'postgres' user to run the server as"
    if SERVER_USER == "missing"
    else ""
)


@dataclass
class PostgresServer:
    root: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def _as_server_user(self, argv: list[str]) -> list[str]:
        if SERVER_USER is None:
            return argv
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]

    def run(self, *argv: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._as_server_user([str(PG_BIN / argv[0]), *argv[1:]]),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
            cwd=self.root,
        )

    def start(self) -> None:
        password_file = self.root / "pwfile"
        password_file.write_text(PG_PASSWORD + "\n")
        if SERVER_USER is not None:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(password_file, "postgres", "postgres")
        self.run(
            "initdb", "-D", str(self.data_dir), "-U", PG_USER, f"--pwfile={password_file}",
            "--auth=scram-sha-256", "--encoding=UTF8", "--no-instructions",
        )  # fmt: skip
        options = f"-k {self.root} -c listen_addresses=127.0.0.1 -p {self.port} -c fsync=off"
        self.run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.root / "server.log"),
                 "-o", options, "-w", "-t", str(START_TIMEOUT_S), "start")  # fmt: skip

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Fast shutdown by pg_ctl; the postmaster PID is killed if it is still alive."""
        pid = self.postmaster_pid()
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop", timeout=40)
        if pid is not None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    def connect(self, dbname: str):  # -> psycopg2 connection
        import psycopg2

        return psycopg2.connect(
            host="127.0.0.1", port=self.port, user=PG_USER, password=PG_PASSWORD, dbname=dbname
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    if SKIP_REASON:
        pytest.skip(SKIP_REASON)
    # Not under pytest's tmp_path: its parents are private to root, the server user must
    # be able to reach its data folder.
    root = Path(tempfile.mkdtemp(prefix="nomarr-pg-"))
    server = PostgresServer(root=root, port=free_port())
    try:
        server.start()
        connection = server.connect("postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {PG_DB}")
        connection.close()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


heads = dg.StaticPartitionsDefinition(["effnet-demo:mood_happy", "effnet-demo:mood_sad"])


@dg.asset(partitions_def=heads, pool="tag_writing")
def pooled_head_asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"head": context.partition_key})


def test_production_instance_stores_runs_and_materializations_in_postgres(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO_ROOT / "deploy" / "dagster.postgres.yaml", home / "dagster.yaml")
    for name, value in {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(postgres.port),
        "DAGSTER_PG_USER": PG_USER,
        "DAGSTER_PG_PASSWORD": PG_PASSWORD,
        "DAGSTER_PG_DB": PG_DB,
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

    with postgres.connect(PG_DB) as connection, connection.cursor() as cursor:
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
    connection.close()
