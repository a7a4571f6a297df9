"""The Dagster code location: assets, checks, jobs, sensors, schedules and resources."""

from __future__ import annotations

import dagster as dg

from nomarr_pipeline.assets.calibration import (
    calibration_history,
    calibration_package,
    calibration_sidecars,
    calibration_state,
)
from nomarr_pipeline.assets.file_tags import file_tags
from nomarr_pipeline.assets.library_files import library_files
from nomarr_pipeline.assets.tagging import calibrated_tags, navidrome_kit, written_tags
from nomarr_pipeline.executors import configured_executor
from nomarr_pipeline.jobs import calibration_job, library_scan_job, predictions_job, tagging_job
from nomarr_pipeline.resources import (
    CalibrationResource,
    LibraryResource,
    ModelsResource,
    StoreResource,
    TaggingResource,
)
from nomarr_pipeline.schedules import nightly_calibration_schedule
from nomarr_pipeline.sensors import calibration_hash_sensor, head_discovery_sensor, library_change_sensor

defs = dg.Definitions(
    assets=[
        library_files,
        file_tags,
        calibration_state,
        calibration_history,
        calibration_sidecars,
        calibration_package,
        calibrated_tags,
        written_tags,
        navidrome_kit,
    ],
    jobs=[library_scan_job, predictions_job, calibration_job, tagging_job],
    sensors=[library_change_sensor, head_discovery_sensor, calibration_hash_sensor],
    schedules=[nightly_calibration_schedule],
    # NOMARR_EXECUTOR: where steps run (multiprocess here; dask, celery or k8s elsewhere).
    executor=configured_executor(),
    resources={
        "store": StoreResource(),
        "library": LibraryResource(),
        "models": ModelsResource(),
        "calibration": CalibrationResource(),
        "tagging": TaggingResource(),
    },
)


def job_named(name: str) -> dg.JobDefinition:
    """A job of ``defs``, for ``dg.build_reconstructable_job``: runs launched from Python
    (the CLI, tests, benchmarks) rebuild it in every step process, like the UI's runs."""
    return defs.resolve_job_def(name)
