"""Headless operation, for the command line: pre-flight checks that turn configuration
problems into :class:`UserError`, the pipeline's Dagster jobs run in-process against the
instance at ``DAGSTER_HOME`` (so every run shows in ``dagster dev`` as if launched from the
UI), and the status of every library.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from nomarr_pipeline.calibration.hashing import expected_calibration_hash
from nomarr_pipeline.calibration.state import is_usable
from nomarr_pipeline.jobs import (
    calibration_job,
    library_scan_job,
    partition_range_tags,
    predictions_job,
    tagging_job,
)
from nomarr_pipeline.partitions import HEADS
from nomarr_pipeline.progress import ProgressPoller, StepProgress
from nomarr_pipeline.settings import Settings
from nomarr_pipeline.store import Doc, Store, StoreError, open_store, redact_url

if TYPE_CHECKING:
    import pandas as pd

    from nomarr_pipeline.ml.discovery import Head

Measure = Callable[[], tuple[int, int]]


class UserError(Exception):
    """A problem the user can fix: shown as ``error:`` and ``next:`` lines, exit status 2."""

    def __init__(self, problem: str, next_step: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.next_step = next_step


# ---- pre-flight checks ----------------------------------------------------------------------


def checked_settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError as error:
        raise UserError(str(error), "fix the NOMARR_* environment variable (see the README table)") from None


def open_checked_store() -> Store:
    """Open the configured store and touch it once, so an unreachable database is reported
    before any run starts."""
    config = checked_settings()
    try:
        store = open_store(
            config.store_url,
            arango_db=config.arango_db,
            arango_user=config.arango_user,
            arango_password=config.arango_password,
        )
        store.list_libraries()  # one cheap round trip: reachable, authenticated, schema in place
    except StoreError as error:
        raise UserError(
            f"cannot use the store at {redact_url(config.store_url)}: {error}",
            "check NOMARR_STORE_URL (and NOMARR_ARANGO_* for ArangoDB) and that the database is running",
        ) from None
    return store


def require_library_roots() -> list[Path]:
    roots = list(checked_settings().library_roots)
    if not roots:
        raise UserError(
            "no library folders configured",
            "set NOMARR_LIBRARY_ROOTS to your music folders separated by ':' (or try `nomarr-pipeline demo`)",
        )
    missing = [str(root) for root in roots if not root.is_dir()]
    if missing:
        raise UserError(
            f"library folders not found: {', '.join(missing)}",
            "fix NOMARR_LIBRARY_ROOTS (folders separated by ':')",
        )
    return roots


def require_models_dir() -> Path:
    """NOMARR_MODELS_DIR, which must be set (the folder itself may not exist yet)."""
    models_dir = checked_settings().models_dir
    if models_dir is None:
        raise UserError(
            "no models folder configured",
            "set NOMARR_MODELS_DIR to a folder for Essentia models (<name>.pb + <name>.json), "
            "or try `nomarr-pipeline demo`",
        )
    return models_dir


def require_heads() -> list[Head]:
    """Every usable head of NOMARR_MODELS_DIR; problems with single models are printed."""
    from nomarr_pipeline.ml.discovery import discover_models

    models_dir = require_models_dir()
    if not models_dir.is_dir():
        raise UserError(
            f"models folder {models_dir} does not exist",
            "fix NOMARR_MODELS_DIR: it must name a folder of Essentia models (<name>.pb + <name>.json)",
        )
    catalog = discover_models(models_dir)
    for problem in catalog.problems:
        print(f"warning: model {problem.path}: {problem.message}", file=sys.stderr)
    if not catalog.heads:
        raise UserError(
            f"no usable model heads in {models_dir}",
            "`nomarr-pipeline models fetch --recommended` (or put Essentia head models and their "
            "backbone, <name>.pb + <name>.json, into that folder); `nomarr-pipeline models list` shows why",
        )
    return list(catalog.heads)


def dagster_instance() -> dg.DagsterInstance:
    """The instance the CLI shares with ``dagster dev``: ``DAGSTER_HOME``, by default
    ``.dagster_home/`` with the repository's ``dagster.yaml``."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").absolute())))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    shipped = Path(__file__).resolve().parent.parent / "dagster.yaml"
    if not config.exists() and shipped.exists():
        shutil.copyfile(shipped, config)
    return dg.DagsterInstance.get()


# ---- running jobs ---------------------------------------------------------------------------


