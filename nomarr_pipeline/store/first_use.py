"""Locks that make first use of a database happen once, however many processes start at once
(docs/RELIABILITY.md, "First use"): a session-level advisory lock on a PostgreSQL database
(processes on other machines wait too), a file lock in the folder of SQLite files.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

# pg_advisory_lock(key): the store's migrations use 0x6E6F6D617272 ("nomarr"), this one "nomdag".
INSTANCE_LOCK_KEY = 0x6E6F6D646167
LOCK_FILE_NAME = ".nomarr-first-use.lock"


@contextmanager
def postgres_first_use(url: str, key: int = INSTANCE_LOCK_KEY) -> Iterator[None]:
    """Hold ``key``'s advisory lock on the database at ``url`` (a SQLAlchemy URL such as
    ``postgresql+psycopg2://…`` is accepted) for the block. The lock goes with the connection,
    so a process killed inside the block never leaves it taken."""
    scheme, rest = url.split("://", 1)
    with psycopg.connect(f"{scheme.split('+')[0]}://{rest}", autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        yield


@contextmanager
def file_first_use(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on a file in ``folder`` (created if missing) for the block;
    the kernel releases it when the process dies."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
