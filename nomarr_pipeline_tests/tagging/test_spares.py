"""Spare inodes: a replaced original becomes a later temp copy only where nothing can tell."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nomarr_pipeline.tagging import keys, spares
from nomarr_pipeline.tagging.atomic import (
    PreparedWrite,
    WriteOutcome,
    is_tag_write_temp,
    prepare_file_write,
    remove_stale_temps,
    remove_stale_temps_in,
)
from nomarr_pipeline.tagging.formats import read_nom_tags
from nomarr_pipeline.tagging.spares import SpareInodes
from nomarr_pipeline_tests.tagging.audio_helpers import (
    FORMATS,
    decoded_audio_hash,
    encode,
    foreign_tags,
    stat_of,
    temp_leftovers,
)

TAGS: dict[str, str | list[str]] = {keys.MOOD_REGULAR: ["happy"], keys.VERSION: "nomarr-1"}
MB = 1 << 20


@pytest.fixture
def pool() -> Iterator[SpareInodes]:
    if spares._RENAMEAT2 is None:
        pytest.skip("no renameat2 here: originals are replaced, never recycled")
    inodes = SpareInodes(limit=4, byte_limit=64 * MB)
    yield inodes
    inodes.release()


def prepare(path: Path, root: Path, inodes: SpareInodes) -> PreparedWrite:
    size, mtime_ns = stat_of(path)
    prepared = prepare_file_write(
        path, TAGS, library_roots=[root], expected_size=size, expected_mtime_ns=mtime_ns, spares=inodes
    )
    assert isinstance(prepared, PreparedWrite)
    return prepared


def write(path: Path, root: Path, inodes: SpareInodes) -> None:
    outcome = prepare(path, root, inodes).commit()
    assert isinstance(outcome, WriteOutcome) and outcome.status == "written"
    assert (outcome.size, outcome.mtime_ns) == stat_of(path)


def kept_inodes(inodes: SpareInodes) -> list[int]:
    return [os.fstat(spare.descriptor).st_ino for spare in inodes._spares]


@pytest.mark.parametrize("extension", list(FORMATS))
def test_a_replaced_original_is_kept_and_becomes_the_next_copy(
    extension: str, make_file: Callable[..., Path], library_root: Path, pool: SpareInodes
) -> None:
    first = make_file(extension, f"A/first.{extension}")
    second = make_file(extension, f"B/second.{extension}")
    first_inode = first.stat().st_ino
    audio_before, foreign_before = decoded_audio_hash(second), foreign_tags(second)

    write(first, library_root, pool)
    assert kept_inodes(pool) == [first_inode]
    [spare] = pool._spares
    assert is_tag_write_temp(spare.path) and spare.path.parent == first.parent
    assert spare.path.stat().st_mode & 0o777 == 0o600

    second.chmod(0o640)
    write(second, library_root, pool)

    assert second.stat().st_ino == first_inode, "the copy must be the recycled inode"
    assert second.stat().st_mode & 0o777 == 0o640
    assert read_nom_tags(second)[keys.MOOD_REGULAR] == ["happy"]
    assert decoded_audio_hash(second) == audio_before
    assert foreign_tags(second) == foreign_before
    assert temp_leftovers(library_root / "A") == []
    assert len(temp_leftovers(library_root / "B")) == 1  # second's old inode, the new spare
    pool.release()
    assert temp_leftovers(library_root) == []


def test_a_large_spare_is_cut_to_the_size_of_a_small_copy(
    library_root: Path, tmp_path: Path, pool: SpareInodes
) -> None:
    large, small = library_root / "large.flac", library_root / "small.flac"
    encode(large, "flac", seconds=8.0)
    encode(small, "flac", seconds=1.0)
    audio_before = decoded_audio_hash(small)
    write(large, library_root, pool)
    assert pool.kept_bytes > 2 * small.stat().st_size

    write(small, library_root, pool)

    assert small.stat().st_size < large.stat().st_size / 2
    assert decoded_audio_hash(small) == audio_before
    assert read_nom_tags(small)[keys.VERSION] == ["nomarr-1"]


def test_an_original_still_open_elsewhere_is_deleted_not_reused(
    make_file: Callable[..., Path], library_root: Path, pool: SpareInodes
) -> None:
    path = make_file("mp3")
    old_bytes = path.read_bytes()
    with path.open("rb") as player:  # a player in the middle of the track
        write(path, library_root, pool)
        assert len(pool) == 0
        assert player.read() == old_bytes, "a reader of the old file must keep reading it whole"
    assert temp_leftovers(library_root) == []


def test_an_original_with_another_hard_link_is_deleted_not_reused(
    make_file: Callable[..., Path], library_root: Path, pool: SpareInodes
) -> None:
    path = make_file("flac")
    other_link = library_root / "other-link.flac"
    os.link(path, other_link)
    old_bytes = path.read_bytes()

    write(path, library_root, pool)

    assert len(pool) == 0
    assert other_link.read_bytes() == old_bytes
    assert temp_leftovers(library_root) == []


def test_an_original_with_extended_attributes_is_deleted_not_reused(
    make_file: Callable[..., Path], library_root: Path, pool: SpareInodes
) -> None:
    path = make_file("ogg")
    try:
        os.setxattr(path, "user.checksum", b"belongs-to-this-track")
    except OSError as exc:
        pytest.skip(f"no user xattrs on this filesystem ({exc.strerror})")

    write(path, library_root, pool)

    assert len(pool) == 0
    assert temp_leftovers(library_root) == []


def test_spares_are_bounded_by_count_and_by_kept_bytes(
    make_file: Callable[..., Path], library_root: Path
) -> None:
    if spares._RENAMEAT2 is None:
        pytest.skip("no renameat2 here")
    paths = [make_file("flac", f"{index}.flac") for index in range(4)]
    size = paths[0].stat().st_size
    inodes = SpareInodes(limit=3, byte_limit=size + size // 2)
    try:
        # Prepared together, as in a chunk: no spare is free for any of these copies.
        for prepared in [prepare(path, library_root, inodes) for path in paths]:
            prepared.commit()

        assert len(inodes) == 3 and len(temp_leftovers(library_root)) == 3
        kept = sorted(spare.path.stat().st_size for spare in inodes._spares)
        assert kept[:2] == [0, 0] and kept[2] > 0, "only one spare's blocks fit the byte limit"
        assert inodes.kept_bytes == kept[2]
    finally:
        inodes.release()
    assert temp_leftovers(library_root) == []


def test_where_names_cannot_be_exchanged_the_original_is_replaced(
    make_file: Callable[..., Path], library_root: Path, pool: SpareInodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(source: Path, target: Path, flags: int) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")  # what vfat, NFS or an old kernel answer

    monkeypatch.setattr(spares, "_rename", refuse)
    monkeypatch.setattr(spares, "_NO_EXCHANGE_DEVICES", set())
    path = make_file("m4a")
    audio_before = decoded_audio_hash(path)

    write(path, library_root, pool)

    assert len(pool) == 0
    assert read_nom_tags(path)[keys.MOOD_REGULAR] == ["happy"]
    assert decoded_audio_hash(path) == audio_before
    assert temp_leftovers(library_root) == []
    assert {path.stat().st_dev} == spares._NO_EXCHANGE_DEVICES, "not asked again on this filesystem"


def test_a_non_root_writer_does_not_use_a_spare_of_another_group(
    make_file: Callable[..., Path], library_root: Path, pool: SpareInodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = make_file("wav", "first.wav"), make_file("wav", "second.wav")
    write(first, library_root, pool)
    [spare] = pool._spares
    monkeypatch.setattr(spares.os, "geteuid", lambda: 1000)  # take() as an ordinary user

    other_group = spare.gid + 1
    assert pool.take(library_root, ".x.nomarr-tmp-", ".wav", second.stat().st_dev, other_group) is None
    taken = pool.take(library_root, ".x.nomarr-tmp-", ".wav", second.stat().st_dev, spare.gid)
    assert taken is not None
    path, descriptor = taken
    os.close(descriptor)
    path.unlink()


def test_a_file_put_at_a_spare_name_is_neither_written_nor_deleted(
    make_file: Callable[..., Path], library_root: Path, pool: SpareInodes
) -> None:
    first, second = make_file("flac", "first.flac"), make_file("flac", "second.flac")
    write(first, library_root, pool)
    [spare] = pool._spares
    intruder = library_root / "intruder.bin"
    intruder.write_bytes(b"not the writer's file")
    os.replace(intruder, spare.path)
    audio_before = decoded_audio_hash(second)

    write(second, library_root, pool)

    assert decoded_audio_hash(second) == audio_before
    assert [path.read_bytes() for path in temp_leftovers(library_root)].count(b"not the writer's file") == 1


def test_a_spare_in_use_is_not_taken_for_a_stale_temp(
    make_file: Callable[..., Path], library_root: Path, pool: SpareInodes
) -> None:
    path = make_file("mp3")
    two_years_ago = time.time() - 2 * 365 * 86400
    os.utime(path, (two_years_ago, two_years_ago))
    write(path, library_root, pool)

    assert remove_stale_temps_in(library_root) == []
    assert len(pool) == 1 and pool._spares[0].path.exists()


def test_a_spare_left_by_a_crashed_writer_is_a_stale_temp(
    make_file: Callable[..., Path], library_root: Path, pool: SpareInodes
) -> None:
    path = make_file("opus")
    write(path, library_root, pool)
    [spare] = pool._spares
    os.close(spare.descriptor)  # the writer dies: nothing releases its spares
    pool._spares.clear()

    assert remove_stale_temps(library_root, older_than_s=-1) == [spare.path]
    assert temp_leftovers(library_root) == []
