"""Calibration assets, partitioned by head: state (with checks), history, sidecars; and the
unpartitioned package of every calibration."""

from collections.abc import Sequence
from functools import partial

import dagster as dg

from nomarr_pipeline.calibration.exports import export_package, export_sidecars
from nomarr_pipeline.calibration.generation import HeadCalibrationReport, calibrate_head, calibration_progress
from nomarr_pipeline.calibration.hashing import expected_calibration_hash
from nomarr_pipeline.calibration.plots import histogram_png, png_markdown
from nomarr_pipeline.calibration.state import calibration_key, is_usable
from nomarr_pipeline.defs.assets.heads import run_heads
from nomarr_pipeline.defs.assets.tables import metadata_table
from nomarr_pipeline.defs.partitions import SINGLE_RUN, heads_partitions
from nomarr_pipeline.defs.resources import CalibrationResource, ModelsResource, StoreResource
from nomarr_pipeline.ml.discovery import discover_models

OUT_OF_RANGE_LIMIT = 0.05
# A head's histogram image shows its labels together: up to this many stay readable.
HISTOGRAM_IMAGES = 4
RECENT_SNAPSHOTS = 5
DELTAS = ("p5_delta", "p95_delta", "n_delta")
LABEL_COLUMNS = {
    "label": "string",
    "p5": "float",
    "p95": "float",
    "n": "int",
    "out_of_range_ratio": "float",
    "p5_delta": "float",
    "p95_delta": "float",
}
SNAPSHOT_COLUMNS = {
    "label": "string",
    f"snapshots (last {RECENT_SNAPSHOTS})": "int",
    "p5": "float",
    "p95": "float",
    "p5_delta": "float",
    "p95_delta": "float",
    "n_delta": "int",
}

per_head_asset = partial(
    dg.asset, partitions_def=heads_partitions, backfill_policy=SINGLE_RUN, group_name="calibration"
)
STATE_CHECKS = [
    dg.AssetCheckSpec(name, asset="calibration_state", description=description)
    for name, description in [
        ("out_of_range_ratio", "At most 5 % of a label's values fall outside its histogram range."),
        ("minimum_n", "Each label is calibrated from at least `min_n` values."),
        ("p5_below_p95", "Each calibration in force has p5 < p95, so it can be applied."),
    ]
]


@per_head_asset(deps=["file_tags"], check_specs=STATE_CHECKS, kinds={"python", "numpy"})
def calibration_state(
    context: dg.AssetExecutionContext,
    store: StoreResource,
    models: ModelsResource,
    calibration: CalibrationResource,
) -> dg.MaterializeResult:
    """p5/p95 per (head, label) from one histogram query each; drift-tolerant in force."""
    heads = run_heads(context, models)
    db = store.open()
    reports: list[HeadCalibrationReport] = []
    for head in heads:
        report, histograms = calibrate_head(
            db,
            head,
            specs=calibration.histogram_specs(),
            drift_tolerance=calibration.drift_tolerance,
            keep_histograms=len(head.labels) <= HISTOGRAM_IMAGES,
        )
        reports.append(report)
        context.add_asset_metadata(_head_metadata(report, histograms), partition_key=head.partition_key)
        for warning in report.warnings:
            context.log.warning(warning)
        context.log.info(
            f"{head.partition_key}: {len(report.labels)} labels calibrated, "
            f"{len(report.empty_labels)} without values, n={report.n}, {report.seconds:.2f}s"
        )
    return dg.MaterializeResult(check_results=_checks(reports, calibration.min_n))


def _head_metadata(report: HeadCalibrationReport, histograms: dict) -> dict[str, object]:
    meta: dict[str, object] = {
        "labels_calibrated": len(report.labels),
        "labels_without_values": dg.MetadataValue.json(report.empty_labels),
        "n": report.n,
        "calibration_changed": report.changed,
        "seconds": round(report.seconds, 3),
        "histogram_range": dg.MetadataValue.json(report.spec.to_doc()),
    }
    rows = []
    for label in report.labels:
        share = round((label.underflow_count + label.overflow_count) / label.n if label.n else 0.0, 6)
        rows.append((label.label, label.p5, label.p95, label.n, share, label.p5_delta, label.p95_delta))
    # Per-label numbers live in the table: one metadata entry each would be one plot each.
    meta["labels"] = metadata_table(LABEL_COLUMNS, rows)
    shown = [(state.label, histograms[state.label], state.p5, state.p95)
             for state in report.labels if state.label in histograms]  # fmt: skip
    if shown:
        meta["histogram"] = dg.MetadataValue.md(
            png_markdown(histogram_png(shown, report.spec, report.partition_key), alt=report.partition_key)
        )
    return {k: v for k, v in meta.items() if v is not None}


