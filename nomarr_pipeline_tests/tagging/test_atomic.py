"""write_file_tags: atomic replace, verification, and every per-file failure on real files."""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nomarr_pipeline.tagging import atomic, keys
from nomarr_pipeline.tagging.atomic import (
    CorruptFileError,
    DiskFullError,
    FileChangedError,
    MissingFileError,
    OutsideLibraryError,
    PermissionDeniedError,
    PreparedWrite,
    UnsupportedFileError,
    VerificationError,
    WriteError,
    WriteOutcome,
    commit_write,
    discard_write,
    prepare_write,
)
from nomarr_pipeline.tagging.formats import FileTagState, OpenedAudio
from nomarr_pipeline_tests.tagging.audio_helpers import (
    FORMATS,
    USER_MOOD,
    add_cover,
    cover_of,
    decoded_audio_hash,
    foreign_tags,
    stat_of,
    temp_leftovers,
    tiny_filesystem,
    unwritable,
)
from nomarr_pipeline_tests.tagging.tag_helpers import read_nom_tags, score_key

TAGS: dict[str, str | list[str]] = {
    keys.MOOD_REGULAR: ["happy", "party"],
    keys.VERSION: "nomarr-1",
    score_key("raw", "effnet-discogs-effnet-1", "genre_discogs400", "Electronic---House"): "0.250000",
}


def write_file_tags(
    path: Path, tags: dict[str, str | list[str]], *, library_roots: list[Path],
    known_stats: list[tuple[int, int]], replace_fields: tuple[str, ...] = (),
) -> WriteOutcome:  # fmt: skip
    """Prepare and commit, as a batch does for each file."""
    prepared = prepare_write(
        path, tags, library_roots=library_roots, known_stats=known_stats, replace_fields=replace_fields
    )
    if isinstance(prepared, PreparedWrite):
        return commit_write(prepared)
    return prepared


def write(path: Path, root: Path, tags: dict[str, str | list[str]] = TAGS, **kwargs: Any) -> WriteOutcome:
    return write_file_tags(path, tags, library_roots=[root], known_stats=[stat_of(path)], **kwargs)


@pytest.mark.parametrize("extension", list(FORMATS))
def test_written_atomically_then_unchanged(
    extension: str, make_file: Callable[..., Path], library_root: Path
) -> None:
    path = make_file(extension, f"Album/01 - track.{extension}")
    path.chmod(0o640)
    audio_before, foreign_before, inode_before = (
        decoded_audio_hash(path),
        foreign_tags(path),
        path.stat().st_ino,
    )

    outcome = write(path, library_root)

    assert outcome.status == "written"
    assert (outcome.size, outcome.mtime_ns) == stat_of(path)
    assert path.stat().st_ino != inode_before, "the original must be replaced by the verified copy"
    assert path.stat().st_mode & 0o777 == 0o640
    assert read_nom_tags(path)[keys.MOOD_REGULAR] == ["happy", "party"]
    assert foreign_tags(path) == foreign_before
    assert decoded_audio_hash(path) == audio_before
    assert temp_leftovers(library_root) == []

    stat_before_second = stat_of(path)
    again = write(path, library_root)
    assert again.status == "unchanged"
    assert stat_of(path) == stat_before_second


@pytest.mark.parametrize("extension", list(FORMATS))
def test_a_five_megabyte_cover_is_kept_byte_for_byte(
    extension: str, make_file: Callable[..., Path], library_root: Path
) -> None:
    path = make_file(extension)
    image = b"\xff\xd8\xff\xe0" + random.Random(extension).randbytes(5 * 1024 * 1024)
    add_cover(path, image)
    audio_before, foreign_before = decoded_audio_hash(path), foreign_tags(path)

    assert write(path, library_root).status == "written"

    assert cover_of(path) == image
    assert foreign_tags(path) == foreign_before  # the picture's frame, atom or block included
    assert decoded_audio_hash(path) == audio_before
    assert read_nom_tags(path)[keys.VERSION] == ["nomarr-1"]


