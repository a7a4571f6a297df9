"""Headless operation, for the command line: pre-flight checks that turn configuration
problems into :class:`UserError`, the pipeline's Dagster jobs run against the instance at
``DAGSTER_HOME`` (so every run shows in ``dagster dev`` as if launched from the
UI), and the status of every library. What stands in the way of a run (runs left by a crash,
busy pool slots, another pipeline on the embedded store) is :mod:`nomarr_pipeline.run_guard`'s.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from nomarr_pipeline.assets.file_tags import NOT_MATERIALIZED
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
from nomarr_pipeline.run_guard import STOP, RunGuard, one_pipeline_per_store
from nomarr_pipeline.settings import SettingError, Settings, TagSettings
from nomarr_pipeline.store import (
    Doc,
    Store,
    StoreError,
    StoreFullError,
    StoreReadOnlyError,
    open_store,
    redact_url,
)

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


def say(text: str) -> None:
    """A line for the user about what the command line is doing or waiting for (stderr)."""
    print(text, file=sys.stderr, flush=True)


# ---- pre-flight checks ----------------------------------------------------------------------


def checked_settings() -> Settings:
    try:
        TagSettings.from_env()  # checked with the others: a run would fail on a bad one
        return Settings.from_env()
    except SettingError as error:
        raise UserError(str(error), error.next_step) from None
    except ValueError as error:
        raise UserError(str(error), "fix the NOMARR_* environment variable (see the README table)") from None


def open_checked_store(*, for_writing: bool = False) -> Store:
    """Open the configured store and touch it once, so an unreachable database is reported
    before any run starts; ``for_writing`` also refuses an embedded store this user cannot
    write (a read-only file, folder or mount)."""
    config = checked_settings()
    try:
        config.ensure_store_folder()
    except SettingError as error:
        raise UserError(str(error), error.next_step) from None
    except OSError as error:
        raise UserError(
            f"cannot create the data folder {config.data_dir}: {error.strerror}",
            "set NOMARR_DATA_DIR to a folder this user can write",
        ) from None
    try:
        store = open_store(
            config.store_url,
            arango_db=config.arango_db,
            arango_user=config.arango_user,
            arango_password=config.arango_password,
            pg_password=config.pg_password,
        )
        store.list_libraries()  # one cheap round trip: reachable, authenticated, schema in place
    except StoreError as error:
        problem = f"cannot use the store at {redact_url(config.store_url)}: {error}"
        raise UserError(problem, store_advice(error)) from None
    path = config.sqlite_store_path()
    if for_writing and path is not None:
        _require_writable_store(path)
    return store


def store_advice(error: StoreError) -> str:
    """What to do about a store that refused: the ``next:`` line."""
    if isinstance(error, StoreFullError):
        return (
            "free space on the store's disk (or move the store and set NOMARR_STORE_URL), then run "
            "again: everything stored before is kept and the runs resume"
        )
    if isinstance(error, StoreReadOnlyError):
        return (
            "make the store file and its folder writable (or set NOMARR_STORE_URL to a writable copy), "
            "then run again"
        )
    return (
        "check NOMARR_STORE_URL (and NOMARR_PG_PASSWORD for PostgreSQL, NOMARR_ARANGO_* for ArangoDB) "
        "and that the database is running"
    )


def _require_writable_store(path: Path) -> None:
    # SQLite writes the file and, next to it, its write-ahead log.
    for target in (path, path.parent):
        if os.access(target, os.W_OK):
            continue
        read_only_mount = bool(os.statvfs(target).f_flag & os.ST_RDONLY)
        why = "is on a read-only file system" if read_only_mount else "is not writable by this user"
        raise UserError(
            f"the SQLite store {path} cannot be written: {target} {why}",
            "make the store file and its folder writable, or set NOMARR_STORE_URL to a writable copy "
            "(sqlite3 nomarr.sqlite3 \".backup copy.sqlite3\")",
        )


def writable_folder(path: Path, variable: str, expected: str) -> Path:
    """``path`` as a folder this process can write, created when only its last part is
    missing; otherwise a :class:`UserError` naming ``variable``."""
    fix = f"set {variable} to {expected}"
    if path.exists() and not path.is_dir():
        raise UserError(f"{variable} is {path}, which is not a folder", fix)
    if not path.exists():
        if not path.parent.is_dir():
            raise UserError(f"{variable} is {path}, but its parent folder does not exist", fix)
        try:
            path.mkdir()
        except OSError as error:
            raise UserError(f"cannot create {variable} {path}: {error.strerror}", fix) from None
    try:
        with tempfile.TemporaryFile(dir=path):  # gone again when closed
            pass
    except OSError as error:
        raise UserError(
            f"cannot write into {variable} {path}: {error.strerror}",
            f"make it writable (or free space on its disk), or {fix}",
        ) from None
    return path


def require_export_dir() -> Path:
    expected = "a folder for calibration exports (or unset it: <data dir>/calibration)"
    settings = checked_settings()
    data_dir = settings.data_dir
    if settings.export_dir == data_dir / "calibration" and not data_dir.exists() and data_dir.parent.is_dir():
        # The default lives in the data folder, which only an embedded store creates itself:
        # with a database server it may not exist yet.
        data_dir.mkdir()
    return writable_folder(settings.export_dir, "NOMARR_EXPORT_DIR", expected)


def require_library_roots() -> list[Path]:
    roots = list(checked_settings().library_roots)
    if not roots:
        raise UserError(
            "no library folders configured",
            "set NOMARR_LIBRARY_ROOTS to your music folders separated by ':' (or try `nomarr-pipeline demo`)",
        )
    for root in roots:
        if not root.is_dir():
            why = "is not a folder" if root.exists() else "does not exist"
            raise UserError(
                f"NOMARR_LIBRARY_ROOTS names {root}, which {why}",
                "set NOMARR_LIBRARY_ROOTS to existing music folders, separated by ':'",
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
        why = "is not a folder" if models_dir.exists() else "does not exist"
        raise UserError(
            f"NOMARR_MODELS_DIR names {models_dir}, which {why}",
            "set NOMARR_MODELS_DIR to a folder of Essentia models (<name>.pb + <name>.json)",
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


def known_heads() -> list[Head] | None:
    """Every head of NOMARR_MODELS_DIR; ``None`` when no models folder is configured."""
    from nomarr_pipeline.ml.discovery import discover_models

    models_dir = checked_settings().models_dir
    if models_dir is None or not models_dir.is_dir():
        return None
    return list(discover_models(models_dir).heads)


def known_head_labels() -> dict[tuple[str, str], tuple[str, ...]] | None:
    """(model_key, head_name) -> labels of every head in NOMARR_MODELS_DIR; ``None`` when no
    models folder is configured."""
    heads = known_heads()
    return None if heads is None else {(head.model_key, head.head_name): head.labels for head in heads}


def dagster_instance() -> dg.DagsterInstance:
    """The instance the CLI shares with ``dagster dev``: ``DAGSTER_HOME``, by default
    ``.dagster_home/`` with the repository's ``dagster.yaml``."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").absolute())))
    expected = "a folder for Dagster's runs (or unset it: .dagster_home/ in this folder)"
    if not home.is_absolute():
        raise UserError(f"DAGSTER_HOME is {home}, not an absolute path", f"set DAGSTER_HOME to {expected}")
    writable_folder(home, "DAGSTER_HOME", expected)
    config = home / "dagster.yaml"
    shipped = Path(__file__).resolve().parent.parent / "dagster.yaml"
    try:
        if not config.exists() and shipped.exists():
            shutil.copyfile(shipped, config)
        return dg.DagsterInstance.get()
    except Exception as error:
        raise _instance_error(error) from None


