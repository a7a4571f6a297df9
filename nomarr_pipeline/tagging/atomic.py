"""Writing one library file's ``nom:`` tags so that the file is never left half-written.

:func:`prepare_write` (DESIGN.md §6): refuse a path whose real path is outside every library
root, a file whose (size, mtime_ns) is none Nomarr knows for it (changed on disk: its
predictions may not describe it any more) and a file that is read-only or immutable; read the
tags and stop if they are already the wanted ones; copy the file to a temp file in the same
folder (same filesystem: the rename is atomic; the name records its writer,
:mod:`~nomarr_pipeline.tagging.temps`), save the tags into the copy, re-open it from disk with
mutagen as players will and verify the tags and audio properties; give it the original's
permissions (and owner, as root) and fsync it. :func:`commit_write` checks the original once
more and renames the copy onto it; the rename keeps the size and mtime prepare returned, so a
batch can record them first. The folder is not fsynced: if a crash loses the rename, the old,
complete file is back with its old stat and is written again.

Any failure deletes the temp copy: the original is only ever replaced by a verified copy. A
symlink inside the library stays a symlink (the real path is written); a hard link becomes a
separate file, as with any ``os.replace``. Per-file problems raise a :class:`WriteError`; a
full disk raises :class:`DiskFullError`, deliberately not a ``WriteError``: the next file would
fail the same way, so a batch must stop. Both pickle, for worker processes to return them.
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
from nomarr_pipeline.tagging.temps import Owner, temp_prefix, this_process

# Lengths computed from frame counts can differ in the last float digits between parses.
LENGTH_TOLERANCE_S = 1e-3
_COPY_CHUNK = 1 << 20
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})

Stat = tuple[int, int]  # (size, mtime_ns)


class WriteError(Exception):
    """A per-file failure: recorded on the file, the batch goes on."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return (type(self), (self.path, self.reason))


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

    def __init__(self, path: str | os.PathLike[str], found: Stat, reason: str | None = None) -> None:
        self.found = found
        super().__init__(
            path, reason or f"changed on disk since it was scanned (now size {found[0]}, mtime_ns {found[1]})"
        )

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return (FileChangedError, (self.path, self.found, self.reason))


class DiskFullError(OSError):
    """No space left on the device. Not a WriteError: the whole batch must stop."""

    def __init__(self, path: str | os.PathLike[str], detail: str) -> None:
        self.path, self.detail = os.fspath(path), detail
        super().__init__(
            errno.ENOSPC,
            f"{self.path}: disk full while writing tags ({detail}); the original file is "
            "intact and no temp file was left. Free some space and run the write again.",
        )

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return (type(self), (self.path, self.detail))


@dataclass(frozen=True)
class WriteOutcome:
    """A file that now carries the wanted tags, and its stat for the store afterwards."""

    path: Path
    status: Literal["written", "unchanged"]
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class PreparedWrite:
    """A verified, fsynced temp copy waiting to replace ``target`` (plain data: it crosses
    process boundaries). ``size`` and ``mtime_ns`` are what ``target`` will show once replaced."""

    target: Path
    temp: Path
    size: int
    mtime_ns: int
    device: int
    inode: int


# ---- checks ------------------------------------------------------------------------------


def resolve_inside_roots(
    path: str | os.PathLike[str], library_roots: Sequence[str | os.PathLike[str]]
) -> Path:
    """The real path of ``path`` if it lies strictly inside one root's real path."""
    real = os.path.realpath(path)
    for root in library_roots:
        # realpath gives normalised absolute paths: "inside" is "starts with the root and a slash".
        inside = os.path.join(os.path.realpath(root), "")
        if real.startswith(inside) and len(real) > len(inside):
            return Path(real)
    roots = ", ".join(os.fspath(root) for root in library_roots) or "(none configured)"
    raise OutsideLibraryError(
        path, f"resolves to {real}, which is outside the library roots ({roots}); refusing to write"
    )


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


def _classify(exc: BaseException, path: Path, *, parsing: bool = False) -> BaseException:
    """The error the caller should see for ``exc`` raised while working on ``path`` (while
    ``parsing`` it): a WriteError or DiskFullError for any Exception; others as they are."""
    if isinstance(exc, WriteError | DiskFullError) or not isinstance(exc, Exception):
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
    # mutagen lets struct.error, IndexError and friends escape on some damaged files.
    if parsing or isinstance(exc, mutagen.MutagenError):
        return CorruptFileError(path, f"cannot be read as audio ({type(exc).__name__}: {exc})")
    # Whatever else went wrong, the original is untouched: report it for this file.
    return WriteError(path, f"unexpected error while writing ({type(exc).__name__}: {exc})")


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
    after = read_file_state(copy)  # the temp's name ends with the original's extension
    if not _tags_match(after, wanted, standard_mood=standard_mood):
        raise VerificationError(original, "tags written to the temp copy did not read back as asked")
    if not _same_audio(before.properties, after.properties):
        raise VerificationError(
            original,
            f"audio properties changed in the temp copy ({before.properties} -> {after.properties})",
        )