def test_standard_mood_difference_alone_triggers_a_write(
    make_file: Callable[..., Path], library_root: Path
) -> None:
    path = make_file("mp3")
    assert write(path, library_root).status == "written"
    with_mood = {**TAGS, keys.MOOD: ["happy", "party"]}
    assert write(path, library_root, with_mood).status == "written"
    assert write(path, library_root, with_mood).status == "unchanged"
    # The user's own value was kept beside the pipeline's, which the file remembers.
    assert OpenedAudio(path).state().standard[keys.MOOD] == [USER_MOOD, "happy", "party"]
    assert read_nom_tags(path)[keys.WRITTEN_KEYS[keys.MOOD]] == ["happy", "party"]


def test_changed_on_disk_is_skipped(make_file: Callable[..., Path], library_root: Path) -> None:
    path = make_file("flac")
    size, mtime_ns = stat_of(path)
    original = path.read_bytes()
    with pytest.raises(FileChangedError, match="changed on disk") as caught:
        write_file_tags(path, TAGS, library_roots=[library_root], known_stats=[(size, mtime_ns - 1)])
    assert caught.value.found == (size, mtime_ns), "the stat found on disk, for the caller to look up"
    with pytest.raises(FileChangedError):
        write_file_tags(path, TAGS, library_roots=[library_root], known_stats=[(size + 1, mtime_ns)])
    assert path.read_bytes() == original
    # Any stat Nomarr knows for the file will do (the scan's, or one a tag writer recorded).
    known = [(size + 1, mtime_ns), (size, mtime_ns)]
    assert write_file_tags(path, TAGS, library_roots=[library_root], known_stats=known).status == "written"


def test_missing_file(library_root: Path) -> None:
    with pytest.raises(MissingFileError, match="not found"):
        write_file_tags(library_root / "gone.mp3", TAGS, library_roots=[library_root], known_stats=[(1, 1)])


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("garbage.mp3", b"this is not audio at all" * 100),
        ("garbage.flac", b"fLaC" + b"\x00" * 40),
        ("garbage.m4a", b"\x00" * 64),
    ],
)
def test_corrupt_file(name: str, content: bytes, library_root: Path) -> None:
    path = library_root / name
    path.write_bytes(content)
    with pytest.raises(CorruptFileError, match="cannot be read as audio"):
        write(path, library_root)
    assert path.read_bytes() == content
    assert temp_leftovers(library_root) == []


def test_truncated_file_is_corrupt_or_untouched(make_file: Callable[..., Path], library_root: Path) -> None:
    path = make_file("m4a")
    path.write_bytes(path.read_bytes()[:200])
    content = path.read_bytes()
    with pytest.raises(CorruptFileError):
        write(path, library_root)
    assert path.read_bytes() == content


def test_unsupported_extension(library_root: Path) -> None:
    path = library_root / "cover.jpg"
    path.write_bytes(b"\xff\xd8\xff")
    with pytest.raises(UnsupportedFileError):
        write(path, library_root)


