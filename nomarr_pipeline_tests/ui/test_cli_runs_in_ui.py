"""A run started by the command line is a run of the code location: ``dagster dev`` on the
same instance lists it on its job's page, re-executes it (the mutation behind the UI's
Re-execute button), and shows its page in a real headless Chromium."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nomarr_pipeline_tests.ml.audio_fixtures import write_wav
from nomarr_pipeline_tests.ui.dagster_dev import (
    JOB_RUNS_QUERY,
    LOCATION_NAME,
    REEXECUTE_MUTATION,
    REPOSITORY_NAME,
    SET_NUX_SEEN_MUTATION,
    DagsterDev,
    isolated_env,
)
from nomarr_pipeline_tests.ui.test_dagster_ui import CHROMIUM, _chromium, _visible_text

pytestmark = pytest.mark.slow


def test_a_cli_run_is_listed_re_executed_and_shown_by_the_ui(tmp_path: Path) -> None:
    write_wav(tmp_path / "music" / "a.wav")
    home, data = tmp_path / "dagster_home", tmp_path / "data"
    settings = {"NOMARR_LIBRARY_ROOTS": str(tmp_path / "music"), "NOMARR_DATA_DIR": str(data)}
    scan = subprocess.run(
        [sys.executable, "-m", "nomarr_pipeline.cli.main", "scan"],
        env=isolated_env({**settings, "DAGSTER_HOME": str(home)}),
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )
    assert scan.returncode == 0, scan.stdout + scan.stderr
    cli_run = next(line for line in scan.stdout.splitlines() if "[run " in line).split("[run ")[1][:8]

    server = DagsterDev(home=home, data_dir=data, env=settings).start()
    try:
        selector = {"repositoryLocationName": LOCATION_NAME, "repositoryName": REPOSITORY_NAME,
                    "pipelineName": "library_scan_job"}
        runs = server.graphql(JOB_RUNS_QUERY, {"selector": selector})["pipelineOrError"]["runs"]
        parent = next((run["runId"] for run in runs if run["runId"].startswith(cli_run)), None)
        assert parent is not None, f"run {cli_run} not on the job's page: {runs}"

        again = server.graphql(REEXECUTE_MUTATION, {"parentRunId": parent})["launchPipelineReexecution"]
        assert again["__typename"] == "LaunchRunSuccess", again
        status = server.wait_for_run(again["run"]["runId"])
        assert status == "SUCCESS", f"re-execution ended as {status}:\n{server.log_tail()}"

        if CHROMIUM is None:
            pytest.skip("chromium is not installed (apt-get install chromium)")
        server.graphql(SET_NUX_SEEN_MUTATION)
        url = f"{server.url}/runs/{parent}"
        page = _visible_text(_chromium(url, tmp_path / "profile", "--virtual-time-budget=20000",
                                       "--dump-dom").stdout)
        assert "library_scan_job" in page and "Re-execute" in page, page[:2000]
        shot = tmp_path / "cli-run.png"
        _chromium(url, tmp_path / "profile", "--virtual-time-budget=20000", f"--screenshot={shot}")
        assert shot.is_file() and shot.stat().st_size > 20_000, "screenshot missing or blank"
    finally:
        server.stop()
