"""``nomarr-pipeline``: click commands over :mod:`nomarr_pipeline.cli.runner`. A problem the user
can fix is a :class:`~nomarr_pipeline.cli.runner.UserError`: ``error:`` / ``next:`` lines, exit 2."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from types import FrameType

import click

from nomarr_pipeline.cli import runner
from nomarr_pipeline.cli.launch import WORKSPACE
from nomarr_pipeline.cli.runner import StepOutcome, UserError
from nomarr_pipeline.defs.jobs import library_scan_job, tagging_job
from nomarr_pipeline.progress import StepProgress
from nomarr_pipeline.settings import load_env_file, write_env_file
from nomarr_pipeline.store import Store, StoreError, redact_url

DEMO_DIR = Path(".nomarr-demo")

verbose_option = click.option("--verbose", is_flag=True, help="Show Dagster's event log on the console.")


def tag_options(command: click.Command) -> click.Command:
    """The fields players read, as flags; each sets its NOMARR_* variable for the runs."""
    flags = [
        click.option("--mood-tier", type=click.Choice(["mood-strict", "mood-regular", "mood-loose"]),
                     help="The tier written to MOOD (NOMARR_MOOD_TIER)."),
        click.option("--no-mood", is_flag=True, help="Write no MOOD field (NOMARR_STANDARD_MOOD=false)."),
        click.option("--replace-mood", is_flag=True, help="MOOD holds the pipeline's terms only."),
        click.option("--genre-from", metavar="HEAD", help="Write GENRE from this head (NOMARR_GENRE_HEAD)."),
        click.option("--replace-genre", is_flag=True, help="Write GENRE over the user's own genres."),
    ]
    for flag in reversed(flags):  # --help lists them in this order
        command = flag(command)
    return command


def _set_tag_env(mood_tier: str | None, no_mood: bool, replace_mood: bool, genre_from: str | None,
                 replace_genre: bool) -> None:
    chosen = {"NOMARR_MOOD_TIER": mood_tier, "NOMARR_STANDARD_MOOD": "false" if no_mood else None,
              "NOMARR_REPLACE_MOOD": "true" if replace_mood else None, "NOMARR_GENRE_HEAD": genre_from,
              "NOMARR_REPLACE_GENRE": "true" if replace_genre else None}
    os.environ.update({name: value for name, value in chosen.items() if value is not None})  # fmt: skip


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Keep a music library auto-tagged by Essentia models (Dagster pipeline).

    Settings come from NOMARR_* variables and the .env file of the working folder (the shell's
    values win); `dagster dev` started in the same folder reads that file too.
    """
    load_env_file()
    runner.checked_settings()  # every NOMARR_* value, before any command does anything


@cli.command()
@click.option(
    "--folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEMO_DIR,
    show_default=True,
    help="Where the demo library, models and data go.",
)
@verbose_option
def demo(folder: Path, verbose: bool) -> int:
    """Build a demo library and models, run the whole pipeline on them."""
    from nomarr_pipeline.cli.demo import build_demo_library, configure_demo_environment
    from nomarr_pipeline.ml.demo_models import write_demo_models

    folder = folder.absolute()
    env_file = write_env_file(configure_demo_environment(folder))
    library = build_demo_library(folder / "library")
    click.echo(f"demo library: {library}")
    # Deterministic bytes: rewritten, the heads keep their tagger_version and nothing is re-analysed.
    write_demo_models(folder / "models", onnx=True)
    click.echo(f"demo models:  {folder / 'models'}")
    click.echo(f"demo settings: {env_file} (read by nomarr-pipeline and dagster dev in this folder)")
    ok = _run_and_summarise("demo", verbose)
    click.echo(f"tags written into: {library}  (MOOD and nom:* keys; e.g. mutagen-inspect)")
    return 0 if ok else 1


@cli.command()
@verbose_option
@tag_options
def run(verbose: bool, **tag_flags: object) -> int:
    """Run the whole pipeline on NOMARR_LIBRARY_ROOTS with NOMARR_MODELS_DIR."""
    _set_tag_env(**tag_flags)  # type: ignore[arg-type]
    return 0 if _run_and_summarise("run", verbose) else 1


@cli.command()
@click.option("--verify", is_flag=True,
              help="Also read back the tags written into every file; those that differ from the store "
                   "are written again by the next write-tags or run.")
