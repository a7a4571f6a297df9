"""The names of docs/ARCHITECTURE.md §9 (and the README's concepts table): tests, docs, sensors' run
requests and users rely on them."""

ASSETS = {
    "library_files",
    "file_tags",
    "calibration_state",
    "calibration_history",
    "calibration_sidecars",
    "calibration_package",
    "calibrated_tags",
    "written_tags",
    "navidrome_kit",
}
HEAD_PARTITIONED = {"file_tags", "calibration_state", "calibration_history", "calibration_sidecars"}
SENSORS = {"library_change_sensor", "head_discovery_sensor", "calibration_hash_sensor"}
SCHEDULES = {"nightly_calibration_schedule"}
JOBS = {
    "library_scan_job": {"library_files"},
    "predictions_job": {"file_tags"},
    "calibration_job": {
        "calibration_state",
        "calibration_history",
        "calibration_sidecars",
        "calibration_package",
    },
    "tagging_job": {"calibrated_tags", "written_tags"},
}
CHECKS = {
    ("calibration_state", "out_of_range_ratio"),
    ("calibration_state", "minimum_n"),
    ("calibration_state", "p5_below_p95"),
}
RESOURCES = {"store", "library", "models", "calibration", "tagging"}
