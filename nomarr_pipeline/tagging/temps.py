"""The tag writer's temp copies: names that say whose they are, and the sweep of dead writers' ones.

A temp copy is ``.<name>.nomarr-tmp-<host>-<pid>-<start>-<random><ext>`` next to the track it
will replace; ``start`` is its process' start time (centiseconds since the epoch), so a pid
reused by another program is not mistaken for the writer. A batch deletes, anywhere under its
library roots, the temps of this host's writers that are no longer running; temps of another
host (a folder shared over the network), whose writer cannot be asked, and temps named without
an owner only once older than :data:`FOREIGN_TEMP_AGE_S`. A live writer's temps are never
deleted. Scanners skip every hidden name, these included.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

StrPath = str | os.PathLike[str]
TEMP_MARKER = ".nomarr-tmp-"
# Far longer than a write holds its temp, and long enough for a suspended remote writer.
FOREIGN_TEMP_AGE_S = 24 * 3600.0
_MAX_NAME_IN_TEMP = 100  # temp names stay well under NAME_MAX (255 bytes)
_OWNER = re.compile(r"(?P<host>[A-Za-z0-9._-]+)-(?P<pid>\d+)-(?P<start>\d+)-[a-z0-9_]+(\.[^.]*)?")


@dataclass(frozen=True)
class Owner:
    """The process that made a temp copy."""

    host: str
    pid: int
    start: int


def this_host() -> str:
    # Only the characters a host name may hold, so that the name parses back.
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "localhost"


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (centiseconds), or ``None`` if none runs (a zombie is gone)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return round(process.create_time() * 100)
    except psutil.NoSuchProcess:
        return None


@functools.lru_cache(maxsize=1)
def _process(pid: int) -> Owner:
    return Owner(this_host(), pid, process_start(pid) or 0)


def this_process() -> Owner:
    return _process(os.getpid())


def is_alive(owner: Owner) -> bool:
    """Whether ``owner``, a process of this host, still runs."""
    start = process_start(owner.pid)
    return start is not None and abs(start - owner.start) <= 1  # the kernel counts in ticks


def temp_prefix(target: Path, owner: Owner) -> str:
    """The start of the name of ``owner``'s temp copy of ``target`` (mkstemp adds the rest)."""
    return f".{target.stem[:_MAX_NAME_IN_TEMP]}{TEMP_MARKER}{owner.host}-{owner.pid}-{owner.start}-"


def is_tag_write_temp(path: StrPath) -> bool:
    """Whether ``path`` names a temp copy of the tag writer (never a library file)."""
    name = os.path.basename(path)
    return name.startswith(".") and TEMP_MARKER in name


def owner_of(path: StrPath) -> Owner | None:
    """The owner a temp copy's name records; ``None`` for a name without one."""
    name = os.path.basename(path)
    match = _OWNER.fullmatch(name[name.rfind(TEMP_MARKER) + len(TEMP_MARKER) :])
    if not is_tag_write_temp(name) or match is None:
        return None
    return Owner(match["host"], int(match["pid"]), int(match["start"]))


def _abandoned(path: Path, info: os.stat_result, host: str, also: Owner | None) -> bool:
    owner = owner_of(path)
    if owner is not None and (owner == also or owner.host == host):
        return owner == also or not is_alive(owner)
    return time.time() - info.st_mtime > FOREIGN_TEMP_AGE_S


def remove_abandoned_temps(roots: Iterable[StrPath], *, also: Owner | None = None) -> list[Path]:
    """Delete every temp copy under ``roots`` whose owner is gone (and ``also``'s: a batch
    cleaning up after itself); one walk, a stat per temp name only. Returns what was removed."""
    removed: list[Path] = []
    for root in roots:
        for folder, _, names in os.walk(os.path.realpath(root)):
            for candidate in (Path(folder, name) for name in names if is_tag_write_temp(name)):
                with contextlib.suppress(FileNotFoundError):  # another batch got there first
                    info = candidate.lstat()
                    if stat.S_ISREG(info.st_mode) and _abandoned(candidate, info, this_host(), also):
                        candidate.unlink()
                        removed.append(candidate)
    return removed
