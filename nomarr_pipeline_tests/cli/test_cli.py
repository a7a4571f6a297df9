"""The command line: progress output, clear errors, the demo end to end, status, calibration
export/import and the tag-write preview — all on real stores, real Dagster runs and real files."""

from __future__ import annotations

import io
import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from rich.console import Console

from nomarr_pipeline import settings
from nomarr_pipeline.calibration.histogram import HistogramSpec, PercentileResult
from nomarr_pipeline.calibration.state import compute_state
from nomarr_pipeline.cli import main as cli
from nomarr_pipeline.cli import runner
from nomarr_pipeline.cli.demo import DEMO_TRACKS
from nomarr_pipeline.defs.assets.file_tags import NOT_MATERIALIZED
from nomarr_pipeline.defs.jobs import (
    PARTITION_RANGE_END,
    PARTITION_RANGE_START,
    calibration_job,
    predictions_job,
    tagging_job,
)
from nomarr_pipeline.defs.partitions import HEADS
from nomarr_pipeline.ml.demo_models import write_demo_models
from nomarr_pipeline.ml.fetch import RECOMMENDED
from nomarr_pipeline.progress import StepProgress, polled
from nomarr_pipeline.store import open_store
from nomarr_pipeline_tests.ml.audio_fixtures import write_wav
from nomarr_pipeline_tests.ml.model_server import ModelSite, site_path
from nomarr_pipeline_tests.store_dump import library_files
from nomarr_pipeline_tests.ui.dagster_dev import DagsterDev