def scan(verify: bool) -> int:
    """Scan the configured library folders."""
    runner.require_library_roots()
    with runner.pipeline_session("scan") as (pipeline, store):
        outcomes = [pipeline.run_job("scan", library_scan_job.name)]
        if verify and outcomes[0].status == "ok":
            outcomes.append(runner.verify_tags(store))
    return 0 if _print_outcomes(outcomes) else 1


@cli.command()
def status() -> int:
    """Files, analysis, calibration and pending writes per library."""
    catalog = runner.model_catalog()
    with closing(runner.open_checked_store()) as store:
        frame = runner.status_frame(store, catalog)
    if frame.empty:
        click.echo("no library scanned yet: run `nomarr-pipeline run` (or `nomarr-pipeline demo`)")
        return 0
    click.echo(frame.to_string(index=False))  # every column, never wrapped
    # Apart from the files that failed: none of its files is tried, so none failed for it.
    for problem in [problem for problem in catalog.problems if problem.head_key] if catalog else []:
        click.echo(f"head unavailable: {problem.head_key}: {problem.message}", err=True)
        click.echo(f"next: {problem.fix}", err=True)
    return 0


@cli.command("export-calibrations")
@click.option(
    "--dest", type=click.Path(file_okay=False, path_type=Path), help="Folder (default: NOMARR_EXPORT_DIR)."
)
def export_calibrations(dest: Path | None) -> int:
    """Write calibrations.json and one sidecar per head."""
    from nomarr_pipeline.calibration.exports import export_package, export_sidecars

    with closing(runner.open_checked_store()) as store:
        states = runner.usable_calibrations(store)
    if not states:
        raise UserError("there is no calibration to export yet", "run `nomarr-pipeline run` first")
    if dest:
        dest = runner.writable_folder(dest.absolute(), "--dest", "a folder (created if its parent exists)")
    else:
        dest = runner.require_export_dir()
    try:
        package = export_package(states, dest)
    except OSError as error:
        raise UserError(f"cannot write the calibration package: {error}", "choose another --dest") from None
    report = export_sidecars(states, dest)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"package: {package} ({len(states)} labels)")
    click.echo(f"sidecars: {len(report.written)} in {dest}")
    return 0 if not report.warnings else 1


@cli.command("import-calibrations")
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace calibrations that exist here.")
@click.option(
    "--allow-unknown", is_flag=True, help="Also import heads that are not in NOMARR_MODELS_DIR."
)
def import_calibrations(package: Path, overwrite: bool, allow_unknown: bool) -> int:
    """Bootstrap calibrations from a calibrations.json (PACKAGE)."""
    from nomarr_pipeline.calibration.exports import InvalidPackageError, import_package

    if not package.is_file():
        raise UserError(f"calibration package {package} not found", "give the path of a calibrations.json")
    catalog = None if allow_unknown else runner.model_catalog()
    known = None if catalog is None else {(h.model_key, h.head_name): h.labels for h in catalog.heads}
    if known is None and not allow_unknown:
        raise UserError(
            "cannot check which of the package's heads are yours: NOMARR_MODELS_DIR is unset or not a folder",
            "set NOMARR_MODELS_DIR to your models folder (or import every head with --allow-unknown)",
        )
    try:
        with closing(runner.open_checked_store(for_writing=True)) as store:
            report = import_package(
                store, package, time.time_ns() // 1_000_000, overwrite=overwrite, known_heads=known
            )
    except InvalidPackageError as error:
        raise UserError(
            str(error), "export a fresh package with `nomarr-pipeline export-calibrations`"
        ) from None
    if report.unknown:
        heads = sorted({key.rsplit(":", 1)[0] for key in report.unknown})
        shown = ", ".join(heads[:5]) + (f" and {len(heads) - 5} more" if len(heads) > 5 else "")
        click.echo(
            f"not imported: {len(report.unknown)} labels of {len(heads)} heads that are not in "
            f"NOMARR_MODELS_DIR ({shown}); --allow-unknown imports them too",
            err=True,
        )
        if not report.imported and not report.skipped_existing:
            raise UserError(
                f"the package {package} calibrates none of the heads in NOMARR_MODELS_DIR",
                "set NOMARR_MODELS_DIR to the models the package was made with (or use --allow-unknown)",
            )
    click.echo(f"imported: {len(report.imported)} labels")
    if report.skipped_existing:
        click.echo(
            f"kept: {len(report.skipped_existing)} labels already calibrated here "
            "(use --overwrite to replace them)"
        )
    for problem in report.unusable:
        click.echo(f"unusable: {problem}", err=True)
    if report.imported:
        click.echo("next: `nomarr-pipeline run` recalibrates the stored predictions and writes the tags")
    return 0