@dataclass
class StepOutcome:
    """One pipeline step as the summary shows it."""

    step: str
    status: str  # "ok", "failed", "skipped"
    detail: str = ""
    run_ids: list[str] = field(default_factory=list)


def launch_run(
    instance: dg.DagsterInstance, job: dg.JobDefinition, tags: dict[str, str], *, verbose: bool
) -> tuple[str, str | None]:
    """Run ``job`` once and wait: its run id, and what failed (``None`` when it succeeded)."""
    # Dagster's console logger would interleave every event with the progress bar; the events
    # are still stored in the instance (the UI shows them all).
    level = "INFO" if verbose else "WARNING"
    result = job.execute_in_process(
        instance=instance,
        run_config={"loggers": {"console": {"config": {"log_level": level}}}},
        tags=tags,
        raise_on_error=False,
    )
    return result.run_id, None if result.success else _failure_message(result)


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            # A dg.Failure carries the user-facing text in its description.
            message = error.message.strip().splitlines()[-1] if error.message else error.cls_name
            return f"step {event.step_key} failed: {message}"
    return "the run failed (see its logs in the Dagster UI)"


class PipelineRunner:
    """Runs the pipeline's jobs one after the other against one Dagster instance; a step
    after a failed one is skipped."""

    def __init__(self, instance: dg.DagsterInstance, *, verbose: bool = False) -> None:
        from nomarr_pipeline.definitions import defs

        self.instance = instance
        self.defs = defs
        self.verbose = verbose
        self.outcomes: list[StepOutcome] = []

    def run_job(
        self,
        step: str,
        job_name: str,
        partition_keys: Sequence[str] = (),
        *,
        progress: Measure | None = None,
    ) -> StepOutcome:
        """Run ``job_name`` once, or once per contiguous range of ``partition_keys`` when the
        job is head-partitioned; ``progress`` measures (done, total) while it runs."""
        outcome = StepOutcome(step, "ok")
        self.outcomes.append(outcome)
        if any(o.status == "failed" for o in self.outcomes):
            outcome.status, outcome.detail = "skipped", "an earlier step failed"
            return outcome
        job = self.defs.resolve_job_def(job_name)
        base_tags = {"nomarr/launched_by": "cli"}
        runs = [base_tags]
        if job.partitions_def is not None:
            if not partition_keys:
                outcome.status, outcome.detail = "skipped", "no head partitions to run"
                return outcome
            ordered = self.instance.get_dynamic_partitions(HEADS)
            ranges = contiguous_ranges(ordered, partition_keys)
            runs = [{**base_tags, **partition_range_tags(keys)} for keys in ranges]
            outcome.detail = f"{len(partition_keys)} heads in {len(runs)} run(s)"
        with ProgressPoller(StepProgress(step), progress) if progress else nullcontext():
            for tags in runs:
                run_id, failure = launch_run(self.instance, job, tags, verbose=self.verbose)
                outcome.run_ids.append(run_id)
                if failure:
                    outcome.status, outcome.detail = "failed", failure
        return outcome

    def add_heads(self, keys: Sequence[str]) -> list[str]:
        """Add head partitions that the instance does not know yet; returns the new ones."""
        known = set(self.instance.get_dynamic_partitions(HEADS))
        new = [key for key in keys if key not in known]
        if new:
            self.instance.add_dynamic_partitions(HEADS, new)
        return new


def contiguous_ranges(ordered_keys: Sequence[str], wanted: Sequence[str]) -> list[list[str]]:
    """Split ``wanted`` into runs of consecutive keys in ``ordered_keys`` (dynamic partitions
    keep insertion order), so heads the user removed from the models folder but that are
    still partitions are never run by accident."""
    wanted_set = set(wanted)
    ranges: list[list[str]] = [[]]
    for key in ordered_keys:
        if key in wanted_set:
            ranges[-1].append(key)
        elif ranges[-1]:
            ranges.append([])
    return [keys for keys in ranges if keys]


# ---- the pipeline ---------------------------------------------------------------------------


