"""Crash consistency of scan, analysis, calibration and recalibration (issue 14): a real
``nomarr-pipeline`` command is SIGKILLed, whole process group, at a random moment of the stage's
Dagster run; the command is run again, and the store must then hold exactly what the same
commands left uninterrupted produce (:mod:`nomarr_pipeline_tests.store_dump`).

Each stage is a small script of commands on a library that has been through one complete
``run``: what makes work for the stage (``prepare``), then the command that is killed and run
again. A reference folder (an identical copy of the library) runs the same script without
kills. Preparing again gives the stage the same work again, so one reference serves any number
of kills. Used by ``test_crash_consistency.py`` (a sample) and ``scripts/crash_campaign.py``.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from nomarr_pipeline_tests.cli.cli_processes import Command, PipelineFolder
from nomarr_pipeline_tests.postgres_server import PostgresServer
from nomarr_pipeline_tests.store_dump import differences, store_documents
from nomarr_pipeline_tests.ui.dagster_dev import REPO_ROOT

Documents = dict[str, list[Any]]


@dataclass(frozen=True)
class Stage:
    name: str
    command: str  # the command killed, then run again to the end
    job: str  # the Dagster job whose run the kill aims at
    window_s: float  # the kill lands up to this long after that run started
    touch: bool = False  # the library changed: every file and folder gets a new mtime
    prepare: tuple[str, ...] = ()  # commands run to their end before the killed one


STAGES = {
    stage.name: stage
    for stage in (
        Stage("scan", "scan", "library_scan_job", 1.5, touch=True),
        # A changed library is rescanned first, so `run`'s predictions have every file to do.
        Stage("analysis", "run", "predictions_job", 12.0, touch=True, prepare=("scan",)),
        Stage("calibration", "run", "calibration_job", 3.0),
        Stage("recalibration", "write-tags", "tagging_job", 2.0, prepare=("force-recalibration",)),
    )
}


def touch_library(library: Path) -> None:
    """Every file and folder a new mtime, as if the user had re-encoded the whole library: the
    scan finds them all changed, drops their predictions and the analysis redoes them."""
    stamp = time.time_ns() // 1_000_000 * 1_000_000
    for path in sorted(library.rglob("*"), key=lambda p: -len(p.parts)):  # folders after contents
        os.utime(path, ns=(stamp, stamp), follow_symlinks=False)
    os.utime(library, ns=(stamp, stamp))


def check(command: Command) -> Command:
    assert command.returncode == 0, (
        f"`nomarr-pipeline {command.name}` exited {command.returncode}:\n{command.stderr[-3000:]}"
    )
    return command


def prepare(folder: PipelineFolder, stage: Stage) -> None:
    if stage.touch:
        touch_library(folder.library)
    for command in stage.prepare:
        check(folder.run(command))


def new_folder(
    root: Path, source: Path, models: Path, store_url: str | None = None, pg_password: str | None = None
) -> PipelineFolder:
    """A pipeline folder with a copy of ``source`` and ``models``, nothing run yet. Tags are
    not written into the files (``none``): tag writing's crashes are the tag writer's tests."""
    folder = PipelineFolder(root, models=models, store_url=store_url, pg_password=pg_password)
    root.mkdir(parents=True)
    shutil.copytree(source, folder.library)
    folder.env["NOMARR_FILE_WRITE_MODE"] = "none"
    # The instance as the command line makes it, so that the test can watch its runs at once.
    folder.home.mkdir()
    shutil.copyfile(REPO_ROOT / "dagster.yaml", folder.home / "dagster.yaml")
    return folder


def documents(folder: PipelineFolder) -> Documents:
    with folder.store() as store:
        return store_documents(store)


def reference_documents(folder: PipelineFolder, stage: Stage) -> Documents:
    """What the stage's commands leave when nothing is killed."""
    prepare(folder, stage)
    check(folder.run(stage.command))
    return documents(folder)


def _stage_run(instance: dg.DagsterInstance, job: str, known: set[str]) -> dg.DagsterRun | None:
    runs = instance.get_runs(dg.RunsFilter(job_name=job))
    return next((run for run in runs if run.run_id not in known), None)


def kill_during(folder: PipelineFolder, stage: Stage, rng: random.Random, timeout: float = 300) -> str:
    """Start the stage's command, SIGKILL its process group at a random moment of the stage's
    run; where the kill landed."""
    with folder.instance() as instance:
        known = {run.run_id for run in instance.get_runs()}
        command = folder.start(stage.command)
        deadline = time.monotonic() + timeout
        while _stage_run(instance, stage.job, known) is None and command.returncode is None:
            if time.monotonic() > deadline:
                command.kill()
                raise AssertionError(f"no {stage.job} run within {timeout}s:\n{command.stderr[-3000:]}")
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, stage.window_s))
        finished_first = command.returncode is not None
        command.kill()
        run = _stage_run(instance, stage.job, known)
        status = instance.get_run_by_id(run.run_id).status if run else None
    if finished_first:
        return "after the command had finished"
    if run is None:
        return f"before its {stage.job} run"
    if status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING):
        return f"during its {stage.job} run"
    return f"after its {stage.job} run"


def converge(folder: PipelineFolder, stage: Stage, expected: Documents) -> list[str]:
    """Run the stage's command to its end; what still differs from ``expected`` (nothing when
    the store converged)."""
    check(folder.run(stage.command))
    return differences(expected, documents(folder))


@dataclass
class Tally:
    landed: dict[str, int]
    kills: int = 0
    diverged: int = 0

    def add(self, where: str) -> None:
        self.kills += 1
        self.landed[where] = self.landed.get(where, 0) + 1


def kill_campaign(
    folder: PipelineFolder,
    stage: Stage,
    expected: Documents,
    rng: random.Random,
    kills: int,
    *,
    kills_before_rerun: int = 1,
    say: Callable[[str], None] = lambda line: None,
) -> Tally:
    """``kills`` kills of the stage (``kills_before_rerun`` in a row each time), each followed by
    one complete re-run compared with ``expected``."""
    tally = Tally({})
    while tally.kills < kills:
        prepare(folder, stage)
        for _ in range(min(kills_before_rerun, kills - tally.kills)):
            where = kill_during(folder, stage, rng)
            tally.add(where)
            say(f"{stage.name} kill {tally.kills:3d}: {where}")
        problems = converge(folder, stage, expected)
        if problems:
            tally.diverged += 1
            say(f"{stage.name}: the re-run did NOT converge:\n  " + "\n  ".join(problems))
    return tally


def server_lost_during(
    folder: PipelineFolder, stage: Stage, server: PostgresServer, rng: random.Random, outage_s: float
) -> tuple[str, Command]:
    """Run the stage's command and stop its PostgreSQL server (``immediate``: as a crash or a
    power cut does) at a random moment of the stage's run, for ``outage_s``; where the outage
    began, and the finished command."""
    with folder.instance() as instance:
        known = {run.run_id for run in instance.get_runs()}
        command = folder.start(stage.command)
        while _stage_run(instance, stage.job, known) is None and command.returncode is None:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, stage.window_s))
        where = (
            "after the command had finished"
            if command.returncode is not None
            else (f"during its {stage.job} run")
        )
        server.stop("immediate")
        try:
            time.sleep(outage_s)
        finally:
            server.start()
        command.wait(600)
    return where, command