class FakeClock:
    """A settable monotonic clock, so rates and times left are exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- progress ---------------------------------------------------------------------------------


def test_plain_log_lines_when_not_a_terminal_are_throttled() -> None:
    out, clock = io.StringIO(), FakeClock()
    with StepProgress("predictions", console=Console(file=out), log_every_s=10, get_time=clock) as progress:
        assert progress.interactive is False  # a StringIO is not a terminal
        progress(0, 100)
        clock.now += 5
        progress(25, 100)  # within 10 s of the last line: not printed
        clock.now += 5
        progress(50, 100)
    assert out.getvalue().splitlines() == [
        "predictions: 0/100 files (0%), 0.0 files/s, ? left",
        "predictions: 50/100 files (50%), 5.0 files/s, 0:00:10 left",
        "predictions: 50/100 files in 0:00:10",
    ]
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


def test_the_rate_counts_from_the_first_measurement_even_in_one_jump() -> None:
    """Files analysed by an earlier run do not count; a step measured in one jump has a rate."""
    out, clock = io.StringIO(), FakeClock()
    with StepProgress("predictions", console=Console(file=out), log_every_s=0, get_time=clock) as progress:
        progress(3, 16)
        clock.now += 5
        progress(16, 16)
    assert "predictions: 16/16 files (100%), 2.6 files/s" in out.getvalue()


def test_terminal_shows_a_rich_progress_bar() -> None:
    out, clock = io.StringIO(), FakeClock()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    with StepProgress("tags", console=console, get_time=clock) as progress:
        assert progress.interactive is True
        for done in range(3):
            progress(done, 4)
            clock.now += 1
    text = out.getvalue()
    assert "\r" in text or "\x1b[2K" in text  # redrawn in place, not one line per update
    final = text.rsplit("\x1b[2K", 1)[-1]
    # 2 files in the 3 s the step was watched.
    assert "tags" in final and "2/4 files" in final and "0.7 files/s" in final and "0:00:02" in final
    assert "━" in final  # the bar
    assert "tags: " not in text  # none of the plain log lines


def test_poller_measures_in_the_background_and_always_finishes() -> None:
    out = io.StringIO()
    progress = StepProgress("scan", console=Console(file=out), log_every_s=0)
    done = iter(range(1000))

    def measure() -> tuple[int, int]:
        return min(next(done), 10), 10

    with polled(progress, measure, interval_s=0.01):
        while progress.task.completed < 10:
            pass
    assert out.getvalue().splitlines()[-1].startswith("scan: 10/10 files in")


def test_poller_survives_a_failing_measurement() -> None:
    out = io.StringIO()

    def broken() -> tuple[int, int]:
        raise RuntimeError("database is locked")

    with polled(StepProgress("x", console=Console(file=out)), broken, interval_s=0.01):
        pass
    assert out.getvalue() == "x: 0/0 files in 0:00:00\n"


# ---- partition ranges and jobs ------------------------------------------------------------------


def test_contiguous_ranges_skip_partitions_not_wanted() -> None:
    ordered = ["a:1", "a:2", "old:x", "b:1", "b:2"]
    assert runner.contiguous_ranges(ordered, ["a:1", "a:2", "b:1", "b:2"]) == [["a:1", "a:2"], ["b:1", "b:2"]]
    assert runner.contiguous_ranges(ordered, ["b:2", "a:1"]) == [["a:1"], ["b:2"]]
    assert runner.contiguous_ranges(ordered, []) == []


# ---- clear errors -----------------------------------------------------------------------------


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_clear_error(err: str, *phrases: str) -> None:
    assert err.startswith("error: "), err
    assert "\nnext: " in err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in err


def test_run_without_models_folder(tmp_path: Path, monkeypatch, capsys, dagster_home: Path) -> None:
    write_wav(tmp_path / "music" / "a.wav")
    monkeypatch.setenv("NOMARR_LIBRARY_ROOTS", str(tmp_path / "music"))
    code, _, err = _run_cli(capsys, "run")
    assert code == 2
    _assert_clear_error(err, "no models folder configured", "NOMARR_MODELS_DIR")

    monkeypatch.setenv("NOMARR_MODELS_DIR", str(tmp_path / "nowhere"))
    code, _, err = _run_cli(capsys, "run")
    assert code == 2
    _assert_clear_error(err, f"NOMARR_MODELS_DIR names {tmp_path / 'nowhere'}, which does not exist")

    (tmp_path / "empty-models").mkdir()
    monkeypatch.setenv("NOMARR_MODELS_DIR", str(tmp_path / "empty-models"))
    code, _, err = _run_cli(capsys, "run")
    assert code == 2
    _assert_clear_error(err, "no usable model heads")


def test_run_without_library(tmp_path: Path, monkeypatch, capsys, dagster_home: Path) -> None:
    code, _, err = _run_cli(capsys, "run")
    assert code == 2
    _assert_clear_error(err, "no library folders configured", "NOMARR_LIBRARY_ROOTS")

    monkeypatch.setenv("NOMARR_LIBRARY_ROOTS", str(tmp_path / "missing"))
    code, _, err = _run_cli(capsys, "run")
    assert code == 2
    _assert_clear_error(err, f"NOMARR_LIBRARY_ROOTS names {tmp_path / 'missing'}, which does not exist")


def test_run_on_an_empty_library(tmp_path: Path, monkeypatch, capsys, dagster_home: Path) -> None:
    (tmp_path / "music").mkdir()
    (tmp_path / "music" / "notes.txt").write_text("not audio")
    write_demo_models(tmp_path / "models", heads=("mood_happy-discogs-effnet-1",))
    monkeypatch.setenv("NOMARR_LIBRARY_ROOTS", str(tmp_path / "music"))
    monkeypatch.setenv("NOMARR_MODELS_DIR", str(tmp_path / "models"))
    code, _, err = _run_cli(capsys, "run")
    assert code == 2
    _assert_clear_error(err, "no audio files found", str(tmp_path / "music"))


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again when the block ends


def test_unreachable_database(monkeypatch, capsys, dagster_home: Path) -> None:
    monkeypatch.setenv("NOMARR_STORE_URL", f"http://127.0.0.1:{_closed_port()}")
    code, _, err = _run_cli(capsys, "status")
    assert code == 2
    _assert_clear_error(err, "cannot use the store at http://127.0.0.1:", "NOMARR_STORE_URL")


def test_bad_setting_is_a_clear_error(monkeypatch, capsys) -> None:
    monkeypatch.setenv("NOMARR_FILE_WRITE_MODE", "sometimes")
    code, _, err = _run_cli(capsys, "status")
    assert code == 2
    _assert_clear_error(err, "NOMARR_FILE_WRITE_MODE")


def test_usage_errors_exit_2_with_clicks_message(capsys) -> None:
    code, _, err = _run_cli(capsys, "no-such-command")
    assert code == 2 and "No such command" in err
    code, _, err = _run_cli(capsys, "import-calibrations")
    assert code == 2 and "Missing argument 'PACKAGE'" in err
    code, out, _ = _run_cli(capsys, "--help")
    assert code == 0
    for command in ("demo", "run", "scan", "status", "export-calibrations", "write-tags"):
        assert command in out


def test_interrupt_exits_130(monkeypatch, capsys) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "open_checked_store", interrupted)
    code, _, err = _run_cli(capsys, "status")
    assert (code, err.strip()) == (130, "interrupted")  # click ends the ^C line first


def test_a_failed_step_exits_1_and_skips_what_follows(
    tmp_path: Path, monkeypatch, capsys, dagster_home: Path
) -> None:
    write_wav(tmp_path / "music" / "a.wav")
    monkeypatch.setenv("NOMARR_LIBRARY_ROOTS", str(tmp_path / "music"))
    monkeypatch.setenv("NOMARR_STORE_URL", f"sqlite:///{tmp_path / 'store.sqlite3'}")
    launched = []

    def failing_launch(self, job_name, tags, config):
        launched.append(job_name)
        return "run-0001", runner.RunFailure("step library_files failed: disk on fire")

    monkeypatch.setattr(runner.PipelineRunner, "launch_and_wait", failing_launch)
    code, out, _ = _run_cli(capsys, "scan")
    assert code == 1 and launched == ["library_scan_job"]
    assert "scan                         failed   step library_files failed: disk on fire" in out

    with dg.DagsterInstance.ephemeral() as instance:
        pipeline = runner.PipelineRunner(instance, ExitStack())
        pipeline.run_job("scan", "library_scan_job")
        skipped = pipeline.run_job("predictions", predictions_job.name, ["m:h"])
    assert (skipped.status, skipped.detail) == ("skipped", "an earlier step failed")
    assert launched == ["library_scan_job", "library_scan_job"]


def test_a_run_the_full_instance_cannot_record_is_a_clear_error(dagster_home: Path) -> None:
    class FullInstanceLauncher:
        def launch(self, job_name, tags, config):
            raise sqlite3.OperationalError("database or disk is full")

    with dg.DagsterInstance.ephemeral() as instance:
        pipeline = runner.PipelineRunner(instance, ExitStack())
        pipeline._launcher = FullInstanceLauncher()
        with pytest.raises(runner.UserError) as raised:
            pipeline.run_job("scan", "library_scan_job")
    assert raised.value.problem.endswith("cannot be written: database or disk is full")
    assert raised.value.next_step.startswith("free space on its disk")


def test_a_step_that_left_heads_out_lets_the_next_steps_go_on(monkeypatch, dagster_home: Path) -> None:
    """A broken model fails the predictions step; the other heads' predictions are stored,
    so calibration and tag writing still run for them."""
    launched = []

    def launch(self, job_name, tags, config):
        launched.append(job_name)
        if job_name == predictions_job.name:
            return "run-0001", runner.RunFailure("step file_tags_report failed: broken", ("m:broken",))
        return "run-0002", None

    monkeypatch.setattr(runner.PipelineRunner, "launch_and_wait", launch)
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(HEADS, ["m:good", "m:broken"])
        pipeline = runner.PipelineRunner(instance, ExitStack())
        predictions = pipeline.run_job(
            "predictions", predictions_job.name, ["m:good", "m:broken"]
        )
        tagging = pipeline.run_job("recalibration + tag writing", "tagging_job")
    assert predictions.status == "failed" and predictions.heads_left_out == ["m:broken"]
    assert tagging.status == "ok" and launched == [predictions_job.name, "tagging_job"]


def test_status_and_export_count_only_calibrations_that_can_be_applied(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    monkeypatch.setenv("NOMARR_STORE_URL", url)
    store = open_store(url)
    store.ensure_library({"_key": "lib", "name": "library", "root_path": str(tmp_path)})
    usable, flat = _state("mood_happy", "happy", 0.1, 0.9), _state("mood_sad", "sad", 0.5, 0.5)
    store.save_calibrations([usable, flat], [])  # p95 <= p5: in force, but never applied
    store.close()

    code, out, _ = _run_cli(capsys, "status")
    frame = pd.read_csv(io.StringIO(out), sep=r"\s{2,}", engine="python")
    assert code == 0 and frame["calibrated heads"].tolist() == [1]

    code, out, _ = _run_cli(capsys, "export-calibrations", "--dest", str(tmp_path / "out"))
    assert code == 0 and "(1 labels)" in out and "sidecars: 1 in" in out
    package = json.loads((tmp_path / "out" / "calibrations.json").read_text())
    assert [entry["key"] for entry in package["calibrations"]] == [usable["_key"]]
    assert not (tmp_path / "out" / "effnet-discogs-effnet-1" / "mood_sad-calibration-v1.json").exists()


def test_export_navidrome_writes_the_kit_and_never_into_a_library(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    monkeypatch.setenv("NOMARR_STORE_URL", url)
    monkeypatch.setenv("NOMARR_EXPORT_DIR", str(tmp_path / "exports"))
    monkeypatch.setenv("NOMARR_LIBRARY_ROOTS", str(tmp_path / "music"))
    (tmp_path / "music").mkdir()
    code, _, err = _run_cli(capsys, "export-navidrome")
    assert code == 2
    _assert_clear_error(err, "no calibration yet")
    store = open_store(url)
    states = [_state("mood_happy", "happy", 0.1, 0.9), _state("mood_happy", "non_happy", 0.1, 0.9)]
    store.save_calibrations(states, [])
    store.close()

    code, out, _ = _run_cli(capsys, "export-navidrome")
    assert code == 0 and "(1 float tags)" in out and "smart playlists: 2 in" in out
    kit = tmp_path / "exports" / "navidrome"
    assert sorted(path.name for path in (kit / "playlists").iterdir()) == ["happy.nsp", "not_happy.nsp"]
    assert "[Tags.nom_happy]" in (kit / "navidrome-tags.toml").read_text()

    code, _, err = _run_cli(capsys, "export-navidrome", "--dest", str(tmp_path / "music" / "kit"))
    assert code == 2
    _assert_clear_error(err, "inside the library folder")
    assert list((tmp_path / "music").iterdir()) == []


# ---- calibration packages ---------------------------------------------------------------------


def _state(head: str, label: str, p5: float, p95: float) -> dict:
    state, _ = compute_state(
        None,
        model_key="effnet-discogs-effnet-1",
        head_name=head,
        label=label,
        version=1,
        spec=HistogramSpec(),
        result=PercentileResult(p5, p95, 100, 0, 0),
        now_ms=1_768_564_800_000,
    )
    return state


def test_export_then_import_calibrations(tmp_path: Path, monkeypatch, capsys) -> None:
    source_url = f"sqlite:///{tmp_path / 'source.sqlite3'}"
    monkeypatch.setenv("NOMARR_STORE_URL", source_url)
    code, _, err = _run_cli(capsys, "export-calibrations", "--dest", str(tmp_path / "out"))
    assert code == 2
    _assert_clear_error(err, "no calibration to export")

    source = open_store(source_url)
    states = [_state("mood_happy", "happy", 0.1, 0.9), _state("mood_happy", "non_happy", 0.2, 0.8)]
    source.save_calibrations(states, [])
    source.close()
    code, out, _ = _run_cli(capsys, "export-calibrations", "--dest", str(tmp_path / "out"))
    assert code == 0
    package = tmp_path / "out" / "calibrations.json"
    assert f"package: {package} (2 labels)" in out
    assert "sidecars: 1 in" in out

    target_url = f"sqlite:///{tmp_path / 'target.sqlite3'}"
    monkeypatch.setenv("NOMARR_STORE_URL", target_url)
    write_demo_models(tmp_path / "models", heads=("mood_happy-discogs-effnet-1",))
    monkeypatch.setenv("NOMARR_MODELS_DIR", str(tmp_path / "models"))
    code, out, _ = _run_cli(capsys, "import-calibrations", str(package))
    assert code == 0
    assert "imported: 2 labels" in out
    target = open_store(target_url)
    imported = {s["_key"]: (s["p5"], s["p95"]) for s in target.list_calibrations()}
    target.close()
    assert imported == {s["_key"]: (s["p5"], s["p95"]) for s in states}

    code, out, _ = _run_cli(capsys, "import-calibrations", str(package))
    assert "kept: 2 labels already calibrated here" in out

    (tmp_path / "broken.json").write_text("{not json")
    code, _, err = _run_cli(capsys, "import-calibrations", str(tmp_path / "broken.json"))
    assert code == 2
    _assert_clear_error(err, "export-calibrations")


def _package(tmp_path: Path, states: list[dict]) -> Path:
    from nomarr_pipeline.calibration.exports import export_package

    return export_package(states, tmp_path / "package")


def test_import_refuses_heads_that_are_not_in_the_models_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    monkeypatch.setenv("NOMARR_STORE_URL", url)
    write_demo_models(tmp_path / "models", heads=("mood_happy-discogs-effnet-1",))
    known = _state("mood_happy", "happy", 0.1, 0.9)
    strangers = [_state(f"stranger_{index}", "yes", 0.1, 0.9) for index in range(7)]
    wrong_label = _state("mood_happy", "grumpy", 0.1, 0.9)  # a head of ours, a label it lacks
    package = _package(tmp_path, [known, wrong_label, *strangers])

    # Without a models folder nothing says which heads are ours: refused, nothing stored.
    code, _, err = _run_cli(capsys, "import-calibrations", str(package))
    assert code == 2
    _assert_clear_error(err, "NOMARR_MODELS_DIR", "--allow-unknown")
    assert open_store(url).list_calibrations() == []

    monkeypatch.setenv("NOMARR_MODELS_DIR", str(tmp_path / "models"))
    only_strangers = _package(tmp_path / "strangers", strangers)
    code, _, err = _run_cli(capsys, "import-calibrations", str(only_strangers))
    assert code == 2
    assert "not imported: 7 labels of 7 heads that are not in NOMARR_MODELS_DIR" in err
    _assert_clear_error(err.split("\n", 1)[1], "calibrates none of the heads in NOMARR_MODELS_DIR")
    assert open_store(url).list_calibrations() == []

    code, out, err = _run_cli(capsys, "import-calibrations", str(package))
    assert code == 0 and "imported: 1 labels" in out
    assert "not imported: 8 labels of 8 heads" in err and "and 3 more" in err
    assert [state["_key"] for state in open_store(url).list_calibrations()] == [known["_key"]]
    code, out, _ = _run_cli(capsys, "status")
    assert code == 0

    # Imported anyway on request, they are stored but never count as this library's heads.
    code, out, _ = _run_cli(capsys, "import-calibrations", "--allow-unknown", str(package))
    assert code == 0 and "imported: 8 labels" in out
    store = open_store(url)
    store.ensure_library({"_key": "lib", "name": "library", "root_path": str(tmp_path)})
    assert len(store.list_calibrations()) == 9
    store.close()
    code, out, _ = _run_cli(capsys, "status")
    frame = pd.read_csv(io.StringIO(out), sep=r"\s{2,}", engine="python")
    assert code == 0 and frame["calibrated heads"].tolist() == [1]


# ---- the demo, end to end ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, int, str]]:
    """One ``nomarr-pipeline demo`` for the module, run in its own folder as scripts/demo.sh
    runs it (no DAGSTER_HOME): (demo folder, DAGSTER_HOME, exit code, stdout)."""
    root = tmp_path_factory.mktemp("demo")
    saved, cwd = dict(os.environ), Path.cwd()
    os.environ.pop("DAGSTER_HOME", None)
    os.chdir(root)
    stdout = io.StringIO()
    try:
        import contextlib

        with contextlib.redirect_stdout(stdout), pytest.MonkeyPatch.context() as patch:
            patch.setattr(settings, "ENV_FILE", Path(".env"))  # the project folder's, as for a user
            code = cli.main(["demo", "--folder", str(root / "demo")])
        yield root / "demo", root / "demo" / "data" / "dagster_home", code, stdout.getvalue()
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(demo_run: tuple[Path, Path, int, str]) -> None:
    folder, home, code, out = demo_run
    assert code == 0, out
    assert (home / "dagster.yaml").is_file()
    assert "scan                         ok       13 files, 0 unreadable" in out
    assert "head discovery               ok       9 heads (9 new)" in out
    assert f"tags written into: {folder / 'library'}" in out

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert sorted(instance.get_dynamic_partitions("heads")) == sorted(
            line.strip() for line in out.split("heads: ", 1)[1].splitlines()[0].split(",")
        )
        runs = instance.get_runs()
        jobs = {run.job_name for run in runs}
        assert "library_scan_job" in jobs
        assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
        predictions = [run for run in runs if run.job_name == predictions_job.name]
        (calibration_run,) = [run for run in runs if run.job_name == calibration_job.name]
        # calibrations.json is part of the calibration run, not a step of its own.
        (package,) = instance.fetch_materializations(dg.AssetKey("calibration_package"), limit=5).records
        assert package.run_id == calibration_run.run_id
    # All heads in one run (a partition range), not one run per head.
    (prediction_run,) = predictions
    assert prediction_run.tags[PARTITION_RANGE_START] != prediction_run.tags[PARTITION_RANGE_END]
    assert "calibration                  ok       9 heads in 1 run(s)" in out

    store = open_store(f"sqlite:///{folder / 'data' / 'nomarr.sqlite3'}")
    try:
        counts = store.file_counts()
        assert counts["total"] == len(DEMO_TRACKS)
        assert counts["analysed"] == len(DEMO_TRACKS)
        # The demo writes every model's .onnx too: it runs on ONNX Runtime.
        assert {doc.get("analysis_engine") for doc in library_files(store)} == {"onnx"}
        assert runner.usable_calibrations(store)
    finally:
        store.close()


@pytest.mark.slow
def test_a_new_shell_sees_the_demo_in_status_and_in_the_printed_ui_command(
    demo_run: tuple[Path, Path, int, str],
) -> None:
    """After the demo, only the project folder's .env configures: a clean environment."""
    folder, home, code, out = demo_run
    assert code == 0, out
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(folder.parent)}
    status = subprocess.run([str(Path(sys.executable).with_name("nomarr-pipeline")), "status"],
                            cwd=folder.parent, env=clean, capture_output=True, text=True, timeout=300)
    assert status.returncode == 0, status.stderr
    assert f"{len(DEMO_TRACKS)}" in status.stdout and "library" in status.stdout, status.stdout

    command = out.split("partitions (http://127.0.0.1:3000) with:\n", 1)[1].splitlines()[0].strip()
    assert f"DAGSTER_HOME={home}" in command
    server = DagsterDev(home=home, data_dir=folder / "data")  # only for its GraphQL helpers
    server.process = subprocess.Popen(
        ["bash", "-c", f"{command} -h 127.0.0.1 -p {server.port}"], env=clean, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )
    try:
        server._wait_until_loaded()
        runs = server.graphql("{ runsOrError { ... on Runs { results { runId jobName } } } }")
        jobs = {run["jobName"] for run in runs["runsOrError"]["results"]}
        assert {"library_scan_job", "predictions_job", "calibration_job", "tagging_job"} <= jobs
    finally:
        server.stop()


