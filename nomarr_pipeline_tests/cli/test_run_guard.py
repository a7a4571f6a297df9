"""Crashed runs never block the pipeline, waits say what they wait for and never spin, SIGTERM
stops the command line as Ctrl-C does, and two pipelines never share the embedded store at
once (issue 14, item 1 and "Concurrency"). Real ``nomarr-pipeline`` processes, real SIGKILL
and SIGTERM of their whole process group, a real Dagster instance."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psutil
import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config

from nomarr_pipeline.cli.run_guard import ProcessIdentity
from nomarr_pipeline.store import open_store
from nomarr_pipeline.tagging.temps import is_tag_write_temp
from nomarr_pipeline_tests.cli.cli_processes import (
    Command,
    PipelineFolder,
    build_library,
    claimed_slots,
    shift_calibrations,
    wait_for_new_claim,
    write_one_head_models,
)
from nomarr_pipeline_tests.tagging.library_state import (
    LibrarySnapshot,
    expected_tags,
    mixed,
    names_in,
    settle_problems,
    tags_in,
)
from nomarr_pipeline_tests.ui.dagster_dev import REPO_ROOT

# Enough files that the tag-writing step lasts long enough to be killed in the middle.
LIBRARY_COPIES = 3
# Each library's names and decoded audio before the tests changed anything.
ORIGINALS: dict[Path, LibrarySnapshot] = {}

# ---- configuration ------------------------------------------------------------------------


INSTANCE_FILES = [REPO_ROOT / "dagster.yaml", *sorted((REPO_ROOT / "deploy").glob("dagster*.yaml"))]


@pytest.mark.parametrize("path", INSTANCE_FILES, ids=lambda p: p.name)
def test_every_instance_frees_the_slots_of_dead_runs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HOST", "PORT", "USER", "PASSWORD", "DB"):
        monkeypatch.setenv(f"DAGSTER_PG_{name}", "5432" if name == "PORT" else "placeholder")
    config, _ = dagster_instance_config(str(path.parent), path.name)  # the installed Dagster's schema
    monitoring = config["run_monitoring"]
    assert monitoring["enabled"] is True
    assert monitoring["free_slots_after_run_end_seconds"] > 0
    assert monitoring["start_timeout_seconds"] > 0 and monitoring["cancel_timeout_seconds"] > 0
    # One tag writer at a time: two on the same files take each other's writes for edits.
    assert yaml.safe_load(path.read_text())["concurrency"]["pools"]["default_limit"] == 1


def test_a_process_is_known_by_its_pid_and_start_time() -> None:
    me = ProcessIdentity.current()
    assert me.is_alive()
    assert ProcessIdentity.from_tags(me.tags()) == ProcessIdentity(me.host, me.pid, round(me.started, 2))
    # The same pid started at another time is another process (a pid reused after a crash).
    assert not ProcessIdentity(me.host, me.pid, me.started - 100).is_alive()
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(finished.pid).create_time()
    finished.wait()
    assert not ProcessIdentity(me.host, finished.pid, started).is_alive()
    assert ProcessIdentity.from_tags({"nomarr/pid": "12"}) is None


# ---- crashes, waits and signals on one analysed library -----------------------------------


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineFolder]:
    """A library analysed, calibrated and tagged once by a real `nomarr-pipeline run`."""
    root = tmp_path_factory.mktemp("guarded")
    folder = PipelineFolder(root)
    build_library(folder.library, LIBRARY_COPIES)
    write_one_head_models(folder.models)
    run = folder.run("run")
    assert run.returncode == 0, run.stderr
    ORIGINALS[folder.library] = LibrarySnapshot.take(folder.library)
    yield folder


def _runs(folder: PipelineFolder) -> dict[str, dg.DagsterRunStatus]:
    with folder.instance() as instance:
        return {run.run_id: run.status for run in instance.get_runs()}


def _kill_while_writing(folder: PipelineFolder, variant: int, mid_write: bool = False) -> str:
    """SIGKILL a `write-tags` (its whole process group) while its tag-writing step holds its
    slot: at once, or (``mid_write``) once a copy is being written; returns the run left."""
    for _attempt in range(5):
        shift_calibrations(folder, variant)
        with folder.instance() as instance:
            known = {run.run_id for run in instance.get_runs()}
            command = folder.start("write-tags")
            try:
                run_id = wait_for_new_claim(instance, command, known)
                while mid_write and not any(map(is_tag_write_temp, names_in(folder.library))):
                    if run_id not in claimed_slots(instance):
                        break
            finally:
                command.kill()
            if run_id in claimed_slots(instance):
                return run_id
        # The step ended between the poll and the kill: not a kill *while writing*; again.
    raise AssertionError("could not kill write-tags while its tag-writing step ran")


def _assert_library_settled(folder: PipelineFolder) -> None:
    """Nothing pending, no write error, every file carries the tags the store selects, and
    (against the library as its first run left it) every file decodes to its original audio
    and no name was added or lost: no temp copy left."""
    with folder.store() as store:
        problems = settle_problems(store, folder.library, ORIGINALS.get(folder.library))
    assert problems == []


HOLDER = """
import pathlib, sys, time
import dagster as dg

