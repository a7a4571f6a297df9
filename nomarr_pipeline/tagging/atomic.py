"""Writing one library file's ``nom:`` tags so that the file is never left half-written.

The sequence (DESIGN.md §6):

1. refuse a path whose real path (symlinks resolved) is outside every library root;
2. refuse a file whose size or ``mtime_ns`` differ from what the scan recorded — it changed
   on disk and its predictions may no longer describe it — and a file the process may not
   write (read-only or immutable), even though its folder would allow a replace;
3. read the current tags; if they already equal the wanted ones, stop ("unchanged");
4. create ``.<name>.nomarr-tmp-<random><ext>`` in the same folder (same filesystem, so the
   final rename is atomic) and keep its descriptor — or, for a batch, rename one of the
   writer's spare inodes (:mod:`~nomarr_pipeline.tagging.spares`) to that name; fill it with
   the original's bytes (a reflink clone where the filesystem has them, an in-kernel
   ``copy_file_range`` elsewhere) and write the tags into the copy through that descriptor;
   for a durable write, start the copy's writeback to disk now (Linux), so that the fsync in
   step 6 finds it mostly done;
5. re-open the copy from disk, by its path, and verify: the namespace reads back exactly as
   asked and the audio properties (length, sample rate, channels, bitrate) are those of the
   original (:func:`~nomarr_pipeline.tagging.formats.read_written_state`: mutagen's reader,
   except that the ``TXXX`` frame bodies Nomarr writes are decoded without its per-field
   machinery — same result, an mp3's verifying parse ~40 % cheaper);
6. give the copy the original's permission bits (and owner, when running as root), fsync it,
   check the original once more for changes and ``os.replace`` it onto the original — for a
   batch, exchange the two names instead, and keep the old original as a spare inode where
   nothing else can notice; the stat returned is the copy's own (``fstat`` of its
   descriptor).

:func:`write_file_tags` does all six steps. :func:`prepare_file_write` stops after step 5 (and
the permission bits) and returns a :class:`PreparedWrite` whose ``commit`` is step 6: a batch
prepares a few files and then commits them one after the other, so that one journal commit
serves several fsyncs (each copy is still fsynced and its original re-checked right before
its own replace).

Measured and left out: saving into an in-memory copy of the original (read it, let mutagen
save into a ``BytesIO``, write that) cost more CPU than copy-then-save-in-place on the test
machine, so every file takes the same path whatever its size.

Why the copy is fsynced but the folder is not: the data fsync is what keeps a crash from
leaving a renamed-but-empty file (a corrupt track). The rename itself is atomic; if a crash
loses it, the old, complete file is back with its old size and mtime, the next scan sees it
differ from the stat the batch stored and the file is analysed and written again. A folder
fsync per file would cost time without making any file safer.

Any failure removes the temp copy; the original is only ever replaced by a verified copy.
Only a crash of the process itself can leave temp copies behind (those of the files prepared
and not yet committed, and a batch writer's spare inodes): scanners skip names for which
:func:`is_tag_write_temp` is true, and :func:`remove_stale_temps` clears them (a batch does so
in each folder it writes to).
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
import ctypes
import errno
import fcntl
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, NoReturn

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
    read_written_state,
)
from nomarr_pipeline.tagging.spares import SpareInodes, exchange

TEMP_MARKER = ".nomarr-tmp-"
# Lengths computed from frame counts can differ in the last float digits between parses.
LENGTH_TOLERANCE_S = 1e-3
_MAX_NAME_IN_TEMP = 100  # keep temp names well under NAME_MAX (255 bytes)
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
# Linux FICLONE ioctl number (_IOW(0x94, 9, int)); None where there is no such ioctl.
_FICLONE: int | None = 0x40049409 if sys.platform == "linux" else None
_NO_REFLINK_DEVICES: set[int] = set()
_COPY_CHUNK = 1 << 24  # bytes per copy_file_range / read call


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
    after = read_written_state(copy, format_of=original)
    if not _tags_match(after, wanted, standard_mood=standard_mood):
        raise VerificationError(original, "tags written to the temp copy did not read back as asked")
    if not _same_audio(before.properties, after.properties):
        raise VerificationError(
            original,
            f"audio properties changed in the temp copy ({before.properties} -> {after.properties})",
        )


# ---- filesystem helpers ------------------------------------------------------------------


def _try_reflink(source: int, copy: int, device: int) -> bool:
    """Clone the file open as ``source`` into ``copy`` without copying data, where the filesystem can.

    btrfs, XFS and bcachefs share the extents (the copy is instant and takes no space until
    written); elsewhere the ioctl fails and the caller copies. A device that said "not
    supported" once is not asked again.
    """
    if _FICLONE is None or device in _NO_REFLINK_DEVICES:
        return False
    try:
        fcntl.ioctl(copy, _FICLONE, source)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.EXDEV, errno.ENOSYS):
            _NO_REFLINK_DEVICES.add(device)
        return False
    return True


def _copy_data(source: int, copy: int) -> None:
    """Copy all of ``source`` over the start of ``copy`` inside the kernel (no round trip
    through Python buffers); a read/write loop where ``copy_file_range`` is missing or refused."""
    if hasattr(os, "copy_file_range"):
        try:
            while os.copy_file_range(source, copy, _COPY_CHUNK):
                pass
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            # Nothing was copied when these errors are raised: start over with the plain loop.
            os.lseek(source, 0, os.SEEK_SET)
            os.lseek(copy, 0, os.SEEK_SET)
            os.ftruncate(copy, 0)
    while block := os.read(source, _COPY_CHUNK):
        view = memoryview(block)
        while view:
            view = view[os.write(copy, view) :]


@dataclass
class _TempCopy:
    """The temp copy next to the original, and the descriptor it was created with: the copy is
    written, fsynced and finally stat'ed through that descriptor, so no path lookup can swap in
    another file between the steps."""

    path: Path
    descriptor: int
    device: int

    @classmethod
    def create(cls, original: Path, scanned: os.stat_result, spares: SpareInodes | None) -> _TempCopy:
        """A copy of ``original`` in a new temp file, or in one of ``spares`` where one fits."""
        prefix = f".{original.stem[:_MAX_NAME_IN_TEMP]}{TEMP_MARKER}"
        taken = None
        if spares is not None:
            taken = spares.take(original.parent, prefix, original.suffix, scanned.st_dev, scanned.st_gid)
        recycled = taken is not None
        if taken is None:
            descriptor, name = tempfile.mkstemp(prefix=prefix, suffix=original.suffix, dir=original.parent)
            taken = Path(name), descriptor
        temp = cls(*taken, scanned.st_dev)
        try:
            source = os.open(original, os.O_RDONLY)
            try:
                if not _try_reflink(source, temp.descriptor, scanned.st_dev):
                    _copy_data(source, temp.descriptor)
                if recycled:  # cut off what is left of the spare's old bytes
                    os.ftruncate(temp.descriptor, os.fstat(source).st_size)
            finally:
                os.close(source)
        except BaseException:
            temp.discard()
            raise
        return temp

    def writer(self) -> BinaryIO:
        """A file object on the copy for mutagen; closing it leaves the descriptor open."""
        os.lseek(self.descriptor, 0, os.SEEK_SET)
        return open(self.descriptor, "r+b", closefd=False)

    def close(self) -> None:
        if self.descriptor >= 0:
            os.close(self.descriptor)
            self.descriptor = -1

    def discard(self) -> None:
        """Close and delete the copy, keeping whatever error is already on its way."""
        with contextlib.suppress(OSError):
            self.close()
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


def _load_sync_file_range() -> Callable[..., int] | None:
    if sys.platform != "linux":
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writing the dirty pages, do not wait


def _start_writeback(descriptor: int) -> None:
    """Have the kernel start writing the copy's data to disk now, while the copy is verified,
    so that the fsync after the verify mostly finds it written and waits for little more than
    the journal. Not a durability step (the fsync is); a no-op where Linux' sync_file_range is
    not available, and its errors are left for the fsync to report."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(descriptor, 0, 0, _SYNC_FILE_RANGE_WRITE)