def run_pipeline(*, verbose: bool = False) -> tuple[list[StepOutcome], Store]:
    """Scan → heads → predictions → calibration (with its package) → recalibration and tag
    writing. Returns each step's outcome and the store, for the summary."""
    roots = require_library_roots()
    heads = require_heads()
    store = open_checked_store()
    with dagster_instance() as instance:
        runner = PipelineRunner(instance, verbose=verbose)
        started = time.monotonic()

        print(f"scan: {len(roots)} library folder(s)")
        scan = runner.run_job("scan", library_scan_job.name)
        if scan.status == "failed":
            return runner.outcomes, store
        counts = store.file_counts()
        scan.detail = f"{counts['total']} files, {counts['scan_errors']} unreadable"
        if counts["total"] - counts["scan_errors"] <= 0:
            raise UserError(
                f"no audio files found in {', '.join(str(r) for r in roots)}",
                "put audio files (mp3, m4a, flac, ogg, opus, wav, aiff) into the library folders "
                "or fix NOMARR_LIBRARY_ROOTS",
            )

        keys = [head.partition_key for head in heads]
        new = runner.add_heads(keys)
        runner.outcomes.append(StepOutcome("head discovery", "ok", f"{len(keys)} heads ({len(new)} new)"))
        print(f"heads: {', '.join(keys)}")

        runner.run_job("predictions", predictions_job.name, keys, progress=analysis_progress(heads))
        runner.run_job("calibration", calibration_job.name, keys)
        runner.run_job("recalibration + tag writing", tagging_job.name, progress=tagging_progress())
        runner.outcomes.append(StepOutcome("total", "ok", f"{time.monotonic() - started:.0f}s"))
        return runner.outcomes, store


def analysis_progress(heads: Sequence[Head]) -> Measure:
    """Files analysed / analysable, measured on the poller's own connection."""
    from nomarr_pipeline.ml.analysis import head_version

    store = open_checked_store()
    versions = [head_version(head) for head in heads]

    def measure() -> tuple[int, int]:
        counts = store.file_counts()
        analysable = counts["total"] - counts["scan_errors"]
        # A file is analysed for all selected heads at once, so the head with the most
        # files left says how many files are left.
        left = max(store.count_files_needing_analysis(version) for version in versions)
        return max(0, analysable - left), analysable

    return measure


def tagging_progress() -> Measure:
    """Files recalibrated with no tag write pending / analysed files."""
    store = open_checked_store()
    target = expected_calibration_hash(store.list_calibrations())

    def measure() -> tuple[int, int]:
        counts = store.file_counts()
        analysed = counts["analysed"]
        not_recalibrated = store.count_files_needing_recalibration(target)
        return max(0, analysed - not_recalibrated - counts["pending_writes"]), analysed

    return measure


# ---- status ---------------------------------------------------------------------------------

STATUS_COLUMNS = [
    "library",
    "files",
    "analysed",
    "failed",
    "calibrated heads",
    "pending writes",
    "write errors",
    "expected hash",
    "remaining recalibration",
]


def usable_calibrations(store: Store) -> list[Doc]:
    """The calibrations that can be applied (``calibration.state.is_usable``)."""
    return [state for state in store.list_calibrations() if is_usable(state)]


def status_frame(store: Store) -> pd.DataFrame:
    """One row per library: the numbers ``nomarr-pipeline status`` prints."""
    import pandas as pd

    heads = len({(s["model_key"], s["head_name"]) for s in usable_calibrations(store)})
    target = expected_calibration_hash(store.list_calibrations())
    rows = []
    for library in store.list_libraries():
        counts = store.file_counts(library["_key"])
        rows.append(
            [
                library.get("name") or library.get("root_path") or library["_key"],
                counts["total"],
                counts["analysed"],
                counts["scan_errors"] + counts["analysis_errors"],
                heads,
                counts["pending_writes"],
                counts["write_errors"],
                target,
                store.count_files_needing_recalibration(target, library["_key"]),
            ]
        )
    return pd.DataFrame(rows, columns=STATUS_COLUMNS)


def tag_preview(store: Store) -> pd.DataFrame:
    """What a tag write would change, file by file and key by key (files untouched)."""
    from nomarr_pipeline.calibration.state import has_usable_calibration
    from nomarr_pipeline.tagging.batch import WriteReport, preview_frame, write_pending_tags

    has_calibration = has_usable_calibration(store.list_calibrations())
    rows = []
    for library in store.list_libraries():
        pending = store.file_counts(library["_key"])["pending_writes"]
        with StepProgress(f"preview {library.get('name') or library['_key']}") as progress:

            def show(report: WriteReport, progress: StepProgress = progress, total: int = pending) -> None:
                progress(report.processed, total)

            report = write_pending_tags(
                store,
                library=library,
                library_roots=[library["root_path"]],
                has_calibration=has_calibration,
                dry_run=True,
                progress=show,
            )
        rows.extend(report.preview)
    return preview_frame(rows)
