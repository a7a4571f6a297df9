"""Walk a library root: folders with their change stamps, audio files with their stat.

A folder whose (mtime_ns, entry_count) equals the cached stamp is *unchanged*: its files are
not stat'ed (a rescan of an unchanged library costs one stat per folder). Adding, removing or
renaming a file changes its folder's mtime; a tag edit in place does not, so a full walk
(``full=True``) re-stats every file.

Symlinks are followed only when their target stays inside the root. Every folder is visited
once (by device and inode), so a link loop cannot recurse forever, and every file is recorded
once, by its real path: a link to a file inside the root is that file, not a second track.
Only regular files are tracks: a FIFO, socket or device with an audio name is an error, never
opened (reading a FIFO blocks until someone writes into it).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

from nomarr_pipeline.library.identity import is_audio_name


@dataclass(frozen=True)
class SeenFile:
    path: str
    size: int
    mtime_ns: int


@dataclass
class Walk:
    folders: dict[str, tuple[int, int]] = field(default_factory=dict)
    unchanged_folders: set[str] = field(default_factory=set)
    unreadable_folders: dict[str, str] = field(default_factory=dict)
    files: list[SeenFile] = field(default_factory=list)
    # Paths listed in a folder that could not be stat'ed (vanished, unreadable) -> reason.
    file_errors: dict[str, str] = field(default_factory=dict)
    recorded: set[str] = field(default_factory=set)


def within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def walk_library(root: str, cache: Mapping[str, tuple[int, int]], *, full: bool = False) -> Walk:
    """Walk ``root`` (an absolute, resolved path)."""
    walk = Walk()
    visited: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            stamp = os.stat(folder)
            if (stamp.st_dev, stamp.st_ino) in visited:
                continue
            visited.add((stamp.st_dev, stamp.st_ino))
            with os.scandir(folder) as listing:
                entries = list(listing)
        except FileNotFoundError:
            continue  # vanished since its parent was listed
        except OSError as exc:
            walk.unreadable_folders[folder] = f"unreadable folder: {exc.strerror or exc}"
            continue
        walk.folders[folder] = (stamp.st_mtime_ns, len(entries))
        unchanged = not full and cache.get(folder) == walk.folders[folder]
        if unchanged:
            walk.unchanged_folders.add(folder)
        for entry in entries:
            _visit(entry, root, unchanged, stack, walk)
    return walk


def _visit(entry: os.DirEntry[str], root: str, folder_unchanged: bool, stack: list[str], walk: Walk) -> None:
    try:
        linked = entry.is_symlink()
        path = os.path.realpath(entry.path) if linked else entry.path
        if linked and not within(path, root):
            return  # never follow a link out of the library
        if os.path.isdir(path) if linked else entry.is_dir(follow_symlinks=False):
            stack.append(path)
        elif is_audio_name(os.path.basename(path)) and not folder_unchanged:
            _record(path, os.stat(path) if linked else entry.stat(follow_symlinks=False), walk)
    except FileNotFoundError:
        walk.file_errors[entry.path] = "file vanished during the scan"
    except OSError as exc:
        walk.file_errors[entry.path] = f"cannot read file: {exc.strerror or exc}"


_SPECIAL_FILES = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket",
                  stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}  # fmt: skip


def not_regular(info: os.stat_result) -> str | None:
    """Why a path with this stat is no track, or ``None`` for a regular file."""
    if stat.S_ISREG(info.st_mode):
        return None
    return f"not a regular file but {_SPECIAL_FILES.get(stat.S_IFMT(info.st_mode), 'a special file')}"


def _record(path: str, info: os.stat_result, walk: Walk) -> None:
    if path not in walk.recorded:
        walk.recorded.add(path)
        if reason := not_regular(info):
            walk.file_errors[path] = reason
        else:
            walk.files.append(SeenFile(path, info.st_size, info.st_mtime_ns))