# Packages whose errors mean that the instance's database refused (Dagster's storages).
_STORAGE_PACKAGES = ("sqlite3", "sqlalchemy", "psycopg2", "psycopg")


def _is_storage_error(error: BaseException) -> bool:
    return isinstance(error, OSError) or type(error).__module__.split(".")[0] in _STORAGE_PACKAGES


def _instance_error(error: Exception) -> Exception:
    """A :class:`UserError` when the instance's storage refused (full disk, read-only),
    else ``error`` itself (a bug, shown with its traceback)."""
    cause: BaseException | None = error
    while cause is not None and not _is_storage_error(cause):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return error
    home = os.environ["DAGSTER_HOME"]
    return UserError(
        f"the Dagster instance in DAGSTER_HOME {home} cannot be written: {cause}",
        "free space on its disk or make it writable, or set DAGSTER_HOME to another folder; "
        "then run again (finished work is kept)",
    )


# ---- running jobs ---------------------------------------------------------------------------


@dataclass
class StepOutcome:
    """One pipeline step as the summary shows it."""

    step: str
    status: str  # "ok", "failed", "skipped"
    detail: str = ""
    run_ids: list[str] = field(default_factory=list)
    # Heads a failed step left out while it finished the others (a broken model): the steps
    # after it go on without them.
    heads_left_out: list[str] = field(default_factory=list)

    @property
    def stops_later_steps(self) -> bool:
        return self.status == "failed" and not self.heads_left_out


@dataclass(frozen=True)
class RunFailure:
    """What failed in a run, as the summary says it, and the heads it left out."""

    text: str
    heads_left_out: tuple[str, ...] = ()


