"""The tag writer's temp copies: names that say whose they are, and the sweep of dead writers' ones.

A temp copy is ``.<name>.nomarr-tmp-<host>-<pid>-<start>-<random><ext>`` next to the track it
will replace. ``host``, ``pid`` and ``start`` (the process' start time, in clock ticks since
boot, from ``/proc``) name the batch that owns it, so that a later batch can tell:

- its own host's temps: the owner is alive when a process with that pid runs and started at
  that moment (a pid reused by another program has another start time); a dead owner's temps
  are deleted at once;
- another host's temps (a library folder shared over the network): the owner cannot be asked,
  so they are deleted only once older than :data:`FOREIGN_TEMP_AGE_S`; so are temps named
  without an owner (older versions of the writer).

A live writer's temps are never deleted. Scanners skip every hidden name, these included.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TEMP_MARKER = ".nomarr-tmp-"
# Far longer than any write takes (a batch holds a temp for milliseconds), and long enough for a
# writer on another machine that is suspended or slowed down to come back.
FOREIGN_TEMP_AGE_S = 24 * 3600.0
_MAX_NAME_IN_TEMP = 100  # keep temp names well under NAME_MAX (255 bytes)
_OWNER = re.compile(r"(?P<host>[A-Za-z0-9._-]+)-(?P<pid>\d+)-(?P<start>\d+)-[a-z0-9_]+(\.[^.]*)?")


@dataclass(frozen=True)
class Owner:
    """The process that made a temp copy."""

    host: str
    pid: int
    start: int  # 0 where the start time cannot be read (no /proc)

    @property
    def token(self) -> str:
        return f"{self.host}-{self.pid}-{self.start}"


def this_host() -> str:
    # Only the characters a host name may hold, so the name parses back unambiguously.
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "localhost"


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot; 0 where unknown), or ``None`` if no
    such process runs. A zombie (killed, not yet reaped) counts as gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc: ask the kernel whether the pid exists at all
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    # fields[0] is the state (field 3 of proc(5)); the start time is field 22.
    return None if fields[0] in ("Z", "X") else int(fields[19])


def this_process() -> Owner:
    return Owner(this_host(), os.getpid(), process_start(os.getpid()) or 0)


def is_alive(owner: Owner) -> bool:
    """Whether ``owner`` (a process on this host) still runs."""
    start = process_start(owner.pid)
    return start is not None and (owner.start == 0 or start == 0 or start == owner.start)


def temp_prefix(target: Path, owner: Owner) -> str:
    """The start of the name of ``owner``'s temp copy of ``target`` (mkstemp adds the rest)."""
    return f".{target.stem[:_MAX_NAME_IN_TEMP]}{TEMP_MARKER}{owner.token}-"


def is_tag_write_temp(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a temp copy of the tag writer (never a library file)."""
    name = os.path.basename(path)
    return name.startswith(".") and TEMP_MARKER in name


def owner_of(path: str | os.PathLike[str]) -> Owner | None:
    """The owner a temp copy's name records; ``None`` for a name without one."""
    name = os.path.basename(path)
    match = _OWNER.fullmatch(name[name.rfind(TEMP_MARKER) + len(TEMP_MARKER) :])
    if not is_tag_write_temp(name) or match is None:
        return None
    return Owner(match["host"], int(match["pid"]), int(match["start"]))


def is_abandoned(path: Path, *, host: str, now: float, also: Owner | None = None) -> bool:
    """Whether the temp copy at ``path`` belongs to nobody alive (``also``: a live owner whose
    temps count as abandoned too, a batch cleaning up after itself)."""
    owner = owner_of(path)
    if owner is not None and (owner == also or owner.host == host):
        return owner == also or not is_alive(owner)
    return now - path.lstat().st_mtime > FOREIGN_TEMP_AGE_S


def remove_abandoned_temps(
    roots: Iterable[str | os.PathLike[str]], *, also: Owner | None = None
) -> list[Path]:
    """Delete every abandoned temp copy under ``roots`` (one walk, no stat but of temp names);
    returns what was removed."""
    host, now = this_host(), time.time()
    removed: list[Path] = []
    for root in roots:
        for folder, _, names in os.walk(os.path.realpath(root)):
            for name in names:
                if not is_tag_write_temp(name):
                    continue
                candidate = Path(folder, name)
                with contextlib.suppress(FileNotFoundError):  # another batch got there first
                    if stat.S_ISREG(candidate.lstat().st_mode) and is_abandoned(
                        candidate, host=host, now=now, also=also
                    ):
                        candidate.unlink()
                        removed.append(candidate)
    return removed
