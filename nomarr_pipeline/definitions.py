"""The Dagster code location: assets, checks, jobs, sensors, schedules and resources."""

from __future__ import annotations

import dagster as dg

from nomarr_pipeline.assets.library_files import library_files
from nomarr_pipeline.jobs import library_scan_job
from nomarr_pipeline.resources import CalibrationResource, LibraryResource, ModelsResource, StoreResource
from nomarr_pipeline.sensors import library_change_sensor

defs = dg.Definitions(
    assets=[library_files],
    jobs=[library_scan_job],
    sensors=[library_change_sensor],
    resources={
        "store": StoreResource(),
        "library": LibraryResource(),
        "models": ModelsResource(),
        "calibration": CalibrationResource(),
    },
)
