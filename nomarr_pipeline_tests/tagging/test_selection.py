"""select_tags against the gating table, row by row, and the options that shape it."""

from __future__ import annotations

from typing import Any

import pytest

from nomarr_pipeline.tagging.selection import GenreOptions, TagOptions, select_tags

MODEL = "effnet-discogs-effnet-1"
TIERS = {
    "mood-strict": ["happy"],
    "mood-regular": ["happy", "party"],
    "mood-loose": ["happy", "party", "relaxed"],
}
PREDICTIONS: list[dict[str, Any]] = [
    {
        "model_key": MODEL,
        "head_name": "mood_happy",
        "label": "happy",
        "value": 0.8123456,
        "calibrated_value": 0.9,
    },
    {
        "model_key": MODEL,
        "head_name": "mood_happy",
        "label": "non_happy",
        "value": 0.1876544,
        "calibrated_value": None,
    },
    {
        "model_key": MODEL,
        "head_name": "genre_discogs400",
        "label": "Electronic---House",
        "value": 0.25,
        "calibrated_value": 0.5,
    },
]

MOODS = {
    "nom:mood-strict": ["happy"],
    "nom:mood-regular": ["happy", "party"],
    "nom:mood-loose": ["happy", "party", "relaxed"],
}
MOOD = {"MOOD": ["happy", "party"]}  # the regular tier, in the standard field
# Scores of the mood heads only, and of a two-class head its positive label only.
RAW = {f"nom:raw:{MODEL}:mood_happy:happy": "0.812346"}
CAL = {f"nom:cal:{MODEL}:mood_happy:happy": "0.900000"}
VERSION = {"nom:version": "nomarr-test-1"}

# (mode, has_calibration, write_raw_scores) -> exactly the tags expected
GATING_TABLE = [
    pytest.param("none", True, True, {}, id="none-calibrated-raw"),
    pytest.param("none", True, False, {}, id="none-calibrated"),
    pytest.param("none", False, True, {}, id="none-uncalibrated-raw"),
    pytest.param("none", False, False, {}, id="none-uncalibrated"),
    pytest.param("minimal", True, False, {**MOODS, **MOOD}, id="minimal-calibrated"),
    pytest.param("minimal", True, True, {**MOODS, **MOOD}, id="minimal-calibrated-raw"),
    pytest.param("minimal", False, True, {}, id="minimal-uncalibrated-raw"),
    pytest.param("minimal", False, False, {}, id="minimal-uncalibrated"),
    pytest.param("full", True, False, {**MOODS, **MOOD, **CAL, **VERSION}, id="full-calibrated"),
    pytest.param("full", True, True, {**MOODS, **MOOD, **CAL, **RAW, **VERSION}, id="full-calibrated-raw"),
    pytest.param("full", False, True, {**RAW, **VERSION}, id="full-uncalibrated-raw"),
    pytest.param("full", False, False, {}, id="full-uncalibrated"),
]


@pytest.mark.parametrize(("mode", "has_calibration", "write_raw_scores", "expected"), GATING_TABLE)
def test_gating_table(
    mode: str, has_calibration: bool, write_raw_scores: bool, expected: dict[str, Any]
) -> None:
    selected = select_tags(
        mode=mode,
        has_calibration=has_calibration,
        write_raw_scores=write_raw_scores,
        predictions=PREDICTIONS,
        mood_tiers=TIERS,
        tagger_version="nomarr-test-1",
    )
    assert selected == expected


def test_full_mode_without_mood_tiers_still_writes_scores() -> None:
    selected = select_tags(
        mode="full", has_calibration=True, write_raw_scores=False, predictions=PREDICTIONS,
        mood_tiers=None, tagger_version="v",
    )  # fmt: skip
    assert selected == {**CAL, "nom:version": "v"}


def test_version_alone_is_never_written() -> None:
    # Calibrated but nothing to say: no predictions, no tiers.
    assert (
        select_tags(
            mode="full",
            has_calibration=True,
            write_raw_scores=True,
            predictions=[],
            mood_tiers=None,
            tagger_version="v",
        )
        == {}
    )


