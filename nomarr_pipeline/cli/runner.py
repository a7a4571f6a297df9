"""The command line's own work: pre-flight checks in plain words (:class:`UserError`), the
pipeline's jobs as runs of the code location (:mod:`.launch`), and the status table."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from nomarr_pipeline.calibration.hashing import expected_calibration_hash
from nomarr_pipeline.calibration.state import has_usable_calibration, is_usable
from nomarr_pipeline.cli.launch import CodeLocationLauncher
from nomarr_pipeline.cli.store_lock import one_pipeline_per_store
from nomarr_pipeline.defs import jobs
from nomarr_pipeline.defs.assets.file_tags import NOT_MATERIALIZED
from nomarr_pipeline.defs.partitions import HEADS
from nomarr_pipeline.defs.resources import tagging_resource
from nomarr_pipeline.library.changes import changed_folders
from nomarr_pipeline.library.identity import library_key
from nomarr_pipeline.ml.analysis import head_version, remembered_broken_models
from nomarr_pipeline.ml.discovery import Head, ModelCatalog, ModelProblem, discover_models
from nomarr_pipeline.progress import StepProgress, polled
from nomarr_pipeline.settings import SettingError, Settings
from nomarr_pipeline.store import (
    Doc,
    Store,
    StoreError,
    StoreFullError,
    StoreReadOnlyError,
    redact_url,
)
from nomarr_pipeline.store.first_use import file_first_use
from nomarr_pipeline.store.sqlite import unwritable

if TYPE_CHECKING:
    import pandas as pd
    from dagster_shared.error import SerializableErrorInfo

Measure = Callable[[], tuple[int, int]]


class UserError(Exception):
    """A problem the user can fix: shown as ``error:`` and ``next:`` lines, exit status 2."""

    def __init__(self, problem: str, next_step: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.next_step = next_step


def say(text: str) -> None:
    """A line for the user about what the command line is doing or waiting for."""
    print(text, file=sys.stderr, flush=True)


def checked_settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingError as error:
        raise UserError(error.problem, error.next_step) from None
    except ValueError as error:
        raise UserError(str(error), "fix the NOMARR_* environment variable (see the README table)") from None


def open_checked_store(*, for_writing: bool = False) -> Store:
    """The configured store, touched once; ``for_writing`` refuses an embedded store one cannot write."""
    config = checked_settings()
    try:
        config.ensure_store_folder()
    except SettingError as error:
        raise UserError(error.problem, error.next_step) from None
    except OSError as error:
        raise UserError(
            f"cannot create the data folder {config.data_dir}: {error.strerror}",
            "set NOMARR_DATA_DIR to a folder this user can write",
        ) from None
    try:
        store = config.open_store()
        store.list_libraries()  # one cheap round trip: reachable, authenticated, schema in place
    except StoreError as error:
        problem = f"cannot use the store at {redact_url(config.store_url)}: {error}"
        raise UserError(problem, store_advice(error)) from None
    path = config.sqlite_store_path()
    # SQLite writes the file and, next to it, its write-ahead log.
    if for_writing and path is not None and (why := unwritable(path)):
        raise UserError(
            f"the SQLite store {path} cannot be written: {why}",
            "make the store file and its folder writable, or set NOMARR_STORE_URL to a writable copy "
            "(sqlite3 nomarr.sqlite3 \".backup copy.sqlite3\")",
        )
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


def writable_folder(path: Path, variable: str, expected: str) -> Path:
    """``path`` as a folder this process can write (created when only its last part is missing)."""
    fix = f"set {variable} to {expected}"
    if path.exists() and not path.is_dir():
        raise UserError(f"{variable} is {path}, which is not a folder", fix)
    if not path.exists():
        if not path.parent.is_dir():
            raise UserError(f"{variable} is {path}, but its parent folder does not exist", fix)
        try:
            path.mkdir(exist_ok=True)  # another command may create it at the same moment
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
        _require_folder(root, "NOMARR_LIBRARY_ROOTS", "existing music folders, separated by ':'")
    return roots


def _require_folder(path: Path, variable: str, expected: str) -> None:
    if not path.is_dir():
        why = "is not a folder" if path.exists() else "does not exist"
        raise UserError(f"{variable} names {path}, which {why}", f"set {variable} to {expected}")


def require_models_dir() -> Path:
    """NOMARR_MODELS_DIR, which must be set (the folder may not exist yet)."""
    models_dir = checked_settings().models_dir
    if models_dir is None:
        raise UserError(
            "no models folder configured",
            "set NOMARR_MODELS_DIR to a folder for Essentia models (<name>.pb + <name>.json), "
            "or try `nomarr-pipeline demo`",
        )
    return models_dir


def require_heads() -> tuple[list[Head], list[ModelProblem]]:
    """The usable heads of NOMARR_MODELS_DIR and those whose model cannot run; prints every problem."""
    models_dir = require_models_dir()
    _require_folder(models_dir, "NOMARR_MODELS_DIR", "a folder of Essentia models (<name>.pb + <name>.json)")
    catalog = discover_models(models_dir)
    for problem in catalog.problems:
        print(f"warning: model {problem.path}: {problem.message}", file=sys.stderr)
    if not catalog.heads:
        raise UserError(
            f"no usable model heads in {models_dir}",
            "`nomarr-pipeline models fetch --recommended` (or put Essentia head models and their "
            "backbone, <name>.pb + <name>.json, into that folder); `nomarr-pipeline models list` shows why",
        )
    return list(catalog.heads), [problem for problem in catalog.problems if problem.head_key]


def model_catalog() -> ModelCatalog | None:
    """The models of NOMARR_MODELS_DIR; ``None`` when it is unset or not a folder."""
    models_dir = checked_settings().models_dir
    return discover_models(models_dir) if models_dir is not None and models_dir.is_dir() else None


def dagster_instance() -> dg.DagsterInstance:
    """The instance ``dagster dev`` shares: ``DAGSTER_HOME``, by default ``dagster_home/`` in the data dir."""
    settings = checked_settings()
    expected = "a folder for Dagster's runs (or unset it: dagster_home/ in NOMARR_DATA_DIR)"
    if "DAGSTER_HOME" not in os.environ:
        writable_folder(settings.data_dir, "NOMARR_DATA_DIR", "a folder this user can write")
        os.environ["DAGSTER_HOME"] = str(settings.data_dir / "dagster_home")
    home = Path(os.environ["DAGSTER_HOME"])
    if not home.is_absolute():
        raise UserError(f"DAGSTER_HOME is {home}, not an absolute path", f"set DAGSTER_HOME to {expected}")
    writable_folder(home, "DAGSTER_HOME", expected)
    config = home / "dagster.yaml"
    shipped = Path(__file__).resolve().parents[2] / "dagster.yaml"
    try:
        # Created once however many commands start together (docs/RELIABILITY.md, "First use"),
        # the store marker too: another command would read it half written.
        with file_first_use(home):
            _require_one_store(home / "nomarr-store", settings.store_identity())
            if not config.exists() and shipped.exists():
                shutil.copyfile(shipped, config)
            return dg.DagsterInstance.get()
    except Exception as error:
        raise _instance_error(error) from None


def _require_one_store(marker: Path, store: str) -> None:
    """An instance's runs and partitions describe one store: the first that used it (``marker``)."""
    if not marker.exists():
        marker.write_text(store + "\n")
    elif (recorded := marker.read_text().strip()) != store:
        raise UserError(
            f"the Dagster instance in DAGSTER_HOME {marker.parent} keeps the runs of the store "
            f"{recorded}, not of {store}",
            "unset DAGSTER_HOME (each store then gets dagster_home/ in its NOMARR_DATA_DIR) or set it "
            "to a folder of its own for this store",
        )


