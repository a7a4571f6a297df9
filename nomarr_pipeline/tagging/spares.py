"""Reusing each replaced original's inode as a later temp copy, instead of freeing it.

Every atomic write creates one inode (the temp copy) and frees one (the original it
replaces). On Linux the replace can instead *exchange* the two names
(``renameat2(RENAME_EXCHANGE)``, as atomic as ``rename``): the library path then holds the
verified copy and the temp name the old original, which becomes the next temp copy of the
same writer: its blocks are overwritten and the tail cut off. Where ext4 runs
without a journal, each new inode costs a scan past every inode freed in the last minutes
(0.36-0.39 ms of kernel CPU per file on the build machine), and on a ``discard`` mount each
freed block range waits for its discard (0.14 ms per file). Two writers, 1000 files: 0.34-0.38x
the bare loop before, 0.52-0.53x with spares; on a journaling ext4 0.51x before, 0.55x after
(docs/BENCHMARKS.md, "Recycled temp inodes").

An old original is recycled only when nothing else can notice: it has no other hard link,
no extended attributes (they would carry over to another track), belongs to this user,
and no process has it open: a player still reading the old track keeps reading it,
exactly as after a plain replace. That last check is a write lease (``F_SETLEASE``),
which the kernel grants only while no other descriptor of the file is open anywhere.
Anything else is deleted, as a plain replace would have done.

A spare has a temp name (:data:`~nomarr_pipeline.tagging.atomic.TEMP_MARKER`) and mode 0600,
and keeps its old bytes only within a byte limit (beyond it, it is emptied); it is renamed
into the folder of the file it serves, never across filesystems.
:meth:`SpareInodes.release` deletes the spares left when a batch ends; a crashed writer's
spares are temp files like any other (scanners skip them, ``remove_stale_temps`` deletes
them).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import stat
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
# The kernel or filesystem cannot do a flagged rename (old kernel, NFS, FUSE, vfat...).
_UNSUPPORTED_ERRNOS = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
_NO_EXCHANGE_DEVICES: set[int] = set()
_NAME_ATTEMPTS = 8


def _load_renameat2() -> Callable[..., int] | None:
    if sys.platform != "linux":
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc before 2.28, musl without it
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _load_renameat2()


def _rename(source: Path, target: Path, flags: int) -> None:
    assert _RENAMEAT2 is not None
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), os.fspath(source), None, os.fspath(target))


def exchange(source: Path, target: Path, device: int) -> bool:
    """Swap the files named ``source`` and ``target`` atomically; ``False`` (nothing done)
    where this kernel or filesystem cannot, so that the caller replaces instead.

    Any other error is raised, and then nothing was swapped either.
    """
    if _RENAMEAT2 is None or device in _NO_EXCHANGE_DEVICES:
        return False
    try:
        _rename(source, target, _RENAME_EXCHANGE)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED_ERRNOS:
            raise
        _NO_EXCHANGE_DEVICES.add(device)
        return False
    return True


def _nobody_else_has_open(descriptor: int) -> bool:
    """Whether ``descriptor`` is the file's only open descriptor, in any process.

    The lease is let go at once; a lease break in between (someone opening the temp name)
    signals this process, so the signal is one whose default action is to ignore it.
    """
    try:
        fcntl.fcntl(descriptor, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(descriptor, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except OSError:
        return False  # EAGAIN: open elsewhere; EACCES/EINVAL: leases not available here
    fcntl.fcntl(descriptor, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return True


def _has_xattrs(descriptor: int) -> bool:
    try:
        return bool(os.listxattr(descriptor))
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:  # a filesystem without extended attributes
            return False
        raise


def _recyclable(descriptor: int, info: os.stat_result) -> bool:
    return (
        stat.S_ISREG(info.st_mode)
        and info.st_nlink == 1
        and info.st_uid == os.geteuid()
        and not _has_xattrs(descriptor)
        and _nobody_else_has_open(descriptor)
    )


def _names(path: Path, descriptor: int) -> bool:
    """Whether ``path`` names the file open as ``descriptor``."""
    try:
        return os.path.samestat(os.stat(path, follow_symlinks=False), os.fstat(descriptor))
    except OSError:
        return False


@dataclass(frozen=True)
class Spare:
    """A file with a temp name, open as ``descriptor``, on filesystem ``device``; its first
    ``size`` bytes are a replaced original's, kept so that the next copy overwrites them."""

    path: Path
    descriptor: int
    device: int
    gid: int
    size: int


