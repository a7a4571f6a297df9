"""Cheap change detection for the sensor: one ``stat`` per known folder, no file stats."""

from __future__ import annotations

import os
from collections.abc import Mapping


def changed_folders(cache: Mapping[str, tuple[int, int]], root: str) -> list[str]:
    """Folders whose mtime differs from the last scan, or that vanished; the root when no
    scan has happened yet. A new sub-folder or file changes its parent's mtime, so the
    known folders are enough to notice it."""
    if not cache:
        return [root]
    changed = []
    for folder, (mtime_ns, _entries) in cache.items():
        try:
            if os.stat(folder).st_mtime_ns != mtime_ns:
                changed.append(folder)
        except OSError:
            changed.append(folder)
    return changed