# Packages whose errors mean that the instance's database refused (Dagster's storages).
_STORAGE_PACKAGES = ("sqlite3", "sqlalchemy", "psycopg2", "psycopg")


def _instance_error(error: Exception) -> Exception:
    """A :class:`UserError` when the instance's storage refused (full disk, read-only), else ``error``."""
    cause: BaseException | None = error
    while cause is not None and not (
        isinstance(cause, OSError) or type(cause).__module__.split(".")[0] in _STORAGE_PACKAGES
    ):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return error
    home = os.environ["DAGSTER_HOME"]
    return UserError(
        f"the Dagster instance in DAGSTER_HOME {home} cannot be written: {cause}",
        "free space on its disk or make it writable, or set DAGSTER_HOME to another folder; "
        "then run again (finished work is kept)",
    )


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


@contextmanager
def children_print_to(log: Path) -> Iterator[None]:
    """Processes started meanwhile (the code server, and so the step processes of its runs) print
    into ``log``: Dagster's DEBUG lines, warnings, TensorFlow's and Essentia's own lines. The
    events are in the instance (the UI and ``--verbose`` show them)."""
    log.parent.mkdir(exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "wb") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


# A step's store error is re-raised in the command line as itself, so it gets its own advice.
_STORE_ERRORS: dict[str, type[StoreError]] = {
    cls.__name__: cls for cls in (StoreError, StoreFullError, StoreReadOnlyError)
}