class SpareInodes:
    """A writer process' spare inodes: at most ``limit`` files and ``byte_limit`` bytes of
    kept blocks (a spare beyond that is emptied).

    Thread-safe, so that writer threads can share one.
    """

    def __init__(self, limit: int, byte_limit: int) -> None:
        self.limit, self.byte_limit = limit, byte_limit
        self._spares: list[Spare] = []
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._spares)

    @property
    def kept_bytes(self) -> int:
        return self._bytes

    def keep(self, old: Path, device: int) -> None:
        """Keep the replaced original now named ``old`` as a spare, or delete it.

        Never raises for a file problem: the write it belongs to is done already.
        """
        descriptor = -1
        try:
            if len(self._spares) < self.limit:
                descriptor = os.open(old, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
                info = os.fstat(descriptor)
                spare = Spare(old, descriptor, device, info.st_gid, info.st_size)
                if _recyclable(descriptor, info) and self._add(spare):
                    return
        except OSError:
            pass
        if descriptor >= 0:
            os.close(descriptor)
        with contextlib.suppress(OSError):
            old.unlink()

    def _add(self, spare: Spare) -> bool:
        os.fchmod(spare.descriptor, 0o600)
        # The old original's mtime may be years old: a sweep for stale temps (older than an
        # hour) must not mistake a spare in use for a crashed writer's.
        os.utime(spare.descriptor)
        with self._lock:  # the whole decision, so that threads cannot both pass the limits
            if len(self._spares) >= self.limit:
                return False
            if self._bytes + spare.size > self.byte_limit:
                # Freeing blocks costs what keeping them saves (ext4 also discards them on a
                # "discard" mount), but disk space held by spares stays bounded.
                os.ftruncate(spare.descriptor, 0)
                spare = replace(spare, size=0)
            self._spares.append(spare)
            self._bytes += spare.size
        return True

    def take(self, folder: Path, prefix: str, suffix: str, device: int, gid: int) -> tuple[Path, int] | None:
        """A spare renamed to a fresh ``prefix…suffix`` name in ``folder``, and its descriptor
        (now the caller's, at offset 0, holding stale bytes to overwrite and cut off), or
        ``None`` (create a new file instead).

        ``gid``: the original's group, which the copy must end up with. Only root may give
        a file any group, so for anyone else a spare of another group is not used.
        """
        root = os.geteuid() == 0
        with self._lock:
            fits = (spare for spare in self._spares if spare.device == device and (root or spare.gid == gid))
            spare = next(fits, None)
            if spare is None:
                return None
            self._spares.remove(spare)
            self._bytes -= spare.size
        for _ in range(_NAME_ATTEMPTS):
            name = folder / f"{prefix}{os.urandom(6).hex()}{suffix}"
            try:
                _rename(spare.path, name, _RENAME_NOREPLACE)
            except FileExistsError:
                continue
            except OSError:
                break
            if not _names(name, spare.descriptor):
                # Another file was put at the spare's name: it is not ours to write or delete.
                os.close(spare.descriptor)
                return None
            return name, spare.descriptor
        self._drop(spare)
        return None

    def release(self) -> None:
        """Delete every spare (at the end of a batch, or when the writer process exits)."""
        with self._lock:
            spares, self._spares, self._bytes = self._spares, [], 0
        for spare in spares:
            self._drop(spare)

    @staticmethod
    def _drop(spare: Spare) -> None:
        with contextlib.suppress(OSError):
            os.close(spare.descriptor)
        with contextlib.suppress(OSError):
            spare.path.unlink()