def launch_run(
    instance: dg.DagsterInstance, job: dg.JobDefinition, tags: dict[str, str], *, verbose: bool
) -> tuple[str, RunFailure | None]:
    """Run ``job`` once and wait: its run id, and what failed (``None`` when it succeeded).

    A step that failed because the store's disk is full or read-only raises that
    :class:`StoreError`, as does an interrupt (Ctrl-C, SIGTERM) its ``KeyboardInterrupt``.

    A predictions run goes through the code location's executor, each step in its own process,
    so its shards work in parallel as when launched from the UI; the other jobs gain nothing
    from that and run in this process."""
    # Dagster's console logger would interleave its events, tracebacks included, with the
    # progress bar; the summary names what failed, and the instance keeps every event (the
    # UI shows them all, as does --verbose).
    level = "INFO" if verbose else "CRITICAL"
    run_config = {"loggers": {"console": {"config": {"log_level": level}}}}
    try:
        if job.name == predictions_job.name:
            recon = dg.build_reconstructable_job("nomarr_pipeline.definitions", "job_named", (job.name,))
            with (
                nullcontext() if verbose else step_processes_print_to(step_output_log()),
                dg.execute_job(recon, instance, run_config=run_config, tags=tags) as launched,
            ):
                run_id, success, events = launched.run_id, launched.success, launched.all_events
        else:
            result = job.execute_in_process(
                instance=instance, run_config=run_config, tags=tags, raise_on_error=False
            )
            run_id, success, events = result.run_id, result.success, result.all_events
    except Exception as error:
        raise _instance_error(error) from None
    STOP.raise_if_received()
    if success:
        return run_id, None
    return run_id, _failure_of(events)


def step_output_log() -> Path:
    """Where the step processes of the latest predictions run of the command line printed."""
    return Path(os.environ["DAGSTER_HOME"]) / "nomarr-cli" / "step-processes.log"


@contextmanager
def step_processes_print_to(log: Path) -> Iterator[None]:
    """Processes started meanwhile (a run's step processes, their analysis workers) print
    into ``log``, while this process keeps printing to the terminal.

    Step processes inherit this process's stdout and stderr, and write there before any run
    config applies: Dagster's DEBUG line per step process, warnings of the code location they
    load, TensorFlow's and Essentia's own lines. The events are in the instance (the UI shows
    them, as does ``--verbose``); the command line shows its progress and summary."""
    log.parent.mkdir(exist_ok=True)
    streams = sys.stdout, sys.stderr
    for stream in streams:
        stream.flush()
    # This process's own output goes on through copies of the terminal's descriptors.
    terminal = [open(os.dup(fd), "w", buffering=1, encoding=stream.encoding, errors="replace")  # noqa: SIM115
                for fd, stream in ((1, streams[0]), (2, streams[1]))]
    with open(log, "wb") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        sys.stdout, sys.stderr = terminal
        try:
            yield
        finally:
            for stream in terminal:
                stream.flush()
            os.dup2(terminal[0].fileno(), 1)
            os.dup2(terminal[1].fileno(), 2)
            sys.stdout, sys.stderr = streams
            for stream in terminal:
                stream.close()


# A step's store error is re-raised in the command line as itself, so it gets its own advice.
_STORE_ERRORS: dict[str, type[StoreError]] = {
    cls.__name__: cls for cls in (StoreError, StoreFullError, StoreReadOnlyError)
}


def _failure_of(events: Sequence[dg.DagsterEvent]) -> RunFailure:
    """What failed; a step's store error is raised as itself."""
    for event in events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            user_data = event.step_failure_data.user_failure_data
            left_out = user_data.metadata.get(NOT_MATERIALIZED) if user_data else None
            error = event.step_failure_data.error
            while error.cause is not None and error.cls_name not in _STORE_ERRORS:
                error = error.cause  # the step's own exception, under Dagster's wrapper
            # "module.Class: text" -> "text"; a dg.Failure's description is its last line.
            text = error.message.split(f"{error.cls_name}: ", 1)[-1].strip()
            text = text.splitlines()[-1] if text else error.cls_name
            if error.cls_name in _STORE_ERRORS:
                raise _STORE_ERRORS[error.cls_name](text)
            heads = tuple(left_out.value) if isinstance(left_out, dg.JsonMetadataValue) else ()
            return RunFailure(f"step {event.step_key} failed: {text}", heads)
    return RunFailure("the run failed (see its logs in the Dagster UI)")


