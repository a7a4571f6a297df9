"""A library as its user sees it, for the crash tests and ``scripts/kill_campaign.py``: every name
in its folders, every file's decoded audio, ``nom:`` tags and MOOD/GENRE fields, and the tags the
store says each file should carry (the writer's own selection)."""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from nomarr_pipeline.calibration.state import has_usable_calibration
from nomarr_pipeline.store import Store
from nomarr_pipeline.tagging.formats import NomTags, OpenedAudio, normalize_tags
from nomarr_pipeline.tagging.selection import select_tags
from nomarr_pipeline.tagging.standard import planned_tags
from nomarr_pipeline.tagging.temps import is_tag_write_temp
from nomarr_pipeline_tests.store_dump import library_files
from nomarr_pipeline_tests.tagging.audio_helpers import decoded_audio_hash

Tags = NomTags | str  # the tags, or why the file could not be read


def names_in(root: Path) -> list[str]:
    """Every file and folder under ``root``, hidden ones included, relative and sorted."""
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, dirs, files in os.walk(root) for name in dirs + files)  # fmt: skip


def tracks_in(root: Path) -> list[Path]:
    visible = [root / name for name in names_in(root) if "/." not in f"/{name}"]
    return [path for path in visible if path.is_file()]


@dataclass(frozen=True)
class LibrarySnapshot:
    names: list[str]
    audio: dict[str, str]  # relative path -> SHA-256 of the decoded PCM

    @classmethod
    def take(cls, root: Path) -> LibrarySnapshot:
        tracks = tracks_in(root)
        return cls(names_in(root), {str(t.relative_to(root)): decoded(t) for t in tracks})


def decoded(path: Path) -> str:
    """The hash of the decoded audio, or why ffmpeg could not decode it."""
    try:
        return decoded_audio_hash(path)
    except Exception as exc:
        return f"cannot be decoded: {exc}"


def tags_in(root: Path) -> dict[str, Tags]:
    """Each track's ``nom:`` tags and standard fields as read back with mutagen."""
    found: dict[str, Tags] = {}
    for track in tracks_in(root):
        try:
            found[str(track.relative_to(root))] = OpenedAudio(track).state().tags()
        except Exception as exc:  # a file that no longer opens is what the tests look for
            found[str(track.relative_to(root))] = f"cannot be read: {type(exc).__name__}: {exc}"
    return found


def expected_tags(store: Store, root: Path) -> dict[str, NomTags]:
    """What the tag writer, with its defaults, would make each file of ``root`` carry now."""
    real_root = root.resolve()
    (library,) = [lib for lib in store.list_libraries() if lib["root_path"] == str(real_root)]
    has_calibration = has_usable_calibration(store.list_calibrations())
    expected: dict[str, NomTags] = {}
    for page in store.iter_documents("library_files"):
        page = [doc for doc in page if doc["library_id"] == library["_key"]]
        predictions = defaultdict(list)
        for prediction in store.file_tags_for_files([doc["_key"] for doc in page]):
            predictions[prediction["file_id"]].append(prediction)
        for doc in page:
            selected = select_tags(
                mode=library.get("file_write_mode") or "full", has_calibration=has_calibration,
                write_raw_scores=bool(library.get("write_raw_scores")), predictions=predictions[doc["_key"]],
                mood_tiers=doc.get("mood_tiers"),
            )  # fmt: skip
            wanted = normalize_tags(selected)
            # The user's own MOOD/GENRE values stay beside the pipeline's; of a file that no
            # longer opens, tags_in says why.
            with contextlib.suppress(Exception):
                wanted = planned_tags(OpenedAudio(doc["path"]).state(), wanted)
            expected[os.path.relpath(doc["path"], real_root)] = wanted
    return expected


def mixed(before: dict[str, Tags], now: dict[str, Tags], expected: dict[str, NomTags]) -> list[str]:
    """Files carrying neither their tag set from before nor the complete new one."""
    return sorted(path for path, tags in now.items() if tags not in (before.get(path), expected.get(path)))


def settle_problems(store: Store, root: Path, original: LibrarySnapshot | None = None) -> list[str]:
    """Everything that is not as a complete run must leave it: files pending or with a write
    error, tags other than the expected ones, and, against ``original``, any name added or gone
    (a temp copy left behind) and any file whose decoded audio changed."""
    problems = []
    counts = store.file_counts()
    if counts["pending_writes"] or counts["write_errors"]:
        errors = [f"{doc['path']}: {doc['write_error']}" for doc in library_files(store)
                  if doc["write_error"]]  # fmt: skip
        problems.append(f"{counts['pending_writes']} pending writes, write errors: {errors[:5]}")
    expected, found = expected_tags(store, root), tags_in(root)
    wrong = [path for path, tags in expected.items() if found.get(path) != tags]
    problems += [f"{path}: tags {found.get(path)!r:.200}" for path in wrong]
    if original is not None:
        names = names_in(root)
        temps = [name for name in names if is_tag_write_temp(name)]
        if names != original.names:
            added, gone = sorted(set(names) - set(original.names)), sorted(set(original.names) - set(names))
            problems.append(f"names added: {added[:5]} ({len(temps)} temp copies), gone: {gone[:5]}")
        for path, audio in original.audio.items():
            if decoded(root / path) != audio:
                problems.append(f"{path}: decoded audio changed")
    return problems
