"""``file_tags``: raw Essentia predictions, one dynamic partition per head (docs/ARCHITECTURE.md §5).

A graph-backed asset: ``analysis_shard_{i}_of_{n}`` steps, placed by the run's executor, claim
files from the store until none is left; ``file_tags_report`` adds their reports up and
materializes the partitions. A static fan-out (``NOMARR_ANALYSIS_SHARDS``), since dagster-dask
runs no dynamic one. Shards write to the store and report through output metadata in the run's
event log: no IO manager, no shared disk. No ``from __future__ import annotations``: Dagster
inspects the context annotation at runtime.
"""

import multiprocessing
import time
from collections import Counter
from collections.abc import Iterable

import dagster as dg

from nomarr_pipeline.defs.assets.heads import models_folder
from nomarr_pipeline.defs.assets.tables import metadata_table
from nomarr_pipeline.defs.executors import ExecutorSettingError, is_remote, refuse_embedded_store
from nomarr_pipeline.defs.partitions import SINGLE_RUN, heads_partitions
from nomarr_pipeline.defs.resources import ModelsResource, StoreResource
from nomarr_pipeline.ml.analysis import MAX_REPORTED_ERRORS, FileProgress, HeadReport, analyze
from nomarr_pipeline.ml.capacity import available_cores
from nomarr_pipeline.ml.discovery import discover_models
from nomarr_pipeline.progress import StepProgress
from nomarr_pipeline.store import AnalysisClaim

_PROGRESS_EVERY_S = 30.0
_REPORT_KEY = "shard_report"  # output metadata of a shard step that file_tags_report reads
# A shard whose process or machine died is started again; it redoes only unfinished files.
SHARD_RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=10)
# Claims of runs that died are deleted by the next run's report once this old (no batch of a
# live shard holds a claim that long: it claims a few files at a time).
STALE_CLAIM_S = 24 * 3600


def _shard_op(index: int, count: int) -> dg.OpDefinition:
    @dg.op(
        name=f"analysis_shard_{index}_of_{count}",
        description=f"Shard {index + 1} of {count}: analyse files claimed from the store until none is left.",
        ins={"library_files": dg.In(dg.Nothing)},
        out=dg.Out(dg.Nothing),
        retry_policy=SHARD_RETRY_POLICY,
        tags={"nomarr/analysis_shard": str(index)},
    )
    def analysis_shard(
        context: dg.AssetExecutionContext, store: StoreResource, models: ModelsResource
    ) -> None:
        if models.shard_count() != count:
            # The step names carry the count, so a process that loaded another count cannot
            # even find these steps; this catches a count given as resource config.
            raise dg.Failure(
                f"this run has {count} shard steps but models.shards / NOMARR_ANALYSIS_SHARDS "
                f"says {models.shard_count()} here: give every process of the deployment the same "
                "NOMARR_ANALYSIS_SHARDS", allow_retries=False,
            )
        executor = context.job_def.executor_def.name
        db = store.open()
        try:
            refuse_embedded_store(executor, db.engine)
            models_dir = models_folder(models)
        except ExecutorSettingError as error:
            raise dg.Failure(str(error), allow_retries=False) from None
        except dg.Failure as failure:  # a setting to fix, not a process that died: no retry
            raise dg.Failure(failure.description, metadata=failure.metadata, allow_retries=False) from None
        if multiprocessing.current_process().daemon:
            raise dg.Failure(
                "this step runs in a daemonic process, which cannot start analysis workers: on "
                "Dask workers set DASK_DISTRIBUTED__WORKER__DAEMON=False", allow_retries=False,
            )
        heads, _ = discover_models(models_dir, engine=models.inference_engine).select(context.partition_keys)
        # Remote executors give each step a machine (or pod) of its own; locally the shards
        # share this machine's cores.
        concurrent = 1 if is_remote(executor) or executor == "in_process" else min(count, available_cores())
        plan = models.worker_plan(concurrent)
        if context.retry_number:
            context.log.info(f"attempt {context.retry_number + 1}: files finished before are skipped")
        context.log.info(
            f"shard {index + 1}/{count}: "
            f"{plan.processes} workers × {plan.intra_op_threads} inference threads; heads by engine: "
            + ", ".join(f"{engines} {n}" for engines, n in sorted(Counter(h.engines for h in heads).items()))
            + (f", GPUs {','.join(plan.gpus)}" if plan.gpus else "")
        )
        started = time.perf_counter()
        with StepProgress(
            f"shard {index + 1}/{count}", log=context.log.info, log_every_s=_PROGRESS_EVERY_S
        ) as progress:

            def log(file: FileProgress) -> None:
                if file.error:
                    context.log.warning(f"{file.path}: {file.error}")
                progress(file.done, file.total)

            reports = analyze(
                db, heads, processes=plan.processes, file_timeout_s=models.file_timeout_s,
                claim=AnalysisClaim(context.run.run_id, index), shards=count,
                environment=plan.environment, batch_size=models.batch_size, progress=log,
            )
        for key, report in sorted(reports.items()):
            if report.broken:
                context.log.error(f"{key}: stopped, a broken model: {report.broken}")
        context.add_output_metadata({
            _REPORT_KEY: dg.MetadataValue.json(
                {key: report.as_metadata() for key, report in sorted(reports.items())}),
            "files": dg.MetadataValue.int(int(progress.task.completed)),  # this attempt's share of the run
            "seconds": dg.MetadataValue.float(round(time.perf_counter() - started, 3)),
        })

    return analysis_shard


