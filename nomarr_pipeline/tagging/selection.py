"""Which ``nom:`` tags a file gets, from the library's write mode and the calibration state.

Seed 004's gating table (``cal`` = a calibration exists):

| file_write_mode | cal | write_raw_scores | mood tiers | calibrated scores | raw scores | nom:version |
|-----------------|-----|------------------|------------|-------------------|------------|-------------|
| none            | any | any              | –          | –                 | –          | –           |
| minimal         | yes | any              | ✓          | –                 | –          | –           |
| minimal         | no  | any              | –          | –                 | –          | –           |
| full            | yes | any              | ✓          | ✓ (where known)   | ✓          | ✓ if any    |
| full            | no  | True             | –          | –                 | ✓          | ✓ if any    |
| full            | no  | False            | –          | –                 | –          | –           |

Where the seed is silent: ``nom:version`` only beside other keys (never in ``minimal``); a
calibrated score only where the prediction has a ``calibrated_value``; empty tiers, predictions
flagged ``nomarr_only: False`` and non-finite numbers are left out. A head with more than
``max_labels`` labels (an auto-tagging model's hundreds of styles) gets the scores of its
``max_labels`` strongest labels only: by calibrated value where the scores written include it,
else by raw value; the keys of labels that drop out are then removed from the file as stale.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from nomarr_pipeline.tagging import keys

WriteMode = Literal["none", "minimal", "full"]
WRITE_MODES: tuple[WriteMode, ...] = ("none", "minimal", "full")
# Every label of the mood and two-class heads; a style model's strongest few.
DEFAULT_MAX_LABELS = 10

SelectedTags = dict[str, str | list[str]]


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
    predictions: Sequence[Mapping[str, Any]], *, raw: bool, calibrated: bool, max_labels: int = 0
) -> SelectedTags:
    """Per-label score keys from ``file_tags`` documents; ``max_labels`` (0: all) per head."""
    heads: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for doc in predictions:
        if doc.get("nomarr_only", True) is not False:
            heads[(doc["model_key"], doc["head_name"])].append(doc)
    selected: SelectedTags = {}
    for (model_key, head_name), docs in heads.items():
        labels = tuple(sorted(doc["label"] for doc in docs))
        if max_labels and len(docs) > max_labels:
            docs = sorted(docs, key=lambda doc: _strength(doc, calibrated))[:max_labels]
        for kind, wanted, field in (("raw", raw, "value"), ("cal", calibrated, "calibrated_value")):
            if not wanted:
                continue
            names = keys.score_keys(kind, model_key, head_name, labels)
            for doc in docs:
                if _finite(doc.get(field)):
                    selected[names[doc["label"]]] = keys.format_score(doc[field])
    return selected


def select_tags(
    *,
    mode: str,
    has_calibration: bool,
    write_raw_scores: bool,
    predictions: Sequence[Mapping[str, Any]],
    mood_tiers: Mapping[str, Sequence[str]] | None,
    tagger_version: str | None = None,
    max_labels: int = DEFAULT_MAX_LABELS,
) -> SelectedTags:
    """The complete ``nom:`` tag set one file should carry (see the module's table);
    ``nom:version`` is ``tagger_version``, else the predictions' (distinct ones joined by ``,``)."""
    if mode not in WRITE_MODES:
        raise ValueError(f"file_write_mode must be one of {WRITE_MODES}, not {mode!r}")
    selected = mood_tier_tags(mood_tiers) if has_calibration and mode != "none" else {}
    if mode != "full" or not (has_calibration or write_raw_scores):
        return selected
    selected |= score_tags(predictions, raw=True, calibrated=has_calibration, max_labels=max_labels)
    if selected:
        versions = sorted({str(doc["tagger_version"]) for doc in predictions if doc.get("tagger_version")})
        selected[keys.VERSION] = tagger_version or ",".join(versions) or "unknown"
    return selected
