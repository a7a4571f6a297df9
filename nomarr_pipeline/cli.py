"""Command line for headless use of nomarr_pipeline.

``nomarr-pipeline demo``      build a demo library and demo models, run the whole pipeline
``nomarr-pipeline run``       the whole pipeline on NOMARR_LIBRARY_ROOTS / NOMARR_MODELS_DIR
``nomarr-pipeline scan``      only scan the library folders
``nomarr-pipeline status``    files, analysis, calibration and tag writing per library
``nomarr-pipeline export-calibrations`` / ``import-calibrations``   calibration packages
``nomarr-pipeline write-tags [--preview]``  write pending tags, or preview them as CSV

Pipeline steps run as Dagster jobs of ``nomarr_pipeline.definitions.defs`` in the Dagster
instance at ``DAGSTER_HOME`` (default ``.dagster_home/``), so every run shows up in
``dagster dev`` exactly as if it had been launched from the UI.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nomarr_pipeline.progress import ProgressPoller, ProgressReporter

if TYPE_CHECKING:
    import dagster as dg
    import pandas as pd

    from nomarr_pipeline.ml.discovery import Head
    from nomarr_pipeline.store import Store

DEMO_DIR = Path(".nomarr-demo")
HEADS_PARTITIONS = "heads"
# Tags that make one run of a job cover a range of partitions (one backbone pass per file
# for every head in the range; the head-partitioned assets use BackfillPolicy.single_run).
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

# Job names from nomarr_pipeline/jobs.py, in pipeline order.
LIBRARY_SCAN_JOB = "library_scan_job"
PREDICTIONS_JOB = "predictions_job"
CALIBRATION_JOB = "calibration_job"
CALIBRATION_PACKAGE_JOB = "calibration_package_job"
TAGGING_JOB = "tagging_job"


@dataclass(frozen=True)
class PipelineStep:
    label: str
    job_name: str
    assets: tuple[str, ...]  # what the step materializes (to see if another job already did)


# After the scan and head discovery. A step whose job is missing is skipped, or counted as
# done when an earlier job of the pipeline already materialized its assets.
PIPELINE_STEPS = (
    PipelineStep("predictions", PREDICTIONS_JOB, ("file_tags",)),
    PipelineStep(
        "calibration", CALIBRATION_JOB, ("calibration_state", "calibration_history", "calibration_sidecars")
    ),
    PipelineStep("calibration package", CALIBRATION_PACKAGE_JOB, ("calibration_package",)),
    PipelineStep("recalibration + tag writing", TAGGING_JOB, ("calibrated_tags", "written_tags")),
)


class CliError(Exception):
    """A problem the user can fix: printed without a traceback, exit code 2."""

    def __init__(self, problem: str, next_step: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.next_step = next_step


# ---- Dagster instance and jobs --------------------------------------------------------------


def _instance_home() -> Path:
    """The Dagster instance the CLI shares with ``dagster dev`` (``DAGSTER_HOME``)."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").absolute())))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    shipped = Path(__file__).resolve().parent.parent / "dagster.yaml"
    if not config.exists() and shipped.exists():
        shutil.copyfile(shipped, config)
    return home


@dataclass
class StepOutcome:
    """One pipeline step as the summary shows it."""

    step: str
    status: str  # "ok", "failed", "skipped"
    detail: str = ""
    run_ids: list[str] = field(default_factory=list)