def test_empty_tiers_are_omitted_and_non_ml_or_non_finite_values_skipped() -> None:
    predictions = [
        {
            "model_key": MODEL,
            "head_name": "mood_h",
            "label": "a",
            "value": float("nan"),
            "calibrated_value": 0.5,
        },
        {
            "model_key": MODEL,
            "head_name": "mood_h",
            "label": "b",
            "value": 0.5,
            "calibrated_value": None,
            "nomarr_only": False,
        },
    ]
    selected = select_tags(
        mode="full", has_calibration=True, write_raw_scores=False, predictions=predictions,
        mood_tiers={"mood-strict": [], "mood-regular": ["calm"], "mood-loose": None},  # type: ignore[dict-item]
        tagger_version="v",
    )  # fmt: skip
    assert selected == {
        "nom:mood-regular": ["calm"],
        "MOOD": ["calm"],
        f"nom:cal:{MODEL}:mood_h:a": "0.500000",
        "nom:version": "v",
    }


def test_unknown_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="file_write_mode"):
        select_tags(
            mode="max",
            has_calibration=True,
            write_raw_scores=False,
            predictions=[],
            mood_tiers=None,
            tagger_version="v",
        )


# ---- wide heads: only the strongest labels ------------------------------------------------------

WIDE = "effnet-discogs-effnet-bs64-1"


def style(label: str, value: float, calibrated: float | None) -> dict[str, Any]:
    return {"model_key": WIDE, "head_name": "discogs-effnet-bs64", "label": label, "value": value,
            "calibrated_value": calibrated}  # fmt: skip


def wide_head(count: int) -> list[dict[str, Any]]:
    """``count`` styles, raw values rising with the index, calibrated values falling."""
    return [style(f"Style {i:03d}", 0.001 * i, 1.0 - 0.002 * i) for i in range(count)]


def score_labels(selected: dict[str, Any], kind: str) -> set[str]:
    prefix = f"nom:{kind}:{WIDE}:discogs-effnet-bs64:"
    return {key.removeprefix(prefix) for key in selected if key.startswith(prefix)}


def test_a_wide_head_writes_only_its_strongest_labels_by_calibrated_value() -> None:
    selected = select_tags(
        mode="full", has_calibration=True, write_raw_scores=False, predictions=PREDICTIONS + wide_head(400),
        mood_tiers=TIERS, tagger_version="nomarr-test-1",
        options=TagOptions(score_heads="all", max_labels=10),
    )  # fmt: skip
    strongest = {f"Style {i:03d}" for i in range(10)}  # the highest calibrated values
    assert score_labels(selected, "cal") == strongest
    # Narrow heads are written whole, moods and version as ever.
    narrow = {
        **MOODS,
        **MOOD,
        **CAL,
        f"nom:cal:{MODEL}:genre_discogs400:Electronic---House": "0.500000",
        **VERSION,
    }
    assert {key: selected[key] for key in narrow} == narrow
    assert len(selected) == len(narrow) + 10


def test_without_calibration_a_wide_head_is_ranked_by_raw_value() -> None:
    selected = select_tags(
        mode="full", has_calibration=False, write_raw_scores=True, predictions=wide_head(50),
        mood_tiers=None, tagger_version="v", options=TagOptions(score_heads="discogs-*", max_labels=5),
    )  # fmt: skip
    assert score_labels(selected, "raw") == {f"Style {i:03d}" for i in range(45, 50)}
    assert score_labels(selected, "cal") == set()


def test_labels_without_a_calibrated_value_rank_after_calibrated_ones_and_ties_by_raw_then_label() -> None:
    predictions = [style("a", 0.9, None), style("b", 0.1, 1.0), style("c", 0.2, 1.0), style("d", 0.2, 1.0),
                   style("e", 0.5, 0.3)]  # fmt: skip
    selected = select_tags(
        mode="full", has_calibration=True, write_raw_scores=True, predictions=predictions,
        mood_tiers=None, tagger_version="v", options=TagOptions(score_heads="all", max_labels=4),
    )  # fmt: skip
    assert score_labels(selected, "raw") == {"c", "d", "b", "e"}
    assert score_labels(selected, "cal") == {"c", "d", "b", "e"}


