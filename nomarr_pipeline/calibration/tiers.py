"""Mood tiers of one file from its calibrated predictions.

``mood-strict ⊂ mood-regular ⊂ mood-loose``: each tier is the sorted list of readable terms
whose calibrated value reaches the tier's threshold. The tiers are nested by construction:
the term chosen for each head does not depend on the tier, and the thresholds are ordered
(``loose <= regular <= strict``).

Rules, in order:

1. Heads are filtered by ``include_heads``/``exclude_heads`` (``fnmatch`` patterns on
   ``head_name``). Genre and regression heads are excluded by default: genres are not
   moods, and a regression output (arousal, valence) has no "high means present" reading.
2. Optional stability gate: a prediction whose per-patch ``std`` exceeds ``max_std`` is
   dropped (the model disagreed with itself across the track).
3. Rows without a calibrated value (no calibration, or ``p95 <= p5``) are ignored.
4. The same head on several backbones (``mood_happy`` on effnet and on musicnn) is one
   vote: the label's score is the mean of its calibrated values. Otherwise two backbones
   could tag one file both ``happy`` and ``not happy``.
5. A two-class head (exactly two labels, e.g. ``happy``/``non_happy``) yields at most one
   term: its stronger label. An exact tie yields none (the evidence is contradictory).
   Multi-label heads yield a term for every label that passes.
6. Terms come from ``term_map`` (key ``"head_name:label"`` first, then ``"label"``),
   otherwise from the label: lower case, ``_``/``-`` as spaces, a leading ``non`` read as
   ``not`` (``non_happy`` -> ``not happy``, ``not_danceable`` -> ``not danceable``).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

TIER_NAMES = ("mood-strict", "mood-regular", "mood-loose")

DEFAULT_EXCLUDED_HEADS: tuple[str, ...] = (
    "*genre*",  # genre_discogs400, genre_rosamerica, mtg_jamendo_genre, ...
    "*regression*",  # approachability_regression, engagement_regression
    "deam",  # arousal/valence regression heads
    "emomusic",
    "muse",
)


@dataclass(frozen=True)
class TierConfig:
    """Thresholds on calibrated values (0..1) and which heads count as moods.

    Why 0.65 / 0.80 / 0.92: calibration maps p5 -> 0 and p95 -> 1, and between them a
    label's values are spread roughly evenly, so for one label

        P(calibrated >= t) ~= 0.05 + 0.90 * (1 - t)

    (the 5 % above p95 are clamped to 1). That gives about

        loose 0.65 -> 36.5 %,   regular 0.80 -> 23 %,   strict 0.92 -> 12.2 %

    of the files per label. A two-class head picks one of its two labels, whose upper
    tails do not overlap (softmax: happy = 1 - non_happy), so it tags about twice that:
    ~73 % / ~46 % / ~24 % of files.
    With the usual eight or so two-class mood heads plus multi-label mood heads, a
    typical file gets a handful of loose terms, a few regular ones and one or two strict
    ones: every tier is populated, and strict stays meaningful. Skewed heads (most files
    near 0) tag fewer files at every tier, as they should.
    """

    strict: float = 0.92
    regular: float = 0.80
    loose: float = 0.65
    term_map: Mapping[str, str] = field(default_factory=dict)
    include_heads: tuple[str, ...] | None = None
    exclude_heads: tuple[str, ...] = DEFAULT_EXCLUDED_HEADS
    max_std: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.loose <= self.regular <= self.strict <= 1.0:
            raise ValueError(
                "tier thresholds need 0 <= loose <= regular <= strict <= 1, got "
                f"loose={self.loose} regular={self.regular} strict={self.strict}"
            )
        if self.max_std is not None and not self.max_std >= 0:
            raise ValueError(f"max_std must be >= 0 or None, got {self.max_std}")

    def thresholds(self) -> dict[str, float]:
        return {"mood-strict": self.strict, "mood-regular": self.regular, "mood-loose": self.loose}

    def head_is_mood(self, head_name: str) -> bool:
        if self.include_heads is not None and not any(
            fnmatchcase(head_name, pattern) for pattern in self.include_heads
        ):
            return False
        return not any(fnmatchcase(head_name, pattern) for pattern in self.exclude_heads)


_SEPARATORS = re.compile(r"[\s_\-]+")


def default_term(label: str) -> str:
    words = _SEPARATORS.sub(" ", label.strip().lower()).strip()
    if words.startswith("non "):
        words = "not " + words[len("non ") :]
    return words


def term_for(head_name: str, label: str, config: TierConfig) -> str:
    mapped = config.term_map.get(f"{head_name}:{label}")
    if mapped is None:
        mapped = config.term_map.get(label)
    return mapped if mapped is not None else default_term(label)


def _finite_number(value: Any) -> bool:
    return (
        value is not None
        and not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
    )


def head_scores(
    tags: Iterable[Mapping[str, Any]], config: TierConfig
) -> dict[str, tuple[frozenset[str], dict[str, float]]]:
    """head_name -> (all labels seen, label -> mean calibrated value over backbones)."""
    labels_seen: dict[str, set[str]] = defaultdict(set)
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for tag in tags:
        head_name = tag["head_name"]
        if not config.head_is_mood(head_name):
            continue
        labels_seen[head_name].add(tag["label"])
        calibrated = tag.get("calibrated_value")
        if not _finite_number(calibrated):
            continue
        std = tag.get("std")
        if config.max_std is not None and _finite_number(std) and std > config.max_std:
            continue
        values[head_name][tag["label"]].append(float(calibrated))
    return {
        head_name: (
            frozenset(labels_seen[head_name]),
            {label: sum(v) / len(v) for label, v in values.get(head_name, {}).items()},
        )
        for head_name in labels_seen
    }


def compute_mood_tiers(
    tags: Iterable[Mapping[str, Any]], config: TierConfig | None = None
) -> dict[str, list[str]]:
    """``{"mood-strict": [...], "mood-regular": [...], "mood-loose": [...]}`` for one file.

    ``tags`` are the file's ``file_tags`` documents (``head_name``, ``label``,
    ``calibrated_value``, ``std``; other fields are ignored).
    """
    config = config or TierConfig()
    thresholds = config.thresholds()
    tiers: dict[str, set[str]] = {name: set() for name in TIER_NAMES}
    for head_name, (labels, scores) in head_scores(tags, config).items():
        for label, score in _passing_candidates(labels, scores):
            term = term_for(head_name, label, config)
            for tier, threshold in thresholds.items():
                if score >= threshold:
                    tiers[tier].add(term)
    return {name: sorted(terms) for name, terms in tiers.items()}


def _passing_candidates(
    labels: frozenset[str], scores: dict[str, float]
) -> list[tuple[str, float]]:
    if len(labels) != 2:
        return sorted(scores.items())
    if not scores:
        return []
    ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)
    if len(ranked) == 2 and ranked[0][1] == ranked[1][1]:
        return []
    return [ranked[0]]


def empty_tiers() -> dict[str, list[str]]:
    return {name: [] for name in TIER_NAMES}