class PipelineRunner:
    """Runs the pipeline's jobs in-process against one Dagster instance."""

    def __init__(self, instance: dg.DagsterInstance, *, verbose: bool = False) -> None:
        from nomarr_pipeline.definitions import defs

        self.instance = instance
        self.defs = defs
        self.verbose = verbose
        self.job_names = {job.name for job in defs.resolve_all_job_defs()}
        self.outcomes: list[StepOutcome] = []
        self.materialized_by: dict[str, str] = {}  # asset name -> job that ran it successfully

    def has_job(self, name: str) -> bool:
        return name in self.job_names

    def _run_config(self) -> dict[str, Any]:
        # Dagster's console logger would interleave every event with the progress line; the
        # events are still stored in the instance (the UI shows them all).
        level = "INFO" if self.verbose else "WARNING"
        return {"loggers": {"console": {"config": {"log_level": level}}}}

    def run_job(
        self, step: str, job_name: str, partition_keys: Sequence[str] = (), tags: dict[str, str] | None = None
    ) -> StepOutcome:
        """Run ``job_name`` once (or once per contiguous range of ``partition_keys`` when the
        job is head-partitioned). A job that is not defined is reported and skipped."""
        if not self.has_job(job_name):
            outcome = StepOutcome(step, "skipped", f"job {job_name} is not defined in this version")
            self.outcomes.append(outcome)
            return outcome
        if any(o.status == "failed" for o in self.outcomes):
            outcome = StepOutcome(step, "skipped", "an earlier step failed")
            self.outcomes.append(outcome)
            return outcome
        job = self.defs.resolve_job_def(job_name)
        base_tags = {"nomarr/launched_by": "cli", **(tags or {})}
        run_tags: list[dict[str, str]]
        if job.partitions_def is None:
            run_tags = [base_tags]
        else:
            if not partition_keys:
                outcome = StepOutcome(step, "skipped", "no head partitions to run")
                self.outcomes.append(outcome)
                return outcome
            ranges = contiguous_ranges(self.instance.get_dynamic_partitions(HEADS_PARTITIONS), partition_keys)
            run_tags = [{**base_tags, RANGE_START_TAG: first, RANGE_END_TAG: last} for first, last in ranges]
        outcome = StepOutcome(step, "ok")
        for tags_of_run in run_tags:
            result = job.execute_in_process(
                instance=self.instance, run_config=self._run_config(), tags=tags_of_run, raise_on_error=False
            )
            outcome.run_ids.append(result.run_id)
            if not result.success:
                outcome.status = "failed"
                outcome.detail = _failure_message(result)
        if outcome.status == "ok":
            for key in job.asset_layer.selected_asset_keys:
                self.materialized_by[key.to_user_string()] = job_name
            if job.partitions_def is not None:
                outcome.detail = f"{len(partition_keys)} heads in {len(run_tags)} run(s)"
        self.outcomes.append(outcome)
        return outcome

    def run_step(self, step: PipelineStep, partition_keys: Sequence[str]) -> StepOutcome:
        if not self.has_job(step.job_name):
            covering = {self.materialized_by.get(asset) for asset in step.assets}
            if len(covering) == 1 and None not in covering:
                outcome = StepOutcome(step.label, "ok", f"done by {covering.pop()}")
                self.outcomes.append(outcome)
                return outcome
        return self.run_job(step.label, step.job_name, partition_keys)

    def add_heads(self, keys: Sequence[str]) -> list[str]:
        """Add head partitions that the instance does not know yet; returns the new ones."""
        known = set(self.instance.get_dynamic_partitions(HEADS_PARTITIONS))
        new = [key for key in keys if key not in known]
        if new:
            self.instance.add_dynamic_partitions(HEADS_PARTITIONS, new)
        return new


def contiguous_ranges(ordered_keys: Sequence[str], wanted: Sequence[str]) -> list[tuple[str, str]]:
    """Group ``wanted`` into (first, last) ranges of consecutive keys in ``ordered_keys``
    (dynamic partitions keep insertion order), so heads the user removed from the models
    folder but that are still partitions are never run by accident."""
    wanted_set = set(wanted)
    ranges: list[tuple[str, str]] = []
    start: str | None = None
    previous: str | None = None
    for key in ordered_keys:
        if key in wanted_set:
            start = start or key
            previous = key
        elif start is not None and previous is not None:
            ranges.append((start, previous))
            start = previous = None
    if start is not None and previous is not None:
        ranges.append((start, previous))
    return ranges


def _failure_message(result: Any) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            # A dg.Failure carries the user-facing text in its description.
            message = error.message.strip().splitlines()[-1] if error.message else error.cls_name
            return f"step {event.step_key} failed: {message}"
    return "the run failed (see its logs in the Dagster UI)"


# ---- store and configuration ----------------------------------------------------------------


def _settings() -> Any:
    from nomarr_pipeline.settings import Settings

    try:
        return Settings.from_env()
    except ValueError as error:
        raise CliError(str(error), "fix the NOMARR_* environment variable (see the README table)") from None


