"""Mood tiers of ``file_tags`` documents, for tests that build predictions as documents."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from nomarr_pipeline.calibration.tiers import TierConfig, mood_tiers_of_rows


def compute_mood_tiers(
    tags: Iterable[Mapping[str, Any]], config: TierConfig | None = None
) -> dict[str, list[str]]:
    """The tiers of one file whose ``file_tags`` documents are ``tags``."""
    rows = [
        (None, tag["head_name"], tag["label"], tag.get("std"), tag.get("calibrated_value")) for tag in tags
    ]
    return mood_tiers_of_rows(rows, config)
