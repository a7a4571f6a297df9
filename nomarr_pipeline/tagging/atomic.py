"""Writing one library file's ``nom:`` tags so that the file is never left half-written.

The sequence (DESIGN.md §6):

1. refuse a path whose real path (symlinks resolved) is outside every library root;
2. refuse a file whose size or ``mtime_ns`` differ from what the scan recorded — it changed
   on disk and its predictions may no longer describe it — and a file the process may not
   write (read-only or immutable), even though its folder would allow a replace;
3. read the current tags; if they already equal the wanted ones, stop ("unchanged");
4. copy the file to ``.<name>.nomarr-tmp-<random><ext>`` in the same folder (same
   filesystem, so the final rename is atomic; a reflink clone where the filesystem has
   them, a plain copy elsewhere), write the tags into the copy;
5. re-open the copy and verify: the namespace reads back exactly as asked and the audio
   properties (length, sample rate, channels, bitrate) are those of the original;
6. give the copy the original's permission bits (and owner, when running as root), fsync it,
   check the original once more for changes and ``os.replace`` it onto the original.

Why the copy is fsynced but the folder is not: the data fsync is what keeps a crash from
leaving a renamed-but-empty file (a corrupt track). The rename itself is atomic; if a crash
loses it, the old, complete file is back with its old size and mtime, the next scan sees it
differ from the stat the batch stored and the file is analysed and written again. A folder
fsync per file would cost time without making any file safer.

Any failure removes the temp copy; the original is only ever replaced by a verified copy.
Only a crash of the process itself can leave a temp copy behind: scanners should skip names
for which :func:`is_tag_write_temp` is true, and :func:`remove_stale_temps` clears them.
The writer works on the resolved path, so a symlink inside the library stays a symlink.
A file with several hard links becomes a separate file (the other links keep the old
tags), which is what ``os.replace`` does to any hard link.

Errors: per-file problems raise a :class:`WriteError` subclass, which a batch records and
moves past. A full disk raises :class:`DiskFullError`, deliberately *not* a ``WriteError``,
so a caller catching per-file errors cannot swallow it: the next file would fail the same
way, so the batch must stop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mutagen

from nomarr_pipeline.tagging import keys
from nomarr_pipeline.tagging.formats import (
    AudioProperties,
    FileTagState,
    NomTags,
    OpenedAudio,
    TagInput,
    UnsupportedFormatError,
    normalize_tags,
    read_file_state,
)

TEMP_MARKER = ".nomarr-tmp-"
# Lengths computed from frame counts can differ in the last float digits between parses.
LENGTH_TOLERANCE_S = 1e-3
_MAX_NAME_IN_TEMP = 100  # keep temp names well under NAME_MAX (255 bytes)
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
# Linux FICLONE ioctl number (_IOW(0x94, 9, int)); None where there is no such ioctl.
_FICLONE: int | None = 0x40049409 if sys.platform == "linux" else None
_NO_REFLINK_DEVICES: set[int] = set()


class WriteError(Exception):
    """A per-file failure: recorded on the file, the batch goes on."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class MissingFileError(WriteError):
    """The file is gone (moved or deleted since the scan)."""


class PermissionDeniedError(WriteError):
    """The file or its folder cannot be written (permissions, immutable flag, read-only mount)."""


class CorruptFileError(WriteError):
    """mutagen cannot parse the file as the audio format its extension claims."""


class UnsupportedFileError(WriteError):
    """No tag writer for this file's extension."""


class OutsideLibraryError(WriteError):
    """The path, once symlinks are resolved, lies outside every library root."""


class FileChangedError(WriteError):
    """Size or mtime differ from the scan: the file changed on disk and is skipped."""


class VerificationError(WriteError):
    """The written copy did not read back as expected; the original was left untouched."""


class DiskFullError(OSError):
    """No space left on the device. Not a WriteError: the whole batch must stop."""

    def __init__(self, path: str | os.PathLike[str], detail: str) -> None:
        self.path = os.fspath(path)
        super().__init__(
            errno.ENOSPC,
            f"{self.path}: disk full while writing tags ({detail}); the original file is "
            "intact and no temp file was left. Free some space and run the write again.",
        )


WriteStatus = Literal["written", "unchanged"]


@dataclass(frozen=True)
class WriteOutcome:
    """A file that now carries the wanted tags, and its stat for the store afterwards."""

    path: Path
    status: WriteStatus
    size: int
    mtime_ns: int


