"""dagster-dask's executor, handing Dask the run in a form Dask does not take apart.

distributed walks every tuple among a task's arguments, named tuples included, looking for
futures (``parse_input`` in ``dask/_task_spec.py``; dask/distributed#7465). ``DaskExecutor``
submits the ``DagsterRun``, a named tuple, and a run over a range of partitions carries a
``partitions_subset`` that refuses iteration: with dagster-dask 0.29 every partitioned run
failed before its first step, and no release of distributed for Python 3.11 with pandas 3
leaves the arguments alone. Here the run travels wrapped in an object that is not a tuple and
unpickles on the worker as the run itself; its tasks are named after the run, not the job only
(dagster-io/dagster#21418: two runs of one job on one cluster would share their tasks).

Imported only when ``NOMARR_EXECUTOR=dask``. Upstream gap: an executor must pass on a
``PlanOrchestrationContext``, which Dagster does not export: the one private import here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from dagster import DagsterEvent, DagsterRun
from dagster._core.execution.context.system import PlanOrchestrationContext
from dagster_dask.executor import DaskExecutor

if TYPE_CHECKING:
    from dagster._core.execution.plan.plan import ExecutionPlan


def _same(value: Any) -> Any:
    return value


class OpaqueRun:
    """A ``DagsterRun`` Dask cannot look into; pickles as the run itself."""

    __slots__ = ("run",)

    def __init__(self, run: DagsterRun) -> None:
        self.run = run

    @property
    def job_name(self) -> str:
        # What dagster-dask prefixes its task keys with: unique per run.
        return f"{self.run.job_name}.{self.run.run_id}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.run, name)

    def __reduce__(self) -> tuple[Any, tuple[DagsterRun]]:
        return (_same, (self.run,))


class OpaqueRunDaskExecutor(DaskExecutor):
    """``DaskExecutor`` whose tasks receive the run as an :class:`OpaqueRun`."""

    @classmethod
    def wrapping(cls, executor: DaskExecutor) -> OpaqueRunDaskExecutor:
        return cls(executor.cluster_type, executor.cluster_configuration)

    def execute(
        self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan
    ) -> Iterator[DagsterEvent]:
        opaque = PlanOrchestrationContext(
            plan_data=plan_context.plan_data._replace(dagster_run=OpaqueRun(plan_context.dagster_run)),
            log_manager=plan_context.log,
            executor=plan_context.executor,
            output_capture=plan_context.output_capture,
            resume_from_failure=plan_context.resume_from_failure,
        )
        return super().execute(opaque, execution_plan)
