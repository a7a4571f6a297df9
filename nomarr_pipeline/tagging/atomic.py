"""One library file's ``nom:`` tags, written so that the file is never left half-written.

:func:`prepare_write` refuses a path outside every library root (symlinks resolved), a file
whose (size, mtime_ns) Nomarr does not know (changed on disk) and a read-only or immutable
file; else copies the file to a temp file in its folder (named after its writer, :mod:`.temps`),
saves the tags into the copy, re-reads and verifies tags and audio properties, gives it the
original's mode and owner, and fsyncs it. :func:`commit_write` renames the copy onto the
original if that is still the file copied. Any failure deletes the copy: a file is only ever
replaced by a verified copy, and a crash before the rename leaves it whole. Per-file problems
raise :class:`WriteError`; a full disk raises :class:`DiskFullError`: the batch must stop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mutagen

from nomarr_pipeline.tagging.formats import (
    FileTagState,
    NomTags,
    OpenedAudio,
    TagInput,
    UnsupportedFormatError,
    normalize_tags,
)
from nomarr_pipeline.tagging.standard import planned_tags
from nomarr_pipeline.tagging.temps import temp_prefix, this_process

# Lengths computed from frame counts can differ in the last float digits between parses.
LENGTH_TOLERANCE_S = 1e-3
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NOT_PERMITTED = (errno.EACCES, errno.EPERM, errno.EROFS)

Stat = tuple[int, int]  # (size, mtime_ns)
StrPath = str | os.PathLike[str]


class WriteError(Exception):
    """A per-file failure: recorded on the file, the batch goes on."""

    def __init__(self, path: StrPath, reason: str) -> None:
        self.path, self.reason = os.fspath(path), reason
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


class VerificationError(WriteError):
    """The written copy did not read back as expected; the original was left untouched."""


class FileChangedError(WriteError):
    """The file's stat is none Nomarr knows: it changed on disk and is not written."""

    def __init__(self, path: StrPath, found: Stat) -> None:
        self.found = found
        super().__init__(
            path, f"changed on disk since it was scanned (now size {found[0]}, mtime_ns {found[1]})"
        )


class DiskFullError(OSError):
    """No space left on the device. Not a WriteError: the whole batch must stop."""

    def __init__(self, path: StrPath, detail: str) -> None:
        self.path = os.fspath(path)
        super().__init__(
            errno.ENOSPC,
            f"{self.path}: disk full while writing tags ({detail}); the original file is "
            "intact and no temp file was left. Free some space and run the write again.",
        )


@dataclass(frozen=True)
class WriteOutcome:
    """A file that now carries the wanted tags, and its stat for the store."""

    path: Path
    status: Literal["written", "unchanged"]
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class PreparedWrite:
    """A verified, fsynced temp copy of ``target`` as it was at ``source`` (its stat), waiting to
    replace it; ``size`` and ``mtime_ns`` are what ``target`` shows once replaced, ``device``
    and ``inode`` identify the copy."""

    target: Path
    temp: Path
    source: Stat
    size: int
    mtime_ns: int
    device: int
    inode: int


def resolve_inside_roots(path: StrPath, library_roots: Sequence[StrPath]) -> Path:
    """The real path of ``path`` if it lies strictly inside one root's real path."""
    real = Path(os.path.realpath(path))
    if any(real != root and real.is_relative_to(root) for root in map(os.path.realpath, library_roots)):
        return real
    roots = ", ".join(map(os.fspath, library_roots)) or "(none configured)"
    raise OutsideLibraryError(path, f"resolves to {real}, outside the library roots ({roots}): not written")


def _check_unchanged(path: Path, known_stats: Collection[Stat]) -> os.stat_result:
    try:
        info = os.stat(path)
    except OSError as exc:
        raise _classify(exc, path) from exc
    if not stat.S_ISREG(info.st_mode):
        raise WriteError(path, "is not a regular file")
    if (info.st_size, info.st_mtime_ns) not in known_stats:
        raise FileChangedError(path, (info.st_size, info.st_mtime_ns))
    if not os.access(path, os.W_OK):
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            raise PermissionDeniedError(path, "permission denied (the library is on a read-only file system)")
        # Its folder may allow replacing it, but a read-only or immutable file is its owner
        # saying "do not modify".
        raise PermissionDeniedError(path, "permission denied (the file is read-only or immutable)")
    return info


def _classify(exc: BaseException, path: Path, *, parsing: bool = False) -> BaseException:
    """What the caller sees for ``exc`` raised while working on ``path`` (while ``parsing`` it):
    a WriteError or DiskFullError for any Exception, anything else as it is."""
    if isinstance(exc, WriteError | DiskFullError) or not isinstance(exc, Exception):
        return exc
    if isinstance(exc, UnsupportedFormatError):
        return UnsupportedFileError(path, str(exc))
    # mutagen wraps I/O errors in a MutagenError that carries them as its argument.
    os_error = next(
        (e for e in (exc, *exc.args, exc.__cause__, exc.__context__) if isinstance(e, OSError)), None
    )
    if os_error is not None and os_error.errno is not None:
        detail = os_error.strerror or str(os_error)
        if os_error.errno in _DISK_FULL:
            return DiskFullError(path, detail)
        if os_error.errno in _NOT_PERMITTED:
            return PermissionDeniedError(path, f"permission denied ({detail})")
        if os_error.errno == errno.ENOENT:
            return MissingFileError(path, "file not found (moved or deleted since the scan)")
        return WriteError(path, f"I/O error: {detail}")
    # mutagen lets struct.error, IndexError and friends escape on some damaged files.
    if parsing or isinstance(exc, mutagen.MutagenError):
        return CorruptFileError(path, f"cannot be read as audio ({type(exc).__name__}: {exc})")
    return WriteError(path, f"unexpected error while writing ({type(exc).__name__}: {exc})")


