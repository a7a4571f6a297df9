"""``head_discovery_sensor``: keeps the ``heads`` dynamic partitions in step with the models
folder and requests predictions for new heads as one run.

Cheap by design: a stat of the model files, and JSON parsing only when they changed
(no model hashing, no TensorFlow).
"""

import hashlib
import json
from pathlib import Path

import dagster as dg

from nomarr_pipeline.assets.file_tags import file_tags
from nomarr_pipeline.jobs import partition_range_tags
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
            digest.update(
                f"{path.relative_to(models_dir)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode(
                    "utf-8", "surrogateescape"
                )
            )
    return digest.hexdigest()


def _discovered_keys(models_dir: Path, cursor: str | None) -> tuple[list[str], str, bool]:
    """The head keys in the folder, the new cursor, and whether model files changed since the
    last tick (not on the first); JSON is parsed only on change."""
    fingerprint = models_fingerprint(models_dir)
    try:
        saved = json.loads(cursor) if cursor else {}
    except json.JSONDecodeError:
        saved = {}
    if saved.get("fingerprint") == fingerprint and isinstance(saved.get("keys"), list):
        keys = [str(key) for key in saved["keys"]]
    else:
        keys = discover_models(models_dir, compute_versions=False).partition_keys
    changed = bool(saved.get("fingerprint")) and saved.get("fingerprint") != fingerprint
    return keys, json.dumps({"fingerprint": fingerprint, "keys": keys}), changed


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
    discovered, cursor, models_changed = _discovered_keys(models_dir, context.cursor)
    existing = context.instance.get_dynamic_partitions(HEADS)
    new = [key for key in discovered if key not in set(existing)]
    vanished = sorted(set(existing) - set(discovered))
    if not new and not vanished:
        context.update_cursor(cursor)
        if models_changed and discovered:
            # A replaced model file gives its heads a new tagger_version; one run over every
            # head re-analyses exactly those (the others find nothing to do).
            return dg.SensorResult(
                run_requests=[
                    dg.RunRequest(
                        run_key=f"models-{hashlib.sha1(cursor.encode()).hexdigest()[:16]}",
                        asset_selection=[file_tags.key],
                        tags={**partition_range_tags(existing), "nomarr/models_changed": "true"},
                    )
                ]
            )
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
                tags={**partition_range_tags(new), "nomarr/new_heads": str(len(new))},
            )
        )
    context.update_cursor(cursor)
    context.log.info(f"heads: {len(new)} new {new}, {len(vanished)} removed {vanished}")
    return dg.SensorResult(run_requests=run_requests, dynamic_partitions_requests=requests)
