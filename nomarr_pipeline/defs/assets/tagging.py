"""Recalibration of stored predictions and tag writing into the audio files."""

from pathlib import Path

import dagster as dg
import pandas as pd

from nomarr_pipeline.calibration.recalibration import recalibrate
from nomarr_pipeline.calibration.state import has_usable_calibration, is_usable
from nomarr_pipeline.defs.assets.tables import metadata_table
from nomarr_pipeline.defs.resources import (
    CalibrationResource,
    LibraryResource,
    StoreResource,
    TaggingResource,
)
from nomarr_pipeline.library.scanner import rescan_files
from nomarr_pipeline.tagging.batch import (
    PREVIEW_COLUMNS,
    WriteBatchStopped,
    WriteReport,
    preview_frame,
    write_pending_tags,
)

PREVIEW_ROWS_SHOWN = 50


@dg.asset(deps=["calibration_state"], group_name="tagging", kinds={"python"})
def calibrated_tags(
    context: dg.AssetExecutionContext, store: StoreResource, tagging: TaggingResource
) -> dg.MaterializeResult:
    """Files whose ``calibration_hash`` differs from the expected one get calibrated values,
    mood tiers and the new hash (crash-safe: a rerun resumes where a crash stopped)."""
    db = store.open()
    report = recalibrate(
        db,
        tier_config=tagging.tier_config(),
        progress=lambda done, _batch: context.log.debug(f"recalibrated {done} files"),
    )
    context.log.info(
        f"recalibrated {report.recalibrated} files in {report.seconds:.1f}s; {report.remaining} remaining"
    )
    return dg.MaterializeResult(
        metadata={
            "files_recalibrated": report.recalibrated,
            "remaining": report.remaining,
            "expected_calibration_hash": report.expected_hash,
            "usable_calibrations": sum(is_usable(state) for state in db.list_calibrations()),
            "seconds": round(report.seconds, 3),
            "reader_processes": report.readers,
            "writer_processes": report.writers,
            "claims_voided_by_new_predictions": report.voided,
        }
    )


class WriteTagsConfig(dg.Config):
    auto_only: bool = False
    """Only libraries with ``auto_write_tags`` (the sensor's runs); a click in the UI is an
    explicit batch for every library."""
    preview: bool = False
    """List what would be written (metadata table + CSV) without touching any file."""


@dg.asset(deps=[calibrated_tags], group_name="tagging", kinds={"python"}, pool="tag_writing")
def written_tags(
    context: dg.AssetExecutionContext,
    config: WriteTagsConfig,
    store: StoreResource,
    library: LibraryResource,
    tagging: TaggingResource,
) -> dg.MaterializeResult:
    """``nom:`` tags written atomically into the audio files of each library, per its mode."""
    db = store.open()
    roots = {str(root.resolve()) for root in library.root_paths()}
    has_calibration = has_usable_calibration(db.list_calibrations())
    options = tagging.tag_options()
    reports: list[WriteReport] = []
    for lib in db.list_libraries():
        if lib["root_path"] not in roots:
            context.log.info(f"library {lib['root_path']} is not configured any more; not written")
            continue
        if config.auto_only and not lib.get("auto_write_tags"):
            continue
        try:
            report = write_pending_tags(
                db,
                library=lib,
                library_roots=[lib["root_path"]],
                has_calibration=has_calibration,
                options=options,
                writers=tagging.writers,
                dry_run=config.preview,
                # Edited in place by another program: analysed and written again from scratch.
                rescan=lambda docs, lib=lib: rescan_files(db, lib, docs),
            )
        except WriteBatchStopped as stopped:
            raise dg.Failure(str(stopped), metadata=stopped.report.summary()) from stopped
        reports.append(report)
        context.log.info(f"{lib['root_path']}: {report.summary()}")
        for error in report.errors[:20]:
            context.log.warning(f"{error['path']}: {error['kind']}: {error['error']}")
    metadata: dict[str, object] = {
        field: sum(getattr(r, field) for r in reports)
        for field in ("written", "unchanged", "skipped", "failed", "rescanned", "stale_temps_removed")
    }
    metadata["libraries"] = dg.MetadataValue.json([r.summary() for r in reports])
    metadata["has_calibration"] = has_calibration
    metadata["dry_run"] = config.preview
    if config.preview:
        frame = pd.concat([preview_frame(r.preview) for r in reports]) if reports else pd.DataFrame()
        csv = Path(tagging.previews_dir) / f"written_tags-{context.run.run_id}.csv"
        csv.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(csv, index=False)
        metadata["preview_csv"] = dg.MetadataValue.path(str(csv))
        metadata["preview_rows"] = len(frame)
        shown = frame.head(PREVIEW_ROWS_SHOWN).astype(object)
        metadata["preview"] = metadata_table(
            dict.fromkeys(PREVIEW_COLUMNS, "string"), shown.where(shown.notna(), None).itertuples(index=False)
        )
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(deps=["calibration_state"], group_name="tagging", kinds={"python", "navidrome"})
def navidrome_kit(
    store: StoreResource, library: LibraryResource, calibration: CalibrationResource, tagging: TaggingResource
) -> dg.MaterializeResult:
    """A ``navidrome.toml`` snippet declaring the ``nom:`` scores as float tags, and one smart
    playlist (``.nsp``) per mood term, in the export folder's ``navidrome/``."""
    from nomarr_pipeline.tagging.navidrome import export_navidrome_kit

    kit = export_navidrome_kit(
        [state for state in store.open().list_calibrations() if is_usable(state)],
        calibration.export_path() / "navidrome",
        options=tagging.tag_options(),
        tiers=tagging.tier_config(),
        library_roots=library.root_paths(),
    )
    return dg.MaterializeResult(metadata={
        "toml": dg.MetadataValue.path(str(kit.toml)),
        "float_tags": dg.MetadataValue.json(kit.float_tags),
        "playlists": dg.MetadataValue.json([path.name for path in kit.playlists]),
    })  # fmt: skip