def _verify_copy(copy: Path, original: Path, before: FileTagState, planned: NomTags) -> None:
    after = OpenedAudio(copy).state()  # read from disk, as players will
    if after.tags() != planned:
        raise VerificationError(original, "tags written to the temp copy did not read back as asked")
    length, rate, channels, bitrate = before.properties
    length_after, rate_after, channels_after, bitrate_after = after.properties
    if (
        abs(length - length_after) > LENGTH_TOLERANCE_S
        or (rate, channels) != (rate_after, channels_after)
        or (bitrate and bitrate_after and bitrate != bitrate_after)
    ):
        raise VerificationError(
            original, f"audio properties changed in the temp copy ({before.properties} -> {after.properties})"
        )


def _keep_mode_and_owner(descriptor: int, original: os.stat_result) -> None:
    os.fchmod(descriptor, stat.S_IMODE(original.st_mode))
    if os.geteuid() == 0:  # only root may give a file away: keep the library's owner
        os.fchown(descriptor, original.st_uid, original.st_gid)
    else:  # anyone may give their file one of their own groups
        with contextlib.suppress(PermissionError):
            os.fchown(descriptor, -1, original.st_gid)


def prepare_write(
    path: StrPath,
    tags: TagInput,
    *,
    library_roots: Sequence[StrPath],
    known_stats: Collection[Stat],
    replace_fields: Collection[str] = (),
) -> WriteOutcome | PreparedWrite:
    """An "unchanged" :class:`WriteOutcome`, or a :class:`PreparedWrite` for
    :func:`commit_write` or :func:`discard_write`. ``tags``: the ``nom:`` keys and the pipeline's
    values for the standard fields (merged with the user's by :func:`.standard.planned_tags`);
    ``known_stats``: the (size, mtime_ns) pairs under which the file is as scanned. Nothing is
    left behind when it raises."""
    wanted = normalize_tags(tags)
    target = resolve_inside_roots(path, library_roots)
    scanned = _check_unchanged(target, known_stats)
    try:
        opened = OpenedAudio(target)  # one parse: the baseline and the save
        before = opened.state()
    except Exception as exc:
        raise _classify(exc, target, parsing=True) from exc
    planned = planned_tags(before, wanted, replace_fields)
    if before.tags() == planned:
        return WriteOutcome(target, "unchanged", scanned.st_size, scanned.st_mtime_ns)
    temp: Path | None = None
    try:
        descriptor, name = tempfile.mkstemp(
            prefix=temp_prefix(target, this_process()), suffix=target.suffix, dir=target.parent
        )
        temp = Path(name)
        with open(descriptor, "r+b") as copy:
            with open(target, "rb") as source:
                shutil.copyfileobj(source, copy, 1 << 20)
            copy.seek(0)
            opened.save(planned, before, into=copy)
            copy.flush()
            _verify_copy(temp, target, before, planned)
            _keep_mode_and_owner(copy.fileno(), scanned)
            os.fsync(copy.fileno())
            written = os.fstat(copy.fileno())
    except BaseException as exc:
        if temp is not None:
            temp.unlink(missing_ok=True)
        classified = _classify(exc, target)
        if classified is exc:
            raise
        raise classified from exc
    source = (scanned.st_size, scanned.st_mtime_ns)
    return PreparedWrite(
        target, temp, source, written.st_size, written.st_mtime_ns, written.st_dev, written.st_ino
    )


def commit_write(prepared: PreparedWrite) -> WriteOutcome:
    """Check that the original is still the file the copy was made from and replace it with the
    copy; the copy is deleted when it raises."""
    try:
        # Not merely a known stat: another writer's copy of an older version, renamed meanwhile,
        # has a known stat too, and the store may no longer know this copy's once it records.
        _check_unchanged(prepared.target, (prepared.source,))
        info = os.lstat(prepared.temp)
        if (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns) != (
            prepared.device, prepared.inode, prepared.size, prepared.mtime_ns
        ):  # fmt: skip
            raise WriteError(
                prepared.target, f"the temp copy {prepared.temp.name} was changed by someone else"
            )
        os.replace(prepared.temp, prepared.target)
    except BaseException as exc:
        discard_write(prepared)
        classified = _classify(exc, prepared.target)
        if classified is exc:
            raise
        raise classified from exc
    return WriteOutcome(prepared.target, "written", prepared.size, prepared.mtime_ns)


def discard_write(prepared: PreparedWrite) -> None:
    """Delete the prepared copy, leaving the original as it is."""
    with contextlib.suppress(OSError):
        prepared.temp.unlink()