@pytest.mark.slow
def test_demo_writes_tags_into_the_demo_files(demo_run: tuple[Path, Path, int, str]) -> None:
    from nomarr_pipeline_tests.tagging.tag_helpers import read_nom_tags

    folder, _, code, _ = demo_run
    assert code == 0
    tagged = [name for name, _, _ in DEMO_TRACKS if read_nom_tags(folder / "library" / name)]
    assert tagged == [name for name, _, _ in DEMO_TRACKS]


@pytest.mark.slow
def test_status_and_preview_after_the_demo(
    demo_run: tuple[Path, Path, int, str], tmp_path: Path, monkeypatch, capsys
) -> None:
    folder, _, code, _ = demo_run
    assert code == 0
    monkeypatch.setenv("NOMARR_STORE_URL", f"sqlite:///{folder / 'data' / 'nomarr.sqlite3'}")
    code, out, _ = _run_cli(capsys, "status")
    assert code == 0
    header, row = out.splitlines()[:2]
    for column in ["library", "files", "analysed", "failed", "calibrated heads", "pending writes",
                   "write errors", "expected hash", "remaining recalibration"]:  # fmt: skip
        assert column in header
    assert row.split()[:2] == ["library", str(len(DEMO_TRACKS))]

    preview = tmp_path / "preview.csv"
    code, out, _ = _run_cli(capsys, "write-tags", "--preview", "--output", str(preview))
    assert code == 0
    frame = pd.read_csv(preview)
    assert list(frame.columns) == ["file_id", "path", "key", "current", "proposed", "action"]
    assert f"preview: {preview}" in out

    code, _, err = _run_cli(capsys, "force-recalibration", "--library", str(tmp_path))
    assert code == 2 and "not a scanned library" in err
    code, out, _ = _run_cli(capsys, "force-recalibration", "--library", str(folder / "library"))
    assert code == 0 and f"{len(DEMO_TRACKS)} files" in out
    store = open_store(f"sqlite:///{folder / 'data' / 'nomarr.sqlite3'}")
    try:
        from nomarr_pipeline.calibration.hashing import expected_calibration_hash

        expected = expected_calibration_hash(store.list_calibrations())
        assert store.count_files_needing_recalibration(expected) == len(DEMO_TRACKS)
    finally:
        store.close()


