from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from nomarr_pipeline.defs.assets.library_files import library_files
from nomarr_pipeline.defs.jobs import library_scan_job
from nomarr_pipeline.defs.resources import LibraryResource, StoreResource
from nomarr_pipeline.defs.sensors import library_change_sensor
from nomarr_pipeline_tests.library.conftest import write_wav


def _library(tmp_path: Path) -> Path:
    root = tmp_path / "music"
    write_wav(root / "a.wav")
    write_wav(root / "Album" / "b.wav")
    (root / "Album" / "broken.mp3").write_bytes(b"")
    return root


def _resources(tmp_path: Path, root: Path) -> dict[str, object]:
    return {
        "store": StoreResource(url=f"sqlite:///{tmp_path / 'store.sqlite3'}"),
        "library": LibraryResource(roots=[str(root)]),
    }


def test_materialize_library_files_reports_counts(tmp_path: Path) -> None:
    root = _library(tmp_path)
    result = dg.materialize([library_files], resources=_resources(tmp_path, root))
    assert result.success
    (event,) = result.get_asset_materialization_events()
    meta = event.materialization.metadata
    assert (meta["total"].value, meta["new"].value, meta["errors"].value) == (3, 3, 1)
    assert meta["store"].value.startswith("sqlite:///")

    os.remove(root / "a.wav")
    again = dg.materialize([library_files], resources=_resources(tmp_path, root))
    meta = again.get_asset_materialization_events()[0].materialization.metadata
    assert (meta["total"].value, meta["removed"].value, meta["new"].value) == (2, 1, 0)


def test_no_library_roots_is_a_clear_failure(tmp_path: Path) -> None:
    result = dg.materialize(
        [library_files],
        resources={
            "store": StoreResource(url=f"sqlite:///{tmp_path / 's.db'}"),
            "library": LibraryResource(),
        },
        raise_on_error=False,
    )
    assert not result.success
    assert "NOMARR_LIBRARY_ROOTS" in str(result.all_events)


def _tick(
    instance: dg.DagsterInstance, resources: dict[str, object], cursor: str | None = None
) -> tuple[dg.SensorResult | dg.SkipReason, str | None]:
    """One tick as the daemon runs it (resources set up and torn down around it): the result
    and the cursor it leaves."""
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
        return library_change_sensor(context), context.cursor


def test_library_change_sensor_requests_a_scan_only_on_change(tmp_path: Path) -> None:
    root = _library(tmp_path)
    resources = _resources(tmp_path, root)
    with dg.instance_for_test() as instance:
        first, _ = _tick(instance, resources)
        assert isinstance(first, dg.SensorResult) and len(first.run_requests) == 1  # never scanned

        assert dg.materialize([library_files], resources=resources, instance=instance).success
        quiet, _ = _tick(instance, resources)
        assert isinstance(quiet, dg.SkipReason) and "no library folder changed" in quiet.skip_message

        write_wav(root / "Album" / "c.wav")
        changed, _ = _tick(instance, resources)
        assert isinstance(changed, dg.SensorResult) and len(changed.run_requests) == 1
        assert changed.run_requests[0].run_key.startswith("scan-")


def test_library_change_sensor_does_not_pile_up_runs(tmp_path: Path) -> None:
    root = _library(tmp_path)
    resources = _resources(tmp_path, root)
    with dg.instance_for_test() as instance:
        job = dg.Definitions(
            assets=[library_files], jobs=[library_scan_job], resources=resources
        ).resolve_job_def("library_scan_job")
        instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED)
        result, _ = _tick(instance, resources)
        assert isinstance(result, dg.SkipReason) and "already queued or running" in result.skip_message


def test_a_scan_with_new_files_requests_predictions_for_all_heads_in_one_run(tmp_path: Path) -> None:
    root = _library(tmp_path)
    resources = _resources(tmp_path, root)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("heads", ["m:a", "m:b", "m:c"])
        assert dg.materialize([library_files], resources=resources, instance=instance).success
        result, _ = _tick(instance, resources)
        assert isinstance(result, dg.SensorResult)
        (request,) = result.run_requests
        assert request.job_name == "predictions_job"
        assert request.partition_key_range == dg.PartitionKeyRange("m:a", "m:c")
        assert request.tags["nomarr/new_or_changed_files"] == "3"

        # The same scan is not analysed twice; a rescan that changed nothing asks for nothing.
        _, cursor = _tick(instance, resources, cursor='{"scan_seen": 0}')
        again, _ = _tick(instance, resources, cursor)
        assert isinstance(again, dg.SkipReason)
        assert dg.materialize([library_files], resources=resources, instance=instance).success
        quiet, _ = _tick(instance, resources, cursor)
        assert isinstance(quiet, dg.SkipReason)
