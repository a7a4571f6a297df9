"""The code location carries exactly the names of docs/ARCHITECTURE.md §9, no more and no fewer."""

from __future__ import annotations

import dagster as dg

from nomarr_pipeline.definitions import defs
from nomarr_pipeline_tests.design_names import (
    ASSETS,
    CHECKS,
    HEAD_PARTITIONED,
    JOBS,
    RESOURCES,
    SCHEDULES,
    SENSORS,
)


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