@cli.command("force-recalibration")
@click.option("--library", metavar="FOLDER", help="Only the library in this folder.")
def force_recalibration(library: str | None) -> int:
    """Mark every file stale so it is recalibrated (new tier settings)."""
    from nomarr_pipeline.library.identity import library_key

    with closing(runner.open_checked_store(for_writing=True)) as store:
        library_id = None
        if library:
            library_id = library_key(Path(library).resolve())
            if store.get_library(library_id) is None:
                raise UserError(f"{library} is not a scanned library", "see `nomarr-pipeline status`")
        count = store.reset_calibration_hashes(library_id)
    scope = f"library {library}" if library else "every library"
    click.echo(f"{count} files of {scope} will be recalibrated")
    click.echo(
        "next: calibration_hash_sensor starts it, or `nomarr-pipeline run` / materialize calibrated_tags"
    )
    return 0


@cli.command("write-tags")
@click.option("--preview", is_flag=True, help="Only show what would change, as CSV.")
@click.option(
    "--output", default="tag-preview.csv", show_default=True, help="CSV path for --preview ('-' = stdout)."
)
@verbose_option
@tag_options
def write_tags(preview: bool, output: str, verbose: bool, **tag_flags: object) -> int:
    """Write pending tags into the audio files (a Dagster run)."""
    _set_tag_env(**tag_flags)  # type: ignore[arg-type]
    if preview:
        with closing(runner.open_checked_store()) as store:
            frame = runner.tag_preview(store)
        frame.to_csv(sys.stdout if output == "-" else output, index=False)
        if output != "-":
            changes = int((frame["action"] != "keep").sum())
            click.echo(f"preview: {output} ({frame['file_id'].nunique()} files, {changes} tag changes)")
        return 0
    with runner.pipeline_session("write-tags", verbose=verbose) as (pipeline, store):
        outcome = pipeline.run_job(
            "recalibration + tag writing", tagging_job.name, progress=runner.tagging_progress(store)
        )
        _print_write_errors(store)
    return 0 if _print_outcomes([outcome]) else 1


@cli.command("export-navidrome")
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path),
              help="Folder (default: navidrome/ in NOMARR_EXPORT_DIR).")  # fmt: skip
def export_navidrome(dest: Path | None) -> int:
    """Write a navidrome.toml snippet for the nom: scores and a smart playlist per mood term."""
    from nomarr_pipeline.defs.resources import tagging_resource
    from nomarr_pipeline.tagging.navidrome import export_navidrome_kit

    states = runner.usable_calibrations(runner.open_checked_store())
    if not states:
        raise UserError("there is no calibration yet: no scores or moods to declare",
                        "run `nomarr-pipeline run` first")  # fmt: skip
    folder = dest.absolute() if dest else runner.require_export_dir() / "navidrome"
    tagging = tagging_resource(runner.checked_settings())
    try:  # checks the folder is outside the library folders before creating it
        kit = export_navidrome_kit(states, folder, options=tagging.tag_options(), tiers=tagging.tier_config(),
                                   library_roots=runner.checked_settings().library_roots)  # fmt: skip
    except (ValueError, OSError) as error:
        raise UserError(f"cannot write the Navidrome kit: {error}",
                        "give --dest a writable folder outside the library folders") from None  # fmt: skip
    click.echo(f"navidrome.toml snippet: {kit.toml} ({len(kit.float_tags)} float tags)")
    click.echo(f"smart playlists: {len(kit.playlists)} in {folder / 'playlists'}")
    click.echo("next: paste the snippet into navidrome.toml, copy the .nsp files into a folder of "
               "PlaylistsPath, then run a full scan in Navidrome")  # fmt: skip
    return 0


@cli.group()
def models() -> None:
    """List the models in NOMARR_MODELS_DIR, or fetch Essentia's."""