def failure_of(events: Sequence[dg.DagsterEvent]) -> RunFailure:
    """What failed; raises a step's store error as itself, a full library disk as a :class:`UserError`."""
    for event in events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            user_data = event.step_failure_data.user_failure_data
            left_out = user_data.metadata.get(NOT_MATERIALIZED) if user_data else None
            chain = [event.step_failure_data.error]
            while chain[-1].cause is not None:
                chain.append(chain[-1].cause)
            if stopped := next((e for e in chain if e.cls_name == "WriteBatchStopped"), None):
                raise UserError(_error_text(stopped), LIBRARY_DISK_FULL)
            # The step's own exception (a dg.Failure's description), under Dagster's wrapper.
            error = next((e for e in chain if e.cls_name in (*_STORE_ERRORS, "Failure")), chain[-1])
            text = _error_text(error)
            if error.cls_name in _STORE_ERRORS:
                raise _STORE_ERRORS[error.cls_name](text)
            heads = tuple(left_out.value) if isinstance(left_out, dg.JsonMetadataValue) else ()
            return RunFailure(f"step {event.step_key} failed: {text}", heads)
    return RunFailure("the run failed (see its logs in the Dagster UI)")


LIBRARY_DISK_FULL = (
    "free space on the library's disk, then run `nomarr-pipeline write-tags` (or `run`) again: the files "
    "written are recorded, the others are still pending"
)


def _error_text(error: SerializableErrorInfo) -> str:
    """"module.Class: [Errno 28] text" -> "text"; a dg.Failure's description is its last line."""
    text = error.message.split(f"{error.cls_name}: ", 1)[-1].strip()
    text = text.splitlines()[-1] if text else error.cls_name
    return re.sub(r"^\[Errno \d+\] ", "", text)


def run_config(job_name: str) -> dict[str, object]:
    """The tag writer's options as this command sees them (flags included), in the run's config:
    whoever starts the run (this command or a daemon) writes what was asked, and the UI shows it."""
    if job_name != jobs.tagging_job.name:
        return {}
    config = tagging_resource(checked_settings()).model_dump()
    return {"resources": {"tagging": {"config": {k: v for k, v in config.items() if v is not None}}}}


