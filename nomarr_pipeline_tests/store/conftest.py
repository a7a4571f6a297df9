"""The ``store`` fixture: every engine that can run here, each test against each.

SQLite and PostgreSQL always run (PostgreSQL on the session's throwaway server, a fresh
database per test: see ``nomarr_pipeline_tests/conftest.py``). ArangoDB runs when
``NOMARR_TEST_ARANGO_URL`` names a server (with ``NOMARR_TEST_ARANGO_PASSWORD``); each test gets
a fresh database that is dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from arango import ArangoClient

from nomarr_pipeline.store import Store, open_store

ENGINES = ["sqlite", "postgres", "arango"]


@pytest.fixture(params=ENGINES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        engine = open_store(f"sqlite:///{tmp_path / 'contract.sqlite3'}")
        yield engine
        engine.close()
        return
    if request.param == "postgres":
        database = request.getfixturevalue("postgres_db")
        engine = open_store(database.url, pg_password=database.password)
        yield engine
        engine.close()
        return
    url = os.environ.get("NOMARR_TEST_ARANGO_URL")
    if not url:
        pytest.skip(
            "ArangoDB contract run needs a server: set NOMARR_TEST_ARANGO_URL "
            "(and NOMARR_TEST_ARANGO_PASSWORD); its requests are tested in test_arango_requests.py"
        )
    database = f"nomarr_test_{uuid.uuid4().hex[:12]}"
    user = os.environ.get("NOMARR_TEST_ARANGO_USER", "root")
    password = os.environ.get("NOMARR_TEST_ARANGO_PASSWORD")
    engine = open_store(url, arango_db=database, arango_user=user, arango_password=password)
    yield engine
    engine.close()
    client = ArangoClient(hosts=url)
    system = client.db("_system", username=user, password=password or "")
    system.delete_database(database, ignore_missing=True)
    client.close()