@pytest.mark.slow
def test_tag_flags_reach_the_run_and_the_files(
    demo_run: tuple[Path, Path, int, str], capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`write-tags --mood-tier mood-loose` is in the run's config (whoever launches the run),
    and every written file's MOOD holds its loose tier."""
    from nomarr_pipeline.tagging.formats import OpenedAudio

    folder, home, code, _ = demo_run
    assert code == 0
    saved, cwd = dict(os.environ), Path.cwd()
    try:
        for name in [name for name in os.environ if name.startswith("NOMARR_") or name == "DAGSTER_HOME"]:
            del os.environ[name]
        os.chdir(folder.parent)  # the demo's .env
        monkeypatch.setattr(settings, "ENV_FILE", Path(".env"))
        code, out, err = _run_cli(capsys, "force-recalibration", "--library", str(folder / "library"))
        assert code == 0, out + err
        code, out, err = _run_cli(capsys, "write-tags", "--mood-tier", "mood-loose")
        assert code == 0, out + err
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run, *_) = instance.get_runs(dg.RunsFilter(job_name=tagging_job.name))
    assert run.run_config["resources"]["tagging"]["config"]["mood_tier"] == "mood-loose"
    for name, _, _ in DEMO_TRACKS:
        state = OpenedAudio(folder / "library" / name).state()
        assert state.standard.get("MOOD", []) == state.nom_tags.get("nom:mood-loose", []), name