def _match_ownership_and_mode(descriptor: int, original: os.stat_result) -> None:
    os.fchmod(descriptor, stat.S_IMODE(original.st_mode))
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Only root may give a file away; as root, keep the library's owner on the new inode.
        os.fchown(descriptor, original.st_uid, original.st_gid)
    elif hasattr(os, "fchown"):
        # Anyone may give their file one of their own groups: keep the original's where allowed.
        with contextlib.suppress(PermissionError):
            os.fchown(descriptor, -1, original.st_gid)


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
        removed += _remove_stale(Path(folder), names, cutoff)
    return removed


def remove_stale_temps_in(folder: str | os.PathLike[str], *, older_than_s: float = 3600.0) -> list[Path]:
    """:func:`remove_stale_temps` for ``folder`` alone, not its subfolders."""
    return _remove_stale(Path(folder), os.listdir(folder), time.time() - older_than_s)


def _remove_stale(folder: Path, names: list[str], cutoff: float) -> list[Path]:
    removed: list[Path] = []
    for name in names:
        candidate = folder / name
        if not is_tag_write_temp(name):
            continue
        with contextlib.suppress(FileNotFoundError):
            if candidate.lstat().st_mtime < cutoff:
                candidate.unlink()
                removed.append(candidate)
    return removed


