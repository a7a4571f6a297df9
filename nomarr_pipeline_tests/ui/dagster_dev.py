"""A real ``dagster dev`` for UI tests: started from the repo root in its own process group,
talked to over GraphQL, always stopped by killing that group.

``dagster dev`` started in the background of a non-interactive shell ignores SIGINT/SIGTERM,
so it is started from Python in a new session and stopped with ``os.killpg``: the webserver,
the daemon and the code servers are all in that group.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCATION_NAME = "nomarr_pipeline"
REPOSITORY_NAME = "__repository__"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def isolated_env(extra: dict[str, str]) -> dict[str, str]:
    """The test process's environment without any NOMARR_* setting of the developer's, plus
    ``extra``: the webserver must never see the developer's store, library or models."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("NOMARR_")}
    env.update(extra)
    return env


class DagsterDev:
    """``dagster dev -w workspace.yaml`` on 127.0.0.1 with its own ``DAGSTER_HOME``."""

    def __init__(self, home: Path, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.data_dir = data_dir
        self.env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "dagster-dev.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DagsterDev:
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / "dagster.yaml", self.home / "dagster.yaml")
        env = isolated_env({"DAGSTER_HOME": str(self.home), "NOMARR_DATA_DIR": str(self.data_dir),
                            **self.env})
        dagster = Path(sys.executable).with_name("dagster")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(dagster), "dev", "-h", "127.0.0.1", "-p", str(self.port),
                 "-w", str(REPO_ROOT / "workspace.yaml")],
                cwd=self.home,  # not the repo: its .env (the demo's settings) would win over env
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            self._wait_until_loaded()
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _wait_until_loaded(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        last_error = "no answer yet"
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                workspace = self.graphql(LOCATION_STATUS_QUERY, timeout_s=5)["workspaceOrError"]
                entries = workspace["locationEntries"]
                if entries and all(entry["loadStatus"] == "LOADED" for entry in entries):
                    return
                last_error = f"locations: {entries}"
            except (OSError, urllib.error.URLError, KeyError, TypeError, ValueError) as error:
                last_error = repr(error)
            time.sleep(0.5)
        raise TimeoutError(
            f"dagster dev not ready after {READY_TIMEOUT_S:.0f}s ({last_error}):\n{self.log_tail()}"
        )

    def graphql(self, query: str, variables: dict[str, Any] | None = None, timeout_s: float = 30) -> Any:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = json.load(response)
        if payload.get("errors"):
            raise AssertionError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]

    def wait_for_run(self, run_id: str, timeout_s: float = 180.0) -> str:
        """The run's final status (or the last one seen when ``timeout_s`` ran out)."""
        deadline = time.monotonic() + timeout_s
        status = "QUEUED"
        while status not in ("SUCCESS", "FAILURE", "CANCELED") and time.monotonic() < deadline:
            time.sleep(0.5)
            result = self.graphql(RUN_STATUS_QUERY, {"runId": run_id})["runOrError"]
            status = result.get("status", result["__typename"])
        return status

    def stop(self) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after a bounded wait."""
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the leader's pid is the group id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_TIMEOUT_S)
        # The daemon and code servers may outlive the leader for a moment; never leave them.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_TIMEOUT_S)
        self.process = None


LOCATION_STATUS_QUERY = """
{
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on RepositoryLocation { name }
          ... on PythonError { message }
        }
      }
    }
  }
}
"""

ASSET_GRAPH_QUERY = """
{
  assetNodes {
    assetKey { path }
    dependencyKeys { path }
    groupName
    isMaterializable
    partitionDefinition { type name }
  }
}
"""

AUTOMATION_QUERY = """
{
  repositoriesOrError {
    __typename
    ... on RepositoryConnection {
      nodes {
        name
        location { name }
        sensors { name }
        schedules { name }
        jobs { name }
      }
    }
    ... on PythonError { message }
  }
}
"""

LAUNCH_RUN_MUTATION = """
mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message stack }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}
"""

REEXECUTE_MUTATION = """
mutation Reexecute($parentRunId: String!) {
  launchPipelineReexecution(reexecutionParams: {parentRunId: $parentRunId, strategy: ALL_STEPS}) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""

JOB_RUNS_QUERY = """
query JobRuns($selector: PipelineSelector!) {
  pipelineOrError(params: $selector) {
    __typename
    ... on Pipeline { runs(limit: 20) { runId status } }
    ... on Error { message }
  }
}
"""

RUN_STATUS_QUERY = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status }
    ... on RunNotFoundError { message }
    ... on PythonError { message }
  }
}
"""

# The "join the community" dialog would cover the asset graph in screenshots; dismissing
# it is a server-side flag of the instance.
SET_NUX_SEEN_MUTATION = "mutation { setNuxSeen }"