def _shard_reports(context: dg.AssetExecutionContext) -> tuple[dict[str, HeadReport], dict[str, int]]:
    """Every finished shard's report, added up per head, and how often each shard started."""
    started = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_RESTARTED}  # a retry restarts
    records = context.instance.get_records_for_run(
        run_id=context.run.run_id, of_type={dg.DagsterEventType.STEP_OUTPUT, *started}
    ).records
    reports: dict[str, HeadReport] = {}
    starts: Counter[str] = Counter()
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None or not (event.step_key or "").split(".")[-1].startswith("analysis_shard_"):
            continue
        if event.event_type in started:
            starts[event.step_key or ""] += 1
            continue
        data = event.step_output_data.metadata.get(_REPORT_KEY)
        for key, part in (data.value if data is not None else {}).items():  # type: ignore[union-attr]
            report = reports.setdefault(key, HeadReport(key, part.get("engines", "")))
            report.analysed += part["analysed"]
            report.failed += part["failed"]
            report.seconds += part["seconds"]
            report.errors.extend(part["errors"][: max(0, MAX_REPORTED_ERRORS - len(report.errors))])
            report.broken = report.broken or part.get("broken")
            for fault, files in part.get("faults", {}).items():
                report.faults[fault] = report.faults.get(fault, 0) + files
    return reports, dict(starts)


# A failure that names the heads it did not materialize lets the command line go on with the
# others (their predictions are stored).
NOT_MATERIALIZED = "heads_not_materialized"


HEAD_COLUMNS = {"head": "string", "analysed": "int", "failed": "int", "skipped": "int", "seconds": "float"}


def _metadata(
    reports: dict[str, HeadReport], seconds: float, left_out: Iterable[str]
) -> dict[str, dg.MetadataValue]:
    rows = [(key, r.analysed, r.failed, r.skipped, round(r.seconds, 1)) for key, r in sorted(reports.items())]
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
        NOT_MATERIALIZED: dg.MetadataValue.json(sorted(left_out)),
    }


