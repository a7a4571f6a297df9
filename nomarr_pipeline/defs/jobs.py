"""Jobs the sensors, schedules, CLI and UI launch."""

from collections.abc import Sequence

import dagster as dg

# Tags that make one run cover a range of partitions: with BackfillPolicy.single_run, one
# backbone pass per file serves every head in the range.
PARTITION_RANGE_START = "dagster/asset_partition_range_start"
PARTITION_RANGE_END = "dagster/asset_partition_range_end"

# Jobs whose steps gain nothing from a process each: every step process loads the code
# location again (seconds); only predictions fan out over the run's executor.
IN_PROCESS = dg.in_process_executor

library_scan_job = dg.define_asset_job(
    "library_scan_job",
    executor_def=IN_PROCESS,
    selection=dg.AssetSelection.assets("library_files"),
    description="Scan the library folders into library_files.",
)

predictions_job = dg.define_asset_job(
    "predictions_job",
    selection=dg.AssetSelection.assets("file_tags"),
    description="Analyse library files with a range of heads in one run (one decode and one "
    "backbone pass per file for all of them).",
)

calibration_job = dg.define_asset_job(
    "calibration_job",
    executor_def=IN_PROCESS,
    selection=dg.AssetSelection.assets(
        "calibration_state", "calibration_history", "calibration_sidecars", "calibration_package"
    ),
    description="Calibrate heads (one run over a range of heads), record history, export sidecars "
    "and the calibrations.json package.",
)

tagging_job = dg.define_asset_job(
    "tagging_job",
    executor_def=IN_PROCESS,
    selection=dg.AssetSelection.assets("calibrated_tags", "written_tags"),
    description="Recalibrate stored predictions whose calibration_hash is stale, then write tags "
    "into the audio files (explicit batch; the sensor's runs write auto_write_tags libraries only).",
)


def partition_range_tags(keys: Sequence[str]) -> dict[str, str]:
    """Tags that make one run cover the partitions from ``keys[0]`` to ``keys[-1]`` (in their order)."""
    return {PARTITION_RANGE_START: keys[0], PARTITION_RANGE_END: keys[-1]}
