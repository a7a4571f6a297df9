"""Run ``predictions_job`` once as a launched run does: its own orchestrating process, steps in
the processes of the configured executor, definitions loaded from the environment.

    python -m nomarr_pipeline_tests.defs.assets.predictions_run FIRST_HEAD LAST_HEAD [RUN_CONFIG_JSON]

Prints ``{"run_id": ..., "success": ...}``. Tests start it as a subprocess because the number
of shard steps is fixed when ``nomarr_pipeline.definitions`` is imported (NOMARR_ANALYSIS_SHARDS).
"""

from __future__ import annotations

import json
import sys

import dagster as dg

from nomarr_pipeline.defs.jobs import partition_range_tags


def predictions_job() -> dg.JobDefinition:
    """The code location's job, rebuilt by ``dg.build_reconstructable_job`` in every step process."""
    from nomarr_pipeline.definitions import defs

    return defs.resolve_job_def("predictions_job")


def main(argv: list[str]) -> int:
    first, last, *rest = argv
    run_config = json.loads(rest[0]) if rest else {}
    job = dg.build_reconstructable_job("nomarr_pipeline_tests.defs.assets.predictions_run", "predictions_job")
    tags = partition_range_tags([first, last])
    with (
        dg.DagsterInstance.get() as instance,
        dg.execute_job(job, instance, run_config=run_config, tags=tags) as result,
    ):
        print(json.dumps({"run_id": result.run_id, "success": result.success}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