def _report_op(count: int) -> dg.OpDefinition:
    @dg.op(
        name="file_tags_report",
        description="Add up the shards' reports; materialize the selected head partitions.",
        ins={f"shard_{index}": dg.In(dg.Nothing) for index in range(count)},
        out=dg.Out(dg.Nothing),
    )
    def file_tags_report(
        context: dg.AssetExecutionContext, store: StoreResource, models: ModelsResource
    ) -> None:
        models_dir = models_folder(models)
        catalog = discover_models(models_dir, engine=models.inference_engine)
        for problem in catalog.problems:
            context.log.warning(f"model problem: {problem.path}: {problem.message}")
        heads, missing = catalog.select(context.partition_keys)
        reports, starts = _shard_reports(context)
        db = store.open()
        db.release_analysis_claims(context.run.run_id, int((time.time() - STALE_CLAIM_S) * 1000))
        counts = db.file_counts()
        analysable = int(counts["total"]) - int(counts["scan_errors"])
        for head in heads:
            report = reports.setdefault(head.partition_key, HeadReport(head.partition_key))
            # Files a shard attempt that died had finished count here too: they were done
            # when the retry started.
            report.skipped = max(0, analysable - report.analysed - report.failed)
        record = context.instance.get_run_record_by_id(context.run.run_id)
        seconds = time.time() - record.start_time if record and record.start_time else 0.0
        for key, report in sorted(reports.items()):
            context.log.info(
                f"{key}: {report.analysed} analysed, {report.failed} failed, "
                f"{report.skipped} skipped ({report.seconds:.1f}s of worker time)"
            )
        broken = {head.partition_key: (head, fault) for head in heads
                  if (fault := reports[head.partition_key].broken_model())}
        # The other heads' predictions are stored (a re-run skips them); the partitions of broken
        # or missing heads must not be marked materialized.
        if broken:
            details = "; ".join(f"{head.graph_path.name} ({key}): {fault}"
                                for key, (head, fault) in sorted(broken.items()))
            raise dg.Failure(
                f"{len(broken)} broken model(s), failing on their first files alike: {details}. "
                "Replace or remove the model file (its files are tried again once it changes); "
                "the other heads' predictions are stored",
                metadata=_metadata(reports, seconds, left_out=broken),
            )
        if missing:
            problems = {p.path.stem: p.message for p in catalog.problems}
            details = "; ".join(
                f"{key}" + (f" ({problems[name]})" if (name := _stem_hint(key, problems)) else "")
                for key in missing
            )
            raise dg.Failure(
                f"{len(missing)} selected heads have no usable model in {models_dir}: {details}",
                metadata=_metadata(reports, seconds, left_out=missing),
            )
        context.log.info(f"{len(heads)} heads in {seconds:.0f}s")
        for head in heads:
            # Each partition says what its own head did (the run's other heads have theirs).
            report = reports[head.partition_key].as_metadata()
            context.add_asset_metadata({
                **{name: report[name] for name in ("analysed", "failed", "skipped", "seconds")},
                "errors": dg.MetadataValue.json(report["errors"]),
                "shards": dg.MetadataValue.int(count),
                "shard_restarts": dg.MetadataValue.int(sum(n - 1 for n in starts.values() if n > 1)),
                "store": dg.MetadataValue.text(store.describe()),
            }, partition_key=head.partition_key)

    return file_tags_report


def _stem_hint(partition_key: str, problems: dict[str, str]) -> str | None:
    """The problem of a model file whose name matches the key's head, if any."""
    head_name = partition_key.split(":", 1)[-1]
    return next((stem for stem in problems if stem.split("-", 1)[0] == head_name), None)


def build_file_tags(shards: int) -> dg.AssetsDefinition:
    """``file_tags`` with ``shards`` analysis steps."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    shard_ops = [_shard_op(index, shards) for index in range(shards)]
    report = _report_op(shards)

    @dg.graph_asset(
        name="file_tags",
        partitions_def=heads_partitions,
        backfill_policy=SINGLE_RUN,
        ins={"library_files": dg.AssetIn(dagster_type=dg.Nothing)},
        group_name="ml",
        kinds={"python", "tensorflow"},
    )
    def file_tags(library_files: None) -> None:
        """Pooled raw outputs of every head for every library file that lacks current ones.

        Files already analysed at the head's current ``tagger_version`` are skipped, so a
        re-run only does new work; a failure is recorded for the (file, head), or for the file
        when its audio cannot be decoded, and the run goes on. A broken model is stopped after
        its first files and fails the run. Shard steps, placed by the run's executor, claim
        the files from the store.
        """
        return report(**{f"shard_{index}": shard(library_files) for index, shard in enumerate(shard_ops)})

    return file_tags