class PipelineRunner:
    """Runs the pipeline's jobs one after the other against one Dagster instance; a step
    after a failed one is skipped. Runs a crash left unfinished are failed first."""

    def __init__(self, instance: dg.DagsterInstance, *, verbose: bool = False) -> None:
        from nomarr_pipeline.definitions import defs

        self.instance = instance
        self.defs = defs
        self.verbose = verbose
        self.outcomes: list[StepOutcome] = []
        self.guard = RunGuard(instance, say=say)
        self.guard.fail_dead_runs()

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
        if any(o.stops_later_steps for o in self.outcomes):
            outcome.status, outcome.detail = "skipped", "an earlier step failed"
            return outcome
        job = self.defs.resolve_job_def(job_name)
        base_tags = {"nomarr/launched_by": "cli", **self.guard.run_tags()}
        runs = [base_tags]
        if job.partitions_def is not None:
            if not partition_keys:
                outcome.status, outcome.detail = "skipped", "no head partitions to run"
                return outcome
            ordered = self.instance.get_dynamic_partitions(HEADS)
            ranges = contiguous_ranges(ordered, partition_keys)
            runs = [{**base_tags, **partition_range_tags(keys)} for keys in ranges]
            outcome.detail = f"{len(partition_keys)} heads in {len(runs)} run(s)"
        self.guard.wait_for_pools(job)  # before the progress bar, which would hide its message
        with ProgressPoller(StepProgress(step), progress) if progress else nullcontext():
            failures: list[RunFailure] = []
            for tags in runs:
                run_id, failure = launch_run(self.instance, job, tags, verbose=self.verbose)
                outcome.run_ids.append(run_id)
                if failure:
                    failures.append(failure)
        if failures:
            outcome.status, outcome.detail = "failed", "; ".join(f.text for f in failures)
            if all(f.heads_left_out for f in failures):
                outcome.heads_left_out = [key for f in failures for key in f.heads_left_out]
        return outcome

    def add_heads(self, keys: Sequence[str]) -> list[str]:
        """Add head partitions that the instance does not know yet; returns the new ones."""
        known = set(self.instance.get_dynamic_partitions(HEADS))
        new = [key for key in keys if key not in known]
        if new:
            self.instance.add_dynamic_partitions(HEADS, new)
        return new


@contextmanager
def pipeline_session(command: str, *, verbose: bool = False) -> Iterator[tuple[PipelineRunner, Store]]:
    """The writable store and a runner on the Dagster instance, for a command that launches
    runs; on the embedded store, only one such command at a time (a second one waits)."""
    store = open_checked_store(for_writing=True)
    path = checked_settings().sqlite_store_path()
    exclusive = one_pipeline_per_store(path, command, say=say) if path else nullcontext()
    with exclusive, dagster_instance() as instance:
        yield PipelineRunner(instance, verbose=verbose), store


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


def run_pipeline(command: str = "run", *, verbose: bool = False) -> tuple[list[StepOutcome], Store]:
    """Scan → heads → predictions → calibration (with its package) → recalibration and tag
    writing. Returns each step's outcome and the store, for the summary."""
    roots = require_library_roots()
    heads = require_heads()
    with pipeline_session(command, verbose=verbose) as (runner, store):
        require_export_dir()  # by default in the data folder, which the session creates
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

        predictions = runner.run_job(
            "predictions", predictions_job.name, keys, progress=analysis_progress(heads)
        )
        left_out = set(predictions.heads_left_out)
        if left_out:
            say(f"warning: going on without {', '.join(sorted(left_out))}; the other heads' "
                "predictions are stored")
        runner.run_job("calibration", calibration_job.name, [key for key in keys if key not in left_out])
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


def status_frame(store: Store, heads: Sequence[Head] | None = None) -> pd.DataFrame:
    """One row per library: the numbers ``nomarr-pipeline status`` prints.

    "calibrated heads" counts the heads of ``heads`` (the models folder's) with a calibration
    that can be applied; every calibrated head when it is ``None``. "failed" counts files
    whose scan or decoding failed, and files that failed for one of ``heads`` at its current
    model (a failure of a model replaced since does not count: the file will be tried again);
    "analysed" the other analysed files."""
    import pandas as pd

    from nomarr_pipeline.ml.analysis import head_version

    calibrated = {(s["model_key"], s["head_name"]) for s in usable_calibrations(store)}
    if heads is not None:
        calibrated &= {(head.model_key, head.head_name) for head in heads}
    versions = [head_version(head) for head in heads or ()]
    target = expected_calibration_hash(store.list_calibrations())
    rows = []
    for library in store.list_libraries():
        counts = store.file_counts(library["_key"])
        head_failures = store.count_files_with_analysis_errors(versions, library["_key"]) if versions else 0
        rows.append(
            [
                library.get("name") or library.get("root_path") or library["_key"],
                counts["total"],
                max(0, counts["analysed"] - head_failures),
                counts["scan_errors"] + counts["analysis_errors"] + head_failures,
                len(calibrated),
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
    from nomarr_pipeline.resources import TaggingResource
    from nomarr_pipeline.tagging.batch import WriteReport, preview_frame, write_pending_tags

    has_calibration = has_usable_calibration(store.list_calibrations())
    options = TaggingResource().tag_options()
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
                options=options,
                dry_run=True,
                progress=show,
            )
        rows.extend(report.preview)
    return preview_frame(rows)
