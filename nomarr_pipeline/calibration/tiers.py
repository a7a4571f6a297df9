"""Mood tiers of one file from its calibrated predictions.

``mood-strict ⊂ mood-regular ⊂ mood-loose``: each tier is the sorted list of readable terms
whose calibrated value reaches the tier's threshold. The tiers are nested by construction:
the term chosen for each head does not depend on the tier, and the thresholds are ordered
(``loose <= regular <= strict``).

Rules, in order:

1. Heads are filtered by ``include_heads``/``exclude_heads`` (``fnmatch`` patterns on
   ``head_name``). Genre, regression and auto-tagging heads are excluded by default:
   genres and styles are not moods, and a regression output (arousal, valence) has no
   "high means present" reading. Tiers are opt-in per head: list a head in
   ``include_heads`` (or drop its pattern from ``exclude_heads``) to let it vote.
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
7. No contradictions: a term's evidence is its strongest calibrated score over the heads
   that name it; where a term and its negation both pass ``loose`` (``mood_happy`` says
   ``not happy``, ``mtg_jamendo_moodtheme`` says ``happy``), the stronger one stays in every
   tier and the other leaves them all; an exact tie drops both. Deciding once, before the
   thresholds, keeps the tiers nested (docs/ARCHITECTURE.md, tags in files).
"""

from __future__ import annotations

import math
import re
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
    # Auto-tagging models' own heads (msd-musicnn, mtt-musicnn, discogs-effnet-bs64): style
    # and instrument tags. They are the only head names with a '-' (ml.discovery).
    "*-*",
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
    # Memo of head filters and terms; a config is immutable, so they never go stale.
    _mood_heads: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False)
    _terms: dict[tuple[str, str], str] = field(default_factory=dict, init=False, repr=False, compare=False)

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
        # Recalibration asks this 50 times per file for a handful of distinct heads.
        known = self._mood_heads.get(head_name)
        if known is None:
            known = self._match_head(head_name)
            self._mood_heads[head_name] = known
        return known

    def _match_head(self, head_name: str) -> bool:
        if self.include_heads is not None and not any(
            fnmatchcase(head_name, pattern) for pattern in self.include_heads
        ):
            return False
        return not any(fnmatchcase(head_name, pattern) for pattern in self.exclude_heads)

    def term(self, head_name: str, label: str) -> str:
        """``term_map["head_name:label"]``, else ``term_map["label"]``, else ``default_term``."""
        cache_key = (head_name, label)
        known = self._terms.get(cache_key)
        if known is None:
            known = self.term_map.get(f"{head_name}:{label}")
            if known is None:
                known = self.term_map.get(label)
            if known is None:
                known = default_term(label)
            self._terms[cache_key] = known
        return known


_SEPARATORS = re.compile(r"[\s_\-]+")
NEGATION = "not "


def default_term(label: str) -> str:
    words = _SEPARATORS.sub(" ", label.strip().lower()).strip()
    if words.startswith("non "):
        words = NEGATION + words[len("non ") :]
    return words


def _finite_number(value: Any) -> bool:
    if value.__class__ is float:  # the common case, straight from the store
        return _NEG_INF < value < _INF  # false for NaN and both infinities
    return (
        value is not None
        and not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
    )


_INF = math.inf
_NEG_INF = -math.inf

# One prediction as mood tiers read it, in the order of store.protocol.TIER_INPUT_FIELDS:
# (file_id, head_name, label, std, calibrated_value). The file id is not used here.
TierInput = tuple[Any, str, str, Any, Any]

# Per head while reading a file's tags: label -> (sum, count) of usable calibrated values,
# or None for a label seen without one (it still counts towards the head's class count).
_LabelSums = dict[str, tuple[float, int] | None]


def head_scores(rows: Iterable[TierInput], config: TierConfig) -> dict[str, tuple[int, dict[str, float]]]:
    """head_name -> (number of labels seen, label -> mean calibrated value over backbones).

    This loop runs for every stored prediction during recalibration (10 M for a large
    library), so it takes plain tuples and avoids per-row function calls where a dict
    lookup does.
    """
    mood_heads = config._mood_heads
    max_std = config.max_std
    heads: dict[str, _LabelSums] = {}
    for _, head_name, label, std, calibrated in rows:
        is_mood = mood_heads.get(head_name)
        if is_mood is None:
            is_mood = config.head_is_mood(head_name)
        if not is_mood:
            continue
        sums = heads.get(head_name)
        if sums is None:
            sums = heads[head_name] = {}
        usable = calibrated is not None and _finite_number(calibrated)
        if usable and max_std is not None:
            usable = std is None or not _finite_number(std) or std <= max_std
        previous = sums.get(label)
        if not usable:
            if label not in sums:
                sums[label] = None
        elif previous is None:
            sums[label] = (float(calibrated), 1)
        else:
            sums[label] = (previous[0] + calibrated, previous[1] + 1)
    return {
        head_name: (
            len(sums),
            {label: total[0] / total[1] for label, total in sums.items() if total is not None},
        )
        for head_name, sums in heads.items()
    }


def compute_mood_tiers(
    tags: Iterable[Mapping[str, Any]], config: TierConfig | None = None
) -> dict[str, list[str]]:
    """``{"mood-strict": [...], "mood-regular": [...], "mood-loose": [...]}`` for one file.

    ``tags`` are the file's ``file_tags`` documents (``head_name``, ``label``,
    ``calibrated_value``, ``std``; other fields are ignored).
    """
    rows = [
        (None, tag["head_name"], tag["label"], tag.get("std"), tag.get("calibrated_value")) for tag in tags
    ]
    return mood_tiers_of_rows(rows, config)


def mood_tiers_of_rows(rows: Iterable[TierInput], config: TierConfig | None = None) -> dict[str, list[str]]:
    """:func:`compute_mood_tiers` of one file's rows as the store's ``tier_inputs`` returns them."""
    config = config or _DEFAULT_CONFIG
    best: dict[str, float] = {}  # term -> its strongest evidence over the heads that name it
    for head_name, (label_count, scores) in head_scores(rows, config).items():
        for label, score in _passing_candidates(label_count, scores):
            if score >= config.loose:
                term = config.term(head_name, label)
                if score > best.get(term, -1.0):
                    best[term] = score
    _drop_contradictions(best)
    return {
        tier: sorted(term for term, score in best.items() if score >= threshold)
        for tier, threshold in config.thresholds().items()
    }


def _drop_contradictions(best: dict[str, float]) -> None:
    """Of a term and its negation (``happy`` / ``not happy``), keep the stronger; drop both on a tie."""
    for negation in [term for term in best if term.startswith(NEGATION)]:
        term = negation[len(NEGATION) :]
        if term in best:
            against, for_ = best[negation], best[term]
            if against >= for_:
                del best[term]
            if for_ >= against:
                del best[negation]


def _passing_candidates(label_count: int, scores: dict[str, float]) -> list[tuple[str, float]]:
    if label_count != 2:
        return list(scores.items())
    if not scores:
        return []
    if len(scores) == 1:
        return list(scores.items())
    (first, first_score), (second, second_score) = scores.items()
    if first_score == second_score:
        return []
    return [(first, first_score)] if first_score > second_score else [(second, second_score)]


_DEFAULT_CONFIG = TierConfig()
