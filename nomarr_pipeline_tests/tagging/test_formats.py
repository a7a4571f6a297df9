"""Per-format round trips of the nom: namespace on real files made by ffmpeg."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mutagen
import pytest
from mutagen.id3 import TXXX, Frame
from mutagen.id3._tags import ID3Header  # the class mutagen hands to a frame reader

from nomarr_pipeline.tagging import keys
from nomarr_pipeline.tagging.formats import (
    TagValueError,
    UnsupportedFormatError,
    _QuickTXXX,
    read_file_state,
    read_nom_tags,
    read_written_state,
    write_nom_tags,
)
from nomarr_pipeline_tests.tagging.audio_helpers import (
    FORMATS,
    USER_MOOD,
    decoded_audio_hash,
    foreign_tags,
)

MODEL = "effnet-discogs-effnet-1"
TAGS: dict[str, str | list[str]] = {
    keys.MOOD_STRICT: ["happy"],
    keys.MOOD_REGULAR: ["happy", "party"],
    keys.MOOD_LOOSE: ["happy", "party", "not relaxed", "Música"],
    keys.VERSION: "nomarr-1.0 (effnet)",
    keys.raw_score_key(MODEL, "genre_discogs400", "Electronic---House"): "0.250000",
    keys.raw_score_key(MODEL, "genre_discogs400", "Folk, World, & Country---Fado"): "0.010000",
    keys.calibrated_score_key(MODEL, "mood_happy", "happy"): "0.912346",
    keys.raw_score_key(MODEL, "genre_discogs400", "Latin---Música Criolla"): "0.333333",
}
EXPECTED = {key: [value] if isinstance(value, str) else value for key, value in TAGS.items()}

ALL_FORMATS = list(FORMATS)


@pytest.mark.parametrize("extension", ALL_FORMATS)
def test_round_trip_keeps_audio_and_foreign_tags(extension: str, make_file: Callable[..., Path]) -> None:
    path = make_file(extension)
    audio_before, foreign_before = decoded_audio_hash(path), foreign_tags(path)
    assert foreign_before, "fixture should carry foreign tags"

    write_nom_tags(path, TAGS)

    assert read_nom_tags(path) == EXPECTED
    assert foreign_tags(path) == foreign_before
    assert decoded_audio_hash(path) == audio_before


@pytest.mark.parametrize("extension", ALL_FORMATS)
def test_stale_nom_keys_are_removed_and_others_replaced(
    extension: str, make_file: Callable[..., Path]
) -> None:
    path = make_file(extension)
    write_nom_tags(path, TAGS)
    foreign_before = foreign_tags(path)
    smaller = {keys.MOOD_STRICT: ["sad"], keys.VERSION: "nomarr-2"}

    write_nom_tags(path, smaller)

    assert read_nom_tags(path) == {keys.MOOD_STRICT: ["sad"], keys.VERSION: ["nomarr-2"]}
    assert foreign_tags(path) == foreign_before


@pytest.mark.parametrize("extension", ALL_FORMATS)
def test_standard_mood_field_only_when_asked(extension: str, make_file: Callable[..., Path]) -> None:
    path = make_file(extension)
    write_nom_tags(path, TAGS)  # off by default: the user's mood stays
    assert read_file_state(path).standard_mood == [USER_MOOD]

    write_nom_tags(path, TAGS, standard_mood=True)
    assert read_file_state(path).standard_mood == ["happy", "party"]

    # On, but no regular tier to mirror: the field is left as it is.
    write_nom_tags(path, {keys.VERSION: "v"}, standard_mood=True)
    assert read_file_state(path).standard_mood == ["happy", "party"]
    assert read_nom_tags(path) == {keys.VERSION: ["v"]}


@pytest.mark.parametrize("extension", ["flac", "ogg", "opus"])
def test_vorbis_keys_match_case_insensitively(extension: str, make_file: Callable[..., Path]) -> None:
    path = make_file(extension)
    audio = mutagen.File(path)
    audio.tags["NOM:MOOD-STRICT"] = ["old, written by another tool"]
    audio.tags["Nom:Stale-Key"] = ["gone"]
    audio.save()

    write_nom_tags(path, {keys.MOOD_STRICT: ["happy"]})

    assert read_nom_tags(path) == {keys.MOOD_STRICT: ["happy"]}


def test_file_without_any_tags_gets_a_tag(make_file: Callable[..., Path]) -> None:
    path = make_file("flac")
    audio = mutagen.File(path)
    audio.delete()
    write_nom_tags(path, {keys.VERSION: "v"})
    assert read_nom_tags(path) == {keys.VERSION: ["v"]}


def test_unsupported_extension_and_bad_values_are_refused(
    tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    with pytest.raises(UnsupportedFormatError):
        read_nom_tags(tmp_path / "notes.txt")
    path = make_file("mp3")
    for bad in ({"title": "x"}, {keys.VERSION: ""}, {keys.VERSION: "a\x00b"}):
        with pytest.raises(TagValueError):
            write_nom_tags(path, bad)


def test_id3v23_file_keeps_its_foreign_values_and_is_saved_as_v24(
    make_file: Callable[..., Path],
) -> None:
    path = make_file("mp3")
    audio = mutagen.File(path)
    audio.save(v2_version=3)  # as many Windows taggers leave them
    assert mutagen.File(path).tags.version[:2] == (2, 3)
    foreign_before, audio_before = foreign_tags(path), decoded_audio_hash(path)

    write_nom_tags(path, TAGS)

    reread = mutagen.File(path).tags
    assert reread.version[:2] == (2, 4)
    assert foreign_tags(path) == foreign_before
    assert read_nom_tags(path) == EXPECTED
    assert decoded_audio_hash(path) == audio_before


# ---- the verifying re-read ---------------------------------------------------------------


@pytest.mark.parametrize("extension", ALL_FORMATS)
def test_written_state_reads_what_the_full_reader_reads(
    extension: str, make_file: Callable[..., Path]
) -> None:
    path = make_file(extension)
    write_nom_tags(path, TAGS, standard_mood=True)
    assert read_written_state(path, format_of=path) == read_file_state(path)
    assert read_written_state(path, format_of=path).nom_tags == EXPECTED


V24, V23 = (2, 4, 0), (2, 3, 0)
TAG_UNSYNCH = 0x80  # ID3v2 header flag: the whole tag is unsynchronised


@pytest.mark.parametrize(
    ("version", "tag_flags", "frame_flags", "body"),
    [
        (V24, 0, 0, b"\x03nom:version\x00v1"),  # last value without terminator
        (V24, 0, 0, b"\x03nom:version\x00v1\x00"),  # ... and with one
        (V24, 0, 0, b"\x03nom:mood-loose\x00happy\x00party\x00M\xc3\xbasica\x00"),
        (V24, 0, 0, b"\x03nom:mood-loose\x00happy\x00\x00party"),  # an empty value in between
        (V24, 0, 0, b"\x03nom:version\x00\x00"),  # one empty value
        (V24, 0, 0, b"\x03nom:version\x00"),  # no value
        (V24, 0, 0, b"\x03nom:version"),  # no terminator after the description
        (V24, 0, 0, b"\x03\x00v"),  # empty description
        (V24, 0, 0, b"\x03"),  # nothing but the encoding
        (V24, 0, 0, b"\x03nom:version\x00caf\xe9"),  # not UTF-8: mutagen's fix-ups decide
        (V24, 0, 0, b"\x00nom:version\x00caf\xe9"),  # latin-1
        (V24, 0, 0, b"\x01\xff\xfen\x00o\x00m\x00\x00\x00v\x00\x00\x00"),  # UTF-16
        (V24, 0, 0, b"\x07nom:version\x00v"),  # no such encoding: a junk frame
        (V24, 0, Frame.FLAG24_UNSYNCH, b"\x03nom:version\x00v\xff\x00\x00"),
        (V24, 0, Frame.FLAG24_ALTERTAG, b"\x03nom:version\x00v"),
        (V24, TAG_UNSYNCH, 0, b"\x03nom:version\x00v\xff\x00\x00"),
        (V23, 0, 0, b"\x03nom:version\x00v1\x00\x00\x00"),  # v2.3 takes trailing NULs for padding
    ],
)
def test_quick_txxx_builds_the_frame_mutagen_builds(
    version: tuple[int, int, int], tag_flags: int, frame_flags: int, body: bytes
) -> None:
    header = ID3Header()
    header.version, header._flags = version, tag_flags

    def build(reader: type[TXXX]) -> tuple[str, dict[str, object]] | str:
        try:
            frame = reader._fromData(header, frame_flags, body)
        except Exception as exc:  # the same junk-frame error from both, or neither
            return type(exc).__name__
        return type(frame).__name__, dict(vars(frame))

    assert build(_QuickTXXX) == build(TXXX)
