"""Sensors: cheap checks far below Dagster's 60 s tick limit, and no duplicate runs."""

import hashlib
import json
from pathlib import Path
from typing import Any

import dagster as dg

from nomarr_pipeline.calibration.hashing import expected_calibration_hash
from nomarr_pipeline.defs.assets.tagging import WriteTagsConfig
from nomarr_pipeline.defs.jobs import library_scan_job, partition_range_tags, predictions_job, tagging_job
from nomarr_pipeline.defs.partitions import HEADS, heads_partitions
from nomarr_pipeline.defs.resources import LibraryResource, ModelsResource, StoreResource
from nomarr_pipeline.library.changes import changed_folders
from nomarr_pipeline.library.identity import library_key
from nomarr_pipeline.ml.discovery import discover_models

FILE_TAGS = dg.AssetKey("file_tags")
# Every status of a run that has not ended (a cancelling run still holds its files).
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def job_in_flight(context: dg.SensorEvaluationContext, job_name: str) -> bool:
    runs = context.instance.get_runs(filters=dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT), limit=1)
    return bool(runs)


@dg.sensor(
    jobs=[library_scan_job, predictions_job],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def library_change_sensor(
    context: dg.SensorEvaluationContext, store: StoreResource, library: LibraryResource
) -> dg.SensorResult | dg.SkipReason:
    """Keeps the library processed without a click, in two cheap steps per tick:

    1. a finished scan that found new or changed files -> one predictions run over every head
       (a sensor rather than an automation condition: the run must cover all heads at once,
       and this reads one event from the instance);
    2. a library folder whose mtime changed since the last scan -> a scan (one stat per folder).
    """
    state = _load_cursor(context.cursor)
    requests: list[dg.RunRequest] = []
    notes: list[str] = []

    latest = context.instance.fetch_materializations(dg.AssetKey("library_files"), limit=1).records
    scan = latest[0] if latest else None
    if scan is not None and scan.storage_id > state.get("scan_seen", 0):
        meta = scan.asset_materialization.metadata if scan.asset_materialization else {}
        touched = sum(int(meta[name].value) for name in ("new", "changed") if name in meta)
        heads = heads_partitions.get_partition_keys(dynamic_partitions_store=context.instance)
        if touched and heads and job_in_flight(context, predictions_job.name):
            notes.append(f"{touched} new or changed files wait for the running predictions run")
        else:
            if touched and heads:
                requests.append(
                    dg.RunRequest(
                        job_name=predictions_job.name,
                        run_key=f"analyse-after-scan-{scan.storage_id}",
                        tags={**partition_range_tags(heads), "nomarr/new_or_changed_files": str(touched)},
                    )
                )
            state["scan_seen"] = scan.storage_id

    roots = library.root_paths()
    changes: list[str] = []
    if roots:
        db = store.open()
        for root in roots:
            resolved = root.resolve()
            changes += changed_folders(db.load_folder_cache(library_key(resolved)), str(resolved))
    else:
        notes.append("no library folders configured (NOMARR_LIBRARY_ROOTS)")
    if changes and job_in_flight(context, library_scan_job.name):
        notes.append(f"{len(changes)} folders changed; a scan is already queued or running")
    elif changes:
        # The run key names this exact set of changes, so a tick that sees the same changes
        # again (before the scan saved its cache) does not start a second run.
        stamp = hashlib.sha1("\n".join(sorted(changes)).encode("utf-8", "surrogateescape"))
        stamp.update(str(state.get("scan_seen", 0)).encode())
        requests.append(
            dg.RunRequest(
                job_name=library_scan_job.name,
                run_key=f"scan-{stamp.hexdigest()[:16]}",
                tags={"nomarr/changed_folders": str(len(changes))},
            )
        )
    elif roots:
        notes.append("no library folder changed since the last scan")

    context.update_cursor(json.dumps(state))
    if not requests:
        return dg.SkipReason("; ".join(notes))
    return dg.SensorResult(run_requests=requests)


def _load_cursor(cursor: str | None) -> dict[str, Any]:
    try:
        loaded = json.loads(cursor) if cursor else {}
    except json.JSONDecodeError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def models_fingerprint(models_dir: Path) -> str:
    """Changes whenever a model file is added, removed, replaced or edited."""
    digest = hashlib.sha1()
    for path in sorted(models_dir.rglob("*")):
        if path.suffix in (".json", ".pb", ".onnx") and path.is_file():
            stat = path.stat()
            line = f"{path.relative_to(models_dir)}|{stat.st_size}|{stat.st_mtime_ns}\n"
            digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _discovered_keys(models_dir: Path, cursor: str | None) -> tuple[list[str], str, bool]:
    """The head keys in the folder, the new cursor, and whether model files changed since the
    last tick (not on the first). A stat per model file; JSON is parsed only on change."""
    fingerprint = models_fingerprint(models_dir)
    saved = _load_cursor(cursor)
    if saved.get("fingerprint") == fingerprint and isinstance(saved.get("keys"), list):
        keys = [str(key) for key in saved["keys"]]
    else:
        keys = discover_models(models_dir, compute_versions=False).partition_keys
    changed = bool(saved.get("fingerprint")) and saved.get("fingerprint") != fingerprint
    return keys, json.dumps({"fingerprint": fingerprint, "keys": keys}), changed


@dg.sensor(target=[FILE_TAGS], minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def head_discovery_sensor(
    context: dg.SensorEvaluationContext, models: ModelsResource
) -> dg.SensorResult | dg.SkipReason:
    """Adds partitions for new heads, removes vanished ones, and analyses new heads in one run."""
    models_dir = models.path()
    if models_dir is None:
        return dg.SkipReason("no models folder configured (NOMARR_MODELS_DIR)")
    if not models_dir.is_dir():
        return dg.SkipReason(f"models folder {models_dir} does not exist")
    discovered, cursor, models_changed = _discovered_keys(models_dir, context.cursor)
    existing = context.instance.get_dynamic_partitions(HEADS)
    new = [key for key in discovered if key not in set(existing)]
    vanished = sorted(set(existing) - set(discovered))
    if not new and not vanished:
        context.update_cursor(cursor)
        if models_changed and discovered:
            # A replaced model file gives its heads a new tagger_version; one run over every
            # head re-analyses exactly those (the others find nothing to do).
            return dg.SensorResult(
                run_requests=[
                    dg.RunRequest(
                        run_key=f"models-{hashlib.sha1(cursor.encode()).hexdigest()[:16]}",
                        asset_selection=[FILE_TAGS],
                        tags={**partition_range_tags(existing), "nomarr/models_changed": "true"},
                    )
                ]
            )
        return dg.SkipReason(f"{len(discovered)} heads, none added or removed")

    requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
    if vanished:
        requests.append(dg.DeleteDynamicPartitionsRequest(HEADS, vanished))
    run_requests: list[dg.RunRequest] = []
    if new:
        requests.append(dg.AddDynamicPartitionsRequest(HEADS, new))
        # New keys are appended together, in this order, after every existing key, so the
        # range new[0]…new[-1] is exactly them: one single-run backfill for all new heads.
        stamp = hashlib.sha1("\n".join([cursor, *new]).encode("utf-8", "surrogateescape"))
        run_requests.append(
            dg.RunRequest(
                run_key=f"heads-{stamp.hexdigest()[:16]}",
                asset_selection=[FILE_TAGS],
                tags={**partition_range_tags(new), "nomarr/new_heads": str(len(new))},
            )
        )
    context.update_cursor(cursor)
    context.log.info(f"heads: {len(new)} new {new}, {len(vanished)} removed {vanished}")
    return dg.SensorResult(run_requests=run_requests, dynamic_partitions_requests=requests)


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