# ---- the entry points -------------------------------------------------------------------


def _raise_classified(exc: BaseException, target: Path) -> NoReturn:
    """Raise what the caller should see for ``exc``, raised while writing ``target``."""
    classified = _classify(exc, target)
    if classified is exc and isinstance(exc, Exception) and not isinstance(exc, WriteError):
        # Whatever else went wrong, the original is untouched: report it for this file.
        classified = WriteError(target, f"unexpected error while writing ({type(exc).__name__}: {exc})")
    if classified is exc:  # a WriteError already, or KeyboardInterrupt, SystemExit: not a file problem
        raise exc
    raise classified from exc


@dataclass
class PreparedWrite:
    """A verified temp copy waiting to replace its original (steps 1-5 done).

    :meth:`commit` does step 6; :meth:`discard` deletes the copy and leaves the original as it
    is. Several prepared writes can be committed one after the other: the first fsync's
    journal commit then usually carries the other copies' metadata too, so their fsyncs find
    it done instead of each waiting for one of its own. Each copy is still fsynced, and its
    original checked once more, right before its own replace.
    """

    target: Path
    temp: _TempCopy
    expected_size: int
    expected_mtime_ns: int
    durable: bool
    spares: SpareInodes | None = None
    _finished: bool = False

    def commit(self) -> WriteOutcome:
        """Fsync the copy, check the original once more and replace it; raises like
        :func:`write_file_tags`."""
        if self._finished:
            raise RuntimeError(f"{self.target}: this prepared write was already committed or discarded")
        exchanged = False
        try:
            if self.durable:
                os.fsync(self.temp.descriptor)
            # Narrow the window in which another program's edit could be overwritten.
            _stat_as_scanned(self.target, self.expected_size, self.expected_mtime_ns)
            # With spares to fill, the old original moves to the temp name instead of being freed.
            exchanged = self.spares is not None and exchange(self.temp.path, self.target, self.temp.device)
            if not exchanged:
                os.replace(self.temp.path, self.target)
            self._finished = True
            # The replaced file is the copy's inode: its stat, without looking the path up again.
            written = os.fstat(self.temp.descriptor)
            self.temp.close()
        except BaseException as exc:
            self.discard()  # keeps the original error, not a cleanup one
            if exchanged:  # the copy is in place; the old original must not stay behind
                with contextlib.suppress(OSError):
                    self.temp.path.unlink()
            _raise_classified(exc, self.target)
        if self.spares is not None and exchanged:
            self.spares.keep(self.temp.path, self.temp.device)
        return WriteOutcome(self.target, "written", written.st_size, written.st_mtime_ns)

    def discard(self) -> None:
        """Delete the copy unless it replaced the original already; safe to call twice."""
        if self._finished:
            with contextlib.suppress(OSError):
                self.temp.close()
            return
        self._finished = True
        self.temp.discard()


def prepare_file_write(
    path: str | os.PathLike[str],
    tags: TagInput,
    *,
    library_roots: Sequence[str | os.PathLike[str]],
    expected_size: int,
    expected_mtime_ns: int,
    standard_mood: bool = False,
    durable: bool = True,
    spares: SpareInodes | None = None,
) -> WriteOutcome | PreparedWrite:
    """Steps 1-5 for the file at ``path``: an "unchanged" :class:`WriteOutcome`, or a
    :class:`PreparedWrite` that the caller must commit or discard.

    ``spares``: the writer's :class:`~nomarr_pipeline.tagging.spares.SpareInodes`; the copy
    then reuses a spare where one fits, and the commit adds the replaced original to them.
    The caller must :meth:`~nomarr_pipeline.tagging.spares.SpareInodes.release` them when its
    batch ends. Raises like :func:`write_file_tags`; nothing is left behind when it raises.
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

    temp: _TempCopy | None = None
    try:
        temp = _TempCopy.create(target, scanned, spares)
        with temp.writer() as copy:
            opened.save_normalized(wanted, standard_mood=standard_mood, into=copy)
        if durable:
            _start_writeback(temp.descriptor)
        _verify_copy(temp.path, target, before, wanted, standard_mood=standard_mood)
        _match_ownership_and_mode(temp.descriptor, scanned)
    except BaseException as exc:
        if temp is not None:
            temp.discard()  # keeps the original error, not a cleanup one
        _raise_classified(exc, target)
    return PreparedWrite(target, temp, expected_size, expected_mtime_ns, durable, spares)


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
    prepared = prepare_file_write(
        path,
        tags,
        library_roots=library_roots,
        expected_size=expected_size,
        expected_mtime_ns=expected_mtime_ns,
        standard_mood=standard_mood,
        durable=durable,
    )
    return prepared.commit() if isinstance(prepared, PreparedWrite) else prepared