# ---- models list / models fetch ----------------------------------------------------------------

HAPPY = "mood_happy-discogs-effnet-1"


def test_models_list_shows_keys_labels_and_problems(tmp_path: Path, monkeypatch, capsys) -> None:
    write_demo_models(tmp_path / "models")
    (tmp_path / "models" / "mood_sad-msd-musicnn-1.pb").unlink()
    monkeypatch.setenv("NOMARR_MODELS_DIR", str(tmp_path / "models"))
    code, out, _ = _run_cli(capsys, "models", "list")
    assert code == 0
    assert "2 backbones, 8 heads, 1 problems" in out.splitlines()[0]
    assert "  effnet-discogs-effnet-1:mood_happy  (2 labels, tensorflow, in mood tiers)" in out
    assert "      happy, non_happy" in out
    assert "  effnet-discogs-effnet-bs64-1:discogs-effnet-bs64  (400 labels, tensorflow, the tags of " in out
    assert "(+392 more)" in out
    assert "next: `nomarr-pipeline models fetch mood_sad-msd-musicnn-1`" in out

    code, out, _ = _run_cli(capsys, "models", "list", "--all-labels")
    assert code == 0 and "Demo---Style 399" in out


def test_models_list_without_a_models_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    code, _, err = _run_cli(capsys, "models", "list")
    assert code == 2
    _assert_clear_error(err, "no models folder configured", "NOMARR_MODELS_DIR")
    monkeypatch.setenv("NOMARR_MODELS_DIR", str(tmp_path / "nowhere"))
    code, _, err = _run_cli(capsys, "models", "list")
    assert code == 2
    _assert_clear_error(err, "does not exist", "models fetch --recommended")