class PipelineRunner:
    """Runs the pipeline's jobs one after the other; a step after a failed one is skipped."""

    def __init__(self, instance: dg.DagsterInstance, resources: ExitStack, *, verbose: bool = False) -> None:
        self.instance = instance
        self.verbose = verbose
        self.outcomes: list[StepOutcome] = []
        self._resources = resources
        self._launcher: CodeLocationLauncher | None = None

    @property
    def launcher(self) -> CodeLocationLauncher:
        """The code server, started for the first run; it and its runs print into a log file."""
        if self._launcher is None:
            log = Path(os.environ["DAGSTER_HOME"]) / "nomarr-cli" / "step-processes.log"
            with nullcontext() if self.verbose else children_print_to(log):
                launcher = self._resources.enter_context(CodeLocationLauncher(self.instance))
            problem = launcher.location_error()
            if problem:
                raise UserError(f"the Dagster code location does not load: {problem}",
                                "fix that setting; `dg check defs` shows the whole error")
            self._launcher = launcher
        return self._launcher

    def run_job(
        self,
        step: str,
        job_name: str,
        partition_keys: Sequence[str] | None = None,
        *,
        progress: Measure | None = None,
    ) -> StepOutcome:
        """Run ``job_name`` once, or once per contiguous range of the head ``partition_keys``."""
        outcome = StepOutcome(step, "ok")
        self.outcomes.append(outcome)
        if any(o.stops_later_steps for o in self.outcomes):
            outcome.status, outcome.detail = "skipped", "an earlier step failed"
            return outcome
        runs: list[dict[str, str]] = [{}]
        if partition_keys is not None:
            if not partition_keys:
                outcome.status, outcome.detail = "skipped", "no head partitions to run"
                return outcome
            ranges = contiguous_ranges(self.instance.get_dynamic_partitions(HEADS), partition_keys)
            runs = [jobs.partition_range_tags(keys) for keys in ranges]
            outcome.detail = f"{len(partition_keys)} heads in {len(runs)} run(s)"
        failures: list[RunFailure] = []
        with polled(StepProgress(step), progress) if progress else nullcontext():
            for tags in runs:
                run_id, failure = self.launch_and_wait(job_name, {"nomarr/launched_by": "cli", **tags},
                                                       run_config(job_name))
                outcome.run_ids.append(run_id)
                if failure:
                    failures.append(failure)
        if failures:
            outcome.status, outcome.detail = "failed", "; ".join(f.text for f in failures)
            if all(f.heads_left_out for f in failures):
                outcome.heads_left_out = [key for f in failures for key in f.heads_left_out]
        return outcome

    def skip(self, step: str, why: str) -> StepOutcome:
        """A step with nothing to do: no run."""
        outcome = StepOutcome(step, "ok", why)
        self.outcomes.append(outcome)
        return outcome

    def launch_and_wait(self, job_name: str, tags: dict[str, str],
                        config: Mapping[str, object]) -> tuple[str, RunFailure | None]:
        """One run: its id, and what failed (``None`` when it succeeded)."""
        try:
            run_id = self.launcher.launch(job_name, tags, config)
        except Exception as error:  # creating the run writes into the instance: a full disk
            raise _instance_error(error) from None
        run = self.launcher.wait(run_id, _print_event if self.verbose else None)
        if run.status == dg.DagsterRunStatus.SUCCESS:
            return run_id, None
        return run_id, failure_of(self.launcher.step_failures(run_id))


def _print_event(entry: dg.EventLogEntry) -> None:
    say(f"  {entry.step_key or entry.job_name}: {entry.message or entry.user_message}")


@contextmanager
def pipeline_session(command: str, *, verbose: bool = False) -> Iterator[tuple[PipelineRunner, Store]]:
    """The writable store and a runner; on the embedded store one such session at a time."""
    path = checked_settings().sqlite_store_path()
    with (
        closing(open_checked_store(for_writing=True)) as store,
        one_pipeline_per_store(path, command, say=say) if path else nullcontext(),
        dagster_instance() as instance,
        ExitStack() as resources,
    ):
        yield PipelineRunner(instance, resources, verbose=verbose), store