release = pathlib.Path(sys.argv[1])

@dg.op(pool="tag_writing")
def hold_a_tag_writing_slot():
    while not release.exists():
        time.sleep(0.1)

@dg.job
def holds_tag_writing():
    hold_a_tag_writing_slot()

with dg.DagsterInstance.get() as instance:
    holds_tag_writing.execute_in_process(instance=instance)
"""


def _cpu_seconds(pid: int, over_s: float) -> float:
    process = psutil.Process(pid)
    before = process.cpu_times()
    time.sleep(over_s)
    after = process.cpu_times()
    return (after.user + after.system) - (before.user + before.system)


@pytest.mark.slow
def test_a_busy_pool_is_waited_for_with_a_message_never_a_spin(analysed: PipelineFolder) -> None:
    """A live run holds the only tag_writing slot: write-tags says which run holds it and
    since when, sleeps while it waits, stops at once on SIGTERM, and goes on when the slot
    is free."""
    release = analysed.root / "release"
    script = analysed.root / "holder.py"
    script.write_text(HOLDER)
    with analysed.instance() as instance:
        known = {run.run_id for run in instance.get_runs()}
        holder = subprocess.Popen(
            [sys.executable, str(script), str(release)], env=analysed.env, start_new_session=True
        )
        waiting: list[Command] = []
        try:
            holder_run = wait_for_new_claim(instance, Command("holder", holder, analysed.root / "h"), known)
            shift_calibrations(analysed, 3)

            waiting.append(analysed.start("write-tags"))
            said = waiting[0].wait_for_stderr("waits for a free slot of pool tag_writing")
            assert f"held by run {holder_run[:8]} (holds_tag_writing, launched by Dagster" in said
            assert "running since 20" in said
            # Waiting sleeps: a spinning wait takes a whole core (issue 14).
            assert _cpu_seconds(waiting[0].pid, 4.0) < 1.0
            assert claimed_slots(instance) == [holder_run]

            waiting[0].kill(signal.SIGTERM)  # as `timeout` or systemd stop it
            assert waiting[0].wait(60) == 143
            assert "stopped (SIGTERM)" in waiting[0].stderr and "Traceback" not in waiting[0].stderr

            waiting.append(analysed.start("write-tags"))
            waiting[1].wait_for_stderr("waits for a free slot of pool tag_writing")
            release.touch()
            assert holder.wait(60) == 0
            assert waiting[1].wait(300) == 0, waiting[1].stderr
        finally:
            release.touch()
            for command in waiting:
                command.kill()
            holder.kill()
    _assert_library_settled(analysed)


@pytest.mark.slow
def test_sigterm_stops_tag_writing_like_ctrl_c_and_loses_nothing(analysed: PipelineFolder) -> None:
    shift_calibrations(analysed, 4)
    with analysed.instance() as instance:
        known = {run.run_id for run in instance.get_runs()}
        command = analysed.start("write-tags")
        try:
            run_id = wait_for_new_claim(instance, command, known)
            command.kill(signal.SIGTERM)  # the whole group, as `timeout 40 nomarr-pipeline …` does
            assert command.wait(60) == 143
        finally:
            command.kill()
        assert claimed_slots(instance) == []
    assert "stopped (SIGTERM)" in command.stderr and "Traceback" not in command.stderr
    assert _runs(analysed)[run_id] == dg.DagsterRunStatus.FAILURE
    rerun = analysed.run("write-tags", timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    _assert_library_settled(analysed)


@pytest.mark.slow
def test_more_kills_while_writing_than_the_pool_has_slots(analysed: PipelineFolder) -> None:
    """A sample of ``scripts/kill_campaign.py``: after one kill more than the pool has slots,
    one `write-tags` leaves the library as an uninterrupted run would."""
    with analysed.instance() as instance:
        limit = instance.event_log_storage.get_concurrency_info("tag_writing").limit or 1
    killed = []
    for kill in range(max(3, limit + 1)):
        before = tags_in(analysed.library)
        # At the step's start, then in the middle of writing the files.
        killed.append(_kill_while_writing(analysed, kill % 2 + 1, mid_write=kill > 0))
        with analysed.store() as store:  # each file has its old or its new tags, never a mix
            assert mixed(before, tags_in(analysed.library), expected_tags(store, analysed.library)) == []
    with analysed.instance() as instance:
        assert killed[-1] in claimed_slots(instance)  # the last writer died holding its slot

    final = analysed.run("write-tags", timeout=300)
    assert final.returncode == 0, final.stderr
    assert "Traceback" not in final.stderr
    assert f"run {killed[-1][:8]} (tagging_job) was left unfinished by nomarr-pipeline pid" in final.stderr
    statuses = _runs(analysed)
    assert [statuses[run_id] for run_id in killed] == [dg.DagsterRunStatus.FAILURE] * len(killed)
    with analysed.instance() as instance:
        assert claimed_slots(instance) == []
        for run_id in killed:
            (failure,) = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
            assert "is gone: it was killed or crashed" in (failure.message or "")
    _assert_library_settled(analysed)


# ---- two pipelines on one embedded store ---------------------------------------------------


@pytest.mark.slow
def test_two_runs_at_once_on_the_embedded_store(tmp_path: Path) -> None:
    folder = PipelineFolder(tmp_path)
    build_library(folder.library, 1)
    ORIGINALS[folder.library] = LibrarySnapshot.take(folder.library)
    write_one_head_models(folder.models)
    first = folder.start("run")
    time.sleep(0.5)  # the second one starts while the first is under way
    second = folder.start("run")
    try:
        codes = [first.wait(600), second.wait(600)]
    finally:
        first.kill()
        second.kill()
    assert codes == [0, 0], first.stderr + second.stderr
    messages = [command.stderr for command in (first, second)]
    assert "Traceback" not in "".join(messages)
    waited = [m for m in messages if "it serves one pipeline at a time, so this one waits" in m]
    assert len(waited) == 1
    holder = first if waited[0] is messages[1] else second
    assert f"is in use by `nomarr-pipeline run` (pid {holder.pid} on " in waited[0]

    db = sqlite3.connect(folder.store_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        paths = [row[0] for row in db.execute("SELECT path FROM library_files")]
        assert len(paths) == len(set(paths)) == len([p for p in folder.library.rglob("*") if p.is_file()])
        (duplicates,) = db.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM file_tags GROUP BY file_id, model_key, head_name, label"
            " HAVING COUNT(*) > 1)"
        ).fetchone()
        assert duplicates == 0
    finally:
        db.close()
    _assert_library_settled(folder)


# ---- the sensors ------------------------------------------------------------------------------


def _dead_process() -> ProcessIdentity:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(process.pid).create_time()
    process.wait()
    return ProcessIdentity(ProcessIdentity.current().host, process.pid, started)


def test_a_sensor_never_takes_a_dead_command_line_run_for_one_in_flight(tmp_path: Path) -> None:
    from nomarr_pipeline.definitions import defs
    from nomarr_pipeline.defs.resources import StoreResource
    from nomarr_pipeline.defs.sensors import calibration_hash_sensor

    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    store = open_store(url)
    store.ensure_library({"_key": "lib", "name": "library", "root_path": str(tmp_path)})
    store.upsert_files([{"_key": "f1", "library_id": "lib", "path": f"{tmp_path}/a.mp3", "analyzed_at": 1}])
    store.close()
    with dg.instance_for_test() as instance:
        tagging_job = defs.resolve_job_def("tagging_job")
        # What `nomarr-pipeline write-tags` killed in its tag-writing step leaves behind.
        dead = instance.create_run_for_job(
            tagging_job, status=dg.DagsterRunStatus.STARTED, tags=_dead_process().tags()
        )
        instance.event_log_storage.claim_concurrency_slot("tag_writing", dead.run_id, "written_tags")
        alive = instance.create_run_for_job(
            tagging_job, status=dg.DagsterRunStatus.STARTED, tags=ProcessIdentity.current().tags()
        )
        resources = {"store": StoreResource(url=url)}
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = calibration_hash_sensor(context)
        # The live run is in flight; the dead one is not any more.
        assert isinstance(result, dg.SkipReason) and "already in flight" in result.skip_message
        assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
        assert claimed_slots(instance) == []
        instance.report_run_failed(instance.get_run_by_id(alive.run_id))
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            assert isinstance(calibration_hash_sensor(context), dg.SensorResult)
