"""Stable document keys for libraries and files.

Keys are hashes, not paths: ArangoDB restricts the characters of ``_key``, and a hash of the
same library root or relative path gives the same key on every scan, so upserts are idempotent.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

AUDIO_EXTENSIONS = frozenset(
    {".mp3", ".m4a", ".m4b", ".mp4", ".flac", ".ogg", ".oga", ".opus", ".wav", ".aif", ".aiff"}
)


def is_audio_name(name: str) -> bool:
    """Audio by extension; hidden files are never tracks (the tag writer's temporary copies,
    macOS ``._`` resource forks that carry an audio extension)."""
    if name.startswith("."):
        return False
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in AUDIO_EXTENSIONS


def library_key(root: Path) -> str:
    return hashlib.sha1(str(root).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def file_key(library_id: str, relative_path: str) -> str:
    digest = hashlib.sha1(f"{library_id}\0{relative_path}".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:24]


def displayable(path: str) -> str:
    """A path that can be stored as text even when the file system name is not UTF-8."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_valid_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
