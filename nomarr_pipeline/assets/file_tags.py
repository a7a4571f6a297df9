"""``file_tags``: raw Essentia predictions per head (one dynamic partition per head).

Single-run backfills let one run serve many heads, so each backbone runs once per file for
all selected heads. The work itself is :func:`nomarr_pipeline.ml.analysis.analyze`.

No ``from __future__ import annotations``: Dagster inspects the context annotation at runtime.
"""

import time
from collections.abc import Callable

import dagster as dg

from nomarr_pipeline.assets.heads import models_folder
from nomarr_pipeline.assets.tables import metadata_table
from nomarr_pipeline.ml.analysis import FileProgress, HeadReport, analyze
from nomarr_pipeline.ml.discovery import discover_models
from nomarr_pipeline.partitions import heads_partitions
from nomarr_pipeline.resources import ModelsResource, StoreResource

_PROGRESS_EVERY_S = 30.0


def _progress_logger(context: dg.AssetExecutionContext) -> Callable[[FileProgress], None]:
    last = [time.monotonic()]

    def log(progress: FileProgress) -> None:
        if progress.error:
            context.log.warning(f"{progress.path}: {progress.error}")
        now = time.monotonic()
        if now - last[0] >= _PROGRESS_EVERY_S:
            last[0] = now
            context.log.info(f"{progress.done} files analysed so far")

    return log


HEAD_COLUMNS = {"head": "string", "analysed": "int", "failed": "int", "skipped": "int", "seconds": "float"}


def _metadata(reports: dict[str, HeadReport], seconds: float) -> dict[str, dg.MetadataValue]:
    rows = [
        (key, r.analysed, r.failed, r.skipped, round(r.seconds, 1)) for key, r in sorted(reports.items())
    ]
    return {
        # Sums over heads: a file analysed for three heads counts three times.
        "analysed": dg.MetadataValue.int(sum(r.analysed for r in reports.values())),
        "failed": dg.MetadataValue.int(sum(r.failed for r in reports.values())),
        "skipped": dg.MetadataValue.int(sum(r.skipped for r in reports.values())),
        "seconds": dg.MetadataValue.float(round(seconds, 3)),
        "heads": metadata_table(HEAD_COLUMNS, rows),
        "per_head": dg.MetadataValue.json(
            {key: report.as_metadata() for key, report in sorted(reports.items())}
        ),
    }


@dg.asset(
    partitions_def=heads_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=["library_files"],
    group_name="ml",
    kinds={"python", "tensorflow"},
)
def file_tags(
    context: dg.AssetExecutionContext, store: StoreResource, models: ModelsResource
) -> dg.MaterializeResult:
    """Pooled raw outputs of every head for every library file that lacks current ones.

    Files already analysed at the head's current ``tagger_version`` are skipped, so a
    re-run only does new work; a file that fails gets its ``analysis_error`` and the run
    goes on.
    """
    models_dir = models_folder(models)
    catalog = discover_models(models_dir)
    for problem in catalog.problems:
        context.log.warning(f"model problem: {problem.path}: {problem.message}")
    heads, missing = catalog.select(context.partition_keys)

    started = time.perf_counter()
    reports = analyze(
        store.open(),
        heads,
        processes=models.process_count(),
        file_timeout_s=models.file_timeout_s,
        progress=_progress_logger(context),
    )
    seconds = time.perf_counter() - started
    for key, report in sorted(reports.items()):
        # Per-partition numbers, so each head's history in the UI shows its own counts.
        context.add_asset_metadata(
            {
                "head_analysed": report.analysed,
                "head_failed": report.failed,
                "head_skipped": report.skipped,
                "head_seconds": round(report.seconds, 3),
            },
            partition_key=key,
        )
        context.log.info(
            f"{key}: {report.analysed} analysed, {report.failed} failed, "
            f"{report.skipped} skipped ({report.seconds:.1f}s of worker time)"
        )
    if missing:
        # The usable heads are stored already (a re-run will skip them); the missing ones
        # must not be marked materialized.
        problems = {p.path.stem: p.message for p in catalog.problems}
        details = "; ".join(
            f"{key}" + (f" ({problems[name]})" if (name := _stem_hint(key, problems)) else "")
            for key in missing
        )
        raise dg.Failure(
            f"{len(missing)} selected heads have no usable model in {models_dir}: {details}",
            metadata=_metadata(reports, seconds),
        )
    return dg.MaterializeResult(
        metadata={
            **_metadata(reports, seconds),
            "store": dg.MetadataValue.text(store.describe()),
            "model_problems": dg.MetadataValue.int(len(catalog.problems)),
        }
    )


def _stem_hint(partition_key: str, problems: dict[str, str]) -> str | None:
    """The problem of a model file whose name matches the key's head, if any."""
    head_name = partition_key.split(":", 1)[-1]
    for stem in problems:
        if stem.split("-", 1)[0] == head_name:
            return stem
    return None
