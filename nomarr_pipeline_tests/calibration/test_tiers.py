from __future__ import annotations

import numpy as np
import pytest

from nomarr_pipeline.calibration.tiers import (
    TIER_NAMES,
    TierConfig,
    default_term,
)
from nomarr_pipeline_tests.calibration.tier_docs import compute_mood_tiers

EFFNET = "effnet-discogs-effnet-1"
MUSICNN = "musicnn-msd-musicnn-1"
EMPTY_TIERS = {name: [] for name in TIER_NAMES}


def tag(head: str, label: str, calibrated: float | None, *, model: str = EFFNET, std=0.0):
    return {
        "model_key": model,
        "head_name": head,
        "label": label,
        "value": 0.5,
        "std": std,
        "calibrated_value": calibrated,
    }


def test_two_class_head_yields_its_stronger_label_per_tier() -> None:
    tiers = compute_mood_tiers([tag("mood_happy", "happy", 0.95), tag("mood_happy", "non_happy", 0.1)])
    assert tiers == {"mood-strict": ["happy"], "mood-regular": ["happy"], "mood-loose": ["happy"]}


def test_negative_labels_read_as_not() -> None:
    tiers = compute_mood_tiers(
        [
            tag("mood_happy", "happy", 0.0),
            tag("mood_happy", "non_happy", 0.85),
            tag("danceability", "danceable", 0.1),
            tag("danceability", "not_danceable", 0.7),
        ]
    )
    assert tiers == {
        "mood-strict": [],
        "mood-regular": ["not happy"],
        "mood-loose": ["not danceable", "not happy"],
    }


def test_default_terms() -> None:
    assert default_term("non_happy") == "not happy"
    assert default_term("not_danceable") == "not danceable"
    assert default_term("Happy") == "happy"
    assert default_term("hip-hop") == "hip hop"
    assert default_term("nonsense") == "nonsense"


def test_tie_on_two_class_head_yields_nothing() -> None:
    tiers = compute_mood_tiers([tag("mood_sad", "sad", 1.0), tag("mood_sad", "non_sad", 1.0)])
    assert tiers == EMPTY_TIERS


def test_multi_label_heads_yield_every_passing_label() -> None:
    tags = [
        tag("mtg_jamendo_moodtheme", "energetic", 0.93),
        tag("mtg_jamendo_moodtheme", "dark", 0.81),
        tag("mtg_jamendo_moodtheme", "calm", 0.66),
        tag("mtg_jamendo_moodtheme", "film", 0.2),
    ]
    assert compute_mood_tiers(tags) == {
        "mood-strict": ["energetic"],
        "mood-regular": ["dark", "energetic"],
        "mood-loose": ["calm", "dark", "energetic"],
    }


def test_genre_and_regression_heads_are_excluded_by_default() -> None:
    tags = [
        tag("genre_discogs400", "Rock---Punk", 1.0),
        tag("mtg_jamendo_genre", "rock", 1.0),
        tag("deam", "valence", 1.0),
        tag("deam", "arousal", 1.0),
        tag("approachability_regression", "approachability", 1.0),
    ]
    assert compute_mood_tiers(tags) == EMPTY_TIERS
    opened = TierConfig(exclude_heads=())
    assert compute_mood_tiers(tags, opened)["mood-strict"] == ["approachability", "rock", "rock punk"]


def test_auto_tagging_heads_are_excluded_by_default() -> None:
    """msd-musicnn tags include moods ("happy", "sad"), but style tags vote only when asked."""
    tags = [tag("msd-musicnn", "happy", 1.0), tag("msd-musicnn", "sad", 0.9), tag("msd-musicnn", "rock", 0.1),
            tag("discogs-effnet-bs64", "Electronic---House", 1.0)]  # fmt: skip
    assert compute_mood_tiers(tags) == EMPTY_TIERS
    opted_in = TierConfig(include_heads=("msd-musicnn",), exclude_heads=())
    assert compute_mood_tiers(tags, opted_in)["mood-loose"] == ["happy", "sad"]


def test_include_and_exclude_patterns() -> None:
    tags = [tag("mood_happy", "happy", 1.0), tag("mood_happy", "non_happy", 0.0),
            tag("danceability", "danceable", 1.0), tag("danceability", "not_danceable", 0.0)]  # fmt: skip
    only_moods = TierConfig(include_heads=("mood_*",))
    assert compute_mood_tiers(tags, only_moods)["mood-loose"] == ["happy"]
    no_dance = TierConfig(exclude_heads=("danceability",))
    assert compute_mood_tiers(tags, no_dance)["mood-loose"] == ["happy"]


def test_term_map_by_head_label_then_label() -> None:
    config = TierConfig(term_map={"mood_happy:happy": "joyful", "energetic": "high energy"})
    tags = [tag("mood_happy", "happy", 1.0), tag("mood_happy", "non_happy", 0.0),
            tag("mtg_jamendo_moodtheme", "energetic", 1.0)]  # fmt: skip
    assert compute_mood_tiers(tags, config)["mood-strict"] == ["high energy", "joyful"]


def test_backbones_vote_together_so_terms_never_contradict() -> None:
    tags = [
        tag("mood_happy", "happy", 0.9, model=EFFNET),
        tag("mood_happy", "non_happy", 0.1, model=EFFNET),
        tag("mood_happy", "happy", 0.2, model=MUSICNN),
        tag("mood_happy", "non_happy", 0.7, model=MUSICNN),
    ]
    # happy = mean(0.9, 0.2) = 0.55, non_happy = mean(0.1, 0.7) = 0.4 -> happy, below loose.
    assert compute_mood_tiers(tags) == EMPTY_TIERS
    tags[2]["calibrated_value"] = 0.8  # happy = 0.85
    assert compute_mood_tiers(tags)["mood-regular"] == ["happy"]