def _match_ownership_and_mode(descriptor: int, original: os.stat_result) -> None:
    os.fchmod(descriptor, stat.S_IMODE(original.st_mode))
    if os.geteuid() == 0:
        # Only root may give a file away; as root, keep the library's owner on the new inode.
        os.fchown(descriptor, original.st_uid, original.st_gid)
    else:
        # Anyone may give their file one of their own groups: keep the original's where allowed.
        with contextlib.suppress(PermissionError):
            os.fchown(descriptor, -1, original.st_gid)


# ---- the entry points -------------------------------------------------------------------


def prepare_write(
    path: str | os.PathLike[str],
    tags: TagInput,
    *,
    library_roots: Sequence[str | os.PathLike[str]],
    known_stats: Collection[Stat],
    standard_mood: bool = False,
    durable: bool = True,
    owner: Owner | None = None,
) -> WriteOutcome | PreparedWrite:
    """Steps 1-6 for the file at ``path``: an "unchanged" :class:`WriteOutcome`, or a
    :class:`PreparedWrite` for :func:`commit_write` or :func:`discard_write`.

    ``known_stats``: the (size, mtime_ns) pairs under which the file is as scanned.
    ``durable=False`` skips the fsync (throwaway copies only). ``owner``: the batch whose name
    the temp copy carries (default: this process). Raises like :func:`write_file_tags`;
    nothing is left behind when it raises.
    """
    wanted = normalize_tags(tags)
    target = resolve_inside_roots(path, library_roots)
    scanned = _check_unchanged(target, known_stats)
    try:
        opened = OpenedAudio(target)  # one parse: the unchanged check, the baseline, the save
        before = opened.state()
    except Exception as exc:
        raise _classify(exc, target, parsing=True) from exc
    temp: Path | None = None
    try:
        if _tags_match(before, wanted, standard_mood=standard_mood):
            return WriteOutcome(target, "unchanged", scanned.st_size, scanned.st_mtime_ns)
        prefix = temp_prefix(target, owner or this_process())
        descriptor, name = tempfile.mkstemp(prefix=prefix, suffix=target.suffix, dir=target.parent)
        temp = Path(name)
        with open(descriptor, "r+b") as copy:
            with open(target, "rb") as source:
                shutil.copyfileobj(source, copy, _COPY_CHUNK)
            copy.seek(0)
            opened.save(wanted, standard_mood=standard_mood, into=copy)
            copy.flush()
            _verify_copy(temp, target, before, wanted, standard_mood=standard_mood)
            _match_ownership_and_mode(copy.fileno(), scanned)
            if durable:
                os.fsync(copy.fileno())
            written = os.fstat(copy.fileno())
    except BaseException as exc:
        if temp is not None:
            with contextlib.suppress(OSError):
                temp.unlink()
        classified = _classify(exc, target)
        if classified is exc:
            raise
        raise classified from exc
    return PreparedWrite(target, temp, written.st_size, written.st_mtime_ns, written.st_dev, written.st_ino)


def commit_write(prepared: PreparedWrite, *, known_stats: Collection[Stat]) -> WriteOutcome:
    """Step 7: check the original once more and replace it with the prepared copy. Raises like
    :func:`write_file_tags`; the copy is deleted when it raises."""
    try:
        # Narrow the window in which another program's edit could be overwritten.
        _check_unchanged(prepared.target, known_stats)
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


def write_file_tags(
    path: str | os.PathLike[str],
    tags: TagInput,
    *,
    library_roots: Sequence[str | os.PathLike[str]],
    known_stats: Collection[Stat],
    standard_mood: bool = False,
    durable: bool = True,
) -> WriteOutcome:
    """Give the file at ``path`` exactly the ``nom:`` tags ``tags``, atomically.

    Raises a :class:`WriteError` subclass for a per-file failure and :class:`DiskFullError`
    when the disk is full.
    """
    prepared = prepare_write(
        path, tags, library_roots=library_roots, known_stats=known_stats,
        standard_mood=standard_mood, durable=durable,
    )  # fmt: skip
    return (
        commit_write(prepared, known_stats=known_stats) if isinstance(prepared, PreparedWrite) else prepared
    )
