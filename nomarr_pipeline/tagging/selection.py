"""Which ``nom:`` tags a file gets, from the library's write mode and the calibration state.

Seed 004's gating table, exactly (``cal`` = a calibration exists):

| file_write_mode | cal | write_raw_scores | mood tiers | calibrated scores | raw scores | nom:version |
|-----------------|-----|------------------|------------|-------------------|------------|-------------|
| none            | any | any              | –          | –                 | –          | –           |
| minimal         | yes | any              | ✓          | –                 | –          | –           |
| minimal         | no  | any              | –          | –                 | –          | –           |
| full            | yes | any              | ✓          | ✓ (where known)   | ✓          | ✓ if any    |
| full            | no  | True             | –          | –                 | ✓          | ✓ if any    |
| full            | no  | False            | –          | –                 | –          | –           |

Decisions where the seed is silent:

- ``nom:version`` is written in ``full`` mode whenever any other key is written, so every
  value in a file can be traced to a tagger; on its own it carries nothing, so a selection
  that would hold only the version is empty. ``minimal`` means mood tiers only (seed:
  "mood-tiers only"), so it never writes the version.
- A calibrated score is written only where the prediction has a ``calibrated_value`` (a label
  whose calibration is missing or degenerate has none — DESIGN.md §5).
- An empty mood tier is omitted; the writer then removes an older value of that tier as stale.
- Predictions flagged ``nomarr_only: False`` are not ML outputs and are never written.
- Non-finite numbers are skipped: they have no exact string form to read back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from nomarr_pipeline.tagging import keys

WriteMode = Literal["none", "minimal", "full"]
WRITE_MODES: tuple[WriteMode, ...] = ("none", "minimal", "full")

TagValue = str | list[str]
SelectedTags = dict[str, TagValue]


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def mood_tier_tags(mood_tiers: Mapping[str, Sequence[str]] | None) -> SelectedTags:
    """``{"nom:mood-strict": [...], ...}`` for the non-empty tiers, in the stored term order."""
    if not mood_tiers:
        return {}
    selected: SelectedTags = {}
    for tier_name, tag_key in keys.MOOD_TIER_KEYS.items():
        terms = [str(term) for term in (mood_tiers.get(tier_name) or []) if str(term)]
        if terms:
            selected[tag_key] = terms
    return selected


def score_tags(predictions: Sequence[Mapping[str, Any]], *, raw: bool, calibrated: bool) -> SelectedTags:
    """Per-label score keys from ``file_tags`` documents."""
    selected: SelectedTags = {}
    for doc in predictions:
        if doc.get("nomarr_only", True) is False:
            continue
        model_key, head_name, label = doc["model_key"], doc["head_name"], doc["label"]
        if raw and _is_finite_number(doc.get("value")):
            selected[keys.raw_score_key(model_key, head_name, label)] = keys.format_score(doc["value"])
        calibrated_value = doc.get("calibrated_value")
        if calibrated and _is_finite_number(calibrated_value):
            selected[keys.calibrated_score_key(model_key, head_name, label)] = keys.format_score(
                calibrated_value
            )
    return selected


def select_tags(
    *,
    mode: str,
    has_calibration: bool,
    write_raw_scores: bool,
    predictions: Sequence[Mapping[str, Any]],
    mood_tiers: Mapping[str, Sequence[str]] | None,
    tagger_version: str,
) -> SelectedTags:
    """The complete ``nom:`` tag set one file should carry (see the module's table)."""
    if mode not in WRITE_MODES:
        raise ValueError(f"file_write_mode must be one of {WRITE_MODES}, not {mode!r}")
    if mode == "none":
        return {}
    if mode == "minimal":
        return mood_tier_tags(mood_tiers) if has_calibration else {}

    selected: SelectedTags = {}
    if has_calibration:
        selected.update(mood_tier_tags(mood_tiers))
    selected.update(
        score_tags(
            predictions,
            raw=has_calibration or write_raw_scores,
            calibrated=has_calibration,
        )
    )
    if selected:
        selected[keys.VERSION] = tagger_version
    return selected