@pytest.mark.parametrize(
    ("non_happy", "theme_happy", "loose", "regular"),
    [
        (0.90, 0.95, ["happy"], ["happy"]),  # the theme head is surer
        (0.97, 0.70, ["not happy"], ["not happy"]),  # mood_happy is surer, even below regular
        (0.90, 0.90, [], []),  # a tie: the evidence contradicts itself
        (0.60, 0.70, ["happy"], []),  # "not happy" never reached loose: no contradiction
    ],
)
def test_a_term_and_its_negation_from_two_heads_leave_the_stronger(
    non_happy: float, theme_happy: float, loose: list[str], regular: list[str]
) -> None:
    tags = [tag("mood_happy", "happy", 1 - non_happy), tag("mood_happy", "non_happy", non_happy),
            tag("mtg_jamendo_moodtheme", "happy", theme_happy)]  # fmt: skip
    tiers = compute_mood_tiers(tags)
    assert (tiers["mood-loose"], tiers["mood-regular"]) == (loose, regular)


def test_uncalibrated_rows_are_ignored() -> None:
    tags = [tag("mood_happy", "happy", None), tag("mood_happy", "non_happy", 0.7)]
    assert compute_mood_tiers(tags)["mood-loose"] == ["not happy"]
    assert compute_mood_tiers([tag("mood_happy", "happy", float("nan"))]) == EMPTY_TIERS
    assert compute_mood_tiers([]) == EMPTY_TIERS


def test_stability_gate_drops_unstable_predictions() -> None:
    tags = [tag("mood_happy", "happy", 0.95, std=0.4), tag("mood_happy", "non_happy", 0.05)]
    assert compute_mood_tiers(tags)["mood-strict"] == ["happy"]
    gated = compute_mood_tiers(tags, TierConfig(max_std=0.2))
    assert gated == EMPTY_TIERS  # non_happy at 0.05 passes no tier
    tags[0]["std"] = None  # unknown std is not evidence of instability
    assert compute_mood_tiers(tags, TierConfig(max_std=0.2))["mood-strict"] == ["happy"]


@pytest.mark.parametrize(
    "kwargs",
    [{"loose": 0.9, "regular": 0.8}, {"strict": 1.1}, {"loose": -0.1}, {"max_std": -1.0}],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        TierConfig(**kwargs)


HEADS = {
    "mood_happy": ["happy", "non_happy"],
    "mood_sad": ["non_sad", "sad"],
    "danceability": ["danceable", "not_danceable"],
    "mtg_jamendo_moodtheme": ["calm", "dark", "energetic", "happy", "sad"],
    "genre_rosamerica": ["cla", "dan", "hip"],
}


@pytest.mark.parametrize("seed", range(25))
def test_tiers_are_nested_on_random_files(seed: int) -> None:
    rng = np.random.default_rng(seed)
    thresholds = np.sort(rng.uniform(0, 1, 3))
    config = TierConfig(
        loose=float(thresholds[0]),
        regular=float(thresholds[1]),
        strict=float(thresholds[2]),
        max_std=float(rng.uniform(0, 0.5)) if seed % 2 else None,
        term_map={"sad": "happy"} if seed % 3 == 0 else {},  # collisions must not break nesting
    )
    for _ in range(40):
        tags = []
        for head, labels in HEADS.items():
            for model in (EFFNET, MUSICNN)[: rng.integers(1, 3)]:
                for label in labels:
                    value = rng.choice([None, 0.0, 1.0, float(rng.uniform())], p=[0.1, 0.1, 0.1, 0.7])
                    tags.append(tag(head, label, value, model=model, std=float(rng.uniform(0, 0.5))))
        tiers = compute_mood_tiers(tags, config)
        assert list(tiers) == list(TIER_NAMES)
        strict, regular, loose = (set(tiers[name]) for name in TIER_NAMES)
        assert strict <= regular <= loose
        for terms in tiers.values():
            assert terms == sorted(set(terms))
            assert not {term for term in terms if f"not {term}" in terms}  # never both


def test_default_thresholds_give_the_documented_shares() -> None:
    """Raw softmax outputs happy = 1 - non_happy; calibrate each by its own p5/p95."""
    rng = np.random.default_rng(7)
    happy_raw = rng.beta(2, 2, 20_000)
    non_happy_raw = 1.0 - happy_raw

    def calibrate_all(raw: np.ndarray) -> np.ndarray:
        p5, p95 = np.percentile(raw, [5, 95], method="inverted_cdf")
        return np.clip((raw - p5) / (p95 - p5), 0, 1)

    happy, non_happy = calibrate_all(happy_raw), calibrate_all(non_happy_raw)
    shares = {name: 0 for name in TIER_NAMES}
    for h, nh in zip(happy[:4000], non_happy[:4000], strict=True):
        tiers = compute_mood_tiers([tag("mood_happy", "happy", h), tag("mood_happy", "non_happy", nh)])
        for name in TIER_NAMES:
            shares[name] += bool(tiers[name])
    # Per head about twice the per-label rate 0.05 + 0.9 * (1 - t); beta(2, 2) is not flat,
    # so allow a wide margin: the point is that every tier is populated and ordered.
    assert 0.55 < shares["mood-loose"] / 4000 < 0.85
    assert 0.30 < shares["mood-regular"] / 4000 < 0.60
    assert 0.12 < shares["mood-strict"] / 4000 < 0.35
