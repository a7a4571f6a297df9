"""Paths that crash (SIGSEGV) or hang the analysis worker they are sent to, as a decoder that
crashes or hangs on a file would: the worker dies while taking the task in."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _crash() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def _hang() -> None:
    while True:
        time.sleep(3600)


class CrashingPath(type(Path())):  # type: ignore[misc]
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return _crash, ()


class HangingPath(type(Path())):  # type: ignore[misc]
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return _hang, ()


def faulty(path: Path) -> Path:
    """``path`` as a crashing path when its name has ``CRASH``, a hanging one for ``HANG``."""
    if "CRASH" in path.name:
        return CrashingPath(path)
    return HangingPath(path) if "HANG" in path.name else path