def open_checked_store() -> Store:
    """Open the configured store and touch it once, so an unreachable database is reported
    before any run starts."""
    from nomarr_pipeline.store import StoreError, open_store, redact_url

    settings = _settings()
    try:
        store = open_store(
            settings.store_url,
            arango_db=settings.arango_db,
            arango_user=settings.arango_user,
            arango_password=settings.arango_password,
        )
        store.list_libraries()  # one cheap round trip: reachable, authenticated, schema in place
    except StoreError as error:
        raise CliError(
            f"cannot use the store at {redact_url(settings.store_url)}: {error}",
            "check NOMARR_STORE_URL (and NOMARR_ARANGO_* for ArangoDB) and that the database is running",
        ) from None
    return store


def require_library_roots() -> list[Path]:
    roots = list(_settings().library_roots)
    if not roots:
        raise CliError(
            "no library folders configured",
            "set NOMARR_LIBRARY_ROOTS to your music folders separated by ':' (or try `nomarr-pipeline demo`)",
        )
    missing = [str(root) for root in roots if not root.is_dir()]
    if missing:
        raise CliError(
            f"library folders not found: {', '.join(missing)}",
            "fix NOMARR_LIBRARY_ROOTS (folders separated by ':')",
        )
    return roots


def require_heads() -> list[Head]:
    """Every usable head of NOMARR_MODELS_DIR; problems with single models are printed."""
    from nomarr_pipeline.ml.discovery import discover_models

    models_dir = _settings().models_dir
    if models_dir is None:
        raise CliError(
            "no models folder configured",
            "set NOMARR_MODELS_DIR to a folder of Essentia models (<name>.pb + <name>.json), "
            "or try `nomarr-pipeline demo`",
        )
    if not models_dir.is_dir():
        raise CliError(
            f"models folder {models_dir} does not exist",
            "fix NOMARR_MODELS_DIR: it must name a folder of Essentia models (<name>.pb + <name>.json)",
        )
    catalog = discover_models(models_dir)
    for problem in catalog.problems:
        print(f"warning: model {problem.path}: {problem.message}", file=sys.stderr)
    if not catalog.heads:
        raise CliError(
            f"no usable model heads in {models_dir}",
            "put Essentia head models (e.g. mood_happy-discogs-effnet-1.pb + .json) and their "
            "backbone (e.g. discogs-effnet-bs64-1.pb + .json) into that folder",
        )
    return list(catalog.heads)


def calibrated_states(store: Store) -> list[dict[str, Any]]:
    return [s for s in store.list_calibrations() if s.get("p5") is not None and s.get("p95") is not None]


def expected_hash(store: Store) -> str:
    from nomarr_pipeline.calibration.hashing import expected_calibration_hash

    return expected_calibration_hash(store.list_calibrations())


# ---- progress measurements (run on a poller thread while a job runs) -------------------------


def _analysis_progress(heads: Sequence[Head]) -> Callable[[], tuple[int, int]]:
    from nomarr_pipeline.ml.analysis import head_version

    store = open_checked_store()  # the poller's own connection (one per thread)
    versions = [head_version(head) for head in heads]

    def measure() -> tuple[int, int]:
        counts = store.file_counts()
        analysable = counts["total"] - counts["scan_errors"]
        # A file is analysed for all selected heads at once, so the head with the most
        # files left says how many files are left.
        left = max(store.count_files_needing_analysis(version) for version in versions)
        return max(0, analysable - left), analysable

    return measure


def _tagging_progress() -> Callable[[], tuple[int, int]]:
    store = open_checked_store()
    target = expected_hash(store)

    def measure() -> tuple[int, int]:
        counts = store.file_counts()
        analysed = counts["analysed"]
        not_recalibrated = store.count_files_needing_recalibration(target)
        # Done = recalibrated and no tag write pending any more.
        done = analysed - not_recalibrated - counts["pending_writes"]
        return max(0, done), analysed

    return measure


# ---- the pipeline ---------------------------------------------------------------------------