def contiguous_ranges(ordered_keys: Sequence[str], wanted: Sequence[str]) -> list[list[str]]:
    """``wanted`` as runs of consecutive keys of ``ordered_keys``: a head removed from the models
    folder but still a partition is never run."""
    wanted_set = set(wanted)
    return [list(keys) for inside, keys in groupby(ordered_keys, key=wanted_set.__contains__) if inside]


def run_pipeline(command: str = "run", *, verbose: bool = False) -> list[StepOutcome]:
    """Scan → heads → predictions → calibration → recalibration and tag writing; each step's outcome."""
    roots = require_library_roots()
    heads, broken = require_heads()
    with pipeline_session(command, verbose=verbose) as (runner, store):
        require_export_dir()  # by default in the data folder, which the session creates
        started = time.monotonic()

        print(f"scan: {len(roots)} library folder(s)")
        if any(changed_folders(store.load_folder_cache(library_key(root.resolve())), str(root.resolve()))
               for root in roots):
            scan = runner.run_job("scan", jobs.library_scan_job.name)
        else:  # as library_change_sensor decides; `nomarr-pipeline scan` always scans
            scan = runner.skip("scan", "")
        if scan.status == "failed":
            return runner.outcomes
        counts = store.file_counts()
        scan.detail = f"{counts['total']} files, {counts['scan_errors']} unreadable" + (
            "" if scan.run_ids else " (no folder changed since the last scan)")
        if counts["total"] - counts["scan_errors"] <= 0:
            raise UserError(
                f"no audio files found in {', '.join(str(r) for r in roots)}",
                "put audio files (mp3, m4a, flac, ogg, opus, wav, aiff) into the library folders "
                "or fix NOMARR_LIBRARY_ROOTS",
            )

        keys = [head.partition_key for head in heads]
        known = set(runner.instance.get_dynamic_partitions(HEADS))
        new = [key for key in keys if key not in known]
        runner.instance.add_dynamic_partitions(HEADS, new)
        discovery = StepOutcome("head discovery", "ok", f"{len(keys)} heads ({len(new)} new)")
        runner.outcomes.append(discovery)
        if broken:  # failed by name: the steps after it go on with the other heads
            discovery.status = "failed"
            discovery.heads_left_out = [problem.head_key or "" for problem in broken]
            discovery.detail += f"; {len(broken)} broken model(s) left out: " + "; ".join(
                f"{problem.path.stem} ({problem.head_key}): {problem.message}" for problem in broken
            )
        print(f"heads: {', '.join(keys)}")

        # A run with nothing to do would still start its processes: seconds for nothing.
        analysed = analysis_progress(store, heads)
        if new or _left(analysed):
            predictions = runner.run_job("predictions", jobs.predictions_job.name, keys, progress=analysed)
        else:
            predictions = runner.skip("predictions", "nothing to analyse")
        left_out = set(predictions.heads_left_out)
        if left_out:
            say(f"warning: going on without {', '.join(sorted(left_out))}; the other heads' "
                "predictions are stored")
        calibrated = {f"{state['model_key']}:{state['head_name']}" for state in store.list_calibrations()}
        if predictions.run_ids or not calibrated >= set(keys):
            keys_left = [key for key in keys if key not in left_out]
            runner.run_job("calibration", jobs.calibration_job.name, keys_left)
        else:
            runner.skip("calibration", "no new predictions")
        tagged = tagging_progress(store)
        if _left(tagged):
            runner.run_job("recalibration + tag writing", jobs.tagging_job.name, progress=tagged)
        else:
            runner.skip("recalibration + tag writing", "every file is recalibrated and written")
        runner.outcomes.append(StepOutcome("total", "ok", f"{time.monotonic() - started:.0f}s"))
        return runner.outcomes


