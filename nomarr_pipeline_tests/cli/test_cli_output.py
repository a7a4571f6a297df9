"""What a user sees: ``nomarr-pipeline run`` prints its own progress and summary, nothing of
the processes its runs start (their events stay in the Dagster instance)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dagster._core.events import DagsterEventType

from nomarr_pipeline.defs.jobs import predictions_job
from nomarr_pipeline_tests.cli.cli_processes import PipelineFolder, write_one_head_models
from nomarr_pipeline_tests.ml.audio_fixtures import make_audio

pytestmark = pytest.mark.slow
PROGRESS = re.compile(r"^[a-z +]+: \d+/\d+ files( \(\d+%\), [\d.]+ files/s, \S+ left| in \d+:\d\d:\d\d)$")


def test_a_run_prints_only_its_progress_and_summary(tmp_path: Path) -> None:
    folder = PipelineFolder(tmp_path)
    write_one_head_models(folder.models)
    for seed, name in enumerate(["a.wav", "b.flac", "c.mp3"]):
        make_audio(folder.library / name, 3.0, seed=seed)

    command = folder.run("run")

    assert command.returncode == 0, command.stderr
    lines = [line for line in command.stderr.splitlines() if line.strip()]
    assert any(line.startswith("predictions: 3/3 files in") for line in lines), lines
    noise = [line for line in lines if not PROGRESS.match(line)]
    assert noise == []  # no Dagster DEBUG lines, warnings, TensorFlow or Essentia output
    assert "predictions                  ok" in command.stdout
    with folder.instance() as instance:
        (run,) = [r for r in instance.get_runs() if r.job_name == predictions_job.name]
        started = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.STEP_WORKER_STARTED)
        assert len(started.records) >= 2  # one per step process: kept in the instance
    assert "STEP_WORKER_STARTED" in (folder.home / "nomarr-cli" / "step-processes.log").read_text()