def test_symlink_escaping_the_root_is_refused(
    make_file: Callable[..., Path], library_root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.mp3"
    shutil.copyfile(make_file("mp3"), victim)
    content = victim.read_bytes()
    (library_root / "link.mp3").symlink_to(victim)
    (library_root / "linked-folder").symlink_to(outside, target_is_directory=True)

    for path in (library_root / "link.mp3", library_root / "linked-folder" / "victim.mp3", victim):
        with pytest.raises(OutsideLibraryError, match="outside the library roots"):
            write(path, library_root)
    assert victim.read_bytes() == content


def test_symlink_inside_the_root_writes_the_target_and_stays_a_link(
    make_file: Callable[..., Path], library_root: Path
) -> None:
    target = make_file("ogg", "real/track.ogg")
    link = library_root / "link.ogg"
    link.symlink_to(target)
    outcome = write(link, library_root)
    assert outcome.status == "written"
    assert outcome.path == target
    assert link.is_symlink()
    assert keys.VERSION in read_nom_tags(target)


def test_unwritable_folder_is_permission_denied(make_file: Callable[..., Path], library_root: Path) -> None:
    path = make_file("mp3", "locked/track.mp3")
    content = path.read_bytes()
    with unwritable(path.parent), pytest.raises(PermissionDeniedError, match="permission denied"):
        write(path, library_root)
    assert path.read_bytes() == content
    assert temp_leftovers(library_root) == []


def test_unreplaceable_file_is_permission_denied_and_temp_removed(
    make_file: Callable[..., Path], library_root: Path
) -> None:
    path = make_file("flac")
    content = path.read_bytes()
    with unwritable(path):
        with pytest.raises(PermissionDeniedError):
            write(path, library_root)
        assert temp_leftovers(library_root) == []
    assert path.read_bytes() == content


def test_full_disk_raises_disk_full_and_leaves_nothing_behind(
    make_file: Callable[..., Path], tmp_path: Path
) -> None:
    source = make_file("flac")  # ~33 KB: fits once in 48 KB, not twice
    with tiny_filesystem(tmp_path / "tiny", "48k") as root:
        path = root / "track.flac"
        shutil.copyfile(source, path)
        content = path.read_bytes()
        with pytest.raises(DiskFullError, match="disk full") as caught:
            write(path, root)
        assert not isinstance(caught.value, WriteError), "a full disk must not look like a per-file error"
        assert path.read_bytes() == content
        assert temp_leftovers(root) == []
        assert sorted(os.listdir(root)) == ["track.flac"]


# ---- the temp copy ------------------------------------------------------------------------


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_descriptor_leak() -> Iterator[None]:
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to count open descriptors")
    before = open_descriptors()
    yield
    assert open_descriptors() <= before, "every descriptor a write opens is closed again"


@pytest.mark.usefixtures("no_descriptor_leak")
def test_failed_verification_keeps_the_original_and_closes_everything(
    make_file: Callable[..., Path], library_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_file("mp3")
    content = path.read_bytes()

    class ReadsBackWrong(OpenedAudio):
        def state(self) -> FileTagState:
            state = super().state()
            if ".nomarr-tmp-" not in self.path:
                return state
            return dataclasses.replace(state, nom_tags={**state.nom_tags, keys.VERSION: ["something else"]})

    monkeypatch.setattr(atomic, "OpenedAudio", ReadsBackWrong)
    with pytest.raises(VerificationError, match="did not read back"):
        write(path, library_root)
    assert path.read_bytes() == content
    assert temp_leftovers(library_root) == []


@pytest.mark.usefixtures("no_descriptor_leak")
def test_change_while_writing_is_caught_before_the_replace(
    make_file: Callable[..., Path], library_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_file("flac")

    class EditedMeanwhile(OpenedAudio):
        def state(self) -> FileTagState:
            if ".nomarr-tmp-" in self.path:  # verifying the copy: another program edits the original
                with path.open("ab") as other_program:
                    other_program.write(b"\x00")
            return super().state()

    monkeypatch.setattr(atomic, "OpenedAudio", EditedMeanwhile)
    content_before = path.read_bytes()
    with pytest.raises(FileChangedError, match="changed on disk"):
        write(path, library_root)
    assert path.read_bytes() == content_before + b"\x00", "the other program's edit is kept"
    assert temp_leftovers(library_root) == []


# ---- prepared writes, committed later --------------------------------------------------------


def prepare(path: Path, root: Path, tags: dict[str, str | list[str]] = TAGS) -> WriteOutcome | PreparedWrite:
    return prepare_write(path, tags, library_roots=[root], known_stats=[stat_of(path)])


@pytest.mark.usefixtures("no_descriptor_leak")
def test_prepared_writes_replace_their_originals_only_when_committed(
    make_file: Callable[..., Path], library_root: Path
) -> None:
    paths = [make_file(ext, f"{i}.{ext}") for i, ext in enumerate(["mp3", "flac", "m4a"])]
    contents = [path.read_bytes() for path in paths]
    prepared = [prepare(path, library_root) for path in paths]
    assert all(isinstance(item, PreparedWrite) for item in prepared)
    prepared_writes = [item for item in prepared if isinstance(item, PreparedWrite)]
    assert [path.read_bytes() for path in paths] == contents, "nothing replaced before the commit"
    assert sorted(temp_leftovers(library_root)) == sorted(item.temp for item in prepared_writes)

    outcomes = [
        commit_write(item) for item in prepared_writes
    ]

    assert [outcome.status for outcome in outcomes] == ["written"] * 3
    for path, item, outcome in zip(paths, prepared_writes, outcomes, strict=True):
        assert read_nom_tags(path)[keys.VERSION] == ["nomarr-1"]
        assert (outcome.size, outcome.mtime_ns) == (item.size, item.mtime_ns) == stat_of(path), (
            "the stat recorded before the rename is the one the file has after it"
        )
    assert temp_leftovers(library_root) == []


@pytest.mark.usefixtures("no_descriptor_leak")
def test_a_discarded_prepared_write_leaves_the_original_and_no_temp(
    make_file: Callable[..., Path], library_root: Path
) -> None:
    path = make_file("ogg")
    content = path.read_bytes()
    prepared = prepare(path, library_root)
    assert isinstance(prepared, PreparedWrite)
    discard_write(prepared)
    discard_write(prepared)
    assert path.read_bytes() == content
    assert temp_leftovers(library_root) == []


def test_an_unchanged_file_is_not_prepared(make_file: Callable[..., Path], library_root: Path) -> None:
    path = make_file("wav")
    write(path, library_root)
    outcome = prepare(path, library_root)
    assert isinstance(outcome, WriteOutcome) and outcome.status == "unchanged"
    assert temp_leftovers(library_root) == []


def test_a_file_changed_between_prepare_and_commit_is_not_replaced(
    make_file: Callable[..., Path], library_root: Path
) -> None:
    path = make_file("mp3")
    prepared = prepare(path, library_root)
    assert isinstance(prepared, PreparedWrite)
    with path.open("ab") as other_program:
        other_program.write(b"\x00")
    edited = path.read_bytes()
    with pytest.raises(FileChangedError):
        commit_write(prepared)
    assert path.read_bytes() == edited
    assert temp_leftovers(library_root) == []


def test_a_copy_is_not_renamed_over_another_writers_copy_renamed_meanwhile(
    make_file: Callable[..., Path], library_root: Path
) -> None:
    """Two batches write one file: the second read the first's recorded copy stat with its
    page, so that stat is known to it, but its own copy was made from the older file. Renamed
    over the first's, it would leave a stat the store may no longer know (the first batch's
    record clears ``written_stats``): a scan then calls the file changed."""
    path = make_file("mp3")
    first = prepare(path, library_root)
    assert isinstance(first, PreparedWrite)
    known = [stat_of(path), (first.size, first.mtime_ns)]
    second = prepare_write(path, TAGS, library_roots=[library_root], known_stats=known)
    assert isinstance(second, PreparedWrite)
    commit_write(first)
    written = path.read_bytes()
    with pytest.raises(FileChangedError):
        commit_write(second)
    assert path.read_bytes() == written
    assert temp_leftovers(library_root) == []


def test_a_temp_copy_swapped_before_the_commit_is_not_renamed(
    make_file: Callable[..., Path], library_root: Path
) -> None:
    path = make_file("flac")
    content = path.read_bytes()
    prepared = prepare(path, library_root)
    assert isinstance(prepared, PreparedWrite)
    prepared.temp.unlink()
    prepared.temp.write_bytes(b"someone else's file under the temp name")
    with pytest.raises(WriteError, match="changed by someone else"):
        commit_write(prepared)
    assert path.read_bytes() == content
    assert temp_leftovers(library_root) == []
