"""Per-format round trips of the nom: namespace on real files made by ffmpeg."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mutagen
import pytest

from nomarr_pipeline.tagging import keys
from nomarr_pipeline.tagging.formats import OpenedAudio, TagValueError, UnsupportedFormatError
from nomarr_pipeline_tests.tagging.audio_helpers import (
    FORMATS,
    USER_MOOD,
    decoded_audio_hash,
    foreign_tags,
    write_nom_tags,
)
from nomarr_pipeline_tests.tagging.tag_helpers import read_nom_tags, score_key

MODEL = "effnet-discogs-effnet-1"
TAGS: dict[str, str | list[str]] = {
    keys.MOOD_STRICT: ["happy"],
    keys.MOOD_REGULAR: ["happy", "party"],
    keys.MOOD_LOOSE: ["happy", "party", "not relaxed", "Música"],
    keys.VERSION: "nomarr-1.0 (effnet)",
    score_key("raw", MODEL, "genre_discogs400", "Electronic---House"): "0.250000",
    score_key("raw", MODEL, "genre_discogs400", "Folk, World, & Country---Fado"): "0.010000",
    score_key("cal", MODEL, "mood_happy", "happy"): "0.912346",
    score_key("raw", MODEL, "genre_discogs400", "Latin---Música Criolla"): "0.333333",
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
def test_standard_mood_keeps_the_users_values_and_replaces_only_its_own(
    extension: str, make_file: Callable[..., Path]
) -> None:
    path = make_file(extension)
    write_nom_tags(path, {**TAGS, keys.MOOD: ["happy", "party"]})
    assert OpenedAudio(path).state().standard[keys.MOOD] == [USER_MOOD, "happy", "party"]

    write_nom_tags(path, {**TAGS, keys.MOOD: ["sad", USER_MOOD]})  # the tiers changed
    assert OpenedAudio(path).state().standard[keys.MOOD] == [USER_MOOD, "sad"]
    assert read_nom_tags(path)[keys.WRITTEN_KEYS[keys.MOOD]] == ["sad"]  # the user's value is not ours

    write_nom_tags(path, {keys.VERSION: "v"})  # no tier any more: the pipeline's values leave
    assert OpenedAudio(path).state().standard == {keys.MOOD: [USER_MOOD]}
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


def test_id3v23_file_keeps_its_foreign_values_and_stays_v23(
    make_file: Callable[..., Path],
) -> None:
    path = make_file("mp3")
    audio = mutagen.File(path)
    audio.save(v2_version=3)  # as many Windows taggers leave them
    assert mutagen.File(path).tags.version[:2] == (2, 3)
    foreign_before, audio_before = foreign_tags(path), decoded_audio_hash(path)

    write_nom_tags(path, TAGS)

    reread = mutagen.File(path).tags
    assert reread.version[:2] == (2, 3)  # never converted unasked
    assert foreign_tags(path) == foreign_before
    assert read_nom_tags(path) == EXPECTED
    assert decoded_audio_hash(path) == audio_before


@pytest.mark.parametrize("extension", ["flac", "ogg", "opus"])
def test_labels_differing_only_in_case_are_separate_vorbis_fields(
    extension: str, make_file: Callable[..., Path]
) -> None:
    path = make_file(extension)
    names = keys.score_keys("cal", "musicnn-msd-musicnn-1", "msd-musicnn", ("Rock", "rock", "Hip-Hop"))
    write_nom_tags(path, {names["Rock"]: "0.100000", names["rock"]: "0.900000", names["Hip-Hop"]: "0.5"})
    tags = mutagen.File(path).tags
    # Players look a field up by name ignoring case: each label's field holds its value alone.
    assert (tags[names["Rock"]], tags[names["rock"]]) == (["0.100000"], ["0.900000"])
    assert names["Hip-Hop"].endswith(":Hip-Hop")
