"""Runs of the code location, launched as the UI launches them: created with the job's origin
in ``workspace.yaml``'s code server (so the UI can re-execute them), handed to the run
coordinator's queue when a daemon serves it, else to the run launcher, then followed to the end.

Upstream gap (Dagster 1.13): no public Python API launches a run of a workspace's code
location (only ``dagster job launch``, one process and one code server per run, and GraphQL,
which needs a webserver); hence the two ``dagster._core.workspace`` imports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType

import dagster as dg
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget

WORKSPACE = Path(__file__).resolve().parents[2] / "workspace.yaml"
LOCATION = "nomarr_pipeline"
POLL_S = 0.5
# A daemon whose queue heartbeat is younger than this dequeues the runs the command line submits.
DAEMON_FRESH_S = 60.0


class CodeLocationLauncher(AbstractContextManager["CodeLocationLauncher"]):
    """One code server for every run of a command line."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self._context = WorkspaceProcessContext(instance, WorkspaceFileTarget([str(WORKSPACE)]))

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._context.__exit__(kind, error, trace)

    def location_error(self) -> str | None:
        """Why the code location did not load (a bad setting, a broken install), else ``None``."""
        error = self._context.create_request_context().get_code_location_error(LOCATION)
        while error is not None and error.cause is not None:
            error = error.cause  # the project's own exception, under Dagster's wrappers
        return None if error is None else error.message.strip().splitlines()[-1]

    def launch(self, job_name: str, tags: Mapping[str, str], run_config: Mapping[str, object]) -> str:
        """Create a run of ``job_name`` with the code location's origin and start it; its id."""
        workspace = self._context.create_request_context()
        location = workspace.get_code_location(LOCATION)
        repository = next(iter(location.get_repositories().values()))
        job = repository.get_full_job(job_name)
        plan = location.get_execution_plan(
            job, run_config, step_keys_to_execute=None, known_state=None, instance=self.instance
        ).execution_plan_snapshot
        run = self.instance.create_run(
            job_name=job_name,
            run_id=None,
            run_config=run_config,
            status=None,
            tags={**job.tags, **tags},
            root_run_id=None,
            parent_run_id=None,
            step_keys_to_execute=plan.step_keys_to_execute,
            execution_plan_snapshot=plan,
            job_snapshot=job.job_snapshot,
            parent_job_snapshot=job.parent_job_snapshot,
            asset_selection=None,
            asset_check_selection=None,
            resolved_op_selection=None,
            op_selection=None,
            remote_job_origin=job.get_remote_origin(),
            job_code_origin=job.get_python_origin(),
            asset_graph=repository.asset_graph,
        )
        if self._daemon_serves_queue():
            self.instance.submit_run(run.run_id, workspace)
        else:
            self.instance.launch_run(run.run_id, workspace)
        return run.run_id

    def _daemon_serves_queue(self) -> bool:
        beat = self.instance.get_daemon_heartbeats().get("QUEUED_RUN_COORDINATOR")
        return beat is not None and time.time() - beat.timestamp < DAEMON_FRESH_S

    def wait(self, run_id: str, on_event: Callable[[dg.EventLogEntry], None] | None = None) -> dg.DagsterRun:
        """Follow the run's events until it ends; Ctrl-C cancels it (as the UI's Terminate)."""
        cursor = None
        try:
            while True:
                run = self.instance.get_run_by_id(run_id)
                if run is None:
                    raise RuntimeError(f"run {run_id} vanished from the instance")
                if on_event is not None:
                    records = self.instance.get_records_for_run(run_id, cursor=cursor)
                    cursor = records.cursor
                    for record in records.records:
                        on_event(record.event_log_entry)
                if run.is_finished:
                    return run
                if run.status == dg.DagsterRunStatus.QUEUED and not self._daemon_serves_queue():
                    # The daemon that was to dequeue it has stopped: start it here, as it would.
                    self.instance.launch_run(run_id, self._context.create_request_context())
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            self.instance.run_coordinator.cancel_run(run_id)
            raise

    def step_failures(self, run_id: str) -> list[dg.DagsterEvent]:
        records = self.instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        return [record.event_log_entry.dagster_event for record in records.records
                if record.event_log_entry.dagster_event is not None]
