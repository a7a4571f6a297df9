"""Which tags a file gets, from the library's write mode, the calibration state and the
:class:`TagOptions` (docs/ARCHITECTURE.md, tags in files).

The gating table (``cal`` = a calibration exists):

| file_write_mode | cal | write_raw_scores | tiers, MOOD, GENRE | cal scores      | raw scores | nom:version |
|-----------------|-----|------------------|--------------------|-----------------|------------|-------------|
| none            | any | any              | –                  | –               | –          | –           |
| minimal         | yes | any              | ✓                  | –               | –          | –           |
| minimal         | no  | any              | –                  | –               | –          | –           |
| full            | yes | False            | ✓                  | ✓ (where known) | –          | ✓ if any    |
| full            | yes | True             | ✓                  | ✓ (where known) | ✓          | ✓ if any    |
| full            | no  | True             | –                  | –               | ✓          | ✓ if any    |
| full            | no  | False            | –                  | –               | –          | –           |

Scores are written for the heads ``score_heads`` names (by default the mood tiers' voters) and,
of a two-class head, for its positive label only (``non_happy`` is ``1 - happy``); of a head
with more than ``max_labels`` labels, for its strongest (by calibrated value where written,
else raw). MOOD gets the terms of ``mood_tier``; GENRE (off by default) the ``count``
strongest labels of the ``genre`` head reaching ``threshold``. Empty tiers, predictions with
``nomarr_only: False`` and non-finite numbers are left out.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

from nomarr_pipeline.calibration.tiers import NEGATION, TierConfig, default_term
from nomarr_pipeline.tagging import keys

WriteMode = Literal["none", "minimal", "full"]
WRITE_MODES: tuple[WriteMode, ...] = ("none", "minimal", "full")
# Every label of the mood and two-class heads; a style model's strongest few.
DEFAULT_MAX_LABELS = 10
GENRE_FORMS = ("parent", "style", "parent-style")
STYLE_SEPARATOR = "---"  # Discogs labels: "Electronic---Techno"

SelectedTags = dict[str, str | list[str]]


@dataclass(frozen=True)
class GenreOptions:
    """GENRE from an auto-tagging head: ``head`` is a head name (``fnmatch`` pattern)."""

    head: str
    count: int = 3
    threshold: float = 0.8
    form: str = "parent-style"

    def __post_init__(self) -> None:
        if not (self.head and self.count >= 1 and 0.0 <= self.threshold <= 1.0 and self.form in GENRE_FORMS):
            raise ValueError(
                f"genre needs a head, a count >= 1, a threshold in [0, 1] and a form in {GENRE_FORMS}, "
                f"got {self!r}"
            )

    def value(self, label: str) -> str:
        """``Electronic---Techno`` as ``Electronic``, ``Techno`` or ``Electronic - Techno``."""
        parent, _, style = label.partition(STYLE_SEPARATOR)
        if not style or self.form == "parent":
            return parent
        return style if self.form == "style" else f"{parent} - {style}"


@dataclass(frozen=True)
class TagOptions:
    """What a write adds beyond the mood tiers. ``score_heads``: ``mood`` (the heads that vote in
    the tiers, per ``mood_head``), ``all``, ``none`` or comma-separated head-name patterns;
    ``replace_fields``: standard fields whose user values the pipeline may replace."""

    mood_tier: str | None = "mood-regular"
    score_heads: str = "mood"
    max_labels: int = DEFAULT_MAX_LABELS
    genre: GenreOptions | None = None
    replace_fields: frozenset[str] = frozenset()
    mood_head: Callable[[str], bool] = field(default=TierConfig().head_is_mood, repr=False)

    def __post_init__(self) -> None:
        if self.mood_tier is not None and self.mood_tier not in keys.MOOD_TIER_KEYS:
            raise ValueError(f"mood tier must be one of {tuple(keys.MOOD_TIER_KEYS)}, not {self.mood_tier!r}")
        if self.max_labels < 0:
            raise ValueError(f"max_labels must be 0 (every label) or more, not {self.max_labels}")
        if unknown := set(self.replace_fields) - set(keys.STANDARD_FIELDS):
            raise ValueError(f"only {keys.STANDARD_FIELDS} can be replaced, not {sorted(unknown)}")

    def wants_scores(self, head_name: str) -> bool:
        spec = self.score_heads.strip()
        if spec in ("all", "none"):
            return spec == "all"
        if spec == "mood":
            return self.mood_head(head_name)
        return any(fnmatchcase(head_name, pattern.strip()) for pattern in spec.split(",") if pattern.strip())


DEFAULT_OPTIONS = TagOptions()


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def mood_tier_tags(mood_tiers: Mapping[str, Sequence[str]] | None) -> SelectedTags:
    """``{"nom:mood-strict": [...], ...}`` for the non-empty tiers, in the stored term order."""
    selected: SelectedTags = {}
    for tier_name, tag_key in keys.MOOD_TIER_KEYS.items():
        terms = [str(term) for term in ((mood_tiers or {}).get(tier_name) or []) if str(term)]
        if terms:
            selected[tag_key] = terms
    return selected


def _strength(doc: Mapping[str, Any], by_calibrated: bool) -> tuple[float, float, str]:
    """Sort key, strongest first: calibrated value (labels without one after), raw value, label."""
    calibrated, raw = doc.get("calibrated_value"), doc.get("value")
    return (
        -calibrated if by_calibrated and _finite(calibrated) else 1.0,
        -raw if _finite(raw) else math.inf,
        doc["label"],
    )


def score_tags(
    predictions: Sequence[Mapping[str, Any]], *, raw: bool, calibrated: bool, options: TagOptions
) -> SelectedTags:
    """Per-label score keys from ``file_tags`` documents of the heads ``options`` wants."""
    heads: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for doc in predictions:
        if doc.get("nomarr_only", True) is not False and options.wants_scores(doc["head_name"]):
            heads[(doc["model_key"], doc["head_name"])].append(doc)
    selected: SelectedTags = {}
    max_labels = options.max_labels
    for (model_key, head_name), docs in heads.items():
        labels = tuple(sorted(doc["label"] for doc in docs))
        if len(labels) == 2:  # a two-class head: its negative label says nothing more
            docs = [doc for doc in docs if not default_term(doc["label"]).startswith(NEGATION)]
        if max_labels and len(docs) > max_labels:
            docs = sorted(docs, key=lambda doc: _strength(doc, calibrated))[:max_labels]
        for kind, wanted, value_field in (("raw", raw, "value"), ("cal", calibrated, "calibrated_value")):
            if not wanted:
                continue
            names = keys.score_keys(kind, model_key, head_name, labels)
            for doc in docs:
                if _finite(doc.get(value_field)):
                    selected[names[doc["label"]]] = keys.format_score(doc[value_field])
    return selected


def genre_values(predictions: Sequence[Mapping[str, Any]], genre: GenreOptions) -> list[str]:
    """The GENRE values: the strongest labels of the genre head over the threshold."""
    best: dict[str, float] = {}
    for doc in predictions:
        calibrated = doc.get("calibrated_value")
        if (fnmatchcase(doc["head_name"], genre.head) and doc.get("nomarr_only", True) is not False
                and _finite(calibrated) and calibrated >= genre.threshold):  # fmt: skip
            best[doc["label"]] = max(calibrated, best.get(doc["label"], calibrated))
    ranked = sorted(best, key=lambda label: (-best[label], label))[: genre.count]
    return list(dict.fromkeys(genre.value(label) for label in ranked))


def select_tags(
    *,
    mode: str,
    has_calibration: bool,
    write_raw_scores: bool,
    predictions: Sequence[Mapping[str, Any]],
    mood_tiers: Mapping[str, Sequence[str]] | None,
    tagger_version: str | None = None,
    options: TagOptions = DEFAULT_OPTIONS,
) -> SelectedTags:
    """The ``nom:`` keys one file should carry (see the module's table) and the pipeline's values
    for the standard fields (``MOOD``, ``GENRE``); ``nom:version`` is ``tagger_version``, else
    the predictions' (distinct ones joined by ``,``)."""
    if mode not in WRITE_MODES:
        raise ValueError(f"file_write_mode must be one of {WRITE_MODES}, not {mode!r}")
    if mode == "none" or not (has_calibration or (mode == "full" and write_raw_scores)):
        return {}
    selected: SelectedTags = {}
    if has_calibration:
        selected = mood_tier_tags(mood_tiers)
        if options.mood_tier and (terms := list((mood_tiers or {}).get(options.mood_tier) or [])):
            selected[keys.MOOD] = [str(term) for term in terms]
        if options.genre and (genres := genre_values(predictions, options.genre)):
            selected[keys.GENRE] = genres
    if mode != "full":
        return selected
    scores = score_tags(predictions, raw=write_raw_scores, calibrated=has_calibration, options=options)
    if scores:
        versions = sorted({str(doc["tagger_version"]) for doc in predictions if doc.get("tagger_version")})
        selected |= scores | {keys.VERSION: tagger_version or ",".join(versions) or "unknown"}
    return selected