# ---- checks ------------------------------------------------------------------------------


def resolve_inside_roots(
    path: str | os.PathLike[str], library_roots: Sequence[str | os.PathLike[str]]
) -> Path:
    """The real path of ``path`` if it lies strictly inside one root's real path."""
    real = Path(os.path.realpath(path))
    for root in library_roots:
        real_root = Path(os.path.realpath(root))
        if real != real_root and real.is_relative_to(real_root):
            return real
    roots = ", ".join(os.fspath(root) for root in library_roots) or "(none configured)"
    raise OutsideLibraryError(
        path, f"resolves to {real}, which is outside the library roots ({roots}); refusing to write"
    )


def _stat_as_scanned(path: Path, expected_size: int, expected_mtime_ns: int) -> os.stat_result:
    try:
        info = os.stat(path)
    except OSError as exc:
        raise _classify(exc, path) from exc
    if not stat.S_ISREG(info.st_mode):
        raise WriteError(path, "is not a regular file")
    if info.st_size != expected_size or info.st_mtime_ns != expected_mtime_ns:
        raise FileChangedError(
            path,
            f"changed on disk since the scan (size {expected_size} -> {info.st_size}, "
            f"mtime_ns {expected_mtime_ns} -> {info.st_mtime_ns}); skipped until it is rescanned",
        )
    if not os.access(path, os.W_OK):
        # Replacing the file would work (the folder is writable), but a read-only or
        # immutable file is the owner saying "do not modify", so it is respected.
        raise PermissionDeniedError(path, "permission denied (the file is not writable)")
    return info


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: mutagen wraps I/O errors in MutagenError."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current
        pending.extend([current.__cause__, current.__context__])
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
    return None


def _classify(exc: BaseException, path: Path) -> BaseException:
    """The error the caller should see for ``exc`` raised while working on ``path``."""
    if isinstance(exc, WriteError | DiskFullError):
        return exc
    if isinstance(exc, UnsupportedFormatError):
        return UnsupportedFileError(path, str(exc))
    os_error = _os_error_in(exc)
    if os_error is not None:
        detail = os_error.strerror or str(os_error)
        if os_error.errno in _DISK_FULL_ERRNOS:
            return DiskFullError(path, detail)
        if os_error.errno in _PERMISSION_ERRNOS:
            return PermissionDeniedError(path, f"permission denied ({detail})")
        if os_error.errno == errno.ENOENT:
            return MissingFileError(path, "file not found (moved or deleted since the scan)")
        return WriteError(path, f"I/O error: {detail}")
    if isinstance(exc, mutagen.MutagenError):
        return CorruptFileError(path, f"cannot be read as audio ({type(exc).__name__}: {exc})")
    return exc


# ---- verification ------------------------------------------------------------------------


def _tags_match(state: FileTagState, wanted: NomTags, *, standard_mood: bool) -> bool:
    if state.nom_tags != wanted:
        return False
    if standard_mood and keys.MOOD_REGULAR in wanted:
        return state.standard_mood == wanted[keys.MOOD_REGULAR]
    return True


def _same_audio(before: AudioProperties, after: AudioProperties) -> bool:
    return (
        abs(before.length - after.length) <= LENGTH_TOLERANCE_S
        and before.sample_rate == after.sample_rate
        and before.channels == after.channels
        and (before.bitrate is None or after.bitrate is None or before.bitrate == after.bitrate)
    )


def _verify_copy(
    copy: Path, original: Path, before: FileTagState, wanted: NomTags, *, standard_mood: bool
) -> None:
    after = read_file_state(copy, format_of=original)
    if not _tags_match(after, wanted, standard_mood=standard_mood):
        raise VerificationError(original, "tags written to the temp copy did not read back as asked")
    if not _same_audio(before.properties, after.properties):
        raise VerificationError(
            original,
            f"audio properties changed in the temp copy ({before.properties} -> {after.properties})",
        )


# ---- filesystem helpers ------------------------------------------------------------------


def _try_reflink(original: Path, temp: Path, device: int) -> bool:
    """Clone ``original`` into ``temp`` without copying data, where the filesystem can.

    btrfs, XFS and bcachefs share the extents (the copy is instant and takes no space until
    written); elsewhere the ioctl fails and the caller copies. A device that said "not
    supported" once is not asked again.
    """
    if _FICLONE is None or device in _NO_REFLINK_DEVICES:
        return False
    try:
        with open(original, "rb") as source, open(temp, "r+b") as copy:
            fcntl.ioctl(copy.fileno(), _FICLONE, source.fileno())
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.EXDEV, errno.ENOSYS):
            _NO_REFLINK_DEVICES.add(device)
        return False
    return True


