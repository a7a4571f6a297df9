"""One pipeline at a time on the embedded SQLite store (Dagster's queue orders runs, not command
lines that chain runs): a second one waits. The kernel releases ``<store>.lock`` when its holder
exits or dies."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

POLL_S = 0.5


@contextlib.contextmanager
def one_pipeline_per_store(store_path: Path, command: str, *, say: Callable[[str], None]) -> Iterator[None]:
    fd = os.open(store_path.with_name(store_path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            say(f"the embedded store {store_path} is in use by {_holder(fd)}; it serves one pipeline "
                "at a time, so this one waits for it to finish (Ctrl-C to stop)")
            while not _try_lock(fd):
                time.sleep(POLL_S)
        os.ftruncate(fd, 0)
        about = {"command": command, "pid": os.getpid(), "host": socket.gethostname()}
        os.pwrite(fd, json.dumps(about).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(fd: int) -> str:
    try:
        about = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"`nomarr-pipeline {about['command']}` (pid {about['pid']} on {about['host']})"
    except (ValueError, KeyError, TypeError):
        return "another nomarr-pipeline"
