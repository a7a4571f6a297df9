"""Shared fixtures: an isolated data folder and environment for every test, and a
PostgreSQL server for the whole session with a fresh database per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nomarr_pipeline import settings

# A running model site for `models fetch` tests, wherever they are.
from nomarr_pipeline_tests.ml.model_server import model_site  # noqa: F401
from nomarr_pipeline_tests.postgres_server import SKIP_REASON, PostgresServer, running_server


@pytest.fixture(autouse=True)
def isolated_nomarr_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads or writes the developer's own store, library, exports or .env."""
    data = tmp_path / "nomarr-data"
    for name in [name for name in os.environ if name.startswith("NOMARR_")]:
        monkeypatch.delenv(name)
    for name in ("PGPASSWORD", "PGPASSFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NOMARR_DATA_DIR", str(data))
    monkeypatch.setattr(settings, "ENV_FILE", tmp_path / ".env")
    return data


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster per test session (per pytest-xdist worker)."""
    if SKIP_REASON:
        pytest.skip(SKIP_REASON)
    with running_server() as server:
        yield server


@pytest.fixture(scope="module")
def own_postgres_server() -> Iterator[PostgresServer]:
    """A server of the test module's own, for tests that stop, restart or kill it."""
    if SKIP_REASON:
        pytest.skip(SKIP_REASON)
    with running_server() as server:
        yield server


@dataclass(frozen=True)
class PostgresDatabase:
    """A fresh, empty database on the session's server; dropped after the test."""

    server: PostgresServer
    name: str

    @property
    def url(self) -> str:
        """The store URL; the password is :attr:`password` (``NOMARR_PG_PASSWORD``)."""
        return self.server.url(self.name)

    @property
    def password(self) -> str:
        return self.server.password


@pytest.fixture
def postgres_db(postgres_server: PostgresServer) -> Iterator[PostgresDatabase]:
    name = postgres_server.create_database()
    yield PostgresDatabase(postgres_server, name)
    postgres_server.drop_database(name)
