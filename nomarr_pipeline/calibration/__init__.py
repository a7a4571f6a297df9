"""Calibration domain (plain Python, no Dagster): DB histogram -> p5/p95 per (head, label),
calibration state and history, the expected ``calibration_hash``, mood tiers, exports.

Entry points for the Dagster assets:

* ``calibrate_heads(store, heads, ...)`` -> ``calibration_state`` + ``calibration_history``
* ``calibration_progress(store, heads, ...)``
* ``recalibrate(store, tier_config=..., ...)`` -> ``calibrated_tags``
* ``expected_calibration_hash(store.list_calibrations())`` -> the sensor's comparison value
* ``export_sidecars(states, dest)``, ``export_package(states, dest)``,
  ``import_package(store, path, now_ms)``
* ``histogram_png(...)``/``png_markdown(...)`` for metadata
"""

from nomarr_pipeline.calibration.exports import (
    ExportReport,
    ImportReport,
    InvalidPackageError,
    export_package,
    export_sidecars,
    import_package,
    sidecar_path,
)
from nomarr_pipeline.calibration.generation import (
    HeadCalibrationReport,
    HeadRef,
    LabelCalibration,
    calibrate_head,
    calibrate_heads,
    calibration_progress,
)
from nomarr_pipeline.calibration.hashing import expected_calibration_hash
from nomarr_pipeline.calibration.histogram import (
    DEFAULT_SPEC,
    REGRESSION_SPEC,
    HistogramSpec,
    PercentileResult,
    derive_percentiles,
    spec_for,
)
from nomarr_pipeline.calibration.recalibration import (
    RecalibrationReport,
    RecalibrationStalledError,
    recalibrate,
)
from nomarr_pipeline.calibration.state import (
    DEFAULT_DRIFT_TOLERANCE,
    calibration_def_hash,
    calibration_key,
    compute_state,
)
from nomarr_pipeline.calibration.tiers import TIER_NAMES, TierConfig, compute_mood_tiers

__all__ = [
    "DEFAULT_DRIFT_TOLERANCE",
    "DEFAULT_SPEC",
    "REGRESSION_SPEC",
    "TIER_NAMES",
    "ExportReport",
    "HeadCalibrationReport",
    "HeadRef",
    "HistogramSpec",
    "ImportReport",
    "InvalidPackageError",
    "LabelCalibration",
    "PercentileResult",
    "RecalibrationReport",
    "RecalibrationStalledError",
    "TierConfig",
    "calibrate_head",
    "calibrate_heads",
    "calibration_def_hash",
    "calibration_key",
    "calibration_progress",
    "compute_mood_tiers",
    "compute_state",
    "derive_percentiles",
    "expected_calibration_hash",
    "export_package",
    "export_sidecars",
    "import_package",
    "recalibrate",
    "sidecar_path",
    "spec_for",
]