def test_models_fetch_a_head_with_its_backbone(model_site: ModelSite, tmp_path: Path, monkeypatch,
                                               capsys) -> None:
    monkeypatch.setenv("NOMARR_MODELS_DIR", str(tmp_path / "models"))
    code, out, err = _run_cli(capsys, "models", "fetch", HAPPY)
    assert code == 0, err
    assert f"from {model_site.url} into {tmp_path / 'models'}" in out
    assert f"fetched: discogs-effnet-bs64-1\nfetched: {HAPPY}\n" in out
    assert "2 heads in" in out
    # Not a terminal: plain progress lines on stderr, one summary per graph.
    assert "discogs-effnet-bs64-1.pb: " in err and " kB in " in err
    assert ".json: " not in err  # a few kB: no progress shown
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "discogs-effnet-bs64-1.json", "discogs-effnet-bs64-1.pb", f"{HAPPY}.json", f"{HAPPY}.pb"]

    code, out, _ = _run_cli(capsys, "models", "fetch", "--recommended")
    assert code == 0
    assert out.count("fetched: ") == len(RECOMMENDED) - 1  # all but mood_happy; the backbone is here
    assert f"already there: {HAPPY}" in out


def test_models_fetch_failure_is_a_clear_error_and_leaves_nothing(
    model_site: ModelSite, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("NOMARR_MODELS_DIR", str(tmp_path / "models"))
    model_site.fail(site_path("discogs-effnet-bs64-1", ".pb"), "html")
    code, _, err = _run_cli(capsys, "models", "fetch", HAPPY)
    assert code == 2
    _assert_clear_error(err, "returned a web page", "NOMARR_MODELS_URL")
    assert list((tmp_path / "models").iterdir()) == []

    code, _, err = _run_cli(capsys, "models", "fetch")
    assert code == 2
    _assert_clear_error(err, "no model named", "--recommended")
    code, _, err = _run_cli(capsys, "models", "fetch", "no-such-head-1")
    assert code == 2
    _assert_clear_error(err, "HTTP 404")


# ---- what a failed run says -------------------------------------------------------------------


def _failing_job(error: Exception) -> dg.JobDefinition:
    @dg.op
    def writes_predictions() -> None:
        raise error

    @dg.job
    def failing() -> None:
        writes_predictions()

    return failing


def test_a_failed_step_is_summarised_by_its_own_error_and_a_store_error_is_raised() -> None:
    from nomarr_pipeline.store import StoreError, StoreFullError

    def failure(error: Exception) -> runner.RunFailure:
        result = _failing_job(error).execute_in_process(raise_on_error=False)
        return runner.failure_of(result.all_events)

    for error, says in [
        (dg.Failure("the disk holding the library is full"), "the disk holding the library is full"),
        (ValueError("no such head"), "no such head"),
    ]:
        assert failure(error) == runner.RunFailure(f"step writes_predictions failed: {says}")
    metadata = {NOT_MATERIALIZED: dg.MetadataValue.json(["m:h"])}
    left_out = dg.Failure("1 broken model(s)", metadata=metadata)
    says = "step writes_predictions failed: 1 broken model(s)"
    assert failure(left_out) == runner.RunFailure(says, ("m:h",))
    full = StoreFullError("the disk holding the SQLite store /x.sqlite3 is full")
    with pytest.raises(StoreFullError, match=r"^the disk holding the SQLite store /x.sqlite3 is full$"):
        failure(full)
    with pytest.raises(StoreError, match="server went away"):
        failure(StoreError("server went away"))