def _checks(reports: Sequence[HeadCalibrationReport], min_n: int) -> list[dg.AssetCheckResult]:
    """One result per check for the whole run, naming the heads that failed and what to do."""
    labels = [(report.partition_key, label) for report in reports for label in report.labels]

    def result(name: str, failing: list[tuple[str, str]], severity: dg.AssetCheckSeverity, fix: str,
               **extra: object) -> dg.AssetCheckResult:
        heads = sorted({key for key, _ in failing})
        said = f"{len(failing)} labels of {', '.join(heads)}; {fix}" if failing else "every label passes"
        return dg.AssetCheckResult(
            check_name=name, passed=not failing, severity=severity, description=said,
            metadata={"heads": dg.MetadataValue.json(heads), "count": len(failing), **extra,
                      "labels": dg.MetadataValue.json([f"{key}:{text}" for key, text in failing[:100]])},
        )

    out_of_range = [
        (key, f"{label.label} ({(label.underflow_count + label.overflow_count) / label.n:.1%})")
        for key, label in labels
        if label.n and (label.underflow_count + label.overflow_count) / label.n > OUT_OF_RANGE_LIMIT
    ]
    return [
        result("out_of_range_ratio", out_of_range, dg.AssetCheckSeverity.WARN,
               "widen their range: NOMARR_HISTOGRAM_OVERRIDES (the warnings say how)"),
        result("minimum_n", [(key, f"{label.label} (n={label.n})") for key, label in labels
                             if label.n < min_n],
               dg.AssetCheckSeverity.WARN, "analyse more files, or lower calibration min_n",
               min_n=min_n),
        result("p5_below_p95", [(key, label.label) for key, label in labels if not label.usable],
               dg.AssetCheckSeverity.ERROR,
               "their values do not spread: these labels get no calibrated tags"),
    ]


@per_head_asset(deps=[calibration_state], kinds={"python"})
def calibration_history(
    context: dg.AssetExecutionContext, store: StoreResource, models: ModelsResource
) -> dg.MaterializeResult:
    """The append-only snapshots of each label (written with its state), with drift deltas."""
    heads = run_heads(context, models)
    db = store.open()
    for head in heads:
        keys = {label: calibration_key(head.model_key, head.head_name, label) for label in head.labels}
        history = db.recent_history(list(keys.values()), per_key=RECENT_SNAPSHOTS)  # one query
        rows = [
            (label, len(snapshots), *(snapshots[0].get(field) for field in ("p5", "p95", *DELTAS)))
            for label, key in keys.items()
            if (snapshots := history.get(key))
        ]
        meta = {"snapshots": metadata_table(SNAPSHOT_COLUMNS, rows), "labels_with_history": len(rows)}
        context.add_asset_metadata(meta, partition_key=head.partition_key)
    return dg.MaterializeResult()


@per_head_asset(deps=[calibration_state], kinds={"python", "json"})
def calibration_sidecars(
    context: dg.AssetExecutionContext,
    store: StoreResource,
    models: ModelsResource,
    calibration: CalibrationResource,
) -> dg.MaterializeResult:
    """``{head_name}-calibration-v{version}.json`` per head, exported from the store."""
    heads = run_heads(context, models)
    wanted = {(h.model_key, h.head_name) for h in heads}
    states = [s for s in store.open().list_calibrations() if (s["model_key"], s["head_name"]) in wanted]
    report = export_sidecars(states, calibration.export_path())
    for warning in report.warnings:
        context.log.warning(f"sidecar export: {warning}")
    return dg.MaterializeResult(
        metadata={
            "folder": dg.MetadataValue.path(str(calibration.export_path())),
            "written": dg.MetadataValue.json([str(p) for p in report.written]),
            "warnings": dg.MetadataValue.json(report.warnings),
        }
    )


@dg.asset(deps=[calibration_state], group_name="calibration", kinds={"python", "json"})
def calibration_package(
    context: dg.AssetExecutionContext,
    store: StoreResource,
    models: ModelsResource,
    calibration: CalibrationResource,
) -> dg.MaterializeResult:
    """``calibrations.json``: every calibration in the store, to back up or share (an import
    bootstraps another store from it)."""
    db = store.open()
    states = db.list_calibrations()
    path = export_package(states, calibration.export_path())
    heads = []
    folder = models.path()
    if folder is not None and folder.is_dir():
        heads = list(discover_models(folder, compute_versions=False, engine=models.inference_engine).heads)
    progress = calibration_progress(db, heads)
    context.log.info(f"wrote {path} with {len(states)} calibrations; progress {progress}")
    metadata = {
        "path": dg.MetadataValue.path(str(path)),
        "calibrations": sum(is_usable(state) for state in states),  # what the package holds
        "expected_calibration_hash": expected_calibration_hash(states),
        **{name: progress[name] for name in ("total_heads", "calibrated_heads", "remaining_heads")},
    }
    if progress["last_updated"]:
        metadata["last_updated"] = dg.MetadataValue.timestamp(progress["last_updated"] / 1000)
    return dg.MaterializeResult(metadata=metadata)
