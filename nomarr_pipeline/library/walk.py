"""Walk a library root: folders with their change stamps, audio files with their stat.

A folder whose (mtime_ns, entry_count) equals the cached stamp is *unchanged*: its files are
not stat'ed (a rescan of an unchanged library costs one stat per folder). Adding, removing or
renaming a file changes its folder's mtime; a tag edit in place does not, so a full walk
(``full=True``) re-stats every file.

Symlinks are followed only when their target stays inside the root. Every folder is visited
once (by device and inode), so a link loop cannot recurse forever, and every file is recorded
once, by its real path: a link to a file inside the root is that file, not a second track.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from stat import S_ISREG

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
        if entry.is_symlink():
            target = os.path.realpath(entry.path)
            if not within(target, root):
                return  # never follow a link out of the library
            if os.path.isdir(target):
                stack.append(target)
                return
            if not is_audio_name(os.path.basename(target)) or folder_unchanged:
                return
            _record(target, os.stat(target), walk)
            return
        if entry.is_dir(follow_symlinks=False):
            stack.append(entry.path)
            return
        if not is_audio_name(entry.name) or folder_unchanged:
            return
        _record(entry.path, entry.stat(follow_symlinks=False), walk)
    except FileNotFoundError:
        walk.file_errors[entry.path] = "file vanished during the scan"
    except OSError as exc:
        walk.file_errors[entry.path] = f"cannot read file: {exc.strerror or exc}"


def _record(path: str, stat: os.stat_result, walk: Walk) -> None:
    if not S_ISREG(stat.st_mode):
        # Never opened: reading a FIFO would wait for a writer for ever.
        walk.file_errors[path] = "not a regular file (a FIFO, socket or device); it is not read"
        return
    if path not in walk.recorded:
        walk.recorded.add(path)
        walk.files.append(SeenFile(path, stat.st_size, stat.st_mtime_ns))
