"""The code location carries exactly the names of DESIGN.md §9 (and the README's concepts
table): tests, docs, sensors' run requests and users rely on them."""

from __future__ import annotations

import dagster as dg

from nomarr_pipeline.definitions import defs

ASSETS = {
    "library_files",
    "file_tags",
    "calibration_state",
    "calibration_history",
    "calibration_sidecars",
    "calibration_package",
    "calibrated_tags",
    "written_tags",
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


def test_assets_and_their_partitions() -> None:
    graph = defs.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == ASSETS
    for name in ASSETS:
        partitions = graph.get(dg.AssetKey(name)).partitions_def
        if name in HEAD_PARTITIONED:
            assert isinstance(partitions, dg.DynamicPartitionsDefinition) and partitions.name == "heads", name
            assert graph.get(dg.AssetKey(name)).backfill_policy == dg.BackfillPolicy.single_run(), name
        else:
            assert partitions is None, name


def test_asset_checks() -> None:
    checks = {
        (key.asset_key.to_user_string(), key.name) for key in defs.resolve_asset_graph().asset_check_keys
    }
    assert checks == CHECKS


def test_sensors_schedule_and_jobs() -> None:
    assert {sensor.name for sensor in defs.sensors or []} == SENSORS
    assert {schedule.name for schedule in defs.schedules or []} == SCHEDULES
    assert defs.resolve_schedule_def("nightly_calibration_schedule").job_name == "calibration_job"
    jobs = {job.name: job for job in defs.resolve_all_job_defs() if not job.name.startswith("__")}
    assert set(jobs) == set(JOBS)
    for name, assets in JOBS.items():
        selected = {key.to_user_string() for key in jobs[name].asset_layer.selected_asset_keys}
        assert selected == assets, name


def test_resources() -> None:
    assert set(defs.resources or {}) == RESOURCES
