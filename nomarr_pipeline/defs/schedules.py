"""Schedules."""

import dagster as dg

from nomarr_pipeline.defs.jobs import calibration_job, partition_range_tags
from nomarr_pipeline.defs.partitions import heads_partitions


def nightly_calibration_schedule(cron: str, timezone: str) -> dg.ScheduleDefinition:
    """Every head in ONE run (NOMARR_CALIBRATION_CRON): state, history, sidecars, then the package."""

    @dg.schedule(job=calibration_job, cron_schedule=cron, execution_timezone=timezone,
                 name="nightly_calibration_schedule")
    def schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        keys = heads_partitions.get_partition_keys(dynamic_partitions_store=context.instance)
        if not keys:
            return dg.SkipReason("no heads discovered yet (head_discovery_sensor adds them)")
        return dg.RunRequest(run_key=None, tags={**partition_range_tags(keys), "nomarr/trigger": "nightly"})

    return schedule