@models.command("list")
@click.option("--all-labels", is_flag=True, help="Every label of every head (else the first 8).")
def models_list(all_labels: bool) -> int:
    """Backbones, heads with their labels and partition keys, and every problem."""
    from nomarr_pipeline.calibration.tiers import TierConfig
    from nomarr_pipeline.ml.discovery import discover_models
    from nomarr_pipeline.ml.listing import LABELS_SHOWN, models_listing

    models_dir = runner.require_models_dir()
    if not models_dir.is_dir():
        raise UserError(
            f"models folder {models_dir} does not exist",
            "`nomarr-pipeline models fetch --recommended` creates and fills it, or fix NOMARR_MODELS_DIR",
        )
    catalog = discover_models(models_dir, compute_versions=False)
    lines = models_listing(catalog, models_dir, mood_head=TierConfig().head_is_mood,
                           labels_shown=None if all_labels else LABELS_SHOWN)
    click.echo("\n".join(lines))
    return 0


@models.command("fetch")
@click.argument("names", nargs=-1)
@click.option("--recommended", is_flag=True, help="The mood and danceability heads and their backbone.")
def models_fetch(names: tuple[str, ...], recommended: bool) -> int:
    """Download models (NAMES, e.g. mood_happy-discogs-effnet-1) and the backbones they need.

    From NOMARR_MODELS_URL (default: Essentia's model site) into NOMARR_MODELS_DIR.
    """
    from nomarr_pipeline.ml.discovery import discover_models
    from nomarr_pipeline.ml.fetch import RECOMMENDED, FetchError, fetch_models, models_url_from_env

    if not names and not recommended:
        raise UserError("no model named", "name models (e.g. `nomarr-pipeline models fetch "
                        "mood_happy-discogs-effnet-1`) or use --recommended")
    models_dir = runner.require_models_dir()
    base_url = models_url_from_env()
    click.echo(f"from {base_url} into {models_dir}")
    wanted = [*(RECOMMENDED if recommended else ()), *names]
    with _bar_per_label("kB") as bar:

        def progress(label: str, done: int, total: int | None) -> None:
            if label.endswith((".pb", ".onnx")):  # the JSON files are a few kB
                bar(label, done // 1000, (total if total is not None else done) // 1000)

        try:
            report = fetch_models(wanted, models_dir, base_url=base_url, progress=progress)
        except FetchError as error:
            raise UserError(str(error), error.fix) from None
    for name in report.fetched:
        onnx = " (with its .onnx)" if (models_dir / f"{name}.onnx").is_file() else ""
        click.echo(f"fetched: {name}{onnx}")
    for note in report.notes:
        click.echo(f"note: {note}")
    for name in report.present:
        click.echo(f"already there: {name}")
    click.echo(f"downloaded {report.bytes_downloaded / 1e6:.1f} MB")
    catalog = discover_models(models_dir, compute_versions=False)
    for problem in catalog.problems:
        click.echo(f"warning: model {problem.path}: {problem.message}", err=True)
    click.echo(f"{len(catalog.heads)} heads in {models_dir}; next: head_discovery_sensor adds the new ones "
               "(`dagster dev`), or `nomarr-pipeline run`")
    return 0


@contextlib.contextmanager
def _bar_per_label(unit: str) -> Iterator[Callable[[str, int, int], None]]:
    """``progress(label, done, total)``: one bar per label, each ended when the next begins."""
    with contextlib.ExitStack() as bars:
        shown: dict[str, StepProgress] = {}

        def progress(label: str, done: int, total: int) -> None:
            if label not in shown:
                bars.close()
                shown[label] = bars.enter_context(StepProgress(label, unit=unit))
            shown[label](done, total)

        yield progress


@cli.command("migrate-store")
@click.option("--to", "target_url", required=True, metavar="URL",
              help="The new, empty store: sqlite:///..., postgresql://user@host:port/db or http(s)://host:port.")
@click.option("--batch-size", default=5000, show_default=True, type=click.IntRange(min=1),
              help="Documents per transaction.")  # fmt: skip
def migrate_store(target_url: str, batch_size: int) -> int:
    """Copy the configured store (libraries, predictions, calibrations) into another, verified."""
    from nomarr_pipeline.store.migrate import migrate_store as copy_store

    settings = runner.checked_settings()
    if target_url.rstrip("/") == settings.store_url.rstrip("/"):
        raise UserError(f"--to names the configured store itself ({redact_url(target_url)})",
                        "give the URL of the new, empty store")  # fmt: skip
    source = runner.open_checked_store()
    try:
        target = settings.open_store(target_url)
        target.list_libraries()
    except StoreError as error:
        raise UserError(
            f"cannot use the target store: {error}",
            "check --to, the server, and NOMARR_PG_PASSWORD / NOMARR_ARANGO_* for it",
        ) from None
    click.echo(f"copying {redact_url(settings.store_url)} -> {redact_url(target_url)}")
    with closing(source), closing(target), _bar_per_label("documents") as progress:
        report = copy_store(source, target, batch_size=batch_size, progress=progress)
    for check in report.checks:
        click.echo(f"  {'ok' if check.verified else 'MISMATCH'}  {check.describe()}")
    if not report.verified:
        names = ", ".join(check.collection for check in report.mismatches())
        raise UserError(f"the copy differs from the source in {names}",
                        "copy into an empty store; if nothing wrote to either store meanwhile, "
                        "run migrate-store again")  # fmt: skip
    click.echo(f"done: set NOMARR_STORE_URL={redact_url(target_url)} to use the new store")
    return 0


def _run_and_summarise(command: str, verbose: bool) -> bool:
    """The whole pipeline, then its summary and where to look; whether every step succeeded."""
    outcomes = runner.run_pipeline(command, verbose=verbose)
    click.echo("\npipeline:")
    ok = _print_outcomes(outcomes)
    settings = runner.checked_settings()
    click.echo()
    with closing(runner.open_checked_store()) as store:
        frame = runner.status_frame(store, runner.model_catalog())
        if not frame.empty:
            click.echo(frame.to_string(index=False))
            click.echo()
        _print_write_errors(store)
    # ``dagster dev`` for this configuration, as a line that works in a new shell.
    home, dagster = os.environ["DAGSTER_HOME"], Path(sys.executable).with_name("dagster")
    click.echo(f"store:            {redact_url(settings.store_url)}")
    click.echo(f"calibrations:     {settings.export_dir} (calibrations.json and one sidecar per head)")
    click.echo(f"Dagster instance: {home}")
    click.echo("see the runs, asset lineage and partitions (http://127.0.0.1:3000) with:")
    click.echo(
        f"  cd {shlex.quote(str(Path.cwd()))} && DAGSTER_HOME={shlex.quote(home)} "
        f"{shlex.quote(str(dagster))} dev -w {shlex.quote(str(WORKSPACE))}"
    )
    return ok


def _print_outcomes(outcomes: Sequence[StepOutcome]) -> bool:
    for outcome in outcomes:
        runs = f"  [run {', '.join(r[:8] for r in outcome.run_ids)}]" if outcome.run_ids else ""
        click.echo(f"  {outcome.step:<28} {outcome.status:<8} {outcome.detail}{runs}")
    return all(outcome.status != "failed" for outcome in outcomes)


def _print_write_errors(store: Store) -> None:
    """Files whose tags could not be written stay pending: say what to do about them."""
    if failed := store.file_counts()["write_errors"]:
        click.echo(f"warning: the tags of {failed} file(s) could not be written (each says why in the "
                   "run's log and in the store's write_error); they are kept pending", err=True)
        click.echo("next: make the library's folders and files writable by this user (a read-only mount, "
                   "or a file's own read-only or immutable flag, is respected), then `nomarr-pipeline "
                   "write-tags`", err=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status: 0 ok, 1 a step failed, 2 a problem the user can fix (or
    a usage error), 130 interrupted by Ctrl-C, 143 stopped by SIGTERM."""
    # Beta/preview notices about Dagster APIs the project chose on purpose are noise to an
    # operator; real warnings still show.
    warnings.filterwarnings("ignore", message=r".*(is currently in beta|is currently in preview).*")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(cli.main(args=argv, prog_name="nomarr-pipeline", standalone_mode=False) or 0)
    except UserError as error:
        click.echo(f"error: {error.problem}\nnext: {error.next_step}", err=True)
        return 2
    except StoreError as error:  # after the pre-flight check: a full disk, a lost server
        click.echo(f"error: database: {error}\nnext: {runner.store_advice(error)}", err=True)
        return 2
    except click.ClickException as error:  # bad usage: click's own message
        error.show()
        return error.exit_code
    except (click.Abort, KeyboardInterrupt) as error:  # click turns Ctrl-C into Abort
        if isinstance(error, Terminated) or isinstance(error.__context__, Terminated):
            click.echo("stopped (SIGTERM); run the command again to continue", err=True)
            return 143
        click.echo("interrupted", err=True)
        return 130


class Terminated(KeyboardInterrupt):
    """SIGTERM stops the command line as Ctrl-C does (a run it waits for is cancelled)."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


if __name__ == "__main__":
    sys.exit(main())