def verify_tags(store: Store) -> StepOutcome:
    """Read back the tags written into every file; queue those that differ for writing."""
    from nomarr_pipeline.tagging.verify import verify_written_tags

    has_calibration = has_usable_calibration(store.list_calibrations())
    options = tagging_resource(checked_settings()).tag_options()
    checked = queued = 0
    for library in store.list_libraries():
        report = verify_written_tags(store, library, has_calibration=has_calibration, options=options)
        checked, queued = checked + report.checked, queued + report.queued
    detail = f"{checked} written files read back, {queued} differ from the store"
    return StepOutcome("verify", "ok", detail + (": queued for `write-tags` (or `run`)" if queued else ""))


def _left(measure: Measure) -> bool:
    done, total = measure()
    return done < total


def analysis_progress(store: Store, heads: Sequence[Head]) -> Measure:
    """Files analysed / analysable (the poller's thread has a connection of its own)."""
    versions = [head_version(head) for head in heads]

    def measure() -> tuple[int, int]:
        counts = store.file_counts()
        analysable = counts["total"] - counts["scan_errors"]
        # A file is analysed for all selected heads at once, so the head with the most
        # files left says how many files are left.
        left = max(store.count_files_needing_analysis(version) for version in versions)
        return max(0, analysable - left), analysable

    return measure


def tagging_progress(store: Store) -> Measure:
    """Files recalibrated with no tag write pending / analysed files."""
    target = expected_calibration_hash(store.list_calibrations())

    def measure() -> tuple[int, int]:
        counts = store.file_counts()
        left = store.count_files_needing_recalibration(target) + counts["pending_writes"]
        return max(0, counts["analysed"] - left), counts["analysed"]

    return measure


def usable_calibrations(store: Store) -> list[Doc]:
    return [state for state in store.list_calibrations() if is_usable(state)]


def status_frame(store: Store, catalog: ModelCatalog | None) -> pd.DataFrame:
    """One row per library, as ``nomarr-pipeline status`` prints it. "failed" counts files whose scan
    or decoding failed, or that failed for a head at its current model (not a replaced or broken
    model: the file will be tried again, or the model failed, not the file)."""
    import pandas as pd

    heads = None if catalog is None else catalog.heads
    calibrated = {(s["model_key"], s["head_name"]) for s in usable_calibrations(store)}
    if heads is not None:
        calibrated &= {(head.model_key, head.head_name) for head in heads}
    broken = remembered_broken_models(store, heads or ())
    versions = [head_version(head) for head in heads or () if head.partition_key not in broken]
    target = expected_calibration_hash(store.list_calibrations())
    rows = []
    for library in store.list_libraries():
        key = library["_key"]
        counts = store.file_counts(key)
        head_failures = store.count_files_with_analysis_errors(versions, key) if versions else 0
        rows.append(
            {
                "library": library.get("name") or library.get("root_path") or key,
                "files": counts["total"],
                "analysed": max(0, counts["analysed"] - head_failures),
                "failed": counts["scan_errors"] + counts["analysis_errors"] + head_failures,
                "calibrated heads": len(calibrated),
                "pending writes": counts["pending_writes"],
                "write errors": counts["write_errors"],
                "expected hash": target,
                "remaining recalibration": store.count_files_needing_recalibration(target, key),
            }
        )
    return pd.DataFrame(rows)


def tag_preview(store: Store) -> pd.DataFrame:
    """What a tag write would change, file by file and key by key (files untouched)."""
    from nomarr_pipeline.tagging.batch import preview_frame, write_pending_tags

    has_calibration = has_usable_calibration(store.list_calibrations())
    options = tagging_resource(checked_settings()).tag_options()
    rows = []
    for library in store.list_libraries():
        pending = store.file_counts(library["_key"])["pending_writes"]
        with StepProgress(f"preview {library.get('name') or library['_key']}") as progress:
            report = write_pending_tags(
                store,
                library=library,
                library_roots=[library["root_path"]],
                has_calibration=has_calibration,
                options=options,
                dry_run=True,
                progress=lambda report, bar=progress, total=pending: bar(report.processed, total),
            )
        rows.extend(report.preview)
    return preview_frame(rows)
