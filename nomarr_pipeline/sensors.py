"""Sensors: cheap checks far below Dagster's 60 s tick limit, no duplicate runs."""

import hashlib

import dagster as dg

from nomarr_pipeline.assets.tagging import WriteTagsConfig
from nomarr_pipeline.calibration.hashing import expected_calibration_hash
from nomarr_pipeline.jobs import library_scan_job, tagging_job
from nomarr_pipeline.library.changes import changed_folders
from nomarr_pipeline.library.identity import library_key
from nomarr_pipeline.resources import LibraryResource, StoreResource

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def job_in_flight(context: dg.SensorEvaluationContext, job_name: str) -> bool:
    runs = context.instance.get_runs(filters=dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT), limit=1)
    return bool(runs)


@dg.sensor(job=library_scan_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def library_change_sensor(
    context: dg.SensorEvaluationContext, store: StoreResource, library: LibraryResource
) -> dg.SensorResult | dg.SkipReason:
    """Requests a scan when a library folder changed since the last scan (one stat per folder)."""
    roots = library.root_paths()
    if not roots:
        return dg.SkipReason("no library folders configured (NOMARR_LIBRARY_ROOTS)")
    db = store.open()
    changes: list[str] = []
    for root in roots:
        resolved = root.resolve()
        cache = db.load_folder_cache(library_key(resolved))
        changes += changed_folders(cache, str(resolved))
    if not changes:
        return dg.SkipReason("no library folder changed since the last scan")
    if job_in_flight(context, library_scan_job.name):
        return dg.SkipReason(f"{len(changes)} folders changed; a scan is already queued or running")
    # The run key names this exact set of changes, so a tick that sees the same changes
    # again (before the scan saved its cache) does not start a second run.
    stamp = hashlib.sha1("\n".join(sorted(changes)).encode("utf-8", "surrogateescape"))
    stamp.update(str(context.cursor or "").encode())
    run_key = f"scan-{stamp.hexdigest()[:16]}"
    context.update_cursor(run_key)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=run_key, tags={"nomarr/changed_folders": str(len(changes))})]
    )


@dg.sensor(job=tagging_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def calibration_hash_sensor(
    context: dg.SensorEvaluationContext, store: StoreResource
) -> dg.SensorResult | dg.SkipReason:
    """Requests recalibration + tag writing when stored hashes differ from the expected hash.

    Two indexed queries per tick. A successful run leaves no mismatch behind, so mismatches
    seen after it are new (files analysed since, a calibration that moved) and start the next
    run; the run key names the previous run, so one tick's request is never started twice.
    A failed run is not retried on the very same mismatches: that would fail every minute.
    """
    db = store.open()
    expected = expected_calibration_hash(db.list_calibrations())
    mismatched = db.count_files_needing_recalibration(expected)
    if mismatched == 0:
        return dg.SkipReason(f"all analysed files carry the expected calibration hash {expected[:12]}")
    if job_in_flight(context, tagging_job.name):
        return dg.SkipReason(f"{mismatched} files need recalibration; a tagging run is already in flight")
    tags = {"nomarr/expected_calibration_hash": expected, "nomarr/mismatched_files": str(mismatched)}
    last = context.instance.get_runs(filters=dg.RunsFilter(job_name=tagging_job.name), limit=1)
    if (
        last
        and last[0].status == dg.DagsterRunStatus.FAILURE
        and all(last[0].tags.get(name) == value for name, value in tags.items())
    ):
        return dg.SkipReason(
            f"the last tagging run ({last[0].run_id}) failed on these {mismatched} files; "
            "fix the cause and launch tagging_job again"
        )
    previous = last[0].run_id[:8] if last else "first"
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"recalibrate-{expected[:16]}-{mismatched}-after-{previous}",
                run_config=dg.RunConfig(ops={"written_tags": WriteTagsConfig(auto_only=True)}),
                tags=tags,
            )
        ]
    )
