"""The Dagster code location. The settings are checked once, when it loads (a bad ``NOMARR_*``
value is its load error, in plain words); a resource takes a value that a set variable gave as
``dg.EnvVar``, so the UI shows where it comes from."""

from __future__ import annotations

import warnings
from typing import Any

import dagster as dg

from nomarr_pipeline.defs.assets.calibration import (
    calibration_history,
    calibration_package,
    calibration_sidecars,
    calibration_state,
)
from nomarr_pipeline.defs.assets.file_tags import build_file_tags
from nomarr_pipeline.defs.assets.library_files import library_files
from nomarr_pipeline.defs.assets.tagging import calibrated_tags, navidrome_kit, written_tags
from nomarr_pipeline.defs.executors import configured_executor
from nomarr_pipeline.defs.jobs import calibration_job, library_scan_job, predictions_job, tagging_job
from nomarr_pipeline.defs.resources import (
    CalibrationResource,
    LibraryResource,
    ModelsResource,
    StoreResource,
    tagging_resource,
)
from nomarr_pipeline.defs.schedules import nightly_calibration_schedule
from nomarr_pipeline.defs.sensors import calibration_hash_sensor, head_discovery_sensor, library_change_sensor
from nomarr_pipeline.ml.capacity import available_cores
from nomarr_pipeline.settings import Settings, default_store_url
from nomarr_pipeline.store import store_engine


def build_defs(settings: Settings) -> dg.Definitions:
    def env(name: str, value: Any) -> Any:
        """``dg.EnvVar(name)`` where the variable is set and means ``value`` as it stands."""
        return dg.EnvVar(name) if name in settings.from_environment else value

    shards = settings.analysis_shards or available_cores()
    defs = dg.Definitions(
        assets=[
            library_files,
            build_file_tags(shards),
            calibration_state,
            calibration_history,
            calibration_sidecars,
            calibration_package,
            calibrated_tags,
            written_tags,
            navidrome_kit,
        ],
        jobs=[library_scan_job, predictions_job, calibration_job, tagging_job],
        sensors=[library_change_sensor, head_discovery_sensor, calibration_hash_sensor],
        schedules=[nightly_calibration_schedule(settings.calibration_cron, settings.schedule_timezone)],
        executor=configured_executor(settings),
        resources={
            "store": StoreResource(
                url=env("NOMARR_STORE_URL", settings.store_url),
                create_folder=settings.store_url == default_store_url(settings.data_dir),
                arango_db=env("NOMARR_ARANGO_DB", settings.arango_db),
                arango_user=env("NOMARR_ARANGO_USER", settings.arango_user),
                arango_password=env("NOMARR_ARANGO_PASSWORD", None),
                pg_password=env("NOMARR_PG_PASSWORD", None),
            ),
            "library": LibraryResource(
                roots=[str(root) for root in settings.library_roots],
                file_write_mode=settings.file_write_mode,
                auto_write_tags=settings.auto_write_tags,
                write_raw_scores=settings.write_raw_scores,
            ),
            "models": ModelsResource(
                models_dir=env("NOMARR_MODELS_DIR", None),
                shards=shards,
                inference_engine=settings.inference_engine,
                tf_threads=settings.tf_threads,
                tf_inter_op_threads=settings.tf_inter_op_threads,
                gpus=list(settings.gpus) if settings.gpus is not None else None,
            ),
            "calibration": CalibrationResource(
                export_dir=str(settings.export_dir), histogram_overrides=settings.histogram_overrides
            ),
            "tagging": tagging_resource(settings),
        },
    )
    # The store's engine (Settings checked the URL) as a badge on the assets that talk to it.
    kind = store_engine(settings.store_url)
    with warnings.catch_warnings():  # "in preview": noise in every process that loads the location
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return defs.map_resolved_asset_specs(
            func=lambda spec: spec.merge_attributes(kinds={kind}),
            selection=["library_files", "calibration_state", "calibrated_tags"],
        )


defs = build_defs(Settings.from_env())
