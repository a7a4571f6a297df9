"""The heads a partitioned run works on: its partition keys resolved against the models folder."""

from pathlib import Path

import dagster as dg

from nomarr_pipeline.defs.resources import ModelsResource
from nomarr_pipeline.ml.discovery import Head, discover_models


def models_folder(models: ModelsResource) -> Path:
    folder = models.path()
    if folder is None or not folder.is_dir():
        raise dg.Failure(
            f"Models folder {folder or '(unset)'} not found: set NOMARR_MODELS_DIR (or the `models_dir` "
            "of the `models` resource) to a folder of Essentia .pb + .json files."
        )
    return folder


def run_heads(context: dg.AssetExecutionContext, models: ModelsResource) -> list[Head]:
    """Heads for ``context.partition_keys``; keys whose model files vanished are logged and skipped."""
    catalog = discover_models(models_folder(models), compute_versions=False, engine=models.inference_engine)
    heads, missing = catalog.select(context.partition_keys)
    for key in missing:
        context.log.warning(f"head {key} is no longer in the models folder; skipped")
    for problem in catalog.problems:
        context.log.warning(f"model skipped: {problem.path}: {problem.message}")
    return heads
