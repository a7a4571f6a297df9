"""Mood tiers of one file from its calibrated predictions.

``mood-strict ⊂ mood-regular ⊂ mood-loose``: each tier is the sorted terms whose calibrated
value reaches its threshold; the term chosen for a head does not depend on the tier, so the
tiers are nested. Rules, in order:

1. Heads are filtered by ``include_heads``/``exclude_heads`` (``fnmatch`` on ``head_name``);
   genre, regression and auto-tagging heads are excluded by default (no "high means present").
2. A prediction whose per-patch ``std`` exceeds ``max_std`` is dropped, if one is set.
3. Rows without a calibrated value (no calibration, or ``p95 <= p5``) are ignored.
4. The same head on several backbones is one vote: the mean of its calibrated values.
5. A two-class head (``happy``/``non_happy``) yields at most its stronger label (none on an
   exact tie); multi-label heads yield every label that passes.
6. Terms come from ``term_map`` (``"head_name:label"``, then ``"label"``), else the label in
   lower case with ``_``/``-`` as spaces and a leading ``non`` read as ``not``.
7. A term and its negation (``happy`` / ``not happy``, from different heads): the stronger
   evidence (a term's best score over its heads) stays in every tier, the other leaves them
   all; an exact tie drops both. Deciding before the thresholds keeps the tiers nested.
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
    """Thresholds on calibrated values (0..1) and which heads count as moods; the defaults'
    rationale is in docs/ARCHITECTURE.md §7."""

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
        known = self._terms.get((head_name, label))
        if known is None:
            known = self.term_map.get(f"{head_name}:{label}", self.term_map.get(label))
            if known is None:
                known = default_term(label)
            self._terms[(head_name, label)] = known
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
    Runs for every stored prediction in recalibration: plain tuples, dict lookups over calls."""
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


def mood_tiers_of_rows(rows: Iterable[TierInput], config: TierConfig | None = None) -> dict[str, list[str]]:
    """``{"mood-strict": [...], "mood-regular": [...], "mood-loose": [...]}`` of one file's rows
    as the store's ``tier_inputs`` returns them."""
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
    if label_count != 2 or len(scores) < 2:
        return list(scores.items())
    (first, first_score), (second, second_score) = scores.items()
    if first_score == second_score:
        return []
    return [(first, first_score) if first_score > second_score else (second, second_score)]


_DEFAULT_CONFIG = TierConfig()