def run_pipeline(*, verbose: bool = False) -> tuple[list[StepOutcome], Store]:
    """Scan → heads → predictions → calibration → package → recalibration and tag writing."""
    import dagster as dg

    roots = require_library_roots()
    heads = require_heads()
    store = open_checked_store()
    _instance_home()
    with dg.DagsterInstance.get() as instance:
        runner = PipelineRunner(instance, verbose=verbose)
        started = time.monotonic()

        print(f"scan: {len(roots)} library folder(s)")
        scan = runner.run_job("scan", LIBRARY_SCAN_JOB)
        counts = store.file_counts()
        if scan.status == "failed":
            return runner.outcomes, store
        scan.detail = f"{counts['total']} files, {counts['scan_errors']} unreadable"
        if counts["total"] - counts["scan_errors"] <= 0:
            raise CliError(
                f"no audio files found in {', '.join(str(r) for r in roots)}",
                "put audio files (mp3, m4a, flac, ogg, opus, wav, aiff) into the library folders "
                "or fix NOMARR_LIBRARY_ROOTS",
            )

        keys = [head.partition_key for head in heads]
        new = runner.add_heads(keys)
        runner.outcomes.append(StepOutcome("head discovery", "ok", f"{len(keys)} heads ({len(new)} new)"))
        print(f"heads: {', '.join(keys)}")

        watched = {
            PREDICTIONS_JOB: ("predictions", lambda: _analysis_progress(heads)),
            TAGGING_JOB: ("recalibration + tag writing", _tagging_progress),
        }
        for step in PIPELINE_STEPS:
            if step.job_name in watched and runner.has_job(step.job_name):
                label, measure = watched[step.job_name]
                with ProgressPoller(ProgressReporter(label), measure(), interval_s=1.0):
                    runner.run_step(step, keys)
            else:
                runner.run_step(step, keys)
        runner.outcomes.append(StepOutcome("total", "ok", f"{time.monotonic() - started:.0f}s"))
        return runner.outcomes, store


def status_frame(store: Store) -> pd.DataFrame:
    """One row per library: the numbers ``nomarr-pipeline status`` prints."""
    import pandas as pd

    states = calibrated_states(store)
    heads = len({(s["model_key"], s["head_name"]) for s in states})
    target = expected_hash(store)
    rows = []
    for library in store.list_libraries():
        counts = store.file_counts(library["_key"])
        rows.append(
            {
                "library": library.get("name") or library.get("root_path") or library["_key"],
                "files": counts["total"],
                "analysed": counts["analysed"],
                "failed": counts["scan_errors"] + counts["analysis_errors"],
                "calibrated heads": heads,
                "pending writes": counts["pending_writes"],
                "write errors": counts["write_errors"],
                "expected hash": target,
                "remaining recalibration": store.count_files_needing_recalibration(target, library["_key"]),
            }
        )
    return pd.DataFrame(rows, columns=STATUS_COLUMNS)


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


def print_outcomes(outcomes: Sequence[StepOutcome]) -> bool:
    ok = True
    for outcome in outcomes:
        ok = ok and outcome.status != "failed"
        runs = f"  [run {', '.join(r[:8] for r in outcome.run_ids)}]" if outcome.run_ids else ""
        print(f"  {outcome.step:<28} {outcome.status:<8} {outcome.detail}{runs}")
    return ok


def print_where_to_look(store: Store) -> None:
    from nomarr_pipeline.store import redact_url

    settings = _settings()
    print()
    frame = status_frame(store)
    if not frame.empty:
        print(frame.to_string(index=False))
        print()
    print(f"store:            {redact_url(settings.store_url)}")
    print(f"calibrations:     {settings.export_dir} (calibrations.json and one sidecar per head)")
    print(f"Dagster instance: {os.environ['DAGSTER_HOME']}")
    print("  see the runs, asset lineage and partitions with: dagster dev  (http://127.0.0.1:3000)")


# ---- commands -------------------------------------------------------------------------------


def cmd_scan(_: argparse.Namespace) -> int:
    import dagster as dg

    require_library_roots()
    open_checked_store()
    _instance_home()
    with dg.DagsterInstance.get() as instance:
        outcome = PipelineRunner(instance).run_job("scan", LIBRARY_SCAN_JOB)
    print_outcomes([outcome])
    return 0 if outcome.status != "failed" else 1


def cmd_run(args: argparse.Namespace) -> int:
    outcomes, store = run_pipeline(verbose=args.verbose)
    print("\npipeline:")
    ok = print_outcomes(outcomes)
    print_where_to_look(store)
    return 0 if ok else 1


def configure_demo_environment(folder: Path) -> dict[str, str]:
    """Point every NOMARR_* setting at the demo folder, so the demo never reads or writes the
    user's own store, library or exports (it writes tags into the demo files only)."""
    data = folder / "data"
    env = {
        "NOMARR_DATA_DIR": str(data),
        "NOMARR_STORE_URL": f"sqlite:///{data / 'nomarr.sqlite3'}",
        "NOMARR_EXPORT_DIR": str(data / "calibration"),
        "NOMARR_LIBRARY_ROOTS": str(folder / "library"),
        "NOMARR_MODELS_DIR": str(folder / "models"),
        "NOMARR_FILE_WRITE_MODE": "full",
        "NOMARR_AUTO_WRITE_TAGS": "true",
        "NOMARR_WRITE_RAW_SCORES": "false",
    }
    os.environ.update(env)
    return env


