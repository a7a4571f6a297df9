"""Schedules."""

import os

import dagster as dg

from nomarr_pipeline.defs.jobs import calibration_job, partition_range_tags
from nomarr_pipeline.defs.partitions import heads_partitions

NIGHTLY_CRON = os.environ.get("NOMARR_CALIBRATION_CRON", "0 3 * * *")
NIGHTLY_TIMEZONE = os.environ.get("NOMARR_SCHEDULE_TIMEZONE", "UTC")


@dg.schedule(job=calibration_job, cron_schedule=NIGHTLY_CRON, execution_timezone=NIGHTLY_TIMEZONE)
def nightly_calibration_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    """Every head in ONE run (03:00 by default): state, history, sidecars, then the package."""
    keys = heads_partitions.get_partition_keys(dynamic_partitions_store=context.instance)
    if not keys:
        return dg.SkipReason("no heads discovered yet (head_discovery_sensor adds them)")
    return dg.RunRequest(run_key=None, tags={**partition_range_tags(keys), "nomarr/trigger": "nightly"})