def _temp_copy(original: Path, device: int) -> Path:
    descriptor, name = tempfile.mkstemp(
        prefix=f".{original.stem[:_MAX_NAME_IN_TEMP]}{TEMP_MARKER}",
        suffix=original.suffix,
        dir=original.parent,
    )
    os.close(descriptor)
    temp = Path(name)
    try:
        if not _try_reflink(original, temp, device):
            shutil.copyfile(original, temp)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise
    return temp


def _match_ownership_and_mode(temp: Path, original: os.stat_result) -> None:
    os.chmod(temp, stat.S_IMODE(original.st_mode))
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Only root may give a file away; as root, keep the library's owner on the new inode.
        os.chown(temp, original.st_uid, original.st_gid)


def _fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def is_tag_write_temp(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a temp copy made by :func:`write_file_tags` (never a library file)."""
    name = os.path.basename(path)
    return name.startswith(".") and TEMP_MARKER in name


def remove_stale_temps(root: str | os.PathLike[str], *, older_than_s: float = 3600.0) -> list[Path]:
    """Delete temp copies under ``root`` left by a crashed writer; returns what was removed.

    The age limit keeps a write that is running right now from losing its temp file.
    """
    cutoff = time.time() - older_than_s
    removed: list[Path] = []
    for folder, _, names in os.walk(root):
        for name in names:
            candidate = Path(folder) / name
            if not is_tag_write_temp(name):
                continue
            with contextlib.suppress(FileNotFoundError):
                if candidate.lstat().st_mtime < cutoff:
                    candidate.unlink()
                    removed.append(candidate)
    return removed


# ---- the one entry point -----------------------------------------------------------------


def write_file_tags(
    path: str | os.PathLike[str],
    tags: TagInput,
    *,
    library_roots: Sequence[str | os.PathLike[str]],
    expected_size: int,
    expected_mtime_ns: int,
    standard_mood: bool = False,
    durable: bool = True,
) -> WriteOutcome:
    """Give the file at ``path`` exactly the ``nom:`` tags ``tags``, atomically.

    ``durable=False`` skips the fsync (for throwaway copies); the replace stays atomic.
    Raises a :class:`WriteError` subclass for a per-file failure and :class:`DiskFullError`
    when the disk is full.
    """
    wanted = normalize_tags(tags)
    target = resolve_inside_roots(path, library_roots)
    scanned = _stat_as_scanned(target, expected_size, expected_mtime_ns)
    try:
        # One parse serves the unchanged check, the audio baseline and the write itself.
        opened = OpenedAudio(target)
        before = opened.state()
    except Exception as exc:
        classified = _classify(exc, target)
        if classified is exc:
            # mutagen lets struct.error, IndexError and friends escape on some damaged files.
            classified = CorruptFileError(target, f"cannot be read as audio ({type(exc).__name__}: {exc})")
        raise classified from exc
    if _tags_match(before, wanted, standard_mood=standard_mood):
        return WriteOutcome(target, "unchanged", scanned.st_size, scanned.st_mtime_ns)

    temp: Path | None = None
    try:
        temp = _temp_copy(target, scanned.st_dev)
        opened.save_tags(wanted, standard_mood=standard_mood, into=temp)
        _verify_copy(temp, target, before, wanted, standard_mood=standard_mood)
        _match_ownership_and_mode(temp, scanned)
        if durable:
            _fsync_path(temp)
        # Narrow the window in which another program's edit could be overwritten.
        _stat_as_scanned(target, expected_size, expected_mtime_ns)
        os.replace(temp, target)
        temp = None
        written = os.stat(target)
    except BaseException as exc:
        if temp is not None:
            with contextlib.suppress(OSError):  # keep the original error, not a cleanup one
                temp.unlink(missing_ok=True)
        classified = _classify(exc, target)
        if classified is exc and isinstance(exc, Exception):
            # Whatever else went wrong, the original is untouched: report it for this file.
            classified = WriteError(target, f"unexpected error while writing ({type(exc).__name__}: {exc})")
        if classified is exc:  # KeyboardInterrupt, SystemExit: not a file problem
            raise
        raise classified from exc
    return WriteOutcome(target, "written", written.st_size, written.st_mtime_ns)