def cmd_demo(args: argparse.Namespace) -> int:
    from nomarr_pipeline.demo import build_demo_library, build_demo_models

    folder = Path(args.folder).absolute()
    env = configure_demo_environment(folder)
    library = build_demo_library(folder / "library")
    models = build_demo_models(folder / "models")
    print(f"demo library: {library}")
    print(f"demo models:  {models}")
    outcomes, store = run_pipeline(verbose=args.verbose)
    print("\npipeline:")
    ok = print_outcomes(outcomes)
    print_where_to_look(store)
    print(f"tags written into: {library}  (nom:* keys; e.g. `ffprobe` or mutagen-inspect)")
    print("to use the demo data in `dagster dev`, start it with:")
    print("  " + " ".join(f"{name}={value}" for name, value in env.items()) + " dagster dev")
    return 0 if ok else 1


def cmd_status(_: argparse.Namespace) -> int:
    import pandas as pd

    store = open_checked_store()
    frame = status_frame(store)
    if frame.empty:
        print("no library scanned yet: run `nomarr-pipeline run` (or `nomarr-pipeline demo`)")
        return 0
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(frame.to_string(index=False))
    return 0


def cmd_export_calibrations(args: argparse.Namespace) -> int:
    from nomarr_pipeline.calibration.exports import export_package, export_sidecars

    store = open_checked_store()
    states = calibrated_states(store)
    if not states:
        raise CliError("there is no calibration to export yet", "run `nomarr-pipeline run` first")
    dest = Path(args.dest).absolute() if args.dest else _settings().export_dir
    try:
        package = export_package(states, dest)
    except OSError as error:
        raise CliError(f"cannot write the calibration package: {error}", "choose another --dest") from None
    report = export_sidecars(states, dest)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"package: {package} ({len(states)} labels)")
    print(f"sidecars: {len(report.written)} in {dest}")
    return 0 if not report.warnings else 1


