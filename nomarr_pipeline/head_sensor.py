"""``head_discovery_sensor``: keeps the ``heads`` dynamic partitions in step with the models
folder and requests predictions for new heads as one run.

Cheap by design: a stat of the model files, and JSON parsing only when they changed
(no model hashing, no TensorFlow).
"""

import hashlib
import json
from pathlib import Path

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from nomarr_pipeline.assets.file_tags import file_tags
from nomarr_pipeline.ml.discovery import discover_models
from nomarr_pipeline.partitions import heads_partitions
from nomarr_pipeline.resources import ModelsResource

HEADS = heads_partitions.name
assert HEADS is not None


def models_fingerprint(models_dir: Path) -> str:
    """Changes whenever a model file is added, removed, replaced or edited."""
    digest = hashlib.sha1()
    for path in sorted(models_dir.rglob("*")):
        if path.suffix in (".json", ".pb") and path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(models_dir)}|{stat.st_size}|{stat.st_mtime_ns}\n"
                          .encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _discovered_keys(models_dir: Path, cursor: str | None) -> tuple[list[str], str]:
    """The head keys in the folder and the new cursor; JSON is parsed only on change."""
    fingerprint = models_fingerprint(models_dir)
    try:
        saved = json.loads(cursor) if cursor else {}
    except json.JSONDecodeError:
        saved = {}
    if saved.get("fingerprint") == fingerprint and isinstance(saved.get("keys"), list):
        keys = [str(key) for key in saved["keys"]]
    else:
        keys = discover_models(models_dir, compute_versions=False).partition_keys
    return keys, json.dumps({"fingerprint": fingerprint, "keys": keys})


@dg.sensor(
    target=[file_tags],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def head_discovery_sensor(
    context: dg.SensorEvaluationContext, models: ModelsResource
) -> dg.SensorResult | dg.SkipReason:
    """Adds partitions for new heads, removes vanished ones, and analyses new heads in one run."""
    models_dir = models.path()
    if models_dir is None:
        return dg.SkipReason("no models folder configured (NOMARR_MODELS_DIR)")
    if not models_dir.is_dir():
        return dg.SkipReason(f"models folder {models_dir} does not exist")
    discovered, cursor = _discovered_keys(models_dir, context.cursor)
    existing = context.instance.get_dynamic_partitions(HEADS)
    new = [key for key in discovered if key not in set(existing)]
    vanished = sorted(set(existing) - set(discovered))
    if not new and not vanished:
        context.update_cursor(cursor)
        return dg.SkipReason(f"{len(discovered)} heads, none added or removed")

    requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
    if vanished:
        requests.append(dg.DeleteDynamicPartitionsRequest(HEADS, vanished))
    run_requests: list[dg.RunRequest] = []
    if new:
        requests.append(dg.AddDynamicPartitionsRequest(HEADS, new))
        # New keys are appended together, in this order, after every existing key, so the
        # range new[0]…new[-1] is exactly them: one single-run backfill for all new heads.
        stamp = hashlib.sha1("\n".join([cursor, *new]).encode("utf-8", "surrogateescape"))
        run_key = f"heads-{stamp.hexdigest()[:16]}"
        run_requests.append(
            dg.RunRequest(
                run_key=run_key,
                asset_selection=[file_tags.key],
                tags={
                    ASSET_PARTITION_RANGE_START_TAG: new[0],
                    ASSET_PARTITION_RANGE_END_TAG: new[-1],
                    "nomarr/new_heads": str(len(new)),
                },
            )
        )
    context.update_cursor(cursor)
    context.log.info(f"heads: {len(new)} new {new}, {len(vanished)} removed {vanished}")
    return dg.SensorResult(run_requests=run_requests, dynamic_partitions_requests=requests)
