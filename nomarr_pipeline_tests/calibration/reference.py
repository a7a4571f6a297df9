"""Reference calibration of one value (docs/ARCHITECTURE.md, calibration rules).

The store applies the same rule set-based in SQL/AQL (``Store.finish_claimed_recalibration``
and ``Store.tier_inputs``); this function is the specification every engine is tested against.
"""

from __future__ import annotations

import math

from nomarr_pipeline.calibration.state import usable_percentiles


def calibrate(value: float | None, p5: float | None, p95: float | None) -> float | None:
    """``clamp((value - p5) / (p95 - p5), 0, 1)``; ``None`` when there is no calibration,
    when ``p95 <= p5`` (no division by zero) or when ``value`` is not a finite number."""
    if not usable_percentiles(p5, p95) or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not (math.isfinite(value) and math.isfinite(p5) and math.isfinite(p95)):
        return None
    scaled = (value - p5) / (p95 - p5)
    return min(1.0, max(0.0, scaled))
