"""The nom: namespace: keys build, parse back exactly, and are legal in every tag format."""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

import pytest
from mutagen._vorbis import is_valid_key

from nomarr_pipeline.tagging import keys
from nomarr_pipeline_tests.tagging.tag_helpers import score_key


def parse_score_key(key: str) -> tuple[str, str, str, str]:
    """(kind, model_key, head_name, label) of a score key: the reading side of the namespace,
    strict, so that the tests prove the keys carry their parts unambiguously."""
    parts = key.split(":", 4)
    if len(parts) != 5 or parts[0] != "nom" or parts[1] not in keys.SCORE_KINDS or not all(parts[2:]):
        raise keys.TagKeyError(f"{key!r} is not a nom: score key")
    if re.search(r"%(?![0-9A-Fa-f]{2})", parts[4]):
        raise keys.TagKeyError(f"malformed escape in {key!r}")
    return parts[1], parts[2], parts[3], unquote_to_bytes(parts[4]).decode("utf-8")


LABELS = [
    "happy",
    "Electronic---House",
    "Folk, World, & Country---Fado",
    "Hip Hop---Boom Bap",
    "with: colon and = sign",
    "Latin---Música Criolla",
    "100% ~tilde~ {braces}",
    "日本語",
]


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("kind", ["raw", "cal"])
def test_score_key_round_trips_to_its_parts(kind: keys.ScoreKind, label: str) -> None:
    key = score_key(kind, "effnet-discogs-effnet-1", "mood_happy", label, LABELS)
    assert key.startswith(f"nom:{kind}:effnet-discogs-effnet-1:mood_happy:")
    assert parse_score_key(key) == (kind, "effnet-discogs-effnet-1", "mood_happy", label)


CASE_TWINS = ["Rock", "rock", "ROCK", "Hip-Hop", "hip-hop", "Ambient", "Ünïcode", "ünïcode", "ÜNÏCODE"]


def test_labels_differing_only_in_case_get_keys_that_differ_ignoring_case() -> None:
    """Vorbis comment names are case-insensitive: ``Rock`` and ``rock`` must not share a field."""
    names = keys.score_keys("cal", "musicnn-msd-musicnn-1", "msd-musicnn", tuple(CASE_TWINS))
    assert len({key.lower() for key in names.values()}) == len(CASE_TWINS)
    for label, key in names.items():
        assert parse_score_key(key)[3] == label and is_valid_key(key)
    # Labels without a twin keep their readable key, lower-case labels always do.
    assert names["Ambient"] == "nom:cal:musicnn-msd-musicnn-1:msd-musicnn:Ambient"
    assert names["rock"] == "nom:cal:musicnn-msd-musicnn-1:msd-musicnn:rock"
    assert names["Rock"] == "nom:cal:musicnn-msd-musicnn-1:msd-musicnn:%52ock"
    # One label's key needs the head's other labels to know whether it has a twin.
    assert score_key("cal", "musicnn-msd-musicnn-1", "msd-musicnn", "Rock", CASE_TWINS) == names["Rock"]


def test_labels_without_twins_keep_the_keys_they_always_had() -> None:
    labels = ("rock", "female vocalists", "Hip-Hop", "Mellow", "House", "Progressive rock", "00s")
    names = keys.score_keys("raw", "musicnn-msd-musicnn-1", "msd-musicnn", labels)
    assert names == {label: f"nom:raw:musicnn-msd-musicnn-1:msd-musicnn:{label}" for label in labels}


@pytest.mark.parametrize("label", LABELS)
def test_score_keys_are_valid_vorbis_field_names_and_latin1(label: str) -> None:
    key = score_key("raw", "effnet-discogs-effnet-1", "genre_discogs400", label)
    assert is_valid_key(key)
    key.encode("latin-1")  # MP4 freeform names are latin-1 in mutagen


def test_ordinary_labels_stay_readable() -> None:
    key = score_key("cal", "effnet-discogs-effnet-1", "genre_discogs400", "Electronic---House")
    assert key == "nom:cal:effnet-discogs-effnet-1:genre_discogs400:Electronic---House"
    assert keys.escape_label("Música") == "M%C3%BAsica"
    assert keys.escape_label("50%") == "50%25"


@pytest.mark.parametrize(
    ("model_key", "head_name", "label"),
    [("a:b", "mood_happy", "x"), ("m", "", "x"), ("m", "h", ""), ("m", "h=1", "x")],
)
def test_unplaceable_parts_are_rejected(model_key: str, head_name: str, label: str) -> None:
    with pytest.raises(keys.TagKeyError):
        score_key("raw", model_key, head_name, label)


@pytest.mark.parametrize(
    "key",
    [
        "nom:version",
        "nom:mood-strict",
        "nom:raw:m:h",
        "other:raw:m:h:l",
        "nom:raw:m:h:bad%zz",
        "nom:xyz:m:h:l",
    ],
)
def test_parse_rejects_non_score_keys(key: str) -> None:
    with pytest.raises(keys.TagKeyError):
        parse_score_key(key)


def test_namespace_match_is_case_insensitive() -> None:
    assert keys.is_nom_key("nom:version")
    assert keys.is_nom_key("NOM:VERSION")
    assert not keys.is_nom_key("nomad")
    assert not keys.is_nom_key("MOOD")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.5, "0.500000"),
        (1, "1.000000"),
        (0.1234567, "0.123457"),
        (-0.0, "0.000000"),
        (-1e-9, "0.000000"),
        (7.25, "7.250000"),
    ],
)
def test_scores_have_one_fixed_format(value: float, text: str) -> None:
    assert keys.format_score(value) == text


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_scores_have_no_format(value: float) -> None:
    with pytest.raises(keys.TagKeyError):
        keys.format_score(value)
