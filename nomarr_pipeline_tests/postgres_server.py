"""A throwaway PostgreSQL cluster for tests and benchmarks.

``initdb`` in a temp folder, ``pg_ctl start`` on 127.0.0.1 and a free port, password
authentication (scram-sha-256) for everything, stopped and deleted afterwards. PostgreSQL
refuses to run as root, so as root the server runs as the ``postgres`` OS user (setpriv).
Databases are cheap (``CREATE DATABASE``), so one server serves a whole test session and each
test gets a database of its own; see the fixtures in ``nomarr_pipeline_tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PG_BIN_DIRS = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
PG_BIN = Path(PG_BIN_DIRS[0]) if PG_BIN_DIRS and os.path.exists(f"{PG_BIN_DIRS[0]}/initdb") else None
SUPERUSER = "nomarr_test"
SUPERUSER_PASSWORD = "test-only-password"
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresServer:
    root: Path
    port: int
    host: str = "127.0.0.1"
    user: str = SUPERUSER
    password: str = SUPERUSER_PASSWORD
    settings: dict[str, str] | None = None  # extra ``-c name=value`` server options

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, dbname: str, user: str | None = None) -> str:
        """A store URL without password (the password travels apart, as in production)."""
        return f"postgresql://{user or self.user}@{self.host}:{self.port}/{dbname}"

    def _as_server_user(self, argv: list[str]) -> list[str]:
        if SERVER_USER is None:
            return argv
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]

    def run(self, *argv: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        assert PG_BIN is not None, SKIP_REASON
        return subprocess.run(
            self._as_server_user([str(PG_BIN / argv[0]), *argv[1:]]),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
            cwd=self.root,
        )

    def init(self) -> None:
        password_file = self.root / "pwfile"
        password_file.write_text(self.password + "\n")
        if SERVER_USER is not None:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(password_file, "postgres", "postgres")
        self.run(
            "initdb", "-D", str(self.data_dir), "-U", self.user, f"--pwfile={password_file}",
            "--auth=scram-sha-256", "--encoding=UTF8", "--no-instructions",
        )  # fmt: skip
        password_file.unlink()

    def start(self) -> None:
        options = f"-k {self.root} -c listen_addresses={self.host} -p {self.port} -c fsync=off"
        options += "".join(f" -c {name}={value}" for name, value in (self.settings or {}).items())
        self.run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.root / "server.log"),
                 "-o", options, "-w", "-t", str(START_TIMEOUT_S), "start")  # fmt: skip

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, mode: str = "fast") -> None:
        """Shutdown by pg_ctl (``fast``: disconnect clients, ``immediate``: as in a crash); the
        postmaster is killed if it is still alive afterwards."""
        pid = self.postmaster_pid()
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "30", "stop", timeout=40)
        if pid is not None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def connect(self, dbname: str = "postgres", *, autocommit: bool = True):  # -> psycopg.Connection
        import psycopg

        return psycopg.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=dbname,
            autocommit=autocommit,
        )  # fmt: skip

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        """One statement as the superuser (database and role administration)."""
        with self.connect(dbname) as connection:
            connection.execute(sql)  # type: ignore[arg-type]  # test-owned literal SQL

    def create_database(self, prefix: str = "nomarr") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def running_server(*, settings: dict[str, str] | None = None) -> Iterator[PostgresServer]:
    """A fresh cluster for the duration of the block. Not under pytest's tmp_path: its parents
    are private to root, and the server user must be able to reach its data folder."""
    if SKIP_REASON:
        raise RuntimeError(SKIP_REASON)
    root = Path(tempfile.mkdtemp(prefix="nomarr-pg-"))
    server = PostgresServer(root=root, port=free_port(), settings=settings)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