def cmd_import_calibrations(args: argparse.Namespace) -> int:
    from nomarr_pipeline.calibration.exports import InvalidPackageError, import_package

    path = Path(args.package)
    if not path.is_file():
        raise CliError(f"calibration package {path} not found", "give the path of a calibrations.json")
    store = open_checked_store()
    try:
        report = import_package(store, path, time.time_ns() // 1_000_000, overwrite=args.overwrite)
    except InvalidPackageError as error:
        raise CliError(
            str(error), "export a fresh package with `nomarr-pipeline export-calibrations`"
        ) from None
    print(f"imported: {len(report.imported)} labels")
    if report.skipped_existing:
        print(
            f"kept: {len(report.skipped_existing)} labels already calibrated here "
            "(use --overwrite to replace them)"
        )
    for problem in report.unusable:
        print(f"unusable: {problem}", file=sys.stderr)
    if report.imported:
        print("next: `nomarr-pipeline run` recalibrates the stored predictions and writes the tags")
    return 0


def cmd_force_recalibration(args: argparse.Namespace) -> int:
    from nomarr_pipeline.library.identity import library_key

    store = open_checked_store()
    library_id = None
    if args.library:
        library_id = library_key(Path(args.library).resolve())
        if store.get_library(library_id) is None:
            raise CliError(f"{args.library} is not a scanned library", "see `nomarr-pipeline status`")
    count = store.reset_calibration_hashes(library_id)
    scope = f"library {args.library}" if args.library else "every library"
    print(f"{count} files of {scope} will be recalibrated")
    print("next: calibration_hash_sensor starts it, or `nomarr-pipeline run` / materialize calibrated_tags")
    return 0


def cmd_write_tags(args: argparse.Namespace) -> int:
    if not args.preview:
        import dagster as dg

        open_checked_store()
        _instance_home()
        with dg.DagsterInstance.get() as instance:
            runner = PipelineRunner(instance, verbose=args.verbose)
            if not runner.has_job(TAGGING_JOB):
                raise CliError(f"job {TAGGING_JOB} is not defined in this version", "use --preview")
            with ProgressPoller(ProgressReporter("tag writing"), _tagging_progress(), interval_s=1.0):
                outcome = runner.run_job("recalibration + tag writing", TAGGING_JOB)
        print_outcomes([outcome])
        return 0 if outcome.status != "failed" else 1
    return preview_tags(Path(args.output))


def preview_tags(output: Path) -> int:
    """What a tag write would change, file by file and key by key, as CSV (files untouched)."""
    from nomarr_pipeline.calibration.state import has_usable_calibration
    from nomarr_pipeline.tagging.batch import WriteReport, preview_frame, write_pending_tags

    store = open_checked_store()
    has_calibration = has_usable_calibration(store.list_calibrations())
    rows = []
    for library in store.list_libraries():
        pending = store.file_counts(library["_key"])["pending_writes"]
        reporter = ProgressReporter(f"preview {library.get('name') or library['_key']}")

        def show(report: WriteReport, total: int = pending, reporter: ProgressReporter = reporter) -> None:
            reporter(report.processed, total)

        report = write_pending_tags(
            store,
            library=library,
            library_roots=[library["root_path"]],
            has_calibration=has_calibration,
            dry_run=True,
            progress=show,
        )
        reporter.finish()
        rows.extend(report.preview)
    frame = preview_frame(rows)
    if str(output) == "-":
        frame.to_csv(sys.stdout, index=False)
    else:
        frame.to_csv(output, index=False)
        changes = int((frame["action"] != "keep").sum()) if not frame.empty else 0
        print(
            f"preview: {output} ({frame['file_id'].nunique() if not frame.empty else 0} files, "
            f"{changes} tag changes)"
        )
    return 0


# ---- entry point ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nomarr-pipeline",
        description="Keep a music library auto-tagged by Essentia models (Dagster pipeline).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="build a demo library and models, run the whole pipeline on them")
    demo.add_argument("--folder", default=str(DEMO_DIR), help="where the demo library, models and data go")
    demo.add_argument("--verbose", action="store_true", help="show Dagster's event log on the console")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run the whole pipeline on NOMARR_LIBRARY_ROOTS with NOMARR_MODELS_DIR")
    run.add_argument("--verbose", action="store_true", help="show Dagster's event log on the console")
    run.set_defaults(func=cmd_run)

    scan = sub.add_parser("scan", help="scan the configured library folders")
    scan.set_defaults(func=cmd_scan)

    status = sub.add_parser("status", help="files, analysis, calibration and pending writes per library")
    status.set_defaults(func=cmd_status)

    export = sub.add_parser("export-calibrations", help="write calibrations.json and one sidecar per head")
    export.add_argument("--dest", help="folder (default: NOMARR_EXPORT_DIR)")
    export.set_defaults(func=cmd_export_calibrations)

    imp = sub.add_parser("import-calibrations", help="bootstrap calibrations from a calibrations.json")
    imp.add_argument("package", help="path of a calibrations.json")
    imp.add_argument("--overwrite", action="store_true", help="replace calibrations that exist here")
    imp.set_defaults(func=cmd_import_calibrations)

    force = sub.add_parser(
        "force-recalibration", help="mark every file stale so it is recalibrated (new tier settings)"
    )
    force.add_argument("--library", metavar="FOLDER", help="only the library in this folder")
    force.set_defaults(func=cmd_force_recalibration)

    write = sub.add_parser("write-tags", help="write pending tags into the audio files (a Dagster run)")
    write.add_argument("--preview", action="store_true", help="only show what would change, as CSV")
    write.add_argument("--output", default="tag-preview.csv", help="CSV path for --preview ('-' = stdout)")
    write.add_argument("--verbose", action="store_true", help="show Dagster's event log on the console")
    write.set_defaults(func=cmd_write_tags)
    return parser


def main(argv: list[str] | None = None) -> int:
    from nomarr_pipeline.store import StoreError

    args = build_parser().parse_args(argv)
    # Beta/preview notices about Dagster APIs the project chose on purpose are noise to an
    # operator; real warnings still show.
    warnings.filterwarnings("ignore", message=r".*(is currently in beta|is currently in preview).*")
    try:
        return int(args.func(args))
    except CliError as error:
        print(f"error: {error.problem}\nnext: {error.next_step}", file=sys.stderr)
        return 2
    except StoreError as error:  # raised after the pre-flight check, e.g. the server went away
        print(
            f"error: database: {error}\nnext: check NOMARR_STORE_URL and that the database is running",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