def test_max_labels_zero_writes_every_label_and_a_head_at_the_limit_is_whole() -> None:
    every = select_tags(
        mode="full", has_calibration=True, write_raw_scores=False, predictions=wide_head(400),
        mood_tiers=None, tagger_version="v", options=TagOptions(score_heads="all", max_labels=0),
    )  # fmt: skip
    assert len(score_labels(every, "cal")) == 400
    at_limit = select_tags(
        mode="full", has_calibration=True, write_raw_scores=True, predictions=wide_head(12),
        mood_tiers=None, tagger_version="v", options=TagOptions(score_heads="all", max_labels=12),
    )  # fmt: skip
    assert len(score_labels(at_limit, "raw")) == 12


def test_twin_labels_of_a_head_get_distinct_keys_in_the_selection() -> None:
    predictions = [style("Rock", 0.5, 0.5), style("rock", 0.6, 0.6)]
    selected = select_tags(
        mode="full", has_calibration=True, write_raw_scores=True, predictions=predictions,
        mood_tiers=None, tagger_version="v", options=TagOptions(score_heads="all"),
    )  # fmt: skip
    assert len(selected) == 5 and len({key.lower() for key in selected}) == 5


# ---- options: which scores, which tier in MOOD, GENRE --------------------------------------------


def selected_with(options: TagOptions, predictions: list[dict[str, Any]] = PREDICTIONS) -> dict[str, Any]:
    return select_tags(mode="full", has_calibration=True, write_raw_scores=False, predictions=predictions,
                       mood_tiers=TIERS, tagger_version="v", options=options)  # fmt: skip


def test_score_heads_patterns_none_and_no_standard_mood() -> None:
    genre_only = selected_with(TagOptions(score_heads="genre_*, other", mood_tier=None))
    assert genre_only == {**MOODS, f"nom:cal:{MODEL}:genre_discogs400:Electronic---House": "0.500000",
                          "nom:version": "v"}  # fmt: skip
    assert selected_with(TagOptions(score_heads="none", mood_tier="mood-loose")) == {
        **MOODS,
        "MOOD": ["happy", "party", "relaxed"],
    }


def test_genre_is_the_strongest_labels_over_the_threshold_in_the_chosen_form() -> None:
    styles = [style("Electronic---Techno", 0.3, 0.95), style("Electronic---House", 0.2, 0.9),
              style("Rock---Punk", 0.2, 0.85), style("Jazz---Bop", 0.9, 0.5)]  # fmt: skip
    genre = GenreOptions(head="discogs-effnet-bs64", count=3, threshold=0.8)
    assert selected_with(TagOptions(genre=genre), styles)["GENRE"] == [
        "Electronic - Techno",
        "Electronic - House",
        "Rock - Punk",
    ]
    parents = GenreOptions(head="discogs-*", count=2, threshold=0.8, form="parent")
    assert selected_with(TagOptions(genre=parents), styles)["GENRE"] == ["Electronic"]  # one parent, once
    only_style = GenreOptions(head="discogs-*", count=1, threshold=0.9, form="style")
    assert selected_with(TagOptions(genre=only_style), styles)["GENRE"] == ["Techno"]
    assert "GENRE" not in selected_with(TagOptions(), styles)  # off by default


@pytest.mark.parametrize("bad", [
    {"mood_tier": "mood-medium"}, {"max_labels": -1}, {"replace_fields": frozenset({"TITLE"})},
    {"genre": {"head": "x", "form": "child"}}, {"genre": {"head": "x", "count": 0}},
    {"genre": {"head": "", "threshold": 0.5}}, {"genre": {"head": "x", "threshold": 1.5}},
])  # fmt: skip
def test_options_that_cannot_work_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must be|only|genre needs"):
        TagOptions(**{key: GenreOptions(**value) if key == "genre" else value for key, value in bad.items()})
